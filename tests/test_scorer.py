"""The deduplicating, bucketed, sharded scorer against a plain per-record OpenCLIP loop."""

import os

import jax
import numpy as np
import pytest

from hpjax import tokenizer as tokenizer_lib
from hpjax.data import suites
from hpjax.evaluate import benchmarks
from hpjax.evaluate import metrics
from hpjax.evaluate import scorer as scorer_lib
from hpjax.evaluate import stand_in_images
from helpers import paired_models, per_record_scores, torch_encoders

def fixture_records():
  """Shared images, a crop, repeated and identical captions, and one caption over 32 tokens."""
  long = ("a very long caption about a small brown dog that is sitting next to a large red "
          "ball on a green lawn under a clear blue sky in the afternoon sun near a house")
  rows = [
      ("a/1.jpg", None, ("white dog", "black dog", "ivory dog")),
      ("a/1.jpg", None, ("white dog", "brown dog", "ivory dog")),
      ("a/1.jpg", (4, 6, 40, 30), ("the red ball and the dog", "the dog ball and the red",
                                   "the dog and the red ball")),
      ("a/2.jpg", None, (" man  ON horse", " man  ON horse", "man atop horse")),
      ("b/3.jpg", None, (long, "a cat", long + " today")),
  ] + [(f"c/{i}.jpg", None, (f"photo {i}", "photo", f"picture {i}")) for i in range(7)]
  return [suites.EvalRecord(image=img, captions=caps, roles=("c", "c_n", "c_p"), source="f.json",
                            index=i, crop=crop)
          for i, (img, crop, caps) in enumerate(rows)]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("images"))
  stand_in_images.write_stand_in_images(fixture_records(), root)
  return root


def make_scorer(model, image_root, **kw):
  kw = dict(image_batch_size=8, text_batch_size=8, num_workers=2) | kw
  return scorer_lib.Scorer(model, tokenizer_lib.get_tokenizer(), image_root=image_root, **kw)


def test_tiny_scores_match_openclip_per_record_on_1_and_8_devices(tiny_pair, image_root):
  config, model, params, torch_model = tiny_pair
  records = fixture_records()
  expected = per_record_scores(records, image_root, config.vision.image_size, *torch_encoders(torch_model))
  with jax.default_matmul_precision("highest"):
    one = make_scorer(model, image_root, devices=jax.devices()[:1]).score(params, records)
    scorer = make_scorer(model, image_root)
    eight = scorer.score(params, records)
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(one.scores, expected, atol=1e-4)
  np.testing.assert_allclose(eight.scores, one.scores, atol=1e-6)
  assert eight.valid.all() and eight.stats["distinct_images"] == 11  # a/1 twice: once cropped
  # Identical strings (c == c_n) share one feature: an exact tie, never a near-tie.
  assert eight.scores[3, 0] == eight.scores[3, 1]
  # One compile for images, one per length bucket used (16 and 32 here; 77 not needed).
  assert scorer.encode_images._cache_size() == 1
  assert scorer.encode_texts._cache_size() == 2


def test_bucketed_text_encoding_equals_full_length(tiny_pair):
  _, model, params, *_ = tiny_pair
  texts = [r.captions[k] for r in fixture_records() for k in range(3)]
  tokens = tokenizer_lib.get_tokenizer()(texts)
  lengths = tokenizer_lib.token_lengths(tokens)
  assert lengths.max() > 32 and lengths.min() <= 16  # every bucket is exercised
  with jax.default_matmul_precision("highest"):
    bucketed = make_scorer(model, None, buckets=(16, 32, 77)).encode_tokens(params, tokens)
    full = make_scorer(model, None, buckets=(77,)).encode_tokens(params, tokens)
  np.testing.assert_allclose(bucketed, full, atol=1e-6)


def test_missing_and_unreadable_images_stop_unless_skipped(tiny_pair, tmp_path):
  _, model, params, *_ = tiny_pair
  records = fixture_records()
  root = str(tmp_path)
  stand_in_images.write_stand_in_images(records, root)
  os.remove(os.path.join(root, "c/0.jpg"))
  with open(os.path.join(root, "c/1.jpg"), "wb") as f:
    f.write(b"not an image")
  with pytest.raises(scorer_lib.ImageError, match=r"1 missing image\(s\)[\s\S]*c/0.jpg"):
    make_scorer(model, root).score(params, records)
  os.remove(os.path.join(root, "c/1.jpg"))
  stand_in_images.write_stand_in_images(records, root)
  with open(os.path.join(root, "c/1.jpg"), "wb") as f:
    f.write(b"not an image")
  with pytest.raises(scorer_lib.ImageError, match=r"unreadable[\s\S]*c/1.jpg"):
    make_scorer(model, root).score(params, records)
  os.remove(os.path.join(root, "c/0.jpg"))
  result = make_scorer(model, root, skip_missing_images=True).score(params, records)
  skipped = [r.index for r, ok in zip(records, result.valid) if not ok]
  assert skipped == [5, 6] and result.stats["skipped_records"] == 2
  assert np.isnan(result.scores[5]).all() and np.isfinite(result.scores[~np.isnan(
      result.scores[:, 0])]).all()
  assert sorted(os.path.basename(p) for p in result.skipped_images) == ["0.jpg", "1.jpg"]


def test_empty_crop_names_the_record(tiny_pair, image_root):
  _, model, params, *_ = tiny_pair
  record = suites.EvalRecord(image="a/1.jpg", captions=("a", "b", "c"), roles=("c", "c_n", "c_p"),
                             source="visual_genome_attribution.json", index=7,
                             crop=(0, 0, 0.2, 10))
  with pytest.raises(ValueError, match=r"visual_genome_attribution.json \[index 7\]"):
    make_scorer(model, image_root).score(params, [record])


@pytest.mark.slow
def test_real_replace_subset_vit_b32_matches_openclip(hard_positives, tmp_path):
  """First records of both real REPLACE files, stand-in images, random ViT-B-32-quickgelu."""
  # ViT-B on a shared 2-core CPU: the per-record PyTorch reference costs ~1.5 s a record, so the
  # test stays small; tools/bench_eval.py compares scores on thousands of records.
  per_file = 8
  loaded = benchmarks.load_hard_positive(hard_positives, ["replace"])
  records = [r for suite in loaded.values() for r in suite.records[:per_file]]
  stand_in_images.write_stand_in_images(records, str(tmp_path))
  config, model, params, torch_model = paired_models("ViT-B-32-quickgelu")
  expected = per_record_scores(records, str(tmp_path), config.vision.image_size, *torch_encoders(torch_model))
  with jax.default_matmul_precision("highest"):
    result = make_scorer(model, str(tmp_path), image_batch_size=16, text_batch_size=64,
                         devices=jax.devices()[:1]).score(params, records)
  assert np.abs(result.scores - expected).max() <= 1e-4
  for lo in (0, per_file):
    ours, ref = (metrics.hard_positive_metrics(*s[lo:lo + per_file].T[[0, 1, 2]])
                 for s in (result.scores, expected))
    assert ours == ref


def test_encoders_ask_for_full_fp32_matmuls_unless_told_otherwise(tiny_pair):
  """GPUs (TF32) and TPUs (one-pass bf16) would otherwise round fp32 matmuls by default."""
  _, model, params, *_ = tiny_pair
  tokens = np.zeros((8, 16), np.int32)
  for precision, expected in (("highest", True), ("default", False)):
    scorer = make_scorer(model, None, matmul_precision=precision)
    hlo = scorer.encode_texts.lower(params, tokens).as_text()
    assert ("HIGHEST" in hlo) == expected, precision
