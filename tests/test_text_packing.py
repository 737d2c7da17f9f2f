"""Packed texts (several per row) give the features, loss and gradients of every text at 77 tokens."""

import io

import jax
import numpy as np
import pytest
from PIL import Image

from hpjax import sharding
from hpjax.tokenizer import get_tokenizer, token_lengths
from hpjax.train import retrieval, text_packing
from hpjax.train import step as step_lib

WORDS = "a red block on the left of two small green balls and one big blue cube".split()


def _texts(n, rng):
  """n captions of mixed lengths; the first is long enough to be cut at the full 77 tokens."""
  lengths = [90] + list(rng.integers(1, 30, n - 1))
  return [" ".join(rng.choice(WORDS, size=k)) for k in lengths]


def _batch(b, k_p, k_n, seed=0):
  rng = np.random.default_rng(seed)
  tok = get_tokenizer()
  batch = {"image": rng.normal(size=(b, 64, 64, 3)).astype(np.float32),
           "caption": tok(_texts(b, rng)),
           "hard_positives": tok(_texts(b * k_p, rng)).reshape(b, k_p, 77),
           "hard_negatives": tok(_texts(b * k_n, rng)).reshape(b, k_n, 77),
           "hard_positive_mask": rng.random((b, k_p)) < 0.7,
           "hard_negative_mask": rng.random((b, k_n)) < 0.7}
  batch["hard_positive_mask"][0] = False  # a fully masked slot row
  return batch


def test_ladder_is_a_few_steps_at_most_a_quarter_above_the_need():
  steps = {text_packing.ladder(n) for n in range(1, 4097)}
  assert len(steps) <= 4 + 4 * 10
  for n in range(1, 4097):
    r = text_packing.ladder(n)
    assert n <= r <= max(4, 1.25 * n) and text_packing.ladder(r) == r


def test_first_fit_places_every_text_whole_without_overlap():
  lengths = np.random.default_rng(0).integers(1, 78, 300)
  lengths[:3] = 77
  rows, offsets = text_packing.first_fit_decreasing(lengths, 77)
  used = np.zeros((rows.max() + 1, 77), int)
  for r, o, n in zip(rows, offsets, lengths):
    used[r, o:o + n] += 1
  assert used.max() == 1 and used.sum() == lengths.sum()
  assert (used.sum(1) > 0).all()  # rows 0.. are used, none skipped
  assert rows.max() + 1 <= np.ceil(lengths.sum() / 77) * 1.25 + 1
  with pytest.raises(ValueError, match="does not fit a row of 77"):
    text_packing.first_fit_decreasing(np.array([78]), 77)


def test_packed_features_equal_those_at_77_tokens(tiny_pair):
  _, model, params, _ = tiny_pair
  tokens = get_tokenizer()(_texts(24, np.random.default_rng(3)))
  assert token_lengths(tokens).max() == 77
  packed = text_packing.pack_texts(tokens, groups=3, row_length=77)
  assert packed["tokens"].shape[0] < len(tokens)  # fewer rows than texts
  with jax.default_matmul_precision("highest"):
    full = model.apply({"params": params}, tokens, method="encode_text")
    got = jax.jit(lambda p, t: model.apply({"params": p}, **t, method="encode_text_packed"))(
        params, packed)
  np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)


def _loss_and_grads(model, params, batch, mesh):
  fn = jax.jit(jax.value_and_grad(
      lambda p, b: step_lib.loss_fn(p, model, b, "multi", 0.5)[0]))
  with jax.default_matmul_precision("highest"):
    value, grads = fn(params, sharding.put_batch(batch, mesh))
  return float(value), jax.device_get(grads)


def test_packed_step_has_the_loss_and_gradients_of_77_tokens_on_1_and_8_devices(tiny_pair):
  _, model, params, _ = tiny_pair
  batch = _batch(8, k_p=2, k_n=2)
  value, grads = _loss_and_grads(model, params, batch, sharding.make_mesh(devices=jax.devices()[:1]))
  for devices in (1, 8):
    packed = text_packing.pack_batch(batch, groups=devices, row_length=77)
    assert "caption" not in packed and packed["text"]["eot"].shape == (devices, 8 // devices * 5)
    got, got_grads = _loss_and_grads(model, params, packed,
                                     sharding.make_mesh(devices=jax.devices()[:devices]))
    np.testing.assert_allclose(got, value, rtol=1e-5)
    for (path, g), ref in zip(jax.tree_util.tree_leaves_with_path(got_grads),
                              jax.tree.leaves(grads)):
      np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6,
                                 err_msg=f"{devices} devices {jax.tree_util.keystr(path)}")


def test_retrieval_evaluator_features_equal_those_at_77_tokens(tiny_pair):
  _, model, params, _ = tiny_pair
  rng = np.random.default_rng(4)
  records = []
  for caption in _texts(13, rng):  # 13 records: the last batch of 8 is padded
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(png, format="PNG")
    records.append({"image": png.getvalue(), "caption": caption})
  evaluator = retrieval.RetrievalEvaluator(model, records,
                                         sharding.make_mesh(devices=jax.devices()[:2]), batch_size=8)
  with jax.default_matmul_precision("highest"):
    images, texts = evaluator.features(params)
    full = model.apply({"params": params}, get_tokenizer()([r["caption"] for r in records]),
                       normalize=True, method="encode_text")
  assert images.shape == (13, 64)
  np.testing.assert_allclose(texts, full, rtol=1e-5, atol=1e-5)
