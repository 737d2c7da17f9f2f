"""WiSE-FT: each alpha's figures (compositional, zero-shot, retrieval) equal the evaluators' on
the directly interpolated weights."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

import hpjax
from configs import wise_ft as wise_ft_config
from helpers import assert_same_tree, write_fixture_suites, write_json, write_random_image
from hpjax.data import captions as captions_lib
from hpjax.data import classification
from hpjax.evaluate import hard_positive, retrieval, wise_ft, zeroshot

NAME = "hpjax-tiny"
ALPHAS = (0.0, 0.4, 1.0)


@pytest.fixture(scope="module")
def wise_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("wise")
  write_fixture_suites(str(root / "suites"))
  for label, name in enumerate(("cat", "dog", "car")):  # a class-per-folder zero-shot set
    os.makedirs(root / "classes" / name)
    for k in range(2):
      write_random_image(root / "classes" / name / f"{k}.png", 10 * label + k)
  write_json(str(root / "classes.json"), {"classnames": ["cat", "dog", "car"],
                                          "templates": ["a photo of a {}.", "a {}"]})
  images = []  # a Karpathy-style retrieval set
  os.makedirs(root / "coco" / "val2014")
  for i in range(3):
    write_random_image(root / "coco" / "val2014" / f"{i}.jpg", 50 + i)
    images.append({"filepath": "val2014", "filename": f"{i}.jpg", "split": "test",
                   "sentences": [{"raw": f"picture {i} number {k}"} for k in range(2)]})
  write_json(str(root / "dataset_coco.json"), {"images": images})
  paths = {}
  for seed, which in ((1, "start"), (2, "finetuned")):
    _, params = hpjax.create_model(NAME, rng=jax.random.key(seed))
    paths[which] = hpjax.export_openclip(jax.device_get(params), NAME,
                                         root / f"{which}.safetensors")
  config = wise_ft_config.get_config(
      f"model={NAME},start={paths['start']},finetuned={paths['finetuned']},"
      f"suite_root={root / 'suites'},image_root={root / 'suites' / 'images'},"
      f"alphas={'+'.join(map(str, ALPHAS))},export_alpha=0.4,"
      f"export_openclip={root / 'alpha.safetensors'},batch_size=8,"
      f"zeroshot.images={root / 'classes'},zeroshot.classes={root / 'classes.json'},"
      f"zeroshot.name=toy,retrieval.annotations={root / 'dataset_coco.json'},"
      f"retrieval.image_root={root / 'coco'},retrieval.name=coco")
  return root, paths, wise_ft.run(config, str(root / "work"))


def test_each_alpha_scores_the_interpolated_weights(wise_run):
  """Compositional, zero-shot and retrieval figures of each alpha, each against its evaluator
  built directly (no config) and run on weights mixed here in float64."""
  root, paths, results = wise_run
  model, start = hpjax.create_model(NAME, pretrained=paths["start"])
  _, finetuned = hpjax.create_model(NAME, pretrained=paths["finetuned"])
  class_set = classification.load_class_set(str(root / "classes.json"))
  evaluators = [
      hard_positive.HardPositiveEvaluator(
          model, str(root / "suites"), image_root=str(root / "suites" / "images"), batch_size=8),
      zeroshot.ZeroShotEvaluator(model, class_set, classification.load_image_folder(
          str(root / "classes"), len(class_set.names)), "toy"),
      retrieval.RetrievalEvaluator(model, captions_lib.load_caption_set(
          str(root / "dataset_coco.json"), str(root / "coco")), "coco")]
  assert sorted(results) == list(ALPHAS)
  for alpha in ALPHAS:
    reference = jax.tree.map(
        lambda s, f: ((1 - alpha) * np.float64(s) + alpha * np.float64(f)).astype(np.float32),
        jax.device_get(start), jax.device_get(finetuned))
    want = {k: v for e in evaluators for k, v in e.run(reference).items()}
    assert want["toy/n"] == 6 and want["coco/captions"] == 6
    assert results[alpha].keys() == want.keys()
    for key, value in want.items():
      if key.startswith("eval/"):  # (timings)
        continue
      assert results[alpha][key] == pytest.approx(value, abs=1e-4, nan_ok=True), (alpha, key)
  assert results[0.0] != results[1.0]  # the two ends are different models
  saved = json.load(open(root / "work" / wise_ft.RESULTS))
  assert sorted(map(float, saved)) == list(ALPHAS)
  assert saved["0.4"]["toy/top1"] == results[0.4]["toy/top1"]
  assert os.path.getsize(root / "work" / wise_ft.PLOT) > 0
  with Image.open(root / "work" / wise_ft.TRADEOFF) as png:
    assert png.size[0] > 300


def test_the_chosen_alpha_is_exported(wise_run):
  root, paths, _ = wise_run
  _, start = hpjax.create_model(NAME, pretrained=paths["start"])
  _, finetuned = hpjax.create_model(NAME, pretrained=paths["finetuned"])
  _, exported = hpjax.create_model(NAME, pretrained=root / "alpha.safetensors")
  want = jax.tree.map(lambda s, f: 0.6 * np.float64(s) + 0.4 * np.float64(f),
                      jax.device_get(start), jax.device_get(finetuned))
  assert_same_tree(exported, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("arg, message", [
    ("alphas=0+1.5", r"alphas: \[1.5\] outside \[0, 1\]"),
    ("alphas=-0.1", r"alphas: \[-0.1\] outside \[0, 1\]"),
    ("export_openclip=x.safetensors,export_alpha=2.0", r"export_alpha=2.0 must be in \[0, 1\]"),
])
def test_bad_alphas_stop_before_any_loading(arg, message, tmp_path):
  config = wise_ft_config.get_config(f"start=/missing.pt,finetuned=/missing.pt,{arg}")
  with pytest.raises(ValueError, match=message):
    wise_ft.run(config, str(tmp_path))


def test_bad_zeroshot_data_stops_before_the_weights_are_read(wise_run, tmp_path):
  root, _, _ = wise_run
  config = wise_ft_config.get_config(
      f"model={NAME},start=/missing.pt,finetuned=/missing.pt,suite_root={root / 'suites'},"
      f"zeroshot.images={root / 'nope'}")
  with pytest.raises(ValueError, match=f"{root / 'nope'}: expected a class-per-folder tree"):
    wise_ft.run(config, str(tmp_path))
  with pytest.raises(KeyError, match=r"config has no field 'zeroshot.imgs'"):
    wise_ft_config.get_config("zeroshot.imgs=x")
