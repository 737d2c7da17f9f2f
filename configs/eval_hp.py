"""Hard-positive evaluation (REPLACE, SWAP and optional other benchmarks) of one or more models.

  python -m hpjax.main --workdir=/tmp/eval --config=configs/eval_hp.py:\
suite_root=../shared/data/hard_positives,image_root=/data/vg,model=ViT-B-32-quickgelu,\
checkpoints=openai.pt+negclip.pt+/ckpts/hnhp/params,suites=replace+swap

Models of several architectures in one run (registry names and/or architecture=path):
  --config=configs/eval_hp.py:suite_root=...,image_root=...,weights_dir=/ckpt,\
models=openai-clip:ViT-B/32+NegCLIP+laion-clip:roberta-ViT-B-32+ViT-B-16=/ckpt/mine.pt,parity=paper

Arguments are comma-separated `key=value`; lists inside a value use '+'. `checkpoints` entries
are OpenCLIP/OpenAI/HF files, hpjax param directories or `random` (a random-init model).
Dotted keys reach the `extra.*` benchmarks, e.g. `extra.sugarcrepe_root=/data/sugar_crepe`.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.program = "evaluate"
  # Models: either `models` ('+'-separated: registry names of hpjax.zoo, resolved against
  # `weights_dir`, 'architecture:tag' pairs of hpjax.list_pretrained(), and/or
  # `architecture=path` entries, path 'random' = random init), or one
  # architecture `model` with `checkpoints` ('+'-separated paths; 'random' = random init).
  c.models = ""
  c.weights_dir = ""  # the folder holding the registry's files (python -m hpjax.zoo --weights_dir)
  # ("": registry rows with a hub source are fetched into the Hugging Face cache)
  c.parity = ""  # registry rows: 'paper' (default: as the authors scored them) or 'as_trained';
  # a user's own models (architecture=path, model + checkpoints) are always scored as trained.
  c.tokenizer_dir = ""  # local HF tokenizer folder for an HF-text model scored as trained.
  c.models_per_pass = 4  # models sharing a preprocessing scored per image decode pass (memory).
  c.model = "ViT-B-32-quickgelu"
  c.checkpoints = "random"  # '+'-separated paths; 'random' = a random-init model.
  c.seed = 0  # random init only.
  c.lora_rank = 0  # a user's own files with LoRA adapters (TSVLC / DAC: 4), merged at this rank
  c.lora_alpha = 1.0  # ... with scale lora_alpha / lora_rank (registry rows know their own)
  c.dtype = "float32"  # compute dtype; scores are fp32 either way.
  c.matmul_precision = "highest"  # fp32 matmuls in true fp32 on GPU/TPU; "default" is faster.
  c.suite_root = ""  # authors' layout: data/<name>.json + swapped_data/<name>.json, or tfds:NAME.
  c.tfds_data_dir = ""  # TFDS data_dir for a tfds: suite_root (may be gs://); "" = TFDS's default.
  c.suites = "replace+swap"  # 'replace', 'replace_attributes', 'replace_relations', 'swap'.
  c.image_root = ""  # record image paths are relative to it.
  c.swap_image_dir = ""  # SWAP (ARO) image paths relative to this, if not under image_root.
  c.allow_paths_outside_root = False  # True: suites may name absolute or '../' image paths.
  c.batch_size = 128  # images per device step (global).
  c.text_batch_size = 512
  c.num_workers = 8  # image decoding threads.
  c.skip_missing_images = False  # True: score without them and count the skipped records.
  c.skip_empty_captions = False  # True: leave out records with an empty caption, counted.
  c.allow_empty_suites = False  # True: a suite with no scored record is reported (N = 0).
  c.gallery_size = 12  # worst examples per model and suite in gallery.html.

  # Multi-host: set on every process (or let jax.distributed auto-detect, see hpjax.sharding).
  c.distributed = ml_collections.ConfigDict(
      {"coordinator_address": "", "num_processes": 0, "process_id": 0})

  # The other benchmarks (hpjax/evaluate/benchmarks.py): a folder (walked, or its known files)
  # or '+'-separated files; suites are named by their path below the folder (or below the
  # files' common folder), e.g. vl_checklist.Attribute.vaw.action.
  c.extra = ml_collections.ConfigDict()
  c.extra.sugarcrepe_root = ""  # the 7 SugarCrepe JSON files.
  c.extra.sugarcrepe_files = ""
  c.extra.sugarcrepe_pp_root = ""  # the 5 SugarCrepe++ JSON files.
  c.extra.sugarcrepe_pp_files = ""
  c.extra.coco_image_dir = ""  # COCO val2017 images for both.
  c.extra.aro_root = ""  # visual_genome_relation.json and visual_genome_attribution.json.
  c.extra.aro_files = ""
  c.extra.aro_image_dir = ""
  c.extra.vl_checklist_root = ""  # the official data/ tree: every *.json below it.
  c.extra.vl_checklist_files = ""
  c.extra.vl_checklist_image_dir = ""
  # Image-group suites (hpjax/data/groups.py); each image dir is the folder its files name
  # images below.
  c.extra.winoground_root = ""  # holds examples.jsonl (facebook/winoground's data/).
  c.extra.winoground_files = ""
  c.extra.winoground_image_dir = ""  # the unzipped images/ (ex_0_img_0.png, ...).
  c.extra.whatsup_root = ""  # controlled_{images,clevr}_dataset.json (or list the QA files).
  c.extra.whatsup_files = ""  # e.g. controlled_images_dataset.json+coco_qa_one_obj.json
  c.extra.whatsup_image_dir = ""  # holds controlled_images/, controlled_clevr/, val2017/, ...
  c.extra.valse_root = ""  # VALSE's data/: every piece's *.json.
  c.extra.valse_files = ""
  c.extra.valse_image_dir = ""  # every piece's image_file below it.
  c.extra.cola_root = ""  # holds COLA_multiobjects_matching_benchmark.json.
  c.extra.cola_files = ""
  c.extra.cola_image_dir = ""  # the images by their URL's file name.
  c.extra.imagecode_root = ""  # holds valid_data.json.
  c.extra.imagecode_files = ""
  c.extra.imagecode_image_dir = ""  # the unzipped image-sets/ (needed to read the file).
  c.extra.bivlc_root = ""  # the dataset's parquet files (every *.parquet below it).
  c.extra.bivlc_files = ""
  c.extra.bivlc_image_dir = ""  # where the embedded images are written once ("" = beside).

  # What a finetune costs (hpjax.evaluate.zeroshot, retrieval): spectrum.md and tradeoff.png.
  c.zeroshot, c.retrieval = common.spectrum_fields()
  c.baseline = ""  # a model's label: spectrum.md gives every row's difference to it.

  for key, value in common.parse_arg(arg).items():
    node, *path = [c] + key.split(".")
    for name in path[:-1]:
      node = node[name]
    if path[-1] not in node:
      raise KeyError(f"configs/eval_hp.py: no field {key!r}; known: {sorted(c.keys())}")
    # A path such as 123 parses as a number: string fields keep strings.
    node[path[-1]] = str(value) if isinstance(node[path[-1]], str) else value
  return c
