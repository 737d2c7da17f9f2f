"""The train step's `finite` flag on stand-in towers: a NaN loss, a NaN gradient with a finite
loss, and a non-finite update with a finite loss and gradient are each reported (the trainer
stops on the flag; tests/test_trainer.py shows that end to end)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import nan_backward
from hpjax.train import step as step_lib


class _Towers(nn.Module):
  """The two methods the step calls, as linear maps of the mean pixel and of mean token
  embeddings; `nan_gradient` keeps the forward pass and makes the backward pass NaN."""
  nan_gradient: bool = False

  def setup(self):
    self.image_proj = self.param("image_proj", nn.initializers.normal(1.0), (3, 8))
    self.token_embedding = self.param("token_embedding", nn.initializers.normal(1.0), (50, 8))
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(1.0), ())

  def _features(self, x, normalize):
    x = nan_backward(x) if self.nan_gradient else x
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True) if normalize else x

  def encode_image(self, images, normalize=False):
    return self._features(images.mean((1, 2)) @ self.image_proj, normalize)

  def encode_text(self, tokens, normalize=False):
    return self._features(self.token_embedding[tokens].mean(1), normalize)


def _batch(nan_pixel=False):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
  if nan_pixel:
    image[1, 0, 0, 0] = np.nan
  return {"image": image, "caption": rng.integers(0, 50, (4, 3), dtype=np.int32),
          "hard_positives": rng.integers(0, 50, (4, 1, 3), dtype=np.int32),
          "hard_positive_mask": np.array([[True], [False], [True], [True]]),
          "hard_negatives": rng.integers(0, 50, (4, 2, 3), dtype=np.int32),
          "hard_negative_mask": np.ones((4, 2), bool)}


def _metrics(batch, lr=1e-3, nan_gradient=False):
  model = _Towers(nan_gradient)
  params = model.init(jax.random.key(0), batch["image"], method="encode_image")["params"]
  tx = optax.adamw(lr)
  step = functools.partial(step_lib.train_step, model=model, tx=tx,
                           schedule=optax.constant_schedule(lr), positives="multi",
                           local_weight=0.0)
  return jax.device_get(jax.jit(step)(step_lib.init_state(params, tx), batch)[1])


def test_a_finite_step_is_flagged_finite():
  metrics = _metrics(_batch())
  assert metrics["finite"] and np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])


@pytest.mark.parametrize("case,loss_finite,grad_finite", [
    ("nan_loss", False, False), ("nan_gradient", True, False), ("inf_update", True, True)])
def test_each_non_finite_path_clears_the_flag(case, loss_finite, grad_finite):
  metrics = _metrics(_batch(nan_pixel=case == "nan_loss"), nan_gradient=case == "nan_gradient",
                     lr=float("inf") if case == "inf_update" else 1e-3)
  # The case is what it says: only the named quantity (and what follows from it) is not finite.
  assert (bool(np.isfinite(metrics["loss"])), bool(np.isfinite(metrics["grad_norm"]))) == (
      loss_finite, grad_finite)
  assert not metrics["finite"]
