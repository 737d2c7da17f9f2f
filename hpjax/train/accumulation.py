"""Gradient accumulation that keeps every in-batch negative (GradCache; OpenCLIP's --accum-freq).

A contrastive loss couples every example of the batch, so summing the gradients of smaller
batches is a different (weaker) loss. Instead the global batch is split into M micro-batches and:
  1. each micro-batch is encoded without gradient (only its features are kept);
  2. the loss of the whole batch and its gradient with respect to the features (and to the
     loss's own parameters, the temperature and bias) are taken at once;
  3. each micro-batch is encoded again under `jax.vjp` and its cached feature gradients are
     pulled back to the parameters, summed over micro-batches in a `lax.scan`.
The gradient is the full batch's; the towers' activations are held for one micro-batch at a
time, at the cost of a second forward pass.

Micro-batches stay sharded: every leaf whose leading axis holds D*M*n rows (examples, or the
packed texts of D*M groups, `text_packing` with groups = data shards * M) is split so that
micro-batch j takes the j-th n rows of each of the D data shards. Rows stay on their device
and the loss sees the examples in that order (it does not depend on the order).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def split(batch, micro_batches: int, data_shards: int):
  """Every leaf (D*M*n, ...) -> (M, D*n, ...), micro-batch j holding rows j*n..(j+1)*n-1 of each
  of the D data shards."""
  def one(x):
    rest = x.shape[1:]
    parts = x.reshape(data_shards, micro_batches, -1, *rest).swapaxes(0, 1)
    return parts.reshape(micro_batches, -1, *rest)
  return jax.tree.map(one, batch)


def merged(stacked):
  """(M, n, ...) leaves -> (M*n, ...): the micro-batches one after another."""
  return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), stacked)


def value_and_grad(encode: Callable, loss_of_features: Callable, params, batch, *,
                   micro_batches: int, data_shards: int):
  """((loss, aux), gradient w.r.t. params) of loss_of_features(params, encode(params, batch),
  batch), computed micro-batch by micro-batch as the module docstring says.

  `encode(params, batch)` returns a tree of per-example features (leading axis: examples);
  `loss_of_features(params, features, batch)` returns (loss, aux) and may use params itself.
  """
  micro = split(batch, micro_batches, data_shards)
  cached = jax.lax.map(lambda b: encode(jax.lax.stop_gradient(params), b), micro)
  (loss, aux), (param_grads, feature_grads) = jax.value_and_grad(
      loss_of_features, argnums=(0, 1), has_aux=True)(params, merged(cached), merged(micro))
  feature_grads = jax.tree.map(lambda g, c: g.reshape(c.shape), feature_grads, cached)

  def backward(total, inputs):
    micro_batch, grads = inputs
    _, pull_back = jax.vjp(lambda p: encode(p, micro_batch), params)
    return jax.tree.map(jnp.add, total, pull_back(grads)[0]), None

  grads, _ = jax.lax.scan(backward, param_grads, (micro, feature_grads))
  return (loss, aux), grads
