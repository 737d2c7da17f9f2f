"""OpenCLIP's HF text tower (HFTextEncoder) over a RoBERTa encoder, in Flax.

Submodules mirror the transformers keys under OpenCLIP's `text.transformer.` prefix
(`embeddings.word_embeddings`, `encoder.layer.3.attention.self.query`, ...), and
`proj_0` / `proj_2` are `text.proj.0` / `text.proj.2`, so conversion stays a table. The
architecture (widths, depth, vocabulary) is not in OpenCLIP's JSON: `text_cfg.hf_model_name`
names it, a known HF name or a local folder with the HF `config.json` (models/config.py).

RoBERTa specifics: post-LN blocks, exact GELU whatever the CLIP config's activation (that one
is the image tower's), LayerNorm eps from the HF config (1e-5); position ids count the non-pad
tokens from pad_token_id + 1, pads keep position pad_token_id; attention and mean pooling use
the mask `ids != pad_token_id` (1); the projection is OpenCLIP's 'mlp' (or 'linear'), without
biases. Any ids are accepted: the study fed CLIP BPE ids (pad 0) to this tower, so every
position was attended and pooled, and such text must be encoded at its full 77 ids; RoBERTa ids
(pad 1) may be bucketed. Texts are never packed.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpjax.models.config import HFTextConfig, TextConfig
from hpjax.models.transformer import exact_gelu, layer_norm

Dtype = Any
_INIT = nn.initializers.normal(0.02)  # transformers' initializer_range


def _dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype, use_bias: bool = True):
  return nn.Dense(features, use_bias=use_bias, kernel_init=_INIT, dtype=dtype,
                  param_dtype=param_dtype, name=name)


class _Part(nn.Module):
  """A piece of the encoder: the HF config and the dtypes."""
  cfg: HFTextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def kw(self) -> dict:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)


class _DenseLayerNorm(_Part):
  """`dense` then LayerNorm of (that + residual): the output half of a post-LN sublayer."""

  @nn.compact
  def __call__(self, x, residual):
    kw = self.kw
    y = _dense(self.cfg.hidden_size, "dense", **kw)(x)
    return layer_norm("LayerNorm", eps=self.cfg.layer_norm_eps, **kw)(y + residual)


class _SelfAttention(_Part):
  @nn.compact
  def __call__(self, x, mask):
    kw = self.kw
    batch, length, width = x.shape
    heads = self.cfg.num_attention_heads
    flat = x.reshape(-1, width)
    q, k, v = (_dense(width, n, **kw)(flat).reshape(batch, length, heads, width // heads)
               for n in ("query", "key", "value"))
    return jax.nn.dot_product_attention(q, k, v, mask=mask).reshape(batch, length, width)


class _Attention(_Part):
  @nn.compact
  def __call__(self, x, mask):
    kw = self.kw
    y = _SelfAttention(self.cfg, name="self", **kw)(x, mask)
    return _DenseLayerNorm(self.cfg, name="output", **kw)(y, x)


class _Layer(_Part):
  @nn.compact
  def __call__(self, x, mask):
    kw = self.kw
    x = _Attention(self.cfg, name="attention", **kw)(x, mask)
    hidden = _Intermediate(self.cfg, name="intermediate", **kw)(x)
    return _DenseLayerNorm(self.cfg, name="output", **kw)(hidden, x)


class _Intermediate(_Part):
  @nn.compact
  def __call__(self, x):
    shape = x.shape
    y = _dense(self.cfg.intermediate_size, "dense", self.dtype, self.param_dtype)(
        x.reshape(-1, shape[-1]))
    return exact_gelu(y).reshape(*shape[:-1], -1)


class _Embeddings(_Part):
  @nn.compact
  def __call__(self, ids):
    cfg, kw = self.cfg, self.kw
    not_pad = (ids != cfg.pad_token_id).astype(jnp.int32)
    positions = jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
    embed = lambda n, size: nn.Embed(size, cfg.hidden_size, embedding_init=_INIT, name=n, **kw)
    x = (embed("word_embeddings", cfg.vocab_size)(ids)
         + embed("token_type_embeddings", cfg.type_vocab_size)(jnp.zeros_like(ids))
         + embed("position_embeddings", cfg.max_position_embeddings)(positions))
    return layer_norm("LayerNorm", eps=cfg.layer_norm_eps, **kw)(x)


class _Encoder(_Part):
  remat: bool = False

  @nn.compact
  def __call__(self, x, mask):
    layer = nn.remat(_Layer) if self.remat else _Layer
    for i in range(self.cfg.num_hidden_layers):
      x = layer(self.cfg, self.dtype, self.param_dtype, name=f"layer_{i}")(x, mask)
    return x


class RobertaModel(_Part):
  """transformers' RobertaModel without its pooler: ids -> last hidden states."""
  remat: bool = False

  @nn.compact
  def __call__(self, ids, mask):
    kw = self.kw
    x = _Embeddings(self.cfg, name="embeddings", **kw)(ids)
    return _Encoder(self.cfg, remat=self.remat, name="encoder", **kw)(x, mask[:, None, None, :])


class HFTextEncoder(nn.Module):
  """OpenCLIP's HFTextEncoder (mean pooler; 'mlp' or 'linear' projection, no biases)."""
  cfg: TextConfig
  output_dim: int
  activation: Callable | None = None  # Unused: RoBERTa's GELU is fixed by its config.
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    """tokens: (N, L) int32 ids of any tokenizer -> (N, output_dim) unnormalised features."""
    hf, kw = self.cfg.hf, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if tokens.shape[1] > hf.max_position_embeddings - hf.pad_token_id - 1:
      raise ValueError(f"token length {tokens.shape[1]} exceeds the HF text model's "
                       f"{hf.max_position_embeddings - hf.pad_token_id - 1} positions")
    keep = tokens != hf.pad_token_id
    x = RobertaModel(hf, remat=self.remat, name="transformer", **kw)(tokens, keep)
    weights = keep.astype(x.dtype)[..., None]
    pooled = (x * weights).sum(axis=1) / weights.sum(axis=1)
    if self.cfg.hf_proj_type == "linear":
      return _dense(self.output_dim, "proj", use_bias=False, **kw)(pooled)
    hidden = (hf.hidden_size + self.output_dim) // 2
    pooled = exact_gelu(_dense(hidden, "proj_0", use_bias=False, **kw)(pooled))
    return _dense(self.output_dim, "proj_2", use_bias=False, **kw)(pooled)
