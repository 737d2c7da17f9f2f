"""The README's first command, `python -m hpjax.main --config=configs/hnhp.py`, at a reduced size:
it builds the synthetic world, pretrains, finetunes, evaluates REPLACE, SWAP and the world's
zero-shot and retrieval probes, ends with the pretrained-vs-finetuned table and tells the user
where the plot and reports are; the reported figures are recomputed here from the final
checkpoint."""

import json
import os
import subprocess
import sys

import pytest

from configs import hnhp
from helpers import REPO, final_params, flax_encoders, hard_positive_figures, per_record_scores
from hpjax.data import synthetic
from hpjax.evaluate import benchmarks
from hpjax.models import CLIP, get_model_config
from hpjax.train import pretrain

SUITES = ("replace_attributes", "replace_relations", "replace", "swap")
FIGURES = ("original", "augmented", "brittleness", "hard_positive")


@pytest.mark.slow
def test_default_command_writes_reports_whose_figures_follow_from_its_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  small = ("total_steps=6,batch_size=16,log_every_steps=3,eval.every_steps=6,"
           "checkpoint.every_steps=3,data.val_size=16,pretrain.steps=3,pretrain.batch_size=16,"
           "data.synthetic.num_train=96,data.synthetic.num_eval=24")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  result = subprocess.run(
      [sys.executable, "-m", "hpjax.main", f"--config=configs/hnhp.py:{small}",
       # Relative, as in the README (orbax itself accepts only absolute paths).
      f"--workdir={os.path.relpath(workdir, REPO)}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-4000:]

  results_file = workdir / "reports" / "results.json"
  assert os.path.relpath(results_file, REPO) in output, "the closing summary must say where the reports are"
  assert "step 6/6" in output
  # Pretrained first (captions only, cached in WORKDIR/pretrain), then finetuned from it.
  assert "pretraining: 3 captions-only steps" in output and "step 3/3" in output
  (stage,) = os.listdir(workdir / "pretrain")
  assert pretrain.complete(str(workdir / "pretrain" / stage))
  for name in ("results.md", "ordering.png", "gallery.html"):
    assert (workdir / "reports" / name).stat().st_size > 0, name

  (model,) = json.loads(results_file.read_text())["models"]
  metrics = model["metrics"]
  # Every figure again, from the final checkpoint's scores computed record by record here.
  world = synthetic.write_world(str(workdir / "world"), **hnhp.get_config(small).data.synthetic)
  loaded = benchmarks.load_hard_positive(world.eval_root, image_dir=world.image_root)
  config = get_model_config("hpjax-tiny")
  encoders = flax_encoders(CLIP(config), final_params(workdir)[1])
  want = {name: hard_positive_figures(per_record_scores(suite.records, None, config.vision.image_size,
                                           *encoders), suite.records[0].roles)
          for name, suite in loaded.items()}
  want["replace"] = {k: (want["replace_attributes"][k] + want["replace_relations"][k]) / 2
                     for k in FIGURES}
  for suite in SUITES:
    for figure in FIGURES:
      assert metrics[f"{suite}/{figure}"] == pytest.approx(want[suite][figure]), (suite, figure)
  # The closing lines repeat the headline figures of the reports.
  assert (f"REPLACE original {metrics['replace/original']:.1f}, "
          f"augmented {metrics['replace/augmented']:.1f}") in output
  assert f"SWAP original {metrics['swap/original']:.1f}" in output
  # The synthetic world writes one record per eval image and suite.
  assert metrics["replace_attributes/n"] == metrics["swap/n"] == 24
  # The pretrained model (step 0) and the finetuned one are evaluated and logged (metrics.jsonl).
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  pretrained, final = [r for r in rows if "replace/original" in r]
  assert (pretrained["step"], final["step"]) == (0, 6)
  assert final["replace/original"] == pytest.approx(metrics["replace/original"])
  assert "world_objects/top1" in final and "world_5cap/text_to_image_R@1" in final
  # It ends with the table of both (spectrum.md), then where the plot and the reports are.
  reports = os.path.relpath(workdir / "reports", REPO)
  table = (workdir / "reports" / "spectrum.md").read_text().split("\n\n")[0]
  assert "| pretrained (baseline) |" in table and "| world_objects/top1 |" in table
  ends = [output.index(table), output.index(f"trade-off plot: {reports}/tradeoff.png"),
          output.index(f"{reports}/spectrum.md", output.index("reports: "))]
  assert ends == sorted(ends)
  # Library INFO lines (orbax writes a dozen per checkpoint) are kept off the terminal.
  assert "checkpoint_manager.py" not in output
