"""The README's first command, `python -m hpjax.main --config=configs/hnhp.py`, at a reduced size:
it builds the synthetic world, trains, evaluates REPLACE and SWAP and tells the user where the
reports are."""

import json
import math
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SUITES = ("replace_attributes", "replace_relations", "replace", "swap")
FIGURES = ("original", "augmented", "brittleness", "hard_positive")


def test_default_command_writes_reports_with_finite_metrics_for_every_suite(tmp_path):
  workdir = tmp_path / "run"
  small = ("total_steps=6,batch_size=16,log_every_steps=3,eval.every_steps=0,"
           "checkpoint.every_steps=3,data.val_size=16,"
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
  for name in ("results.md", "ordering.png", "gallery.html"):
    assert (workdir / "reports" / name).stat().st_size > 0, name

  (model,) = json.loads(results_file.read_text())["models"]
  metrics = model["metrics"]
  for suite in SUITES:
    for figure in FIGURES:
      value = metrics[f"{suite}/{figure}"]
      assert math.isfinite(value) and 0.0 <= value <= 100.0, (suite, figure, value)
    assert metrics[f"{suite}/n"] > 0, suite
  # The closing lines repeat the headline figures of the reports.
  assert (f"REPLACE original {metrics['replace/original']:.1f}, "
          f"augmented {metrics['replace/augmented']:.1f}") in output
  assert f"SWAP original {metrics['swap/original']:.1f}" in output
  # The synthetic world writes one record per eval image and suite.
  assert metrics["replace_attributes/n"] == metrics["swap/n"] == 24
  # Library INFO lines (orbax writes a dozen per checkpoint) are kept off the terminal.
  assert "checkpoint_manager.py" not in output
