"""Checkpoint conversion between OpenCLIP/OpenAI/HF files and hpjax orbax param directories.

  python -m hpjax.main --workdir=/tmp/convert \
    --config=configs/convert.py:src=PATH,model=ViT-B-32-quickgelu,direction=to_hpjax
  python -m hpjax.main --workdir=/tmp/convert \
    --config=configs/convert.py:src=/tmp/convert/params,model=ViT-B-32-quickgelu,direction=to_openclip,dst=out.safetensors
  python -m hpjax.main --workdir=/tmp/convert \
    --config=configs/convert.py:src=/tmp/run/checkpoints,model=ViT-B-32-quickgelu,direction=to_hf,dst=/tmp/hf_clip

`src` may also name weights to fetch (checkpoints/pretrained.py): src=openai (a tag of `model`,
see hpjax.list_pretrained()), src=hf-hub:org/repo, src=org/repo (transformers), src=gs://...

A file with LoRA adapters (TSVLC / DAC) needs `lora_rank=4` (and `lora_alpha`, 1 for them).
`dst` defaults to WORKDIR/params (to_hpjax), WORKDIR/open_clip_model.safetensors (to_openclip;
a `.bin` dst writes a torch state dict instead), WORKDIR/hf_model (to_hf, a transformers
CLIPModel or SiglipModel folder) or WORKDIR/big_vision.npz (to_big_vision, SigLIP models).
"""

import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.program = "convert"
  config.src = ""
  config.dst = ""
  config.model = "ViT-B-32"
  config.direction = "to_hpjax"
  config.lora_rank = 0  # a file with LoRA adapters (TSVLC / DAC: 4): merged at this rank
  config.lora_alpha = 1.0  # ... with scale lora_alpha / lora_rank
  for item in (arg or "").split(","):
    if item:
      key, _, value = item.partition("=")
      if key not in config:
        raise ValueError(f"configs/convert.py: unknown argument {key!r}; known: "
                         f"{sorted(k for k in config if k != 'program')}")
      config[key] = type(config[key])(value)
  return config
