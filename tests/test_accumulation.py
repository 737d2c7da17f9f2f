"""Accumulation over micro-batches (hpjax.train.accumulation) gives the full batch's loss and
gradient: both losses, hard negatives and positives, packed and unpacked texts, 1 and 8 devices."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from hpjax import factory
from hpjax import sharding
from hpjax.models.config import get_model_config
from configs import common, hnhp
from helpers import train_args
from hpjax.train import accumulation, run_config, text_packing, trainer
from hpjax.train import step as step_lib
from test_text_packing import _batch

OPTIONS = {"contrastive": ("per_positive", 0.5, "contrastive", 1.0),
           "sigmoid": ("multi", 0.0, "sigmoid", 2.0)}


@pytest.fixture(scope="module")
def tiny():
  """hpjax-tiny with a logit bias too (so one model serves both losses), random init."""
  config = dataclasses.replace(get_model_config("hpjax-tiny"), init_logit_bias=-2.0)
  return factory.create_model(config, rng=jax.random.key(1))


def _value_and_grad(model, params, batch, kind, devices, micro_batches):
  mesh = sharding.make_mesh(devices=jax.devices()[:devices])
  fn = jax.jit(lambda p, b: step_lib.value_and_grad(p, model, b, OPTIONS[kind], micro_batches,
                                                    devices))
  with jax.default_matmul_precision("highest"):
    (loss, _), grads = fn(params, sharding.put_batch(batch, mesh))
  return float(loss), jax.device_get(grads)


def _assert_same(got, want, what):
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, err_msg=what)
  for (path, g), ref in zip(jax.tree_util.tree_leaves_with_path(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5,
                               err_msg=f"{what} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("kind", ["contrastive", "sigmoid"])
def test_accumulated_gradient_equals_the_full_batch_gradient(tiny, kind):
  model, params = tiny
  batch = _batch(16, k_p=2, k_n=2)
  full = _value_and_grad(model, params, batch, kind, devices=1, micro_batches=1)
  assert np.abs(full[1]["logit_scale"]) > 0  # the loss's own parameter gets its gradient too
  for devices, micro_batches in ((1, 4), (8, 2)):
    packed = text_packing.pack_batch(batch, devices * micro_batches, 77)
    got = _value_and_grad(model, params, packed, kind, devices, micro_batches)
    _assert_same(got, full, f"{kind}, {devices} devices, {micro_batches} micro-batches")


def test_unpacked_texts_accumulate_too(tiny):
  model, params = tiny
  batch = _batch(8, k_p=1, k_n=3, seed=1)
  full = _value_and_grad(model, params, batch, "contrastive", devices=1, micro_batches=1)
  got = _value_and_grad(model, params, batch, "contrastive", devices=2, micro_batches=2)
  _assert_same(got, full, "unpacked, 2 devices")


def test_micro_batches_stay_on_their_shard():
  """Micro-batch j takes the j-th rows of every data shard (no row changes device)."""
  rows = np.arange(12)  # 2 shards of 6 rows, 3 micro-batches of 2 rows per shard
  np.testing.assert_array_equal(accumulation.split(rows, 3, 2),
                                [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]])


@pytest.mark.parametrize("accum_freq,devices,message", [
    (3, 8, "accum_freq=3 must divide the per-device batch of 8"),
    (0, 1, "accum_freq=0 must be a positive integer")])
def test_a_micro_batch_that_does_not_divide_the_per_device_batch_is_refused(
    accum_freq, devices, message):
  config = common.get_config(f"batch_size=64,accum_freq={accum_freq}")
  with pytest.raises(ValueError, match=message):
    run_config.check_values(config, devices, 1)


@pytest.mark.slow
def test_the_trainer_accumulates_with_the_same_loss_and_gradient(train_source, tmp_path):
  """accum_freq=2 on 8 devices: the first step's loss and gradient norm are those of one batch
  (same state, same batch), so the trainer packs and splits the micro-batches as the step wants."""
  logged = {}
  for accum_freq in (1, 2):
    workdir = tmp_path / str(accum_freq)
    trainer.run(hnhp.get_config(train_args(train_source, batch_size=32, total_steps=1,
                                           accum_freq=accum_freq)), str(workdir))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    logged[accum_freq] = next(r for r in rows if "grad_norm" in r)
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(logged[2][key], logged[1][key], rtol=1e-5, err_msg=key)
