"""WiSE-FT: each alpha's figures equal the evaluator's on the directly interpolated weights."""

import json
import os

import jax
import numpy as np
import pytest

import hpjax
from configs import wise_ft as wise_ft_config
from helpers import assert_same_tree, write_fixture_suites
from hpjax.evaluate import hard_positive, wise_ft

NAME = "hpjax-tiny"
ALPHAS = (0.0, 0.4, 1.0)


@pytest.fixture(scope="module")
def wise_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("wise")
  write_fixture_suites(str(root / "suites"))
  paths = {}
  for seed, which in ((1, "start"), (2, "finetuned")):
    _, params = hpjax.create_model(NAME, rng=jax.random.key(seed))
    paths[which] = hpjax.export_openclip(jax.device_get(params), NAME,
                                         root / f"{which}.safetensors")
  config = wise_ft_config.get_config(
      f"model={NAME},start={paths['start']},finetuned={paths['finetuned']},"
      f"suite_root={root / 'suites'},image_root={root / 'suites' / 'images'},"
      f"alphas={'+'.join(map(str, ALPHAS))},export_alpha=0.4,"
      f"export_openclip={root / 'alpha.safetensors'},batch_size=8")
  return root, paths, wise_ft.run(config, str(root / "work"))


def test_each_alpha_scores_the_interpolated_weights(wise_run):
  root, paths, results = wise_run
  model, start = hpjax.create_model(NAME, pretrained=paths["start"])
  _, finetuned = hpjax.create_model(NAME, pretrained=paths["finetuned"])
  evaluator = hard_positive.HardPositiveEvaluator(
      model, str(root / "suites"), image_root=str(root / "suites" / "images"), batch_size=8)
  assert sorted(results) == list(ALPHAS)
  for alpha in ALPHAS:
    reference = jax.tree.map(
        lambda s, f: ((1 - alpha) * np.float64(s) + alpha * np.float64(f)).astype(np.float32),
        jax.device_get(start), jax.device_get(finetuned))
    want = evaluator.run(reference)
    assert results[alpha].keys() == want.keys()
    for key, value in want.items():
      if key.startswith("eval/"):  # (timings)
        continue
      assert results[alpha][key] == pytest.approx(value, abs=1e-4, nan_ok=True), (alpha, key)
  assert results[0.0] != results[1.0]  # the two ends are different models
  saved = json.load(open(root / "work" / wise_ft.RESULTS))
  assert sorted(map(float, saved)) == list(ALPHAS)
  assert os.path.getsize(root / "work" / wise_ft.PLOT) > 0


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
