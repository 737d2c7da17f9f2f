"""The contrastive loss with hard negatives and hard positives (paper.md, "The loss hpjax uses").

Every example brings an image, its caption, up to K_p hard positives and up to K_n hard negatives
(with masks). The text columns, gathered from every device, are ordered
[all captions (B); all hard positives (B*K_p); all hard negatives (B*K_n)], so caption labels stay
arange(B). The loss is written on global arrays: under jit with batch-sharded inputs the compiler
inserts the all-gathers, and the value does not depend on the number of devices.

image->text: image i scores every valid column; its positives are column i (its caption) and its
own valid hard positives; masked columns get -inf. Two ways to treat several positives
(`positives=`):
  'multi': one row per image, -log(sum_{p in P_i} e^{l_ip} / sum_j e^{l_ij}) (multi-positive CE);
  'per_positive': one row per (image, positive), whose denominator is that positive plus every
    column that is not a positive of the image (the other positives are masked out), so a hard
    positive is never pushed away from its image by its own sibling caption.
Both reduce to softplus(lse_neg - s) with lse_neg the log-sum-exp over the image's non-positive
columns and s the (log-sum-exp of the) positive logit(s).
text->image: caption rows and valid hard-positive rows against all images (hard negatives have no
image of their own and are not rows, as in NegCLIP). Negative images (optional, NegCLIP's
`neg_image`): each example may bring K_i extra images (with a mask) that are columns of this
direction only, after the B images: no text is theirs, so they are negatives of every row, their
own record's caption included.
local: optionally, each image against only its own texts ((1+K)-way), same positive rule,
averaged over the images that carry at least one hard negative.

`sigmoid_loss` is SigLIP's loss over the same columns: every (image, valid column) pair is a
binary term, +1 for the image's positives, -1 for every other text; a valid negative image is one
more row of -1 terms against every text (those of its own record weighted as its own hard
negatives are).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MAX_LOGIT_SCALE = math.log(100.0)
POSITIVE_MODES = ("multi", "per_positive")
KINDS = ("contrastive", "sigmoid")


def _masked_logsumexp(logits, mask):
  """log-sum-exp over the entries where `mask` holds (masked entries count as -inf).

  A row with no entry gives -inf with a zero (not NaN) gradient.
  """
  any_valid = jnp.any(mask, axis=-1)
  safe = jnp.where(mask & any_valid[..., None], logits, -jnp.inf)
  safe = jnp.where(any_valid[..., None], safe, 0.0)
  return jnp.where(any_valid, jax.nn.logsumexp(safe, axis=-1), -jnp.inf)


def _softplus_rows(lse_neg, positive_logit):
  """-log(e^s / (e^s + e^{lse_neg})), exact when lse_neg is -inf (no negatives)."""
  return jax.nn.softplus(lse_neg - positive_logit)


def _mean(values, weights):
  weights = weights.astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _positive_terms(positive_logits, positive_mask, lse_neg, positives):
  """Loss terms and their weights for one row per image (multi) or per positive."""
  if positives == "multi":
    lse_pos = _masked_logsumexp(positive_logits, positive_mask)
    return _softplus_rows(lse_neg, lse_pos), jnp.ones_like(lse_pos)
  if positives == "per_positive":
    terms = _softplus_rows(lse_neg[:, None], positive_logits)
    return terms, positive_mask.astype(terms.dtype)
  raise ValueError(f"positives={positives!r}; expected one of {POSITIVE_MODES}")


def _columns(caption, hard_positives, hp_mask, hard_negatives, hn_mask):
  """The gathered text columns [captions; hard positives; hard negatives] (T, D) and, per
  (image, column), (B, T) bool: is one of the image's positives (its caption or own hard
  positive), is one of its own hard negatives; and (1, T) whether the column is a valid text."""
  batch, k_p, dim = hard_positives.shape
  k_n = hard_negatives.shape[1]
  texts = jnp.concatenate([caption, hard_positives.reshape(batch * k_p, dim),
                           hard_negatives.reshape(batch * k_n, dim)], axis=0)
  row = jnp.arange(batch)[:, None]
  owner = lambda k: (jnp.arange(batch * k) // max(k, 1))[None, :]
  before_hn = jnp.zeros((batch, batch * (1 + k_p)), bool)
  is_positive = jnp.concatenate([
      jnp.arange(batch)[None, :] == row, owner(k_p) == row,
      jnp.zeros((batch, batch * k_n), bool)], axis=1)
  is_own_hn = jnp.concatenate([before_hn, owner(k_n) == row], axis=1)
  column_valid = jnp.concatenate([jnp.ones((batch,), bool), hp_mask.reshape(-1),
                                  hn_mask.reshape(-1)])[None, :]
  return texts, is_positive, is_own_hn, column_valid


def _image_columns(image, negative_images, negative_image_mask):
  """The images the texts are scored against, [images (B); negative images (B*K_i)], and
  (1, B + B*K_i) whether each is valid (a masked negative image slot is not)."""
  if negative_images is None:
    return image, jnp.ones((1, image.shape[0]), bool)
  batch, k_i, dim = negative_images.shape
  columns = jnp.concatenate([image, negative_images.reshape(batch * k_i, dim)], axis=0)
  valid = jnp.concatenate([jnp.ones((batch,), bool),
                           negative_image_mask.astype(bool).reshape(-1)])[None, :]
  return columns, valid


def contrastive_loss(image, caption, hard_positives, hard_positive_mask, hard_negatives,
                     hard_negative_mask, logit_scale, *, positives: str = "multi",
                     local_weight: float = 0.0, negative_images=None,
                     negative_image_mask=None):
  """The loss of one global batch.

  Args:
    image: (B, D) L2-normalised image features.
    caption: (B, D) L2-normalised caption features.
    hard_positives: (B, K_p, D) features (K_p may be 0); hard_positive_mask: (B, K_p) bool.
    hard_negatives: (B, K_n, D) features (K_n may be 0); hard_negative_mask: (B, K_n) bool.
    logit_scale: the log of the temperature's inverse (the model parameter); clamped to ln 100.
    positives: 'multi' or 'per_positive' (see the module docstring).
    local_weight: weight of the per-image (1+K)-way term (0 disables it).
    negative_images: None, or (B, K_i, D) L2-normalised features of each example's negative
      images, with negative_image_mask (B, K_i) bool (text->image columns only).

  Returns:
    (loss, metrics dict of scalars).
  """
  batch, k_p = hard_positive_mask.shape
  dim = image.shape[-1]
  scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
  hp_mask = hard_positive_mask.astype(bool)
  hn_mask = hard_negative_mask.astype(bool)

  # Positive logits of each image: its caption and its own hard positives, (B, 1 + K_p).
  own_caption = scale * jnp.sum(image * caption, axis=-1, keepdims=True)
  own_hp = scale * jnp.einsum("bd,bkd->bk", image, hard_positives)
  own_hn = scale * jnp.einsum("bd,bkd->bk", image, hard_negatives)
  positive_logits = jnp.concatenate([own_caption, own_hp], axis=1)
  positive_mask = jnp.concatenate([jnp.ones((batch, 1), bool), hp_mask], axis=1)

  # image -> text over every gathered column; an image's own positives leave its negative set.
  texts, is_positive, _, column_valid = _columns(caption, hard_positives, hp_mask,
                                                 hard_negatives, hn_mask)
  logits = scale * image @ texts.T
  lse_neg = _masked_logsumexp(logits, column_valid & ~is_positive)
  i2t_terms, i2t_weights = _positive_terms(positive_logits, positive_mask, lse_neg, positives)
  image_to_text = _mean(i2t_terms, i2t_weights)

  # text -> image: caption rows and hard-positive rows, each labelled with its own image.
  rows = jnp.concatenate([caption, hard_positives.reshape(batch * k_p, dim)], axis=0)
  images, image_valid = _image_columns(image, negative_images, negative_image_mask)
  row_logits = scale * rows @ images.T
  row_owner = jnp.concatenate([jnp.arange(batch), jnp.arange(batch * k_p) // max(k_p, 1)])
  row_valid = jnp.concatenate([jnp.ones((batch,), bool), hp_mask.reshape(-1)])
  label_logit = jnp.take_along_axis(row_logits, row_owner[:, None], axis=1)[:, 0]
  t2i_terms = _masked_logsumexp(row_logits, image_valid) - label_logit
  text_to_image = _mean(t2i_terms, row_valid)

  loss = 0.5 * (image_to_text + text_to_image)
  metrics = {"loss/image_to_text": image_to_text, "loss/text_to_image": text_to_image,
             "logit_scale": scale}
  if local_weight:
    local_neg = _masked_logsumexp(own_hn, hn_mask)
    local_terms, local_weights = _positive_terms(positive_logits, positive_mask, local_neg,
                                                 positives)
    has_hn = jnp.any(hn_mask, axis=1).astype(local_weights.dtype)
    local = _mean(local_terms, local_weights * has_hn.reshape((batch,) + (1,) * (local_weights.ndim - 1)))
    loss = loss + local_weight * local
    metrics["loss/local"] = local
  metrics["loss"] = loss
  return loss, metrics


def sigmoid_loss(image, caption, hard_positives, hard_positive_mask, hard_negatives,
                 hard_negative_mask, logit_scale, logit_bias, *, hard_negative_weight: float = 1.0,
                 negative_images=None, negative_image_mask=None):
  """SigLIP's loss of one global batch over its hard texts (arguments as `contrastive_loss`).

  Every (image i, valid column j) of the gathered columns is the binary term
  -log sigmoid(z_ij * (t * <x_i, y_j> + b)) with z_ij = +1 for i's caption and its own hard
  positives and -1 for everything else (other images' texts, i's own hard negatives); i's own
  hard-negative terms are weighted by `hard_negative_weight`. A valid negative image of example i
  (`negative_images` (B, K_i, D), `negative_image_mask`) adds -1 terms against every valid
  column, those of i's caption and hard positives weighted by `hard_negative_weight`. As
  big_vision (and OpenCLIP's SigLipLoss), terms are summed over texts and averaged over the B
  images. t = exp(logit_scale) is not
  clamped (big_vision does not; pretrained SigLIP's t is above CLIP's clamp of 100).

  Returns:
    (loss, metrics dict of scalars).
  """
  batch = image.shape[0]
  texts, is_positive, is_own_hn, column_valid = _columns(
      caption, hard_positives, hard_positive_mask.astype(bool), hard_negatives,
      hard_negative_mask.astype(bool))
  scale = jnp.exp(logit_scale)
  logits = scale * image @ texts.T + logit_bias
  terms = -jax.nn.log_sigmoid(jnp.where(is_positive, logits, -logits))
  weights = jnp.where(is_own_hn, hard_negative_weight, 1.0) * column_valid
  per_image = lambda mask: jnp.sum(jnp.where(mask, terms * weights, 0.0)) / batch
  loss = per_image(column_valid)
  metrics = {"loss/positives": per_image(is_positive),
             "loss/own_hard_negatives": per_image(is_own_hn & column_valid),
             "logit_scale": scale, "logit_bias": logit_bias}
  if negative_images is not None:
    k_i, dim = negative_images.shape[1:]
    rows = negative_images.reshape(batch * k_i, dim)
    own_texts = is_positive[jnp.arange(batch * k_i) // k_i]  # its record's caption, positives
    row_valid = negative_image_mask.astype(bool).reshape(-1, 1)
    weights = jnp.where(own_texts, hard_negative_weight, 1.0) * column_valid * row_valid
    negative_terms = -jax.nn.log_sigmoid(-(scale * rows @ texts.T + logit_bias))
    metrics["loss/negative_images"] = jnp.sum(negative_terms * weights) / batch
    loss = loss + metrics["loss/negative_images"]
  metrics["loss"] = loss
  return loss, metrics
