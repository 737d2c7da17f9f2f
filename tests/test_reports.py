"""Report writers on hand-made scores: digests, the Table 1 layout, worst examples, files."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from hpjax import zoo
from hpjax.data import suites
from hpjax.evaluate import hard_positive
from hpjax.evaluate import reports


def _suite_scores(rows, valid=None):
  records = tuple(suites.EvalRecord(image=f"{i}.png", captions=(f"c{i}", f"n{i}", f"p{i}"),
                                    roles=("c", "c_n", "c_p"), source="f.json", index=i)
                  for i in range(len(rows)))
  valid = np.ones(len(rows), bool) if valid is None else np.asarray(valid)
  return hard_positive.SuiteScores(suites.Suite("swap", suites.HARD_POSITIVE, records),
                                   np.asarray(rows, np.float32), valid, None)


def test_checkpoint_digest_follows_the_bytes(tmp_path):
  path = tmp_path / "a.pt"
  path.write_bytes(b"weights-1")
  first = reports.checkpoint_digest(str(path))
  path.write_bytes(b"weights-2")
  assert first.startswith("sha256:") and reports.checkpoint_digest(str(path)) != first
  folder = tmp_path / "params"
  folder.mkdir()
  (folder / "x").write_bytes(b"1")
  assert reports.checkpoint_digest(str(folder)) != reports.checkpoint_digest(str(path))
  assert reports.checkpoint_digest(None) == "random-init"
  with pytest.raises(FileNotFoundError, match="nowhere"):
    reports.checkpoint_digest(str(tmp_path / "nowhere"))


def test_markdown_table_puts_each_figure_in_its_column():
  result = reports.ModelResult(
      "m", "ViT-B-32", None, "random-init",
      {"replace/original": 61.6, "replace/augmented": 46.8, "replace/brittleness": 23.2,
       "swap/augmented": 49.6, "swap/n": 7.0}, {}, {})
  table = reports.markdown_table([result])
  assert "| m | as_trained | 61.6 | 46.8 | 23.2 | - | 49.6 | - |" in table
  assert "| m | swap | 7 | augmented 49.6 |" in table


def test_worst_rows_rank_by_how_far_c_n_beats_a_true_caption():
  scores = _suite_scores([[0.9, 0.1, 0.8],   # correct: margin -0.7
                          [0.5, 0.6, 0.9],   # c_n beats c by 0.1
                          [0.2, 0.7, 0.9],   # c_n beats c by 0.5
                          [0.0, 0.9, 0.0]],  # the largest margin, but its image was skipped
                         valid=[True, True, True, False])
  assert reports.worst_rows(scores, 2).tolist() == [2, 1]
  assert reports.worst_rows(scores, 10).tolist() == [2, 1, 0]


def test_per_example_lines_and_ordering_plot(tmp_path):
  scores = _suite_scores([[0.5, 0.3, 0.4], [0.5, 0.3, 0.2], [0.3, 0.3, 0.1]],
                         valid=[True, True, False])
  path = os.path.join(tmp_path, "swap.jsonl")
  reports.write_per_example(path, scores)
  lines = [json.loads(line) for line in open(path)]
  assert [x.get("category") for x in lines] == ["c_and_cp_above_cn", "c_above_cn_above_cp", None]
  assert lines[0]["scores"] == pytest.approx([0.5, 0.3, 0.4]) and lines[2]["scores"] == [None] * 3
  assert lines[1]["captions"] == ["c1", "n1", "p1"] and lines[1]["roles"] == ["c", "c_n", "c_p"]
  no_triples = reports.ModelResult("m", "x", None, "d", {"sugarcrepe/a/accuracy": 50.0}, {}, {})
  assert not reports.plot_ordering(os.path.join(tmp_path, "none.png"), [no_triples])
  figures = {f"swap/pct/{c}": 20.0 for c in ("c_and_cp_above_cn", "c_above_cn_above_cp",
                                              "cp_above_cn_above_c", "cn_above_c_and_cp", "ties")}
  two = [reports.ModelResult(label, "x", None, "d", figures, {}, {}) for label in ("a", "b")]
  assert reports.plot_ordering(os.path.join(tmp_path, "ordering.png"), two)
  with Image.open(os.path.join(tmp_path, "ordering.png")) as image:
    assert image.format == "PNG"


def test_results_json_is_strict_json_with_null_for_missing_figures(tmp_path):
  result = reports.ModelResult("m", "x", None, "d", {"swap/augmented": float("nan"),
                                                     "swap/n": 0.0, "eval/images_per_s":
                                                     float("inf")}, {"seconds": 1.5}, {})
  path = os.path.join(tmp_path, "results.json")
  reports.write_results_json(path, [result])

  def refuse(constant):
    raise ValueError(f"bare {constant} in {path}")
  model = json.loads(open(path).read(), parse_constant=refuse)["models"][0]
  assert model["metrics"] == {"swap/augmented": None, "swap/n": 0.0, "eval/images_per_s": None}
  assert model["timings"] == {"seconds": 1.5}


def test_table1_lists_the_studys_rows_in_its_order_with_the_papers_figures_and_modes():
  def result(label, registry, parity, value):
    return reports.ModelResult(label, "ViT-B-32-quickgelu", None, "random-init",
                               {"replace/original": value, "replace/augmented": value}, {}, {},
                               parity=parity, registry=registry)

  rows = [result("mine", None, "as_trained", 50.0), result("NegCLIP", "NegCLIP", "paper", 70.0),
          result("openai-clip:ViT-B/32", "openai-clip:ViT-B/32", "paper", 60.0)]
  lines = [line for line in reports.markdown_table(rows).splitlines()
           if line.startswith("| ") and " | mode | " not in line and "---" not in line][:3]
  assert [line.split(" | ")[0][2:] for line in lines] == [
      "openai-clip:ViT-B/32", "NegCLIP", "mine"]
  paper = zoo.PAPER_FIGURES["openai-clip:ViT-B/32"]
  assert lines[0].startswith(f"| openai-clip:ViT-B/32 | paper | 60.0 (paper "
                             f"{paper['replace/original']:.1f}) | 60.0 (paper "
                             f"{paper['replace/augmented']:.1f}) |")
  assert lines[2].startswith("| mine | as_trained | 50.0 | 50.0 | - |")
