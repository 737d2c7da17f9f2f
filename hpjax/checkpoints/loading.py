"""One entry point for pretrained weights: OpenCLIP/OpenAI/HF files or hpjax orbax directories."""

from __future__ import annotations

import json

from absl import logging
from etils import epath
import jax
import numpy as np

from hpjax.checkpoints import big_vision, files, hf, lora, mapping, orbax_params
from hpjax.models.config import CLIPConfig, infer_openai_config


def load_params(path, config: CLIPConfig, param_dtype=np.float32, return_ignored: bool = False,
                *, lora_rank: int | None = None, lora_alpha: float = 1.0):
  """Params of `config` from `path`; with return_ignored, (params, ignored tensors).

  A directory is an hpjax orbax checkpoint or an HF folder (`is_hf_folder`); a `.npz` file is a
  big_vision SigLIP checkpoint (checkpoints/big_vision.py); another file is an OpenCLIP state
  dict (.safetensors, .bin/.pt, OpenAI TorchScript) or an HF transformers CLIPModel /
  SiglipModel state dict (detected by its `text_model.`/`vision_model.` keys). A file with LoRA
  adapters (TSVLC / DAC) needs `lora_rank` (and `lora_alpha`): the adapters are merged into the
  weights (checkpoints/lora.py).
  Keys of parts hpjax does not build (CoCa's `text_decoder.*`) are not loaded: they are logged
  and, with return_ignored, returned as {key: array} (sorted key names for results.json; pass
  the dict to `export_openclip(..., extra=...)` to write a file OpenCLIP loads strictly).
  """
  params, ignored = _load(epath.Path(path), config, param_dtype, lora_rank, lora_alpha,
                          stand_ins=False)
  check_finite(params, str(path))
  return (params, ignored) if return_ignored else params


def check_finite(params, source: str) -> None:
  """Refuses weights holding NaN or infinity, naming each such parameter: they would convert
  without a word and score every caption alike."""
  bad = [f"{'/'.join(p.key for p in path)} ({int(np.size(leaf) - np.isfinite(leaf).sum())} "
         "values)" for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
         if not np.isfinite(np.asarray(leaf, np.float32)).all()]
  if bad:
    raise ValueError(f"{source}: {len(bad)} parameter(s) hold NaN or infinite values:\n  "
                     + "\n  ".join(bad))


def check_params(path, config: CLIPConfig, *, lora_rank: int | None = None,
                 lora_alpha: float = 1.0) -> list[str]:
  """Raises what `load_params` would (a missing or unreadable file, keys or shapes that do not
  fit `config`, LoRA adapters that do not fit `lora_rank`) without reading any tensor: the load
  runs on stand-ins read from the file's header (`files.read_stand_ins`) or an orbax
  directory's metadata, so a file checked first is still read once, when it is loaded. Returns
  the sorted keys of parts hpjax does not build. The converted stand-ins take one model's
  memory for a moment, as a load does.
  """
  _, ignored = _load(epath.Path(path), config, np.float32, lora_rank, lora_alpha,
                     stand_ins=True)
  return sorted(ignored)


def _load(path: epath.Path, config: CLIPConfig, param_dtype, lora_rank, lora_alpha,
          stand_ins: bool) -> tuple[dict | None, dict]:
  """`load_params`'s (params, ignored tensors); with stand_ins, those of stand-ins of the
  tensors (of an orbax directory, only its metadata is checked: params None)."""
  if path.suffix == ".npz":
    if lora_rank is not None:
      raise ValueError(f"{path} is a big_vision file, which holds no LoRA adapters; load it "
                       f"without lora_rank={lora_rank}")
    if stand_ins:
      return big_vision.to_params(files.read_npz_stand_ins(path), config, param_dtype,
                                  f"big_vision checkpoint {path}"), {}
    return big_vision.load(path, config, param_dtype), {}
  if path.is_dir() and not is_hf_folder(path):
    if lora_rank is not None:
      raise ValueError(f"{path} is an hpjax params directory, whose weights hold no LoRA "
                       f"adapters; load it without lora_rank={lora_rank}")
    if stand_ins:
      orbax_params.checked_metadata(path, config)
      return None, {}
    return orbax_params.restore_params(path, config, param_dtype), {}
  read = files.read_stand_ins if stand_ins else files.read_state_dict
  state_dict, source = _read_openclip(path, lora_rank, lora_alpha, read)
  state_dict, ignored = mapping.split_ignored(state_dict, config)
  if ignored and not stand_ins:
    logging.info("%s: %d keys of parts hpjax does not build are ignored: %s", source,
                 len(ignored), ", ".join(sorted(ignored)))
  return mapping.openclip_to_params(state_dict, config, param_dtype, source), ignored


def load_openai(path, param_dtype=np.float32, *, lora_rank: int | None = None,
                lora_alpha: float = 1.0) -> tuple[CLIPConfig, dict]:
  """(config, params) of a file in OpenAI's layout (TorchScript archive or state dict), the
  architecture inferred from its tensor shapes (`models.config.infer_openai_config`)."""
  state_dict, source = _read_openclip(epath.Path(path), lora_rank, lora_alpha,
                                        files.read_state_dict)
  config = infer_openai_config(state_dict, source)
  params = mapping.openclip_to_params(state_dict, config, param_dtype, source)
  check_finite(params, source)
  return config, params


def is_hf_folder(path) -> bool:
  """An HF model folder: config.json and model.safetensors (what `save_pretrained` writes)."""
  path = epath.Path(path)
  return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def load_hf(path, param_dtype=np.float32) -> tuple[CLIPConfig, dict]:
  """(config, params) of an HF SiglipModel folder, the architecture inferred from its config.json
  (`hf.infer_siglip_config`); the folder is the config's tokenizer folder too."""
  path = epath.Path(path)
  if not is_hf_folder(path):
    raise FileNotFoundError(f"{path} is not an HF model folder: it needs config.json and "
                            "model.safetensors")
  config = hf.infer_siglip_config(json.loads((path / "config.json").read_text()), str(path))
  state_dict, source = _read_openclip(path, None, 1.0, files.read_state_dict)
  params = mapping.openclip_to_params(state_dict, config, param_dtype, source)
  check_finite(params, source)
  return config, params


def _read_openclip(path: epath.Path, lora_rank, lora_alpha, read):
  """The OpenCLIP-keyed state dict of a checkpoint file (an HF folder's model.safetensors) as
  `read` gives it (tensors or stand-ins), adapters merged, and its description."""
  if path.is_dir():
    path = path / "model.safetensors"
  state_dict = read(path)
  source = f"checkpoint {path}"
  if hf.is_hf_state_dict(state_dict):
    state_dict, source = hf.hf_to_openclip(state_dict), f"HF checkpoint {path}"
  return lora.merge_lora(state_dict, lora_rank, lora_alpha, source), source


def export_openclip(params, config: CLIPConfig, path, extra=None) -> epath.Path:
  """Writes `params` as an OpenCLIP state dict (.safetensors, or .bin/.pt with torch), fp32.

  extra: the ignored tensors `load_params(..., return_ignored=True)` returned, carried through.
  """
  return files.write_state_dict(mapping.params_to_openclip(params, config, extra=extra), path)


def export_hf(params, config: CLIPConfig, folder, tokenizer=None) -> epath.Path:
  """Writes `params` as a Hugging Face `CLIPModel` folder (config, weights, tokenizer) or, for
  SigLIP, a `SiglipModel` folder (config, weights, and the tokenizer files of `tokenizer`, the
  SentencePiece model or a folder holding it, if given), fp32."""
  state = files.normalize_keys(mapping.params_to_openclip(params, config))
  return hf.write_folder(state, config, folder, tokenizer)
