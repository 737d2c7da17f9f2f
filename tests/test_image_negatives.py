"""Image-side hard negatives: the loss against a pair-by-pair reference, the records' field from
NegCLIP's TSV and JSONL through array_record and the pipeline, bad input, and the train step."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from configs import common
from helpers import example_transform, training_batches, write_random_image
from hpjax import factory, sharding
from hpjax.data import records as records_lib
from hpjax.data import train_builders, training
from hpjax.models.config import get_model_config
from hpjax.train import losses, run_config, text_packing
from hpjax.train import step as step_lib
from test_text_packing import _batch


def _unit(rng, *shape):
  x = rng.normal(size=shape).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _features(seed=0, b=5, k_p=2, k_n=2, k_i=3):
  rng = np.random.default_rng(seed)
  return dict(image=_unit(rng, b, 8), caption=_unit(rng, b, 8),
              hard_positives=_unit(rng, b, k_p, 8),
              hard_positive_mask=rng.random((b, k_p)) < 0.6, hard_negatives=_unit(rng, b, k_n, 8),
              hard_negative_mask=rng.random((b, k_n)) < 0.6,
              negative_images=_unit(rng, b, k_i, 8), negative_image_mask=rng.random((b, k_i)) < 0.6)


def _args(f):
  return (f["image"], f["caption"], f["hard_positives"], f["hard_positive_mask"],
          f["hard_negatives"], f["hard_negative_mask"])


def _reference_text_to_image(f, scale):
  """Mean over caption and valid hard-positive rows of -log softmax at the row's own image, the
  columns being every image and every valid negative image."""
  b, k_i = f["negative_image_mask"].shape
  images = [f["image"][j] for j in range(b)]
  images += [f["negative_images"][j, k] for j in range(b) for k in range(k_i)
             if f["negative_image_mask"][j, k]]
  rows = [(f["caption"][i], i) for i in range(b)]
  rows += [(f["hard_positives"][i, k], i) for i in range(b)
           for k in range(f["hard_positive_mask"].shape[1]) if f["hard_positive_mask"][i, k]]
  terms = []
  for text, owner in rows:
    logits = np.array([scale * float(text @ image) for image in images], np.float64)
    terms.append(np.log(np.exp(logits).sum()) - logits[owner])
  return np.mean(terms)


@pytest.mark.parametrize("positives", ["multi", "per_positive"])
def test_contrastive_loss_takes_negative_images_as_text_to_image_columns(positives):
  f = _features()
  with_images = losses.contrastive_loss(
      *_args(f), 1.5, positives=positives, local_weight=0.5,
      negative_images=f["negative_images"], negative_image_mask=f["negative_image_mask"])[1]
  without = losses.contrastive_loss(*_args(f), 1.5, positives=positives, local_weight=0.5)[1]
  np.testing.assert_allclose(with_images["loss/text_to_image"],
                             _reference_text_to_image(f, math.exp(1.5)), rtol=1e-5)
  assert with_images["loss/text_to_image"] > without["loss/text_to_image"]
  for key in ("loss/image_to_text", "loss/local"):  # the other directions do not see them
    np.testing.assert_allclose(with_images[key], without[key], rtol=1e-6)


def test_sigmoid_loss_adds_a_negative_term_per_negative_image_and_text():
  f = _features(1)
  scale, bias, weight = 2.0, -1.0, 3.0
  got = losses.sigmoid_loss(*_args(f), math.log(scale), bias, hard_negative_weight=weight,
                            negative_images=f["negative_images"],
                            negative_image_mask=f["negative_image_mask"])[1]
  b, k_p = f["hard_positive_mask"].shape
  texts = [(f["caption"][j], j) for j in range(b)]
  texts += [(f["hard_positives"][j, k], j) for j in range(b) for k in range(k_p)
            if f["hard_positive_mask"][j, k]]
  texts += [(f["hard_negatives"][j, k], -1) for j in range(b)
            for k in range(f["hard_negative_mask"].shape[1]) if f["hard_negative_mask"][j, k]]
  want = 0.0
  for i in range(b):
    for k in np.flatnonzero(f["negative_image_mask"][i]):
      for text, owner in texts:  # -1 for every text; its own record's positives weighted
        z = scale * float(f["negative_images"][i, k] @ text) + bias
        want += (weight if owner == i else 1.0) * np.log1p(np.exp(z))
  np.testing.assert_allclose(got["loss/negative_images"], want / b, rtol=1e-5)
  without = losses.sigmoid_loss(*_args(f), math.log(scale), bias, hard_negative_weight=weight)[0]
  np.testing.assert_allclose(got["loss"], without + want / b, rtol=1e-5)


def test_masked_negative_image_slots_change_nothing():
  f = _features(2)
  none = np.zeros_like(f["negative_image_mask"])
  for loss in (lambda **kw: losses.contrastive_loss(*_args(f), 2.0, **kw)[0],
               lambda **kw: losses.sigmoid_loss(*_args(f), 2.0, -1.0, **kw)[0]):
    np.testing.assert_allclose(loss(negative_images=f["negative_images"],
                                    negative_image_mask=none), loss(), rtol=1e-6)


def test_negclip_tsv_neg_image_rows_become_negative_images(tmp_path):
  path = tmp_path / "neg.tsv"
  path.write_text("\ttitle\tfilepath\tneg_caption\tneg_image\n"
                  "0\tA cat.\tcoco/a.jpg\t['A dog.']\t[1, 2]\n"
                  "1\tTwo dogs.\tcoco/b.jpg\t['Two cats.']\t[0]\n"
                  "2\tA bus.\tcoco/c.jpg\t['A car.']\t[1]\n")
  records = list(train_builders.negclip_tsv(str(path), "/images"))
  assert [r["negative_images"] for r in records] == [
      ["/images/coco/b.jpg", "/images/coco/c.jpg"], ["/images/coco/a.jpg"], ["/images/coco/b.jpg"]]
  assert "negative_images" not in next(
      train_builders.negclip_tsv(str(path), "/images", negative_images=False))
  path.write_text("\ttitle\tfilepath\tneg_caption\tneg_image\n"
                  "0\tA cat.\tcoco/a.jpg\t['A dog.']\t[0]\n"
                  "1\tTwo dogs.\tcoco/b.jpg\t['Two cats.']\t[0, 7]\n")
  with pytest.raises(ValueError, match=r"neg.tsv: row 2 .*neg_image row id\(s\) \[7\]"):
    list(train_builders.negclip_tsv(str(path), "/images"))


def _jsonl(tmp_path, negatives):
  for i in range(6):
    write_random_image(str(tmp_path / f"{i}.png"), i)
  lines = [{"image": f"{i}.png", "caption": f"shape {i}", "hard_negatives": [f"not {i}"],
            "hard_positives": [], "negative_images": negatives(i)} for i in range(6)]
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  return str(path)


def test_a_missing_negative_image_is_an_error_naming_the_record(tmp_path):
  path = _jsonl(tmp_path, lambda i: ["missing.png"] if i == 3 else [])
  with pytest.raises(ValueError, match=r"train.jsonl:4: negative_images \[.*missing.png'\] "
                                       "do not exist"):
    records_lib.read_jsonl(path)


def test_negative_images_travel_through_array_record_into_the_batches(tmp_path):
  jsonl = _jsonl(tmp_path, lambda i: [f"{(i + 1) % 6}.png", f"{(i + 2) % 6}.png"][:i % 3])
  out = str(tmp_path / "train.array_record")
  train_builders.write_array_record(records_lib.read_jsonl(jsonl), out)
  kw = {"transform": example_transform(num_negative_images=2)}
  from_jsonl = training_batches(training.open_source(jsonl), 1, **kw)[0]
  from_array_record = training_batches(training.open_source(out), 1, **kw)[0]
  assert from_jsonl["negative_images"].shape == (4, 2, 32, 32, 3)
  for key in ("negative_images", "negative_image_mask", "image", "caption"):
    np.testing.assert_array_equal(from_array_record[key], from_jsonl[key])
  counts = from_jsonl["negative_image_mask"].sum(1)
  assert set(counts) <= {0, 1, 2} and counts.sum() > 0
  # A masked slot is zeros; a used slot is a real (cropped) image.
  assert not from_jsonl["negative_images"][~from_jsonl["negative_image_mask"]].any()
  assert all(x.std() > 0 for x in from_jsonl["negative_images"][from_jsonl["negative_image_mask"]])


def test_step_with_negative_images_accumulates_to_the_full_batch_gradient():
  cfg = dataclasses.replace(get_model_config("hpjax-tiny"), init_logit_bias=-2.0)
  model, params = factory.create_model(cfg, rng=jax.random.key(2))
  batch = _batch(8, k_p=1, k_n=1, seed=2)
  rng = np.random.default_rng(5)
  batch["negative_images"] = rng.normal(size=(8, 2, 64, 64, 3)).astype(np.float32)
  batch["negative_image_mask"] = rng.random((8, 2)) < 0.6
  options = ("multi", 0.0, "contrastive", 1.0)
  results = []
  for devices, micro_batches in ((1, 1), (4, 2)):
    packed = text_packing.pack_batch(batch, devices * micro_batches, 77)
    fn = jax.jit(lambda p, b, m=micro_batches, d=devices: step_lib.value_and_grad(
        p, model, b, options, m, d))
    with jax.default_matmul_precision("highest"):
      (loss, metrics), grads = fn(params, sharding.put_batch(
          packed, sharding.make_mesh(devices=jax.devices()[:devices])))
    results.append((float(loss), jax.device_get(grads), float(metrics["loss/text_to_image"])))
  np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
  for g, ref in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[0][1])):
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)
  # The negative images reach the loss: without them the text->image term is another number.
  plain = {k: v for k, v in batch.items() if not k.startswith("negative_image")}
  (_, metrics), _ = jax.jit(lambda p, b: step_lib.value_and_grad(p, model, b, options))(
      params, plain)
  assert float(metrics["loss/text_to_image"]) < results[0][2]


def test_real_negclip_tsv_neg_image_ids_name_its_rows(hard_positives):
  tsv = f"{hard_positives}/temp_data/valid_neg_clip.tsv"
  records = list(train_builders.negclip_tsv(tsv, "/coco"))
  assert all(len(r["negative_images"]) == 3 for r in records)
  # Row 0's first neg_image id is 2973: the image of the row with that index.
  assert records[0]["negative_images"][0] == records[2973]["image"]


def test_negative_images_from_a_tfds_source_are_refused_before_work():
  config = common.get_config("source=tfds:coco_hard_texts/negclip:train,"
                             "data.num_negative_images=2")
  with pytest.raises(ValueError, match="data.num_negative_images=2: a TFDS training set holds "
                                       "texts only"):
    run_config.check_values(config, 1, 1)
