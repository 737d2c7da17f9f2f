"""WiSE-FT: interpolate a finetuned model with its starting weights, score each mix.

  python -m hpjax.main --workdir=/tmp/wise --config=configs/wise_ft.py:model=ViT-B-32-quickgelu,\
start=openai.pt,finetuned=/runs/hnhp/finetuned.safetensors,suite_root=DATA,image_root=IMAGES,\
alphas=0+0.25+0.5+0.75+1,export_alpha=0.5,export_openclip=/tmp/wise/alpha0.5.safetensors

Zero-shot and retrieval figures per alpha too (the fields of configs/eval_hp.py), e.g.
  ...,zeroshot.images=tfds:imagenet2012:validation,retrieval.annotations=dataset_coco.json,\
retrieval.image_root=COCO

Writes WORKDIR/wise_ft.json (alpha -> figures), wise_ft.png and, with zero-shot figures,
wise_ft_tradeoff.png (hpjax/evaluate/wise_ft.py).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.program = "wise_ft"
  c.model = "ViT-B-32-quickgelu"
  c.start = ""  # the starting (e.g. zero-shot) weights: OpenCLIP/HF file or hpjax params dir
  c.finetuned = ""  # the finetuned weights of the same model
  c.alphas = "0+0.25+0.5+0.75+1"  # '+'-separated, each in [0, 1]: 0 = start, 1 = finetuned
  c.suite_root = ""  # authors' layout (data/, swapped_data/) or tfds:NAME
  c.suites = "replace+swap"
  c.image_root = ""
  c.batch_size = 128
  c.export_alpha = 0.5
  c.export_openclip = ""  # a path: write the weights at export_alpha there
  # Zero-shot and retrieval per alpha (off while zeroshot.images / retrieval.annotations are
  # empty), the fields of configs/eval_hp.py; with both zero-shot and the suites,
  # wise_ft_tradeoff.png draws the compositional score against zero-shot top-1 per alpha.
  c.zeroshot, c.retrieval = common.spectrum_fields()
  c.tfds_data_dir = ""  # TFDS data_dir for tfds: sources ("" = TFDS's default)
  for key, value in common.parse_arg(arg).items():
    common.set_field(c, key, value, shortcuts={})
  return c
