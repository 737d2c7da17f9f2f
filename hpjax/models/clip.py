"""OpenCLIP's CLIP in Flax: picks each tower the config names and holds the contrastive head.

Image towers: a ViT (models/transformer.py), OpenAI's ModifiedResNet (models/resnet.py, when
`vision_cfg.layers` lists stage depths) or SigLIP's timm ViT (models/siglip.py, when
`timm_model_name` is set). Text towers: OpenCLIP's TextTransformer (models/transformer.py;
CLIP's causal EOT-pooled one, or SigLIP's), CoCa's (models/coca.py, `embed_cls`) or an HF
RoBERTa encoder (models/hf_text.py, `hf_model_name`). The parameters keep OpenCLIP's layout:
the image tower under `visual`, the text tower's at the top level, then `logit_scale` (and
`logit_bias`, SigLIP). The activation: QuickGELU when `quick_gelu` (OpenAI's weights were
trained with it; the `-quickgelu` configs), else exact GELU; tanh GELU in the text tower when
`text_cfg.act_kwargs.approximate` is 'tanh' (SigLIP 2). The ResNet (ReLU), timm and HF towers
fix their own.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpjax.models.coca import CoCaTextTransformer
from hpjax.models.config import CLIPConfig, VisionConfig
from hpjax.models.hf_text import HFTextEncoder
from hpjax.models.resnet import ModifiedResNet
from hpjax.models.siglip import TimmModel
from hpjax.models.transformer import (TextTransformer, VisionTransformer, exact_gelu, quick_gelu,
                                      tanh_gelu)

Dtype = Any


def vision_tower(cfg: VisionConfig, output_dim: int, activation: Callable, **kw) -> nn.Module:
  """The image tower `cfg` describes: a timm name is SigLIP's timm ViT (GELU as timm builds the
  name, whatever the config's activation, as in OpenCLIP), a list of stage depths is OpenAI's
  ModifiedResNet (ReLU throughout), anything else a ViT."""
  if cfg.timm is not None:
    return TimmModel(cfg, output_dim, tanh_gelu if cfg.timm.gelu_tanh else exact_gelu, **kw)
  if cfg.is_resnet:
    return ModifiedResNet(cfg, output_dim, **kw)
  return VisionTransformer(cfg, output_dim, activation, **kw)


class CLIP(nn.Module):
  """OpenCLIP's CLIP in Flax.

  Attributes:
    config: the architecture.
    dtype: compute dtype (e.g. bfloat16); attention softmax and the final features stay fp32.
    param_dtype: storage dtype of the parameters.
    remat: recompute each residual block in the backward pass (saves activation memory).
  """
  config: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False

  def setup(self):
    cfg = self.config
    act = quick_gelu if cfg.quick_gelu else exact_gelu
    kw = dict(remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype)
    self.visual = vision_tower(cfg.vision, cfg.embed_dim, act, **kw)
    if cfg.text.gelu_approximate == "tanh":
      act = tanh_gelu
    # share_scope puts the text tower's parameters at CLIP's top level, as OpenCLIP keys them
    # (CustomTextCLIP's `text.` prefix is the converter's business: mapping.py).
    self.text = _text_tower(cfg)(cfg.text, cfg.embed_dim, activation=act, **kw)
    nn.share_scope(self, self.text)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.init_logit_scale),
                                  (), jnp.float32)
    if cfg.init_logit_bias is not None:
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(cfg.init_logit_bias),
                                   (), jnp.float32)

  def encode_image(self, images, normalize: bool = False):
    return _maybe_normalize(self.visual(images).astype(jnp.float32), normalize)

  def encode_text(self, tokens, normalize: bool = False):
    return _maybe_normalize(self.text(tokens).astype(jnp.float32), normalize)

  def encode_text_packed(self, tokens, positions, segments, eot, normalize: bool = False):
    """Texts packed several to a row (`hpjax.train.text_packing`): the features of encode_text."""
    return _maybe_normalize(self.text(tokens, positions, segments, eot).astype(jnp.float32),
                            normalize)

  def __call__(self, images, tokens):
    """Returns (normalised image features, normalised text features, exp(logit_scale))."""
    return (self.encode_image(images, normalize=True), self.encode_text(tokens, normalize=True),
            jnp.exp(self.logit_scale))


def _text_tower(cfg: CLIPConfig) -> type[nn.Module]:
  """The text tower class the config names: HF RoBERTa, CoCa's, or OpenCLIP's causal one."""
  if cfg.text.hf_model_name is not None:
    return HFTextEncoder
  if cfg.text.embed_cls:
    return CoCaTextTransformer
  return TextTransformer


def _maybe_normalize(x, normalize: bool):
  if not normalize:
    return x
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def init_params(model: CLIP, rng: jax.Array, batch: int = 1) -> dict:
  """Random parameters for `model` (shape-only tracing, no dummy forward pass at full size)."""
  cfg = model.config
  images = jnp.zeros((batch, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
  tokens = jnp.zeros((batch, cfg.text.context_length), jnp.int32)
  return jax.jit(model.init)(rng, images, tokens)["params"]


def param_shapes(model: CLIP) -> dict:
  """The parameter tree as ShapeDtypeStructs, without allocating anything."""
  cfg = model.config
  images = jax.ShapeDtypeStruct((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, cfg.text.context_length), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]


def num_params(params) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
