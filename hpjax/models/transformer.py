"""OpenCLIP's transformer building blocks in Flax, as OpenCLIP's transformer.py holds them.

Submodule names mirror OpenCLIP's PyTorch keys, so the checkpoint converter is a table:
`visual.transformer.resblocks.3.attn.in_proj_weight` lives at
`params['visual']['transformer']['resblocks_3']['attn']['in_proj']['kernel']` (transposed).
Attention keeps OpenCLIP's fused q/k/v projection: one matmul. timm's ViT block (SigLIP's image
tower, models/siglip.py) is the same pre-LN block under other names: `BlockNames` carries them.

Parity traps: LayerNorm takes torch's eps (1e-5; timm's 1e-6, or the text config's
`norm_kwargs.eps`) and a two-pass variance, as torch computes it; the activation is the caller's
(QuickGELU for OpenAI's weights, exact GELU, tanh GELU for SigLIP 2's text tower). The ViT pools
the class token (`tok`) or the mean patch token (`avg`), `ln_post` before pooling unless
`final_ln_after_pool`; with `attentional_pool` (CoCa) learned queries replace the tokens and
query 0 is the feature.

Every projection inside a block runs on the tokens flattened to (N * L, D): the same numbers as
on (N, L, D), but autodiff then emits plain 2-D dots. From the 3-D form, XLA:CPU contracted two
axes in each weight gradient and fused (recomputing) the residual stream's whole gradient chain
into the transposed copies that needed, slowing a train step (BENCHMARKS.md).

The text tower pools at the EOT (the largest id) under the causal mask, so text of any length
L <= context_length is accepted: encoding at a shorter length with the first L positional
embeddings gives the same features as padding to 77 (see `tokenizer.bucket_length`). For the same
reason several texts can share a row (`hpjax.train.text_packing`): attention masked to each
text's own tokens, positions restarting per text, pooling at each text's EOT. SigLIP's text tower
(`no_causal_mask`, pooled at the last position) sees every id, pads included: it takes exactly
context_length ids.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpjax.models.config import TextConfig, VisionConfig

Dtype = Any


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x):
  return jax.nn.gelu(x, approximate=False)


def tanh_gelu(x):
  """torch's GELU(approximate='tanh'), timm's 'gelu_tanh' (SigLIP 2)."""
  return jax.nn.gelu(x, approximate=True)


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype, eps: float = 1e-5) -> nn.LayerNorm:
  """torch's LayerNorm: its default eps (unless the caller passes one) and two-pass variance."""
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype,
                      param_dtype=param_dtype, name=name)


@dataclasses.dataclass(frozen=True)
class BlockNames:
  """Submodule names of a pre-LN block as its PyTorch source keys them, and its LayerNorm eps."""
  blocks: str = "resblocks"
  ln_1: str = "ln_1"
  ln_2: str = "ln_2"
  in_proj: str = "in_proj"
  out_proj: str = "out_proj"
  fc: str = "c_fc"
  proj: str = "c_proj"
  eps: float = 1e-5


OPENCLIP_NAMES = BlockNames()
TIMM_NAMES = BlockNames("blocks", "norm1", "norm2", "qkv", "proj", "fc1", "fc2", 1e-6)


def attention(q, k, v, mask=None, is_causal: bool = False):
  """jax.nn.dot_product_attention on (N, L, heads, head_dim), in the inputs' dtype."""
  dtype = q.dtype
  if dtype == jnp.float16:
    # fp16 products accumulated in fp32 (as cuBLAS does), written as an fp32 attention:
    # XLA:CPU has no fp16 x fp16 -> fp32 dot. The paper's fp16 rows (hpjax.zoo) need it.
    q, k, v = (t.astype(jnp.float32) for t in (q, k, v))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal).astype(dtype)


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention with a fused in-projection (in_proj_weight/bias, out_proj)."""
  width: int
  heads: int
  causal: bool = False
  names: BlockNames = OPENCLIP_NAMES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """mask: optional (N, 1, L, L) bool, True where a query may attend a key (and-ed with causal)."""
    batch, length, _ = x.shape
    head_dim = self.width // self.heads
    init = nn.initializers.normal(self.width ** -0.5)
    qkv = nn.Dense(3 * self.width, kernel_init=init, dtype=self.dtype,
                   param_dtype=self.param_dtype, name=self.names.in_proj)(x.reshape(-1, self.width))
    q, k, v = jnp.split(qkv.reshape(batch, length, 3, self.heads, head_dim), 3, axis=2)
    out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], mask=mask, is_causal=self.causal)
    out = nn.Dense(self.width, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype,
                   name=self.names.out_proj)(out.reshape(-1, self.width))
    return out.reshape(batch, length, self.width)


class MLP(nn.Module):
  width: int
  hidden: int
  activation: Callable
  names: BlockNames = OPENCLIP_NAMES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape = x.shape
    x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                 kernel_init=nn.initializers.normal((2 * self.width) ** -0.5),
                 name=self.names.fc)(x.reshape(-1, shape[-1]))
    x = self.activation(x)
    return nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.normal(self.hidden ** -0.5),
                    name=self.names.proj)(x).reshape(shape)


class LayerScale(nn.Module):
  init_value: float
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],),
                       self.param_dtype)
    return x * gamma.astype(x.dtype)


class ResidualAttentionBlock(nn.Module):
  width: int
  heads: int
  mlp_ratio: float
  activation: Callable
  causal: bool = False
  ls_init_value: float | None = None
  names: BlockNames = OPENCLIP_NAMES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    names = self.names
    scale = (lambda name: LayerScale(self.ls_init_value, self.param_dtype, name=name)
             if self.ls_init_value is not None else (lambda y: y))
    y = layer_norm(names.ln_1, eps=names.eps, **kw)(x)
    y = MultiheadAttention(self.width, self.heads, self.causal, names, name="attn", **kw)(y, mask)
    x = x + scale("ls_1")(y)
    y = layer_norm(names.ln_2, eps=names.eps, **kw)(x)
    y = MLP(self.width, int(self.width * self.mlp_ratio), self.activation, names, name="mlp",
            **kw)(y)
    return x + scale("ls_2")(y)


class Transformer(nn.Module):
  width: int
  layers: int
  heads: int
  mlp_ratio: float
  activation: Callable
  causal: bool = False
  ls_init_value: float | None = None
  remat: bool = False
  names: BlockNames = OPENCLIP_NAMES
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    block = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
    for i in range(self.layers):
      x = block(self.width, self.heads, self.mlp_ratio, self.activation, self.causal,
                self.ls_init_value, self.names, self.dtype, self.param_dtype,
                name=f"{self.names.blocks}_{i}")(x, mask)
    return x


class VisionTransformer(nn.Module):
  cfg: VisionConfig
  output_dim: int
  activation: Callable
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    """images: (N, H, W, 3) normalised floats -> (N, output_dim) unnormalised features."""
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    scale = cfg.width ** -0.5
    x = nn.Conv(cfg.width, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2, padding="VALID",
                use_bias=False, name="conv1", **kw)(images.astype(self.dtype))
    x = x.reshape(x.shape[0], -1, cfg.width)
    cls = self.param("class_embedding", nn.initializers.normal(scale), (cfg.width,),
                     self.param_dtype)
    pos = self.param("positional_embedding", nn.initializers.normal(scale),
                     (cfg.grid_size ** 2 + 1, cfg.width), self.param_dtype)
    if x.shape[1] + 1 != pos.shape[0]:
      raise ValueError(f"image of {images.shape[1:3]} gives {x.shape[1]} patches; the model "
                       f"expects {cfg.image_size}x{cfg.image_size} ({pos.shape[0] - 1} patches)")
    cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.width))
    x = jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)
    if not cfg.no_ln_pre:
      x = layer_norm("ln_pre", **kw)(x)
    x = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, self.activation,
                    ls_init_value=cfg.ls_init_value, remat=self.remat, name="transformer", **kw)(x)
    ln_post = layer_norm("ln_post", **kw)
    if cfg.attentional_pool:
      # OpenCLIP's CoCa: the queries replace the tokens; query 0 is the contrastive one.
      x = AttentionalPooler(self.output_dim, cfg.attn_pooler_heads, cfg.attn_pooler_queries,
                            name="attn_pool", **kw)(x)
      pooled = ln_post(x)[:, 0]
    elif cfg.final_ln_after_pool:
      pooled = ln_post(_pool_image(x, cfg.pool_type))
    else:
      pooled = _pool_image(ln_post(x), cfg.pool_type)
    proj = self.param("proj", nn.initializers.normal(scale), (pooled.shape[-1], self.output_dim),
                      self.param_dtype)
    return pooled @ proj.astype(pooled.dtype)


class AttentionalPooler(nn.Module):
  """Learned queries (ln_q) attending over layer-normed tokens (ln_k) of another width.

  torch.nn.MultiheadAttention with kdim != embed_dim keeps separate q/k/v weights
  (`q_proj_weight`, `k_proj_weight`, `v_proj_weight`) and one fused `in_proj_bias`.
  """
  width: int
  heads: int
  queries: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    query = self.param("query", nn.initializers.normal(1.0), (self.queries, self.width),
                       self.param_dtype)
    attn = _SeparateProjectionAttention(self.width, self.heads, name="attn", **kw)
    return attn(layer_norm("ln_q", **kw)(query), layer_norm("ln_k", **kw)(x))


class _SeparateProjectionAttention(nn.Module):
  """The attention of AttentionalPooler: shared queries, per-example keys and values."""
  width: int
  heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query, x):
    batch, length, _ = x.shape
    head_dim = self.width // self.heads
    dense = functools.partial(nn.Dense, self.width, use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.xavier_uniform())
    bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * self.width,),
                      self.param_dtype).astype(self.dtype)
    q = dense(name="q_proj")(query) + bias[:self.width]
    k = dense(name="k_proj")(x.reshape(batch * length, -1)) + bias[self.width:2 * self.width]
    v = dense(name="v_proj")(x.reshape(batch * length, -1)) + bias[2 * self.width:]
    q = jnp.broadcast_to(q.reshape(1, -1, self.heads, head_dim),
                         (batch, query.shape[0], self.heads, head_dim))
    out = jax.nn.dot_product_attention(q, k.reshape(batch, length, self.heads, head_dim),
                                       v.reshape(batch, length, self.heads, head_dim))
    out = nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="out_proj")(out.reshape(-1, self.width))
    return out.reshape(batch, query.shape[0], self.width)


def _pool_image(x, pool_type: str):
  if pool_type == "tok":
    return x[:, 0]
  if pool_type == "avg":
    return x[:, 1:].mean(axis=1)
  raise ValueError(f"vision pool_type {pool_type!r} is not supported (use 'tok' or 'avg')")


class TextTransformer(nn.Module):
  """The text tower; its parameters sit at the top level of CLIP, as in OpenCLIP's CLIP."""
  cfg: TextConfig
  output_dim: int
  activation: Callable
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, positions=None, segments=None, eot=None):
    """tokens: (N, L) int32 with L <= context_length -> (N, output_dim) unnormalised features.

    Packed rows (`text_packing`) hold several texts each: `positions` (N, L) restart at 0 per
    text, `segments` (N, L) number the texts of a row (attention stays within one), and `eot`
    (G, T) gives each text's EOT as a flat index into its group's N // G rows; the result is then
    (G * T, output_dim), text by text."""
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    length = tokens.shape[1]
    if length > cfg.context_length:
      raise ValueError(f"token length {length} exceeds context_length {cfg.context_length}")
    if not cfg.causal_eot_pooled and (length != cfg.context_length or segments is not None):
      raise ValueError(f"this text tower (no_causal_mask={cfg.no_causal_mask}, pool_type "
                       f"{cfg.pool_type!r}) sees every position: it takes {cfg.context_length} "
                       f"ids per text, unpacked; got rows of {length}"
                       f"{' (packed)' if segments is not None else ''}")
    x = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embedding", **kw)(tokens)
    pos = self.param("positional_embedding", nn.initializers.normal(0.01),
                     (cfg.context_length, cfg.width), self.param_dtype)
    x = x + (pos[:length] if positions is None else pos[positions]).astype(x.dtype)
    mask = None if segments is None else (segments[:, None, :, None] == segments[:, None, None, :])
    names = dataclasses.replace(OPENCLIP_NAMES, eps=cfg.norm_eps)
    x = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, self.activation,
                    causal=not cfg.no_causal_mask, ls_init_value=cfg.ls_init_value,
                    remat=self.remat, names=names, name="transformer", **kw)(x, mask)
    ln_final = layer_norm("ln_final", eps=cfg.norm_eps, **kw)
    if eot is None and cfg.pool_type == "last":
      eot = jnp.full((tokens.shape[0], 1), length - 1)
    elif eot is None:
      # EOT has the largest id, so argmax finds it (the first one on ties, as torch does).
      eot = jnp.argmax(tokens, axis=-1)[:, None]
    rows = x.reshape(eot.shape[0], -1, cfg.width)
    pick = lambda y: jnp.take_along_axis(y, eot[..., None], axis=1).reshape(-1, cfg.width)
    if cfg.final_ln_after_pool:
      pooled = ln_final(pick(rows))
    else:
      pooled = pick(ln_final(rows))
    init = nn.initializers.normal(cfg.width ** -0.5)
    if cfg.proj_bias:
      return nn.Dense(self.output_dim, kernel_init=init, name="text_projection", **kw)(pooled)
    proj = self.param("text_projection", init, (cfg.width, self.output_dim), self.param_dtype)
    return pooled @ proj.astype(pooled.dtype)
