"""tools/bench_accelerator.py keeps working: its reduced size on the CPU writes the JSON and the
table, and its scorer agrees with the authors' loop."""

import json
import os
import subprocess
import sys

from helpers import REPO, write_fixture_suites


def test_reduced_run_writes_json_and_table(tmp_path):
  root = tmp_path / "suites"
  write_fixture_suites(str(root))
  out = tmp_path / "accel.json"
  subprocess.run([sys.executable, "tools/bench_accelerator.py", "--reduced", f"--root={root}",
                  f"--image_root={tmp_path / 'images'}", f"--out={out}"], cwd=REPO, check=True,
                 capture_output=True, timeout=600,
                 env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  result = json.loads(out.read_text())
  training, scoring = result["training"], result["scoring"]
  assert result["model"] == "hpjax-tiny" and result["reduced"]
  assert training["batch"] == 16 and training["step_flops"] > 0
  assert training["hpjax_step_s"] > 0 and training["openclip_step_s"] > 0
  assert training["hpjax_mfu"] is None  # a CPU has no peak in the table
  assert scoring["records"] == 20 and scoring["metrics_identical"]
  assert scoring["max_abs_score_difference"] < 1e-4
  table = out.with_suffix(".md").read_text()
  assert "| train step, batch 16, bf16 (s) |" in table and "REPLACE scoring, 20 records" in table
