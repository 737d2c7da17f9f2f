"""The train state and the jitted train step.

A batch is a dict of global arrays sharded on the batch axis:
  image (B, H, W, 3) float, caption (B, L) int32, hard_positives (B, K_p, L) int32 +
  hard_positive_mask (B, K_p) bool, hard_negatives (B, K_n, L) int32 + hard_negative_mask, and
  optionally negative_images (B, K_i, H, W, 3) + negative_image_mask (B, K_i) bool.
The trainer replaces the three token arrays with `text`, the same texts packed several to a row
(`text_packing.pack_batch`), for text towers that allow it (`causal_eot_pooled`; the others,
e.g. SigLIP's non-causal one, get every text at its full context length); the step is compiled
once per packed row count. Either way all texts
of an example are encoded in one call, laid out example by example, so the reshape keeps each
device's rows local; masked slots are encoded too (fixed shapes) and then ignored by the loss.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from hpjax.train import accumulation
from hpjax.train import ema as ema_lib
from hpjax.train import lora as lora_lib
from hpjax.train import losses

TEXT_KEYS = ("caption", "hard_positives", "hard_negatives")


@flax.struct.dataclass
class TrainState:
  """`adapters`: LoRA training's trained tree (then `params` stay frozen); `ema`: the moving
  average of the trained tree (params or adapters). Both None when not used."""
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  adapters: dict | None = None
  ema: dict | None = None


def trained(state: TrainState):
  """The tree the optimizer updates: the LoRA adapters, else the params."""
  return state.params if state.adapters is None else state.adapters


def init_state(params, tx: optax.GradientTransformation, adapters=None,
               ema: bool = False) -> TrainState:
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None,
                     adapters=adapters)
  return state.replace(opt_state=tx.init(trained(state)),
                       ema=jax.tree.map(jnp.copy, trained(state)) if ema else None)


def model_params(state: TrainState, lora_alpha: float = 1.0, use_ema: bool = False):
  """The model's weights: the params with the adapters (or their EMA) merged, or the params'
  EMA when `use_ema`."""
  tree = state.ema if use_ema and state.ema is not None else trained(state)
  return tree if state.adapters is None else lora_lib.merge(state.params, tree, lora_alpha)


def stacked_texts(batch, xp=jnp):
  """(B, 1 + K_p + K_n, L): each example's caption, hard positives and hard negatives."""
  return xp.concatenate([batch["caption"][:, None], batch["hard_positives"],
                         batch["hard_negatives"]], axis=1)


def encode_batch(model, params, batch) -> dict:
  """Normalised features: image (B, D), caption (B, D), hard_positives (B, K_p, D),
  hard_negatives (B, K_n, D), and negative_images (B, K_i, D) when the batch has them (each
  example's images encoded together, so the reshape keeps them on the example's device)."""
  images = batch["image"]
  if "negative_images" in batch:
    images = jnp.concatenate([images[:, None], batch["negative_images"]], axis=1)
    images = images.reshape(-1, *images.shape[2:])
  image = model.apply({"params": params}, images, normalize=True, method="encode_image")
  b, k_p = batch["hard_positive_mask"].shape
  k = 1 + k_p + batch["hard_negative_mask"].shape[1]
  if "text" in batch:
    texts = model.apply({"params": params}, **batch["text"], normalize=True,
                        method="encode_text_packed")
  else:
    texts = model.apply({"params": params}, stacked_texts(batch).reshape(b * k, -1),
                        normalize=True, method="encode_text")
  texts = texts.reshape(b, k, -1)
  image = image.reshape(b, -1, image.shape[-1])
  features = {"image": image[:, 0], "caption": texts[:, 0],
              "hard_positives": texts[:, 1:1 + k_p], "hard_negatives": texts[:, 1 + k_p:]}
  if "negative_images" in batch:
    features["negative_images"] = image[:, 1:]
  return features


def loss_of_features(params, features, batch, positives: str, local_weight: float,
                     kind: str = "contrastive", hard_negative_weight: float = 1.0):
  """The `kind` loss (losses.KINDS) of encoded features (`encode_batch`) with the batch's masks;
  positives and local_weight are the contrastive loss's options, hard_negative_weight the
  sigmoid loss's."""
  args = (features["image"], features["caption"], features["hard_positives"],
          batch["hard_positive_mask"], features["hard_negatives"], batch["hard_negative_mask"],
          params["logit_scale"])
  negatives = {"negative_images": features.get("negative_images"),
               "negative_image_mask": batch.get("negative_image_mask")}
  if kind == "sigmoid":
    return losses.sigmoid_loss(*args, params["logit_bias"],
                               hard_negative_weight=hard_negative_weight, **negatives)
  return losses.contrastive_loss(*args, positives=positives, local_weight=local_weight,
                                 **negatives)


def loss_fn(params, model, batch, *options):
  """`loss_of_features` of the batch encoded by `model` (options as there)."""
  return loss_of_features(params, encode_batch(model, params, batch), batch, *options)


def value_and_grad(tree, model, batch, options: tuple, micro_batches: int = 1,
                   data_shards: int = 1, as_model: Callable | None = None):
  """((loss, metrics), gradient w.r.t. `tree`) of `loss_fn` with (params, model) =
  `as_model(tree, batch)`: by default `tree` itself in `model` (LoRA: the adapters merged into
  the frozen params, or run unmerged with dropout, `lora.Unmerged`); with micro_batches > 1 by
  accumulation over that many micro-batches (`accumulation`, the same gradient with every
  negative kept; `as_model` then sees each micro-batch)."""
  as_model = as_model or (lambda t, b: (t, model))
  if micro_batches == 1:
    return jax.value_and_grad(lambda t: loss_fn(*as_model(t, batch), batch, *options),
                              has_aux=True)(tree)

  def encode(t, b):
    params, encoder = as_model(t, b)
    return encode_batch(encoder, params, b)

  return accumulation.value_and_grad(
      encode, lambda t, f, b: loss_of_features(as_model(t, b)[0], f, b, *options), tree, batch,
      micro_batches=micro_batches, data_shards=data_shards)


# With LoRA dropout, each micro-batch's index rides in the batch (one per data shard and
# micro-batch, so `accumulation.split` hands micro-batch j the index j) and picks its masks: the
# cached and the recomputed features of a micro-batch see the same ones.
MICRO_BATCH = "lora_dropout_micro_batch"


def _lora_model(state: TrainState, model, lora_alpha: float, lora_dropout: float, seed: int):
  """as_model for `value_and_grad` of LoRA training: the adapters merged (dropout 0), else run
  unmerged with this step's masks."""
  if not lora_dropout:
    return lambda t, b: (lora_lib.merge(state.params, t, lora_alpha), model)
  key = lora_lib.dropout_key(seed, state.step)
  return lambda t, b: (state.params, lora_lib.Unmerged(
      model, t, lora_alpha, lora_dropout, jax.random.fold_in(key, b[MICRO_BATCH][0])))


def train_step(state: TrainState, batch, *, model, tx, schedule, positives: str,
               local_weight: float, kind: str = "contrastive", hard_negative_weight: float = 1.0,
               lora_alpha: float = 1.0, lora_dropout: float = 0.0, seed: int = 0,
               ema_decay: float = 0.0, ema_warmup: int = 0, micro_batches: int = 1,
               data_shards: int = 1):
  """One AdamW step; `metrics['finite']` says whether loss, gradient and update were finite.
  Only `trained(state)` is differentiated and updated (LoRA: the adapters, merged into the
  frozen params inside the loss, or with lora_dropout > 0 run unmerged on inputs dropped with
  masks from `seed` and the step); the EMA, when kept, follows it. micro_batches > 1 accumulates
  the gradient (`value_and_grad`) over the batch's D = data_shards shards; packed texts must then
  be packed in data_shards * micro_batches groups.

  The step does not select between the old and new state itself (a select over params and
  both Adam moments cost 14% of a ViT-B-32 CPU step and ~1 GB); the trainer checks the flag
  before every save and stops, so a poisoned state never reaches a checkpoint."""
  tree = trained(state)
  as_model = None
  if state.adapters is not None:
    as_model = _lora_model(state, model, lora_alpha, lora_dropout, seed)
    if lora_dropout:
      batch = {**batch, MICRO_BATCH: jnp.tile(jnp.arange(micro_batches), data_shards)}
  (loss, metrics), grads = value_and_grad(
      tree, model, batch, (positives, local_weight, kind, hard_negative_weight),
      micro_batches, data_shards, as_model)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, tree)
  tree = optax.apply_updates(tree, updates)
  # OpenCLIP clamps the stored temperature after each step; the contrastive loss clamps it as
  # well. The sigmoid loss leaves it free, as big_vision (pretrained SigLIP's t is above 100).
  if kind == "contrastive" and state.adapters is None:
    tree = {**tree, "logit_scale": jnp.clip(tree["logit_scale"], 0.0, losses.MAX_LOGIT_SCALE)}
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
  ema = None if state.ema is None else ema_lib.update(state.ema, tree, state.step + 1,
                                                      ema_decay, ema_warmup)
  new = state.replace(step=state.step + 1, opt_state=opt_state, ema=ema,
                      **{"params" if state.adapters is None else "adapters": tree})
  metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
             "finite": finite}
  return new, metrics


def jit_train_step(model, tx, schedule, state_shardings, metrics_sharding, *,
                   positives: str = "multi", local_weight: float = 0.0,
                   kind: str = "contrastive", hard_negative_weight: float = 1.0,
                   **step_options):
  """The step jitted with the state kept in `state_shardings` (and donated); `step_options`:
  train_step's lora_alpha, lora_dropout, seed, ema_decay, ema_warmup, micro_batches and
  data_shards."""
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                           positives=positives, local_weight=local_weight, kind=kind,
                           hard_negative_weight=hard_negative_weight, **step_options)
  return jax.jit(step, out_shardings=(state_shardings, metrics_sharding), donate_argnums=(0,))
