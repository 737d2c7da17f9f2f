"""hpjax: CLIP training and evaluation on hard positives and hard negatives, in JAX.

The public API follows OpenCLIP's idiom:

  model, params, preprocess = hpjax.create_model_and_transforms('ViT-B-32', pretrained='openai')
  tokenizer = hpjax.get_tokenizer('ViT-B-32')

Names are resolved lazily so that `import hpjax.data...` does not pull in jax, flax and orbax.
"""

import importlib

_API = {
    "create_model": "hpjax.factory",
    "create_model_and_transforms": "hpjax.factory",
    "export_openclip": "hpjax.factory",
    "export_hf": "hpjax.factory",
    "get_tokenizer": "hpjax.tokenizer",
    "list_models": "hpjax.models.config",
    "list_pretrained": "hpjax.checkpoints.pretrained",
    "list_pretrained_tags_by_model": "hpjax.checkpoints.pretrained",
    "get_model_config": "hpjax.models.config",
}

__all__ = sorted(_API)


def __getattr__(name):
  if name not in _API:
    raise AttributeError(f"module 'hpjax' has no attribute {name!r}")
  return getattr(importlib.import_module(_API[name]), name)
