"""The `convert` program: OpenCLIP/OpenAI/HF/big_vision files <-> hpjax orbax params <-> HF
folders and big_vision files.

  python -m hpjax.main --workdir=/tmp/conv \
    --config=configs/convert.py:src=ViT-B-32.safetensors,model=ViT-B-32,direction=to_hpjax

Directions:
  to_hpjax:    src is an OpenCLIP (.safetensors/.bin/.pt), OpenAI TorchScript, HF CLIPModel or
               SiglipModel file (or HF folder) or big_vision SigLIP .npz, or a name fetched
               into the Hugging Face cache first (a tag of model such as `openai`,
               `hf-hub:org/repo`, a transformers repo `org/repo`, a gs:// or https:// URL);
               dst (default WORKDIR/params) becomes an orbax params directory.
  to_openclip: src is an orbax params directory or any file to_hpjax reads; dst (default
               WORKDIR/open_clip_model.safetensors) is an OpenCLIP state dict that
               `open_clip.create_model(model, pretrained=dst)` loads strictly.
  to_hf:       src as for to_openclip; dst (default WORKDIR/hf_model) is a new Hugging Face
               CLIPModel folder (config.json, model.safetensors, tokenizer files) that
               `transformers.CLIPModel.from_pretrained(dst)` loads (a SiglipModel folder for
               SigLIP).
  to_big_vision: src as for to_openclip, a SigLIP model; dst (default WORKDIR/big_vision.npz)
               is a big_vision .npz (keys under params/, one per block).
A summary (tensor count, parameter count, bytes, seconds, the keys of parts hpjax does not
build, e.g. CoCa's decoder) is logged and written to WORKDIR/convert_summary.json. to_openclip
from a file carries those parts through; to_hpjax leaves them out of the orbax directory.
"""

from __future__ import annotations

import json
import time

from absl import logging
from etils import epath
import jax
import numpy as np

from hpjax.checkpoints import big_vision, loading, orbax_params, pretrained
from hpjax.models.clip import num_params
from hpjax.models.config import get_model_config

DIRECTIONS = ("to_hpjax", "to_openclip", "to_hf", "to_big_vision")
_DEFAULT_DST = {"to_hpjax": "params", "to_openclip": "open_clip_model.safetensors",
                "to_hf": "hf_model", "to_big_vision": "big_vision.npz"}


def run(config, workdir) -> dict:
  """Converts config.src to config.dst for architecture config.model; returns the summary."""
  if config.direction not in DIRECTIONS:
    raise ValueError(f"config.direction is {config.direction!r}; expected one of {DIRECTIONS}")
  if not config.src:
    raise ValueError("config.src is empty: pass src=PATH (a checkpoint file or orbax directory)")
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dst = epath.Path(config.dst or workdir / _DEFAULT_DST[config.direction])
  if dst.exists():
    raise FileExistsError(f"{dst} exists; remove it or choose another dst")
  model_config = get_model_config(config.model)
  src = (pretrained.fetch(model_config, config.src) if pretrained.is_name(config.src)
         else epath.Path(config.src))
  start = time.time()

  _progress(1, f"reading {src} as {model_config.name}")
  params, ignored = loading.load_params(src, model_config, np.float32, return_ignored=True,
                                        lora_rank=config.get("lora_rank") or None,
                                        lora_alpha=config.get("lora_alpha", 1.0))
  _progress(2, f"writing {config.direction.removeprefix('to_')} checkpoint {dst}")
  if config.direction == "to_hpjax":
    orbax_params.save_params(dst, params)  # Ignored parts (CoCa's decoder) are not kept.
  elif config.direction == "to_hf":
    loading.export_hf(params, model_config, dst)
  elif config.direction == "to_big_vision":
    big_vision.save(params, model_config, dst)
  else:
    loading.export_openclip(params, model_config, dst, extra=ignored)

  summary = {
      "direction": config.direction, "model": model_config.name, "src": str(src), "dst": str(dst),
      "tensors": len(jax.tree.leaves(params)), "parameters": num_params(params),
      "bytes_written": _size(dst), "seconds": round(time.time() - start, 2),
      "ignored_keys": sorted(ignored),
  }
  (workdir / "convert_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  _progress(3, "done: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
  return summary


def _progress(step: int, message: str) -> None:
  logging.info("[convert %d/3] %s", step, message)


def _size(path: epath.Path) -> int:
  """Bytes in a file or a directory tree (epath has no recursive glob for gs://)."""
  if not path.is_dir():
    return path.stat().length
  return sum(_size(child) for child in path.iterdir())
