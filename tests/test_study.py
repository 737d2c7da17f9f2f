"""The embedded study's reading of finished runs (hpjax.evaluate.study, run by
tools/run_variants.py): results, the aggregation over seeds, the table and the plot."""

import json

import pytest
from PIL import Image
from scipy import stats

from hpjax.evaluate import study
from hpjax.train import retrieval


def test_variant_comparison_reads_results_and_aggregates_over_seeds(tmp_path):
  runs = {}
  for variant, values in {"hn": (60.0, 70.0), "hnhp": (50.0, 50.0)}.items():
    runs[variant] = []
    for seed, value in enumerate(values):
      path = tmp_path / f"{variant}{seed}.json"
      path.write_text(json.dumps({"models": [{"label": "model", "metrics": {
          "swap/original": value, "swap/augmented": value / 2, "swap/brittleness": 1.0,
          "swap/n": 40.0, "replace/count/ties": 3.0}}]}))
      [(label, metrics)] = study.read_models(str(path))
      runs[variant].append(study.suite_metrics(metrics, str(path)))
  table = study.aggregate(runs)
  # The 95% Student-t interval over the seeds, as scipy computes it.
  low, high = stats.t.interval(0.95, 1, loc=65.0, scale=stats.sem([60.0, 70.0]))
  mean, half, n = table["hn"][("swap", "original")]
  assert (mean, n) == (65.0, 2) and half == pytest.approx(high - 65.0) and low < 60.0
  assert table["hnhp"][("swap", "augmented")] == (25.0, 0.0, 2)
  assert set(table["hn"]) == {("swap", m) for m in study.METRICS}
  text = study.markdown(table, ["swap"])
  assert f"| swap | hn | 65.0 +- {high - 65.0:.1f} | 32.5 +- {(high - 65.0) / 2:.1f} | 1.0 +- 0.0 |" in text
  assert "| swap | hnhp | 50.0 +- 0.0 | 25.0 +- 0.0 | 1.0 +- 0.0 | - / 61.1 / - |" in text
  study.plot(table, ["swap"], str(tmp_path / "comparison.png"))
  assert Image.open(tmp_path / "comparison.png").size[0] > 0


def test_variant_arguments_put_the_study_config_after_the_variants_own(tmp_path):
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    study.variant_args("nope", "")
  assert study.variant_args("hnhp_hn0.25", "total_steps=5") == ("hnhp", "hn_frac=0.25,total_steps=5")
  rows = [{"step": 0, retrieval.MEAN_RECALL_AT_1: 50.0}, {"step": 10, "loss": 2.0},
          {"step": 20, retrieval.MEAN_RECALL_AT_1: 30.0, "swap/original": 2.0}]
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert [r["step"] for r in study.evaluations(str(tmp_path))] == [0, 20]
  path.write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n")
  with pytest.raises(ValueError, match="metrics.jsonl: no evaluation rows"):
    study.evaluations(str(tmp_path))


def test_variant_comparison_names_a_results_file_without_figures(tmp_path):
  path = tmp_path / "results.json"
  path.write_text(json.dumps({"models": [{"metrics": {"retrieval/mean_recall@1": 3.0}}]}))
  with pytest.raises(ValueError, match="results.json"):
    study.suite_metrics(study.read_models(str(path))[0][1], str(path))
  path.write_text(json.dumps({"models": []}))
  with pytest.raises(ValueError, match="results.json"):
    study.read_models(str(path))


def test_every_variant_is_a_paper_row_whose_recipe_is_its_config():
  assert [study.variant_args(v, "") for v in study.STUDY] == [
      ("coco_control", ""), ("hn", ""), ("hp", ""), ("hnhp", ""), ("hnhp", "hn_frac=0.25"),
      ("hnhp", "hn_frac=0.5"), ("hnhp", "hn_frac=0.75")]
  assert study.paper_figure(study.PRETRAINED, "swap", "augmented") == 49.6
  assert study.paper_figure("hn", "replace", "brittleness") == 21.0
  assert study.paper_figure("hnhp_hn0.5", "replace", "augmented") == 56.9
  assert study.paper_figure("coco_control", "replace", "original") is None
