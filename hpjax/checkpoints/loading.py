"""One entry point for pretrained weights: OpenCLIP/OpenAI/HF files or hpjax orbax directories."""

from __future__ import annotations

from etils import epath
import numpy as np

from hpjax.checkpoints import files, hf, mapping, orbax_params
from hpjax.models.config import CLIPConfig


def load_params(path, config: CLIPConfig, param_dtype=np.float32) -> dict:
  """Params of `config` from `path`.

  A directory is an hpjax orbax checkpoint; a file is an OpenCLIP state dict (.safetensors,
  .bin/.pt, OpenAI TorchScript) or an HF transformers CLIPModel state dict (detected by its
  `text_model.`/`vision_model.` keys).
  """
  path = epath.Path(path)
  if path.is_dir():
    return orbax_params.restore_params(path, config, param_dtype)
  state_dict = files.read_state_dict(path)
  source = f"checkpoint {path}"
  if hf.is_hf_state_dict(state_dict):
    state_dict, source = hf.hf_to_openclip(state_dict), f"HF checkpoint {path}"
  return mapping.openclip_to_params(state_dict, config, param_dtype, source)


def export_openclip(params, config: CLIPConfig, path) -> epath.Path:
  """Writes `params` as an OpenCLIP state dict (.safetensors, or .bin/.pt with torch), fp32."""
  return files.write_state_dict(mapping.params_to_openclip(params, config), path)


def export_hf(params, config: CLIPConfig, folder) -> epath.Path:
  """Writes `params` as a Hugging Face `CLIPModel` folder (config, weights, tokenizer), fp32."""
  return hf.write_folder(mapping.params_to_openclip(params, config), config, folder)
