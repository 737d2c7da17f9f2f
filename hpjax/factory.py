"""OpenCLIP-style constructors: a model, its params (random or pretrained) and its transform."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hpjax import checkpoints
from hpjax import preprocess
from hpjax.checkpoints import pretrained as pretrained_lib
from hpjax.models.clip import CLIP, init_params, param_shapes
from hpjax.models.config import CLIPConfig, get_model_config


def create_model(name: str | CLIPConfig | None, pretrained=None, dtype=jnp.float32,
                 param_dtype=jnp.float32, remat: bool = False, rng: jax.Array | None = None, *,
                 lora_rank: int | None = None, lora_alpha: float = 1.0):
  """Returns (model, params) for a shipped model name or an OpenCLIP-schema JSON path.

  Args:
    name: e.g. 'ViT-B-32-quickgelu' (see `list_models()`), a path to a JSON config, a
      `CLIPConfig` (e.g. a shipped one with another activation, as the evaluator's parity modes
      build them), or None to infer the architecture of `pretrained`: from the config.json of
      an HF SiglipModel folder, or from the tensor shapes of a file in OpenAI's layout such as
      OpenAI's TorchScript `RN50.pt` (QuickGELU, as OpenAI's loader builds it).
    pretrained: None for random init (from `rng`, default key 0), an OpenCLIP/OpenAI/HF
      checkpoint file, an HF folder (config.json + model.safetensors), an hpjax orbax
      params directory, or a name fetched and cached (checkpoints/pretrained.py): a tag of
      `list_pretrained()` ('openai', 'laion2b_s34b_b79k'), 'hf-hub:org/repo', a transformers
      repository 'org/repo', or a URL (gs://, https://). A name 'hf-hub:org/repo' needs no
      `pretrained`: the architecture and weights are the repository's.
    dtype: compute dtype (bfloat16 for speed; features come back in float32).
    param_dtype: storage dtype of the params.
    remat: recompute each residual block in the backward pass.
    rng: PRNG key for random init.
    lora_rank, lora_alpha: for a file with LoRA adapters (TSVLC / DAC: rank 4, alpha 1), merged
      into the weights with scale lora_alpha / lora_rank.
  """
  lora = dict(lora_rank=lora_rank, lora_alpha=lora_alpha)
  named = isinstance(name, str) and name.startswith(pretrained_lib.HF_HUB_PREFIX)
  if named or pretrained_lib.is_name(pretrained):
    config, params = pretrained_lib.load(name, pretrained, **lora)
  elif pretrained is None and (name is None or lora_rank is not None):
    raise ValueError("create_model: a model name of None and lora_rank both need a `pretrained` "
                     "checkpoint file")
  elif name is None and checkpoints.is_hf_folder(pretrained):
    if lora_rank is not None:
      raise ValueError(f"{pretrained} is an HF folder; LoRA adapters are read from OpenCLIP files")
    config, params = checkpoints.load_hf(pretrained)
  elif name is None:
    config, params = checkpoints.load_openai(pretrained, **lora)
  else:
    config = name if isinstance(name, CLIPConfig) else get_model_config(name)
    params = None if pretrained is None else checkpoints.load_params(pretrained, config, **lora)
  model = CLIP(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
  if params is None:
    return model, init_params(model, jax.random.key(0) if rng is None else rng)
  # Cast like init does: param_dtype, except what the model keeps in fp32 (logit scale, bias).
  return model, jax.tree.map(lambda x, like: jnp.asarray(x, like.dtype), params,
                             param_shapes(model))


def create_model_and_transforms(name: str | None, pretrained=None, **kwargs):
  """Returns (model, params, preprocess): preprocess maps a PIL image to a (H, W, 3) array."""
  model, params = create_model(name, pretrained, **kwargs)
  return model, params, preprocess.model_transform(model.config)


def export_openclip(params, name: str | CLIPConfig, path, extra=None):
  """Writes `params` of model `name` (or of a config, e.g. an inferred `model.config`) as an
  OpenCLIP state dict that `open_clip.create_model(name, pretrained=path)` loads strictly (for
  CoCa, pass the decoder tensors `load_params(..., return_ignored=True)` returned as `extra`)."""
  config = name if isinstance(name, CLIPConfig) else get_model_config(name)
  return checkpoints.export_openclip(params, config, path, extra)


def export_hf(params, name: str | CLIPConfig, folder, tokenizer=None):
  """Writes `params` of model `name` (or of a config, e.g. an inferred `model.config`) as a
  folder that `transformers.CLIPModel.from_pretrained` and `CLIPTokenizer.from_pretrained` read
  (config.json, model.safetensors, vocab and merges); a SigLIP model as a folder
  `transformers.SiglipModel.from_pretrained` reads (config.json, model.safetensors, and with
  `tokenizer`, its SentencePiece model or a folder holding it, what `AutoTokenizer` reads)."""
  config = name if isinstance(name, CLIPConfig) else get_model_config(name)
  return checkpoints.export_hf(params, config, folder, tokenizer)
