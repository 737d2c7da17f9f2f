"""AdamW as NegCLIP/OpenCLIP finetune: warm-up + cosine, no decay on gains, biases, logit scale;
with a `param_groups.ParamTable`, locked parameters get no update and no Adam moments, and the
others their layer-decay learning-rate scale."""

from __future__ import annotations

import jax
import optax

from hpjax.train import param_groups

NO_DECAY_NAMES = ("logit_scale", "logit_bias")
TRAIN, FROZEN = "train", "frozen"


def decay_mask(params):
  """True where weight decay applies: matrices and embeddings (ndim >= 2), as OpenCLIP's
  `exclude = p.ndim < 2 or 'bn'/'ln'/'bias'/'logit_scale' in name`; LayerNorm scales, biases and
  the class embedding are vectors, so ndim alone catches them."""

  def decays(path, x):
    names = {getattr(k, "key", str(k)) for k in path}
    return x.ndim >= 2 and not names & set(NO_DECAY_NAMES)

  return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `lr`, then cosine decay to `lr * end_factor` at `total_steps`."""
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=config.lr * config.end_factor)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its constant in `scales` (a tree shaped like the params)."""
  return optax.stateless(lambda updates, params: jax.tree.map(
      lambda u, s: u * s if s != 1.0 else u, updates, scales))


def make_optimizer(config, total_steps: int, table: param_groups.ParamTable | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """config: lr, warmup_steps, end_factor, b1, b2, eps, weight_decay, grad_clip_norm.

  With `table`, the clipping norm and Adam see the trainable parameters only (as PyTorch, where
  a locked parameter has no gradient); AdamW's whole update, weight decay included, is scaled
  by the parameter's `lr_scale` (OpenCLIP's per-group `lr_scale`)."""
  schedule = learning_rate_schedule(config, total_steps)
  tx = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                   weight_decay=config.weight_decay, mask=decay_mask)
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  if table is None:
    return tx, schedule
  labels = jax.tree.map(lambda t: TRAIN if t else FROZEN, table.trainable)
  tx = optax.multi_transform({TRAIN: tx, FROZEN: optax.set_to_zero()}, labels)
  if any(s not in (0.0, 1.0) for s in jax.tree.leaves(table.lr_scale)):
    tx = optax.chain(tx, scale_by_tree(table.lr_scale))
  return tx, schedule
