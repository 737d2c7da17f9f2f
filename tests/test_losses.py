"""The loss against a loop-by-loop reference, and its invariance to the number of devices."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from hpjax.train import losses


def _reference(img, cap, hp, hp_mask, hn, hn_mask, logit_scale, positives, local_weight, xp):
  """The loss of paper.md spelled out text by text (xp is numpy or jax.numpy)."""
  scale = xp.exp(xp.minimum(logit_scale, math.log(100.0)))
  batch, k_p = hp_mask.shape
  k_n = hn_mask.shape[1]
  columns = [(cap[j], "cap", j) for j in range(batch)]
  columns += [(hp[j, k], "hp", j) for j in range(batch) for k in range(k_p) if hp_mask[j, k]]
  columns += [(hn[j, k], "hn", j) for j in range(batch) for k in range(k_n) if hn_mask[j, k]]

  def lse(values):  # log(sum(exp(values))), shifted so that e^100 does not overflow float32.
    top = max(values) if xp is np else jax.lax.stop_gradient(xp.max(xp.stack(values)))
    return top + xp.log(sum(xp.exp(v - top) for v in values))

  def rows_for(i, cols):
    logits = [scale * xp.sum(img[i] * t) for t, _, _ in cols]
    pos = [l for l, (_, kind, owner) in zip(logits, cols) if kind != "hn" and owner == i]
    neg = [l for l, (_, kind, owner) in zip(logits, cols) if kind == "hn" or owner != i]
    if positives == "multi":
      return [lse(pos + neg) - lse(pos)]
    return [lse([l] + neg) - l for l in pos]

  i2t = [r for i in range(batch) for r in rows_for(i, columns)]
  t2i = []
  for t, kind, owner in columns:
    if kind == "hn":
      continue
    logits = [scale * xp.sum(t * img[j]) for j in range(batch)]
    t2i.append(lse(logits) - logits[owner])
  loss = 0.5 * (sum(i2t) / len(i2t) + sum(t2i) / len(t2i))
  if local_weight:
    local = []
    for i in range(batch):
      if hn_mask[i].any():
        own = [c for c in columns if c[2] == i]
        local += rows_for(i, own)
    loss = loss + local_weight * sum(local) / len(local)
  return loss


def _features(seed, batch=8, k_p=2, k_n=3, dim=16, spread=None):
  """Unit features and masks; with `spread`, every feature is a common direction plus `spread`
  times noise, so cosines differ by ~spread^2 and even at the clamped scale 100 no logit
  dominates its softmax (random unit vectors there make the loss blind to masked columns)."""
  rng = np.random.default_rng(seed)
  common = rng.normal(size=dim) if spread else np.zeros(dim)
  scale = spread or 1.0
  unit = lambda *s: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(
      common + scale * rng.normal(size=s + (dim,)))
  hp_mask = rng.random((batch, k_p)) < 0.5
  hn_mask = rng.random((batch, k_n)) < 0.6
  hp_mask[0] = True  # at least one image with several positives,
  hn_mask[1] = False  # one without any hard negative,
  hp_mask[2] = False  # and one with its caption as its only positive.
  return (unit(batch), unit(batch), unit(batch, k_p), hp_mask, unit(batch, k_n), hn_mask)


CASES = [("multi", 0.0, math.log(10.0), None), ("per_positive", 0.0, math.log(20.0), None),
         ("multi", 0.5, math.log(7.0), None),
         ("per_positive", 1.0, 5.0, 0.1), ("multi", 0.5, 5.0, 0.1)]  # 5.0 > ln 100: clamped.


@pytest.mark.parametrize("positives,local_weight,logit_scale,spread", CASES)
def test_matches_reference_value_and_gradient(positives, local_weight, logit_scale, spread):
  feats = _features(0, batch=5, k_n=2, spread=spread)
  with jax.default_matmul_precision("highest"):
    value, _ = losses.contrastive_loss(*feats, logit_scale, positives=positives,
                                       local_weight=local_weight)
    expected = _reference(*feats, logit_scale, positives, local_weight, np)
    np.testing.assert_allclose(value, expected, rtol=1e-5)

    def ours(img, cap, hp, hn, scale):
      return losses.contrastive_loss(img, cap, hp, feats[3], hn, feats[5], scale,
                                     positives=positives, local_weight=local_weight)[0]

    def theirs(img, cap, hp, hn, scale):
      return _reference(img, cap, hp, feats[3], hn, feats[5], scale, positives, local_weight, jnp)

    args = (feats[0], feats[1], feats[2], feats[4], jnp.float32(logit_scale))
    grads = jax.grad(ours, argnums=range(5))(*args)
    expected_grads = jax.grad(theirs, argnums=range(5))(*args)
  # fp32 logits near 100 carry ~1e-5 of rounding: the absolute tolerance grows with the scale
  # (1e-5 at the clamp; the masking bugs it must catch move the loss by ~5%).
  atol = 1e-6 * max(1.0, math.exp(min(logit_scale, losses.MAX_LOGIT_SCALE)) / 10)
  for g, e in zip(grads, expected_grads):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=atol)
  if logit_scale > losses.MAX_LOGIT_SCALE:
    assert grads[-1] == 0.0


def test_modes_agree_with_a_single_positive():
  img, cap, hp, _, hn, hn_mask = _features(1)
  no_hp = np.zeros(hp.shape[:2], bool)
  multi = losses.contrastive_loss(img, cap, hp, no_hp, hn, hn_mask, 2.0, positives="multi")[0]
  per = losses.contrastive_loss(img, cap, hp, no_hp, hn, hn_mask, 2.0,
                                positives="per_positive")[0]
  np.testing.assert_allclose(multi, per, rtol=1e-6)


def test_masked_texts_do_not_matter():
  img, cap, hp, hp_mask, hn, hn_mask = _features(2)
  changed_hp = np.where(hp_mask[..., None], hp, -hp)
  changed_hn = np.where(hn_mask[..., None], hn, -hn)
  a = losses.contrastive_loss(img, cap, hp, hp_mask, hn, hn_mask, 3.0, local_weight=1.0)[0]
  b = losses.contrastive_loss(img, cap, changed_hp, hp_mask, changed_hn, hn_mask, 3.0,
                              local_weight=1.0)[0]
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_unknown_positive_mode_is_an_error():
  with pytest.raises(ValueError, match="positives="):
    losses.contrastive_loss(*_features(3), 1.0, positives="nope")


@pytest.mark.parametrize("positives", ["multi", "per_positive"])
def test_partitioner_gives_one_contrastive_value_and_gradient_on_1_2_4_8_devices(positives):
  """Guards the partitioner, not the loss formula (the loss is written on global arrays, so no
  edit of losses.py changes its device count dependence): sharding propagation and the
  collectives jit inserts must give one value and gradient on 1, 2, 4 and 8 devices."""
  assert_same_on_1_2_4_8_devices(
      lambda *a: losses.contrastive_loss(*a, positives=positives, local_weight=0.5)[0],
      _features(4), [2.5])


def assert_same_on_1_2_4_8_devices(loss, feats, scalars):
  """`loss(img, cap, hp, hp_mask, hn, hn_mask, *scalars)` and its gradients (features and
  scalars) under jit with the features and masks sharded on the batch over 1, 2, 4, 8 devices."""
  results = []
  for n in (1, 2, 4, 8):
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])
    img, cap, hp, hp_mask, hn, hn_mask = [
        jax.device_put(np.asarray(x), NamedSharding(mesh, P("data"))) for x in feats]

    def loss_fn(img, cap, hp, hn, hp_mask, hn_mask, *scalars):
      return loss(img, cap, hp, hp_mask, hn, hn_mask, *scalars)

    with jax.default_matmul_precision("highest"):
      differentiated = (0, 1, 2, 3) + tuple(range(6, 6 + len(scalars)))
      step = jax.jit(jax.value_and_grad(loss_fn, argnums=differentiated))
      value, grads = step(img, cap, hp, hn, hp_mask, hn_mask, *map(jnp.float32, scalars))
    assert grads[0].sharding.num_devices == n
    results.append((np.asarray(value), [np.asarray(g) for g in grads]))
  for value, grads in results[1:]:
    np.testing.assert_allclose(value, results[0][0], rtol=1e-6)
    for g, g0 in zip(grads, results[0][1]):
      np.testing.assert_allclose(g, g0, rtol=1e-5, atol=1e-7)
