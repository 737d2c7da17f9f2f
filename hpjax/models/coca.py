"""CoCa's contrastive text tower: OpenCLIP's TextTransformer with a class token appended.

Only CoCa's contrastive path is built (`coca_ViT-B-32`): the image tower is the ViT of
models/transformer.py ending in the attentional pooler (`attn_pool`: 256 queries over all tokens,
`ln_post` and `proj` on query 0). The captioning decoder is not: its `text_decoder.*` keys are
skipped at load, and `load_params(..., return_ignored=True)` hands them back for export.

The class embedding `cls_emb` follows the tokens, the positional embedding has
context_length + 1 rows, and the feature is `ln_final` of the last position. Its attention
mask is causal plus OpenCLIP's legacy pad mask: key j > 0 is hidden when token j - 1 is padding
(the mask is shifted by one, so the class token sees the first pad slot and, unless the text
fills the context, not itself).

Where OpenCLIP versions differ (both read from their sources; `coca_legacy` picks 2.19-2.22):
* 2.19-2.22 (the study's): `encode_text` drops the last of the 77 ids it is given, and only the
  class token's query row carries the pad mask.
* >= 2.24 (the default): no id is dropped (its tokenizer gives context_length = 76 ids), and
  every query row carries the pad mask.
The vision path is the same in both. With pads only after the text (as tokenizers lay them out)
the two masks give the same class feature: a query at a text position never reaches a pad key
under the causal mask. They differ on ids with padding inside the text, and on texts of 76 or
more tokens, whose EOT id is the one 2.19-2.22 dropped.

The class token sits at position context_length whatever the text length, so shorter inputs
(length buckets) are padded back to the full context here: the feature does not depend on how
many trailing pads the caller sent. Texts are never packed (the tower is not EOT-pooled).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from hpjax.models.transformer import TextTransformer, Transformer, layer_norm


def cls_attention_mask(ids, pad_id: int, legacy: bool):
  """Boolean (N, 1, L + 1, L + 1) mask for L token ids followed by the class token."""
  batch, length = ids.shape
  positions = jnp.arange(length + 1)
  causal = positions[None, :] <= positions[:, None]
  key_ok = jnp.concatenate([jnp.ones((batch, 1), bool), ids != pad_id], axis=1)[:, None, :]
  if legacy:
    is_cls_row = (positions == length)[None, :, None]
    mask = causal[None] & (key_ok | ~is_cls_row)
  else:
    mask = causal[None] & key_ok
  return mask[:, None]


class CoCaTextTransformer(TextTransformer):
  """TextTransformer's fields and parameters, plus `cls_emb`; a class-token forward pass."""

  @nn.compact
  def __call__(self, tokens):
    """tokens: (N, L) int32, L <= context_length (+ 1 in legacy mode) -> (N, output_dim)."""
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    accepted = cfg.input_length
    if tokens.shape[1] > accepted:
      raise ValueError(f"token length {tokens.shape[1]} exceeds {accepted} (CoCa, context_length "
                       f"{cfg.context_length}, coca_legacy={cfg.coca_legacy})")
    ids = jnp.pad(tokens, ((0, 0), (0, accepted - tokens.shape[1])),
                  constant_values=cfg.pad_id)[:, :cfg.context_length]
    x = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embedding", **kw)(ids)
    cls = self.param("cls_emb", nn.initializers.normal(0.01), (cfg.width,), self.param_dtype)
    x = jnp.concatenate([x, jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.width))], 1)
    pos = self.param("positional_embedding", nn.initializers.normal(0.01),
                     (cfg.context_length + 1, cfg.width), self.param_dtype)
    x = x + pos.astype(x.dtype)
    mask = cls_attention_mask(ids, cfg.pad_id, cfg.coca_legacy)
    x = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, self.activation,
                    ls_init_value=cfg.ls_init_value, remat=self.remat, name="transformer",
                    **kw)(x, mask)
    pooled = layer_norm("ln_final", **kw)(x[:, -1])
    proj = self.param("text_projection", nn.initializers.normal(cfg.width ** -0.5),
                      (cfg.width, self.output_dim), self.param_dtype)
    return pooled @ proj.astype(pooled.dtype)
