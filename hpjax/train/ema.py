"""An exponential moving average of the trained weights, updated inside the train step.

At step t (counting from 1) the average moves by 1 - d_t towards the new weights, with
d_t = decay, or min(decay, (1 + t) / (warmup + t)) with a warm-up (TensorFlow's
ExponentialMovingAverage with num_updates; warmup=10 is its rule), so early averages do not
stay stuck at the starting weights. The average lives in the train state: it is checkpointed,
restored and kept as best with the run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def decay_at(step, decay: float, warmup: int):
  """d_t at step `step` (the step just taken, 1-based)."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (warmup + t))


def update(average, new, step, decay: float, warmup: int):
  """average * d_t + new * (1 - d_t), leaf by leaf (in the leaves' dtype)."""
  d = decay_at(step, decay, warmup)
  return jax.tree.map(lambda a, n: (a * d + n * (1.0 - d)).astype(a.dtype), average, new)
