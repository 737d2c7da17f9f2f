"""SigLIP's sigmoid loss over hard texts against a pair-by-pair reference, big_vision's formula
and OpenCLIP's SigLipLoss, and its invariance to the number of devices."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from open_clip.loss import SigLipLoss

from hpjax.train import losses
from test_losses import _features, assert_same_on_1_2_4_8_devices


def _reference(img, cap, hp, hp_mask, hn, hn_mask, logit_scale, logit_bias, hn_weight, xp):
  """The loss spelled out pair by pair: every image against every valid text, label +1 for its
  caption and own hard positives, -1 otherwise; summed over texts, averaged over images."""
  batch, k_p = hp_mask.shape
  texts = [(cap[j], "cap", j) for j in range(batch)]
  texts += [(hp[j, k], "hp", j) for j in range(batch) for k in range(k_p) if hp_mask[j, k]]
  texts += [(hn[j, k], "hn", j) for j in range(batch) for k in range(hn_mask.shape[1])
            if hn_mask[j, k]]
  log_sigmoid = lambda x: -xp.logaddexp(0.0, -x)
  total = 0.0
  for i in range(batch):
    for t, kind, owner in texts:
      logit = xp.exp(logit_scale) * xp.sum(img[i] * t) + logit_bias
      positive = kind != "hn" and owner == i
      weight = hn_weight if (kind == "hn" and owner == i) else 1.0
      total = total - weight * log_sigmoid(logit if positive else -logit)
  return total / batch


CASES = [(math.log(10.0), -10.0, 1.0), (math.log(10.0), -10.0, 3.0), (2.0, -2.0, 0.5),
         (5.0, -12.0, 1.0)]  # 5.0 > ln 100: not clamped.


@pytest.mark.parametrize("logit_scale,logit_bias,hn_weight", CASES)
def test_matches_pairwise_reference_value_and_gradients(logit_scale, logit_bias, hn_weight):
  feats = _features(0, batch=5, k_p=2, k_n=2)
  hp_mask, hn_mask = feats[3], feats[5]

  def ours(img, cap, hp, hn, scale, bias):
    return losses.sigmoid_loss(img, cap, hp, hp_mask, hn, hn_mask, scale, bias,
                               hard_negative_weight=hn_weight)[0]

  def theirs(img, cap, hp, hn, scale, bias):
    return _reference(img, cap, hp, hp_mask, hn, hn_mask, scale, bias, hn_weight, jnp)

  args = tuple(jnp.asarray(x) for x in (feats[0], feats[1], feats[2], feats[4])) + (
      jnp.float32(logit_scale), jnp.float32(logit_bias))
  with jax.default_matmul_precision("highest"):
    value = ours(*args)
    expected = _reference(*feats[:3], hp_mask, feats[4], hn_mask, logit_scale, logit_bias,
                          hn_weight, np)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    grads = jax.grad(ours, argnums=range(6))(*args)
    expected_grads = jax.grad(theirs, argnums=range(6))(*args)
  for name, g, e in zip(["image", "caption", "hp", "hn", "scale", "bias"], grads, expected_grads):
    assert np.all(np.isfinite(g)), name
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6, err_msg=name)
  assert np.abs(grads[2]).max() > 0 and np.abs(grads[3]).max() > 0  # the hard texts count


def test_masked_texts_do_not_matter_and_the_weight_moves_only_own_hard_negatives():
  img, cap, hp, hp_mask, hn, hn_mask = _features(2)
  changed_hp = np.where(hp_mask[..., None], hp, -hp)
  changed_hn = np.where(hn_mask[..., None], hn, -hn)
  loss = lambda *a, **k: losses.sigmoid_loss(*a, 1.0, -3.0, **k)
  a, metrics = loss(img, cap, hp, hp_mask, hn, hn_mask, hard_negative_weight=2.0)
  b, _ = loss(img, cap, changed_hp, hp_mask, changed_hn, hn_mask, hard_negative_weight=2.0)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  # Weight w scales exactly the own-hard-negative part: loss(w) = loss(1) + (w - 1) * that part.
  one, one_metrics = loss(img, cap, hp, hp_mask, hn, hn_mask)
  np.testing.assert_allclose(metrics["loss/own_hard_negatives"],
                             2.0 * one_metrics["loss/own_hard_negatives"], rtol=1e-6)
  np.testing.assert_allclose(a, one + one_metrics["loss/own_hard_negatives"], rtol=1e-6)


def test_without_hard_texts_equals_big_vision_and_openclip():
  img, cap, hp, _, hn, _ = _features(3, batch=6)
  none = lambda x: np.zeros(x.shape[:2], bool)  # every hard text masked
  t, b = math.log(10.0), -10.0
  ours = losses.sigmoid_loss(img, cap, hp, none(hp), hn, none(hn), t, b)[0]
  empty = losses.sigmoid_loss(img, cap, hp[:, :0], none(hp[:, :0]), hn[:, :0],
                              none(hn[:, :0]), t, b)[0]
  # big_vision's siglip loss (trainers/proj/image_text/siglip.py), written out in numpy.
  logits = img @ cap.T * np.exp(t) + b
  m1_diag1 = -np.ones_like(logits) + 2 * np.eye(len(img))
  big_vision = np.mean(-np.sum(-np.logaddexp(0.0, -m1_diag1 * logits), axis=-1))
  openclip = SigLipLoss()(torch.tensor(img), torch.tensor(cap), torch.tensor(np.exp(t)),
                          torch.tensor(b)).item()
  np.testing.assert_allclose(ours, big_vision, rtol=1e-5)
  np.testing.assert_allclose(empty, big_vision, rtol=1e-5)
  np.testing.assert_allclose(ours, openclip, rtol=1e-5)


def test_partitioner_gives_one_sigmoid_value_and_gradient_on_1_2_4_8_devices():
  """Guards the partitioner, not the loss formula (written on global arrays): under jit with the
  batch sharded over 1, 2, 4 and 8 devices its collectives must give one value and gradient."""
  assert_same_on_1_2_4_8_devices(
      lambda *a: losses.sigmoid_loss(*a, hard_negative_weight=2.0)[0], _features(4), [2.3, -10.0])
