"""Resume: SIGKILL mid-training, or in the middle of a checkpoint save, then restart; a damaged
latest checkpoint (fault injection) resumes from the newest intact one.

Runs are `python -m hpjax.main` subprocesses (8 simulated devices, inherited from conftest);
the reference is the same config run uninterrupted in this process.
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hnhp
from helpers import REPO, assert_same_tree, final_params, train_args
from absl import flags
from absl import logging as absl_logging

from hpjax import errors
from hpjax.train import checkpointing, run_lock, trainer
from hpjax.train import step as step_lib

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
def uninterrupted_run(train_source, tmp_path_factory):
  """(workdir, final params) of the run uninterrupted."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  trainer.run(hnhp.get_config(_args(train_source)), workdir)
  step, params = final_params(workdir)
  assert step == STEPS
  return workdir, params


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
  return uninterrupted_run[1]


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


# -- a damaged latest checkpoint: resume from the newest intact step ------------------------------

def _small_run(directory):
  """A Checkpointer over a small TrainState and a grain iterator, saved at steps 2, 4 and 6
  (params and iterator position differ by step)."""
  ckpt = checkpointing.Checkpointer(str(directory), every_steps=2, keep=5, async_save=False)
  iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
  for step in (2, 4, 6):
    next(iterator), next(iterator)
    ckpt.maybe_save(step, _state(step), iterator)
  ckpt.close()


def _state(step, width=64):
  """Random values (incompressible, so the array has a file of its own), drawn by step."""
  w = np.random.default_rng(step).normal(size=(width, 256)).astype(np.float32)
  return step_lib.TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.asarray(w)},
                             opt_state=())


def _largest_array_file(step_dir):
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir / "state") for f in names
           if "/d/" in os.path.join(root, f)]
  return max(files, key=os.path.getsize)


DAMAGE = {  # what is done to the latest step, and the cause the warning must give
    "array file deleted": (lambda d: os.remove(_largest_array_file(d)),
                           r"its files do not read \(.*Error reading \"params.w"),
    "array file truncated": (lambda d: open(_largest_array_file(d), "r+b").truncate(10),
                             r"its files do not read \(.*Error reading \"params.w"),
    "step metadata removed": (lambda d: os.remove(d / "_CHECKPOINT_METADATA"),
                              r"is incomplete \(_CHECKPOINT_METADATA is missing\)"),
    "state metadata removed": (lambda d: os.remove(d / "state" / "_METADATA"),
                               r"is incomplete \(state/_METADATA is missing\)"),
    "step metadata half-written": (
        lambda d: (d / "_CHECKPOINT_METADATA").write_text('{"item_hand'),
        r"is incomplete \(_CHECKPOINT_METADATA is half-written: it does not parse\)"),
    "every file garbage": (
        lambda d: [p.write_bytes(b"junk") for p in d.rglob("*") if p.is_file()],
        r"is incomplete \(_CHECKPOINT_METADATA is half-written"),
    "state metadata garbage": (lambda d: (d / "state" / "_METADATA").write_bytes(b"junk"),
                               r"has unreadable metadata \(state/_METADATA does not parse\)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_step_resumes_from_the_newest_intact_one(damage, tmp_path, caplog):
  _small_run(tmp_path)
  checkpoints = tmp_path / "checkpoints"
  damage_step, cause = DAMAGE[damage]
  damage_step(checkpoints / "6")
  kept = sorted(str(p.relative_to(checkpoints / "6")) for p in (checkpoints / "6").rglob("*"))
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=2, keep=5, async_save=False)
  with caplog.at_level(logging.WARNING):
    state, iterator = ckpt.restore(_state(0), iter(grain.MapDataset.range(100).to_iter_dataset()))
  assert int(state.step) == 4
  np.testing.assert_array_equal(state.params["w"], _state(4).params["w"])
  assert next(iterator) == 4  # the data position of step 4
  assert re.search(f"checkpoint step 6 skipped: {cause}.*; kept as .*/6.damaged-.*; resuming "
                   "from step 4", caplog.text)
  assert _from_orbax(caplog) == []  # its warnings and errors about the damage stay out of view
  aside = [p for p in checkpoints.iterdir() if p.name.startswith("6.damaged-")]
  assert len(aside) == 1 and sorted(
      str(p.relative_to(aside[0])) for p in aside[0].rglob("*")) == kept  # moved, not deleted
  assert ckpt.maybe_save(6, _state(6), iterator) and 6 in ckpt.steps()  # saved again
  ckpt.close()


def _from_orbax(caplog):
  return [r.getMessage() for r in caplog.records if f"{os.sep}orbax{os.sep}" in r.pathname]


def test_orbax_s_own_words_on_damage_show_under_verbosity_1(tmp_path, caplog):
  _small_run(tmp_path)
  DAMAGE["every file garbage"][0](tmp_path / "checkpoints" / "6")
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=2, keep=5, async_save=False)
  level, verbosity = absl_logging.get_absl_logger().level, flags.FLAGS["verbosity"].value
  absl_logging.set_verbosity(absl_logging.DEBUG)  # what --verbosity=1 sets
  try:
    with caplog.at_level(logging.DEBUG):
      state, _ = ckpt.restore(_state(0), iter(grain.MapDataset.range(100).to_iter_dataset()))
  finally:
    flags.FLAGS["verbosity"].value = verbosity
    absl_logging.get_absl_logger().setLevel(level)
    ckpt.close()
  assert int(state.step) == 4 and _from_orbax(caplog)


def test_a_file_where_a_step_folder_belongs_is_kept_aside_not_deleted(tmp_path, caplog):
  _small_run(tmp_path)
  checkpoints = tmp_path / "checkpoints"
  shutil.rmtree(checkpoints / "6")
  (checkpoints / "6").write_bytes(b"not a checkpoint")
  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=2, keep=5, async_save=False)
  with caplog.at_level(logging.WARNING):
    state, iterator = ckpt.restore(_state(0), iter(grain.MapDataset.range(100).to_iter_dataset()))
  assert int(state.step) == 4
  assert re.search("checkpoint step 6 skipped: is a file, not a checkpoint folder; kept as "
                   ".*/6.damaged-.*; resuming from step 4", caplog.text)
  aside = [p for p in checkpoints.iterdir() if p.name.startswith("6.damaged-")]
  assert len(aside) == 1 and aside[0].read_bytes() == b"not a checkpoint"
  assert ckpt.maybe_save(6, _state(6), iterator) and 6 in ckpt.steps()
  ckpt.close()


def test_an_unfinished_save_of_a_stopped_run_is_removed_and_said(tmp_path, caplog):
  _small_run(tmp_path)
  checkpoints = tmp_path / "checkpoints"
  shutil.copytree(checkpoints / "6", checkpoints / "8.orbax-checkpoint-tmp")
  os.remove(checkpoints / "8.orbax-checkpoint-tmp" / "_CHECKPOINT_METADATA")
  with caplog.at_level(logging.WARNING):
    ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=2, keep=5, async_save=False)
    state, _ = ckpt.restore(_state(0), iter(grain.MapDataset.range(100).to_iter_dataset()))
  ckpt.close()
  assert int(state.step) == 6
  assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "6"]
  assert re.search(r"removed .*/checkpoints/8.orbax-checkpoint-tmp: an unfinished save of a run "
                   "that was stopped", caplog.text)
  assert _from_orbax(caplog) == []


_HOLD = ("import sys, time; from hpjax.train import run_lock; run_lock.RunLock(sys.argv[1]); "
         "print('held', flush=True); time.sleep(120)")


def _holder(folder):
  """Another process holding `folder`'s run lock (as a running trainer does)."""
  process = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == "held"
  return process


def test_a_second_run_on_a_folder_is_refused_and_a_dead_run_s_lock_is_taken_over(tmp_path,
                                                                                caplog):
  _small_run(tmp_path)
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  holder = _holder(tmp_path)
  try:
    with pytest.raises(errors.USER_ERRORS) as error:
      checkpointing.Checkpointer(str(tmp_path), every_steps=2, keep=5, async_save=False)
  finally:
    holder.kill()
    holder.wait()
  line = errors.summary(error.value)
  assert "\n" not in line and f"{tmp_path} is in use by another run (pid {holder.pid} on " in line
  assert "running" in line and "wait for it to end, or train in another workdir" in line
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
  # Killed, it left its lock file: stale, said, and taken over.
  assert (tmp_path / run_lock.NAME).exists()
  with caplog.at_level(logging.WARNING):
    ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=2, keep=5, async_save=False)
  assert re.search(rf"hpjax-run.lock: the run that held it \(pid {holder.pid} on .*\) is gone; "
                   "taking it over", caplog.text)
  ckpt.close()
  assert not (tmp_path / run_lock.NAME).exists()  # released on close


def test_a_run_that_fails_after_taking_its_folder_lets_the_next_run_in_the_process_take_it(
    train_source, tmp_path):
  """The trainer's lock is released however the run ends (here: a training file that is not
  there, found after the checkpoints are held), so a rerun in the same process is not refused."""
  with pytest.raises(FileNotFoundError):
    trainer.run(hnhp.get_config(train_args(str(tmp_path / "missing.jsonl"))), str(tmp_path))
  assert not (tmp_path / run_lock.NAME).exists()
  checkpointing.Checkpointer(str(tmp_path), every_steps=2, keep=5, async_save=False).close()


def test_the_trainer_is_refused_in_one_line_while_another_run_holds_the_workdir(train_source,
                                                                              tmp_path):
  holder = _holder(tmp_path)
  try:
    result = subprocess.run(
        [sys.executable, "-m", "hpjax.main", f"--config=configs/hnhp.py:{_args(train_source)}",
         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=600)
  finally:
    holder.kill()
    holder.wait()
  last = result.stderr.strip().splitlines()[-1]
  assert result.returncode == 1 and last.startswith(
      f"error: {tmp_path} is in use by another run (pid {holder.pid} on "), result.stderr[-2000:]
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_directory_without_an_intact_step_stops_and_another_models_is_one_line(tmp_path):
  _small_run(tmp_path)
  checkpoints = tmp_path / "checkpoints"
  def fresh():
    return iter(grain.MapDataset.range(100).to_iter_dataset())

  ckpt = checkpointing.Checkpointer(str(tmp_path), every_steps=2, keep=5, async_save=False)
  with pytest.raises(ValueError) as error:
    ckpt.restore(_state(0, width=32), fresh(), model_name="ViT-B-32")
  message = str(error.value)
  assert "\n" not in message and "checkpoints/6 does not fit model 'ViT-B-32'" in message
  assert "1 mis-shaped" in message and "another model" in message
  assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "6"]  # nothing moved
  for step in (2, 4, 6):
    os.remove(checkpoints / str(step) / "_CHECKPOINT_METADATA")
  with pytest.raises(ValueError, match=r"no intact checkpoint: step 6 is incomplete "
                     r"\(_CHECKPOINT_METADATA is missing\); step 4 .*; step 2 "):
    ckpt.restore(_state(0), fresh())
  ckpt.close()


@pytest.mark.slow
def test_a_run_whose_last_checkpoint_is_truncated_resumes_to_the_same_params(
    train_source, uninterrupted_run, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted_run[0], workdir)
  checkpoints = tmp_path / "run" / "checkpoints"
  open(_largest_array_file(checkpoints / str(STEPS)), "r+b").truncate(100)
  with caplog.at_level(logging.INFO):
    trainer.run(hnhp.get_config(_args(train_source)), workdir)
  assert f"checkpoint step {STEPS} skipped: its files do not read" in caplog.text
  assert f"resuming from {checkpoints}/{STEPS - 2}" in caplog.text
  step, params = final_params(workdir)
  assert step == STEPS
  assert_same_tree(params, uninterrupted_run[1], rtol=1e-6, atol=1e-7)
  assert any(p.name.startswith(f"{STEPS}.damaged-") for p in checkpoints.iterdir())
  # The same workdir with another batch size stops before any work, naming the field.
  with pytest.raises(ValueError, match=r"other values of batch_size \(8 -> 16\)"):
    trainer.run(hnhp.get_config(_args(train_source) + ",batch_size=16"), workdir)


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MB tmpfs (needs the right to mount; skipped without it)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                           capture_output=True, text=True, check=False)
  if mounted.returncode:
    pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
  yield disk
  subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_one_line_naming_the_file_and_the_last_save_stays(small_disk):
  ckpt = checkpointing.Checkpointer(str(small_disk), every_steps=2, keep=5, async_save=False)
  iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
  ckpt.maybe_save(2, _state(2), iterator)
  with pytest.raises(Exception) as error:  # (orbax raises tensorstore's ValueError)
    ckpt.maybe_save(4, _state(4, width=4096), iterator)  # 4 MB
  ckpt.close()
  line = errors.summary(error.value)
  assert isinstance(error.value, errors.USER_ERRORS) and len(line) < 420
  assert f"{small_disk}/checkpoints/4" in line and "No space left on device" in line
  ckpt = checkpointing.Checkpointer(str(small_disk), every_steps=2, keep=5, async_save=False)
  state, _ = ckpt.restore(_state(0), iter(grain.MapDataset.range(100).to_iter_dataset()))
  assert int(state.step) == 2
  ckpt.close()
