"""Resume: SIGKILL mid-training, or in the middle of a checkpoint save, then restart.

Runs are `python -m hpjax.main` subprocesses (8 simulated devices, inherited from conftest);
the reference is the same config run uninterrupted in this process.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from configs import hnhp
from helpers import REPO, assert_same_tree, final_params, train_args
from hpjax.train import trainer

STEPS = 8


def _args(train_source):
  return train_args(train_source, total_steps=STEPS)


def _start(train_source, workdir):
  return subprocess.Popen(
      [sys.executable, "-m", "hpjax.main", f"--config=configs/hnhp.py:{_args(train_source)}",
       f"--workdir={workdir}"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)


def _wait_for(process, condition, what, timeout=300):
  start = time.time()
  while not condition():
    if process.poll() is not None:
      pytest.fail(f"the run ended before {what}: {process.stderr.read()[-2000:]}")
    if time.time() - start > timeout:
      process.kill()
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.005)


def _kill(process):
  assert process.poll() is None, "the run had already finished: nothing was interrupted"
  process.send_signal(signal.SIGKILL)
  process.wait()


def _finish(train_source, workdir):
  result = subprocess.run(
      [sys.executable, "-m", "hpjax.main", f"--config=configs/hnhp.py:{_args(train_source)}",
       f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


@pytest.fixture(scope="module")
def uninterrupted(train_source, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  trainer.run(hnhp.get_config(_args(train_source)), workdir)
  step, params = final_params(workdir)
  assert step == STEPS
  return params


def _committed(checkpoints, step):
  return os.path.exists(os.path.join(checkpoints, str(step), "_CHECKPOINT_METADATA"))


@pytest.mark.slow
def test_sigkill_mid_training_then_restart_matches_uninterrupted(train_source, uninterrupted, tmp_path):
  checkpoints = tmp_path / "checkpoints"
  process = _start(train_source, tmp_path)
  _wait_for(process, lambda: _committed(checkpoints, 4), "the step-4 checkpoint")
  _kill(process)
  log = _finish(train_source, tmp_path)
  assert "resuming from" in log and ("checkpoints/4" in log or "checkpoints/6" in log)
  step, params = final_params(tmp_path)
  assert step == STEPS
  assert_same_tree(params, uninterrupted, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_kill_during_a_save_restarts_from_the_previous_checkpoint(train_source, uninterrupted, tmp_path):
  checkpoints = tmp_path / "checkpoints"
  process = _start(train_source, tmp_path)

  def saving_after_2():
    if not _committed(checkpoints, 2) or not checkpoints.exists():
      return False
    return any("tmp" in name for name in os.listdir(checkpoints))

  _wait_for(process, saving_after_2, "a save after step 2 to be in progress")
  _kill(process)
  partial = [n for n in os.listdir(checkpoints) if "tmp" in n]
  assert partial, "no interrupted save left behind"
  in_progress = int(partial[0].split(".")[0])
  assert not _committed(checkpoints, in_progress)
  log = _finish(train_source, tmp_path)
  assert "resuming from" in log and f"checkpoints/{in_progress - 2}" in log
  step, params = final_params(tmp_path)
  assert step == STEPS
  assert_same_tree(params, uninterrupted, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_sigterm_saves_and_stops_then_the_restart_matches(train_source, uninterrupted, tmp_path):
  checkpoints = tmp_path / "checkpoints"
  process = _start(train_source, tmp_path)
  _wait_for(process, lambda: _committed(checkpoints, 2), "the step-2 checkpoint")
  assert process.poll() is None, "the run had already finished: nothing was interrupted"
  process.send_signal(signal.SIGTERM)
  log = process.communicate(timeout=300)[1]
  assert process.returncode == 0, log[-3000:]
  stopped = int(log.split("stopped at step ")[1].split()[0])
  assert stopped < STEPS and _committed(checkpoints, stopped)
  _finish(train_source, tmp_path)
  step, params = final_params(tmp_path)
  assert step == STEPS
  assert_same_tree(params, uninterrupted, rtol=1e-6, atol=1e-7)
