"""SigLIP's image tower: timm's VisionTransformer as OpenCLIP's SigLIP configs build it.

OpenCLIP wraps the timm model as `visual.trunk` (its `TimmModel`; with `timm_proj: none` the head
is empty), so `visual.trunk.blocks.3.attn.qkv.weight` is
`params['visual']['trunk']['blocks_3']['attn']['qkv']['kernel']` (transposed) and the converter
stays a table (checkpoints/mapping.py). The trunk: a biased patch conv, a learned positional
embedding with no class token and no norm_pre, pre-LN blocks (OpenCLIP's block under timm's
names, LayerNorm eps 1e-6), a final `norm`, then the MAP head `attn_pool`: one learned latent
query attending over the tokens (`q`, fused `kv`, `proj`), then `x + mlp(norm(x))`. The probe's
output is the image feature (`timm_pool` must be `map`, `timm_proj` `none`).

The architecture comes from `timm_model_name` through the known-name table
`config.TIMM_SIGLIP_MODELS`, as timm's registry builds it, and so does the GELU (exact, or tanh
where timm registers 'gelu_tanh': `TimmViTConfig.gelu_tanh`); the config's `quick_gelu` and
`act_kwargs` do not reach this tower (as in OpenCLIP). The text tower is OpenCLIP's
TextTransformer (models/transformer.py) with `no_causal_mask`, pooled at the last position,
a biased `text_projection`, LayerNorm eps 1e-6 (`norm_kwargs`) and, in SigLIP 2, tanh GELU
(`act_kwargs`); it takes exactly context_length ids, pads included (never bucketed or packed).
`init_logit_bias` gives the sigmoid loss's `logit_bias`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from hpjax.models.config import TimmViTConfig
from hpjax.models.transformer import (MLP, TIMM_NAMES, Transformer, VisionTransformer, attention,
                                      layer_norm)

Dtype = Any


class TimmModel(VisionTransformer):
  """OpenCLIP's timm adapter around the SigLIP trunk (no extra pooling or projection): the
  image tower's fields (output_dim equals the trunk's width, models/config.py checks), other
  parameters."""

  @nn.compact
  def __call__(self, images):
    """images: (N, H, W, 3) normalised floats -> (N, width) unnormalised features."""
    return SiglipTrunk(self.cfg.timm, self.activation, self.remat, self.dtype, self.param_dtype,
                       name="trunk")(images)


class SiglipTrunk(nn.Module):
  """timm's VisionTransformer(class_token=False, global_pool='map')."""
  cfg: TimmViTConfig
  activation: Callable
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.patch_embed = PatchEmbed(cfg.width, cfg.patch_size, **kw)
    self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                                (1, (cfg.image_size // cfg.patch_size) ** 2, cfg.width),
                                self.param_dtype)
    # share_scope: timm keys the blocks `blocks.{i}` directly under the trunk.
    self.blocks = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, self.activation,
                              remat=self.remat, names=TIMM_NAMES, **kw)
    nn.share_scope(self, self.blocks)
    self.norm = layer_norm("norm", eps=TIMM_NAMES.eps, **kw)
    self.attn_pool = AttentionPoolLatent(cfg.width, cfg.heads, cfg.mlp_dim, self.activation, **kw)

  def __call__(self, images):
    x = self.patch_embed(images.astype(self.dtype))
    if x.shape[1] != self.pos_embed.shape[1]:
      raise ValueError(f"image of {images.shape[1:3]} gives {x.shape[1]} patches; the model "
                       f"expects {self.cfg.image_size}x{self.cfg.image_size} "
                       f"({self.pos_embed.shape[1]} patches)")
    x = self.blocks(x + self.pos_embed.astype(x.dtype))
    return self.attn_pool(self.norm(x))


class PatchEmbed(nn.Module):
  """timm's PatchEmbed: a biased conv with stride = kernel = patch, tokens row-major (h, w)."""
  width: int
  patch_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    x = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2,
                padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
                name="proj")(images)
    return x.reshape(x.shape[0], -1, self.width)


class AttentionPoolLatent(nn.Module):
  """timm's MAP head: a learned latent query (`q`) over the tokens' fused keys and values (`kv`),
  `proj`, then a pre-LN MLP residual; returns the single query's output."""
  width: int
  heads: int
  mlp_dim: int
  activation: Callable
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, length, _ = x.shape
    head_dim = self.width // self.heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    latent = self.param("latent", nn.initializers.normal(self.width ** -0.5),
                        (1, 1, self.width), self.param_dtype)
    q = nn.Dense(self.width, name="q", **kw)(latent.reshape(1, self.width).astype(self.dtype))
    q = jnp.broadcast_to(q.reshape(1, 1, self.heads, head_dim), (batch, 1, self.heads, head_dim))
    kv = nn.Dense(2 * self.width, name="kv", **kw)(x.reshape(-1, self.width))
    kv = kv.reshape(batch, length, 2, self.heads, head_dim)
    out = attention(q, kv[:, :, 0], kv[:, :, 1]).reshape(batch, self.width)
    out = nn.Dense(self.width, name="proj", **kw)(out)
    y = layer_norm("norm", eps=TIMM_NAMES.eps, **kw)(out)
    return out + MLP(self.width, self.mlp_dim, self.activation, TIMM_NAMES, name="mlp", **kw)(y)
