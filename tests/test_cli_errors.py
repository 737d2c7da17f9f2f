"""Errors a user causes end in one line naming the file or field and the cause."""

import errno
import json
import os
import subprocess
import sys

import pytest

from hpjax import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fails(capsys, error):
  def main(argv):
    del argv
    raise error

  with pytest.raises(SystemExit) as exit_:
    errors.reported(main)([])
  assert exit_.value.code == 1
  return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_user_error_is_one_last_line(capsys):
  full = OSError(errno.ENOSPC, "No space left on device", "/run/checkpoints/300/state")
  assert _fails(capsys, full) == (
      "error: [Errno 28] No space left on device: '/run/checkpoints/300/state'")
  assert _fails(capsys, KeyError("config has no field 'x'")) == (
      "error: config has no field 'x'")
  noisy = ValueError("NOT_FOUND: Error reading 'a/0' in /run/ck/6" + " {spec}" * 200 + "\n" * 3
                     + "'driver': 'zarr',\n" * 40)
  line = _fails(capsys, noisy)
  assert line.startswith("error: NOT_FOUND: Error reading 'a/0' in /run/ck/6 {spec}")
  assert len(line) < 500 and line.endswith("(40 more lines with --traceback)")
  long = ValueError("RESOURCE_EXHAUSTED: Error writing in /run/ck/2.tmp/" + "x" * 500
                    + ": No space left on device")
  line = _fails(capsys, long)
  assert line.startswith("error: RESOURCE_EXHAUSTED: Error writing in /run/ck/2.tmp/xxx")
  assert line.endswith("xxx: No space left on device") and len(line) < 420


def test_a_listing_shows_its_first_lines_in_the_one_line(capsys):
  """hpjax's own listings (indented) are the cause: the first of them are shown, the rest
  counted; a mis-shaped key's shapes are visible without --traceback."""
  listing = ValueError("checkpoint x.safetensors does not fit model 'm': 0 missing, 0 "
                       "unexpected, 8 mis-shaped keys\n" + "".join(
                           f"  mis-shaped: blocks.{i}.w: checkpoint (4, 8) vs model (4, 4)\n"
                           for i in range(8)))
  line = _fails(capsys, listing)
  assert line.startswith("error: checkpoint x.safetensors does not fit model 'm'")
  assert "; mis-shaped: blocks.0.w: checkpoint (4, 8) vs model (4, 4); " in line
  assert "blocks.5.w" in line and "blocks.6.w" not in line
  assert line.endswith("(2 more lines with --traceback)")
  assert errors.summary(ValueError("two models failed:\n  a: no file\n  b: bad key")) == (
      "two models failed: a: no file; b: bad key")


def test_a_programming_error_keeps_its_traceback():
  def main(argv):
    raise TypeError("a bug")

  with pytest.raises(TypeError, match="a bug"):
    errors.reported(main)([])


def _run(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}  # (tools/ import hpjax)
  result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
  return result.returncode, result.stderr.strip().splitlines()


def test_command_line_mistakes_end_in_one_line(tmp_path):
  """An unknown --config.a.b flag, a bad config-argument value, a bad value checked before any
  work, a missing config file, a build with a missing image: exit 1, one last line."""
  main = ["-m", "hpjax.main", f"--workdir={tmp_path / 'w'}"]
  cases = [
      (main + ["--config=configs/hnhp.py", "--config.data.nope=1"],
       "flag error: --config.data.nope: config has no field 'data.nope': 'data' has ["),
      (main + ["--config=configs/hnhp.py:batch_size=abc"],
       "flag error: config field 'batch_size': 'abc' is not of type int"),
      (main + ["--config=configs/hnhp.py:hn_frac=1.5"],
       "error: config: data.hn_frac=1.5 must be a fraction in [0, 1]"),
      (main + ["--config=configs/nothere.py"],
       "error: --config: [Errno 2] No such file or directory: 'configs/nothere.py'"),
  ]
  records = tmp_path / "train.jsonl"
  records.write_text(json.dumps({"image": "gone.png", "caption": "a cat"}) + "\n")
  cases.append((["tools/build_train_data.py", f"--jsonl={records}",
                 f"--out={tmp_path / 'out.array_record'}"],
                f"error: record 0: cannot read image {tmp_path / 'gone.png'}: [Errno 2]"))
  for args, want in cases:
    code, lines = _run(*args)
    assert code == 1 and lines[-1].startswith(want), (args, lines[-5:])
    assert not any(line.startswith("Traceback") for line in lines), (args, lines)
  assert not os.path.exists(tmp_path / "out.array_record")
