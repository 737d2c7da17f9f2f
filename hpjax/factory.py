"""OpenCLIP-style constructors: a model, its params (random or pretrained) and its transform."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hpjax import checkpoints
from hpjax.models.clip import CLIP, init_params, param_shapes
from hpjax.models.config import CLIPConfig, get_model_config


def create_model(name: str | CLIPConfig, pretrained=None, dtype=jnp.float32, param_dtype=jnp.float32,
                 remat: bool = False, rng: jax.Array | None = None):
  """Returns (model, params) for a shipped model name or an OpenCLIP-schema JSON path.

  Args:
    name: e.g. 'ViT-B-32-quickgelu' (see `list_models()`), a path to a JSON config, or a
      `CLIPConfig` (e.g. a shipped one with another activation, as the evaluator's parity modes
      build them).
    pretrained: None for random init (from `rng`, default key 0), an OpenCLIP/OpenAI/HF
      checkpoint file, or an hpjax orbax params directory.
    dtype: compute dtype (bfloat16 for speed; features come back in float32).
    param_dtype: storage dtype of the params.
    remat: recompute each residual block in the backward pass.
    rng: PRNG key for random init.
  """
  config = name if isinstance(name, CLIPConfig) else get_model_config(name)
  model = CLIP(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
  if pretrained is None:
    return model, init_params(model, jax.random.key(0) if rng is None else rng)
  params = checkpoints.load_params(pretrained, config)
  # Cast like init does: param_dtype, except what the model keeps in fp32 (logit scale, bias).
  return model, jax.tree.map(lambda x, like: jnp.asarray(x, like.dtype), params,
                             param_shapes(model))


def create_model_and_transforms(name: str, pretrained=None, **kwargs):
  """Returns (model, params, preprocess): preprocess maps a PIL image to a (H, W, 3) array."""
  from hpjax import preprocess  # pylint: disable=g-import-not-at-top  (owned by another module)
  model, params = create_model(name, pretrained, **kwargs)
  return model, params, preprocess.eval_transform(model.config.vision.image_size)


def export_openclip(params, name: str, path):
  """Writes `params` of model `name` as an OpenCLIP state dict that
  `open_clip.create_model(name, pretrained=path)` loads strictly."""
  return checkpoints.export_openclip(params, get_model_config(name), path)
