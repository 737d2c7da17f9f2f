"""One run, one table, one plot: compositional suites, zero-shot and retrieval over two models."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from configs import eval_hp
from configs import hnhp
from helpers import train_args, write_fixture_suites, write_json, write_random_image
from hpjax.evaluate import reports
from hpjax.evaluate import runner
from hpjax.train import trainer
from openclip_reference import openclip_model


def _result(label, metrics, registry=None):
  return reports.ModelResult(label, "m", None, "random-init", metrics, {}, {}, registry=registry)


def test_spectrum_table_gives_deltas_against_the_baseline(tmp_path):
  base = _result("pre", {"replace/augmented": 40.0, "swap/augmented": 20.0, "in/top1": 60.0,
                         "coco/image_to_text_R@1": 50.0, "coco/text_to_image_R@1": 30.0},
                 registry="openai-clip:ViT-B/32")
  tuned = _result("ft", {"replace/augmented": 50.0, "swap/augmented": 30.0, "in/top1": 55.5,
                         "coco/image_to_text_R@1": 51.0, "coco/text_to_image_R@1": 29.0})
  table = reports.spectrum_table([base, tuned], ["replace/augmented", "swap/augmented"], "pre")
  header, _, first, second = table.splitlines()[:4]
  assert header.split(" | ")[1:] == ["replace/augmented", "swap/augmented", "compositional",
                                     "in/top1", "coco/image_to_text_R@1",
                                     "coco/text_to_image_R@1 |"]
  assert first.startswith("| pre (baseline) | 40.0 | 20.0 | 30.0 | 60.0 |")
  assert second == ("| ft | 50.0 (+10.0) | 30.0 (+10.0) | 40.0 (+10.0) | 55.5 (-4.5) | "
                    "51.0 (+1.0) | 29.0 (-1.0) |")
  with pytest.raises(ValueError, match="baseline 'nope' is not a model of the run"):
    reports.spectrum_table([base, tuned], [], "nope")
  written = reports.write_spectrum(str(tmp_path), [base, tuned], ["replace/augmented"], "pre")
  assert set(written) == {"spectrum.md", "tradeoff.png"}


@pytest.fixture(scope="module")
def spectrum_fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp("spectrum")
  write_fixture_suites(str(root / "suites"))
  for label, name in enumerate(("cat", "dog", "car")):
    os.makedirs(root / "classes" / name)
    for k in range(3):
      write_random_image(root / "classes" / name / f"{k}.png", 10 * label + k)
  write_json(str(root / "classes.json"), {"classnames": ["cat", "dog", "car"],
                                          "templates": ["a photo of a {}.", "a {}"]})
  images = []
  for i in range(4):
    os.makedirs(root / "coco" / "val2014", exist_ok=True)
    write_random_image(root / "coco" / "val2014" / f"{i}.jpg", 50 + i)
    images.append({"filepath": "val2014", "filename": f"{i}.jpg", "split": "test",
                   "sentences": [{"raw": f"picture {i} number {k}"} for k in range(5)]})
  write_json(str(root / "dataset_coco.json"), {"images": images})
  checkpoints = []
  for seed in (0, 1):
    checkpoints.append(str(root / f"tiny_seed{seed}.pt"))
    torch.save(openclip_model("hpjax-tiny", seed).state_dict(), checkpoints[-1])
  return root, checkpoints


def test_runner_writes_one_table_and_one_plot(spectrum_fixture, tmp_path):
  root, checkpoints = spectrum_fixture
  config = eval_hp.get_config(
      f"model=hpjax-tiny,suite_root={root}/suites,image_root={root}/suites/images,"
      f"checkpoints={'+'.join(checkpoints)},batch_size=8,gallery_size=1,"
      f"zeroshot.images={root}/classes,zeroshot.classes={root}/classes.json,zeroshot.name=toy,"
      f"retrieval.annotations={root}/dataset_coco.json,retrieval.image_root={root}/coco,"
      "retrieval.name=coco,baseline=tiny_seed0.pt")
  out = runner.run(config, str(tmp_path))
  for figures in out.values():
    assert figures["toy/n"] == 9 and figures["coco/captions"] == 20
    assert 0 <= figures["toy/top1"] <= figures["toy/top5"] == 100.0  # 3 classes: always top-5
  table = open(tmp_path / "spectrum.md").read().splitlines()
  assert "| replace/augmented | swap/augmented | compositional | toy/top1 |" in table[0]
  a, b = out["tiny_seed0.pt"], out["tiny_seed1.pt"]
  assert table[3].startswith(f"| tiny_seed1.pt | {b['replace/augmented']:.1f} "
                             f"({b['replace/augmented'] - a['replace/augmented']:+.1f})")
  with open(tmp_path / "results.json") as f:
    saved = {m["label"]: m["metrics"] for m in json.load(f)["models"]}
  assert saved["tiny_seed1.pt"]["coco/mean_R@1"] == pytest.approx(b["coco/mean_R@1"])
  with Image.open(tmp_path / "tradeoff.png") as png:
    assert png.size[0] > 300
  config.baseline = "nope"
  with pytest.raises(ValueError, match="config.baseline 'nope' is not a model of the run"):
    runner.run(config, str(tmp_path / "again"))


def test_training_evaluates_zeroshot_and_retrieval_and_keeps_best_by_a_combination(
    spectrum_fixture, train_source, tmp_path):
  root, _ = spectrum_fixture
  combination = "toy/top1+coco/mean_R@1"
  config = hnhp.get_config(train_args(
      train_source, total_steps=2, **{
          "eval.every_steps": 1, "eval.zeroshot.images": f"{root}/classes",
          "eval.zeroshot.classes": f"{root}/classes.json", "eval.zeroshot.name": "toy",
          "eval.retrieval.annotations": f"{root}/dataset_coco.json",
          "eval.retrieval.image_root": f"{root}/coco", "eval.retrieval.name": "coco",
          "checkpoint.best_metric": combination}))
  metrics = trainer.run(config, str(tmp_path))
  assert metrics["toy/n"] == 9 and metrics["coco/captions"] == 20
  assert metrics[combination] == pytest.approx((metrics["toy/top1"] + metrics["coco/mean_R@1"]) / 2)
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [m["step"] for m in logged if combination in m] == [0, 1, 2]
  assert os.listdir(tmp_path / "best")
  config.checkpoint.best_metric = "toy/top1+nope/x"
  with pytest.raises(KeyError, match=r"\['nope/x'\] are not among the evaluation's figures"):
    trainer.run(config, str(tmp_path / "again"))


def _only_config(root, checkpoints, **fields):
  args = "".join(f",{k}={v}" for k, v in fields.items())
  return eval_hp.get_config(f"model=hpjax-tiny,checkpoints={'+'.join(checkpoints)},batch_size=8,"
                            f"baseline=tiny_seed0.pt{args}")


def _spectrum_rows(path):
  """label -> cells of spectrum.md's table, and its header."""
  lines = open(path).read().splitlines()
  cells = lambda line: [c.strip() for c in line.strip("|").split("|")]
  return cells(lines[0]), {cells(l)[0]: cells(l)[1:] for l in lines[2:] if l.startswith("|")}


@pytest.mark.parametrize("what", ["zeroshot", "retrieval"])
def test_a_run_with_only_zeroshot_or_only_retrieval(spectrum_fixture, tmp_path, what):
  root, checkpoints = spectrum_fixture
  if what == "zeroshot":
    fields = {"zeroshot.images": f"{root}/classes", "zeroshot.classes": f"{root}/classes.json",
              "zeroshot.name": "toy"}
    columns = ["toy/top1"]
  else:
    fields = {"retrieval.annotations": f"{root}/dataset_coco.json",
              "retrieval.image_root": f"{root}/coco", "retrieval.name": "coco"}
    columns = ["coco/image_to_text_R@1", "coco/text_to_image_R@1"]
  for stale in ("gallery.html", "ordering.png", "tradeoff.png"):  # an earlier run's reports
    (tmp_path / stale).write_text("old")
  out = runner.run(_only_config(root, checkpoints, **fields), str(tmp_path))
  a, b = out["tiny_seed0.pt"], out["tiny_seed1.pt"]
  prefix = columns[0].split("/")[0]
  assert {k.split("/")[0] for k in a} == {prefix}  # no compositional or timing figure
  if what == "zeroshot":
    assert a["toy/n"] == 9 and 0 <= a["toy/top1"] <= a["toy/top5"] == 100.0
  else:
    assert a["coco/images"] == 4 and a["coco/captions"] == 20
  header, rows = _spectrum_rows(tmp_path / "spectrum.md")
  assert header == ["model"] + columns
  assert rows["tiny_seed0.pt (baseline)"] == [f"{a[k]:.1f}" for k in columns]
  assert rows["tiny_seed1.pt"] == [f"{b[k]:.1f} ({b[k] - a[k]:+.1f})" for k in columns]
  with open(tmp_path / "results.json") as f:
    payload = json.load(f)
  saved = {m["label"]: m["metrics"] for m in payload["models"]}
  assert saved == {label: pytest.approx(figures) for label, figures in out.items()}
  # One model pass, no suite decode pass to count.
  assert payload["decode_passes"] == [{"models": ["tiny_seed0.pt", "tiny_seed1.pt"],
                                       "preprocess": ["eval", 64]}]
  table = open(tmp_path / "results.md").read()
  assert "REPLACE orig" not in table and f"| tiny_seed1.pt | {prefix} |" in table
  assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md", "spectrum.md"]


def test_a_run_with_nothing_to_evaluate_is_one_error(spectrum_fixture, tmp_path):
  root, checkpoints = spectrum_fixture
  with pytest.raises(ValueError, match="nothing to evaluate: set suite_root .REPLACE/SWAP., an "
                     "extra.. folder or file list, zeroshot.images or retrieval.annotations"):
    runner.run(_only_config(root, checkpoints), str(tmp_path))
  # A plug-in (not a dual encoder) scores suites only: with none it would have no figure.
  config = _only_config(root, checkpoints, **{"zeroshot.images": f"{root}/classes",
                                              "zeroshot.classes": f"{root}/classes.json"})
  with pytest.raises(ValueError, match=r"plug-in models \['itm'\] score compositional suites "
                     "only, and the config names none"):
    runner.run(config, str(tmp_path), plugins={"itm": lambda images, captions: None})
  assert not os.listdir(tmp_path)
