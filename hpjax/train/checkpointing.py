"""Train checkpoints: orbax CheckpointManager over (train state, grain iterator state).

`workdir/checkpoints/<step>` keeps the last K saves (async: the loop goes on while the arrays are
written); `workdir/best/<step>` keeps the best save by an evaluation metric. orbax writes each
save into a temporary folder and renames it when complete, so a run killed mid-save leaves the
previous checkpoint as the latest intact one; a step damaged later (a file deleted or truncated)
is skipped on resume for the newest intact one. Paths may be gs:// (orbax uses etils.epath).

One run at a time writes a folder (`run_lock`: a second is refused in one line naming the
holder). A damaged step, a file where a step folder belongs, or an unfinished save
(`<step>.orbax-checkpoint-tmp`) of a stopped run is handled here and told in one warning each,
with orbax's own warnings about it kept out of view (`errors.library_logs_quieted`).
"""

from __future__ import annotations

import json
import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from hpjax import errors, sharding
from hpjax.checkpoints.mapping import CheckpointMismatchError, check_keys
from hpjax.checkpoints.orbax_params import absolute_path, flat_shapes
from hpjax.train import run_lock

_COMMITTED = "_CHECKPOINT_METADATA"  # orbax writes it last, when a save is complete.
_ITEM_METADATA = "_METADATA"  # the tree of an item (here: the train state).
_UNFINISHED = ".orbax-checkpoint-tmp"  # in the name of a save not yet renamed to its step


def _plain_array_saves_on_cpu() -> None:
  """On CPU, save each array from one replica. orbax's replica-parallel writes slice every
  replicated array per device, and each distinct slice is a fresh XLA compile (17 of 24 s of
  three saves of the tiny model on 8 simulated devices); the devices share one disk anyway."""
  if jax.default_backend() == "cpu":
    with errors.library_logs_quieted(ocp):  # (orbax warns that it is overridden)
      ocp.type_handlers.register_type_handler(
          jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def _hold(folder: str) -> run_lock.RunLock | None:
  """Process 0 holds `folder`'s run lock; when it is refused, every process stops alike."""
  lock, refused = None, None
  if jax.process_index() == 0:
    try:
      lock = run_lock.RunLock(folder)
    except run_lock.FolderHeldError as e:
      refused = e
  if sharding.host_max(int(refused is not None)):
    raise refused or run_lock.FolderHeldError(
        f"{folder}: process 0 could not lock the checkpoint folder (its log says why)")
  return lock


def _remove_unfinished(directory) -> None:
  """Removes the unfinished saves a stopped run left in `directory` (the lock is ours: no run
  is writing them), saying so; orbax would otherwise remove one silently when it saves that step
  again, or keep it forever."""
  if jax.process_index() or not directory.is_dir():
    return
  for entry in directory.iterdir():
    if _UNFINISHED in entry.name:
      if entry.is_dir():
        entry.rmtree()
      else:
        entry.unlink()
      logging.warning("removed %s: an unfinished save of a run that was stopped", entry)


def _manager(directory: str, *, max_to_keep: int, async_save: bool, best_metric: str | None = None,
             best_mode: str = "max") -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
      best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode=best_mode)
  return ocp.CheckpointManager(absolute_path(directory), options=options,
                              item_names=("state", "data"))


def abstract_like(tree):
  """ShapeDtypeStructs with shardings: the restore target for a tree of global arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
  """Saves every `every_steps`, keeps the last `keep`, plus the best by `best_metric`."""

  def __init__(self, workdir: str, *, every_steps: int, keep: int = 3, async_save: bool = True,
               best_metric: str | None = None, best_mode: str = "max"):
    _plain_array_saves_on_cpu()
    self.lock = _hold(workdir)
    self.every_steps = every_steps
    self.best_metric = best_metric
    try:
      for folder in ("checkpoints", "best"):
        _remove_unfinished(absolute_path(os.path.join(workdir, folder)))
      with errors.library_logs_quieted(ocp):  # (a manager reads every save's metadata)
        self.last = _manager(os.path.join(workdir, "checkpoints"), max_to_keep=keep,
                             async_save=async_save)
        self.best = (_manager(os.path.join(workdir, "best"), max_to_keep=1,
                              async_save=async_save, best_metric=best_metric,
                              best_mode=best_mode)
                     if best_metric else None)
    except BaseException:
      if self.lock is not None:
        self.lock.release()
      raise

  def steps(self) -> list[int]:
    """Every saved step, intact or not (a workdir with any belongs to a run)."""
    return list(self.last.all_steps())

  def restore(self, state, iterator, model_name: str = ""):
    """(state, iterator) restored from the newest intact save, or as given when there is none.

    `state` supplies the structure, dtypes and shardings; `iterator` is the fresh grain iterator
    whose position is set in place. A damaged step (a metadata file missing, an array file
    deleted or truncated) is skipped with a warning naming it and the cause, and moved aside to
    `<step>.damaged-<time>` (never deleted) so that the run can save that step again. A save of
    another model is not damage: it stops the run, as does a directory with no intact step.
    """
    with errors.library_logs_quieted(ocp):
      restored, step, damaged = self._newest_intact(state, iterator, model_name)
    if restored is None:
      if damaged:
        raise ValueError(f"{self.last.directory}: no intact checkpoint: " + "; ".join(
            f"step {s} {c}" for s, c in damaged) + " (move the folder away to start afresh)")
      return state, iterator
    # Every host must restore the same step (all read the same files; each says so if not).
    if sharding.host_max(step) != -sharding.host_max(-step):
      raise ValueError(f"{self.last.directory}: the hosts found different intact steps "
                       f"(this host: {step}); is the checkpoint directory shared?")
    for bad_step, cause in damaged:
      aside = self._move_aside(bad_step)
      logging.warning("checkpoint step %d skipped: %s; kept as %s; resuming from step %d",
                      bad_step, cause, aside, step)
    if damaged:
      self.last.reload()
    logging.info("resuming from %s/%d", self.last.directory, step)
    return restored.state, restored.data

  def _newest_intact(self, state, iterator, model_name: str):
    """(restored, step, [(damaged step, cause)]) of the newest intact save; restored is None
    when none is. A file where a step folder belongs is damage too (orbax ignores it, then
    deletes it when it saves that step)."""
    files = {int(p.name) for p in self.last.directory.iterdir()
             if p.name.isdigit() and not p.is_dir()} if self.last.directory.is_dir() else set()
    damaged = []
    for step in sorted(set(self.last.all_steps()) | files, reverse=True):
      directory = self.last.directory / str(step)
      cause = "is a file, not a checkpoint folder" if step in files else _incomplete(directory)
      if cause is None:
        cause = _check_fits(directory, state, model_name)
      if cause is None:
        try:
          restored = self.last.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_like(state)),
              data=grain.checkpoint.CheckpointRestore(iterator)))
        except Exception as e:  # pylint: disable=broad-except (tensorstore raises bare Exception)
          cause = f"its files do not read ({errors.first_line(_root_cause(e), 300)})"
      if cause is None:
        return restored, step, damaged
      damaged.append((step, cause))
    return None, None, damaged

  def _move_aside(self, step: int):
    aside = self.last.directory / f"{step}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
    if jax.process_index() == 0:
      (self.last.directory / str(step)).rename(aside)
    multihost_utils.sync_global_devices(f"damaged checkpoint {step} moved aside")
    return aside

  def _args(self, state, iterator):
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(iterator))

  def maybe_save(self, step: int, state, iterator, *, force: bool = False) -> bool:
    """Saves at multiples of every_steps (or when forced); the caller has checked the state."""
    if not force and step % self.every_steps:
      return False
    if step in self.last.all_steps():
      return False
    return self.last.save(step, args=self._args(state, iterator), force=True)

  def save_best(self, step: int, state, iterator, metrics: dict) -> None:
    if self.best is None:
      return
    if self.best_metric not in metrics:
      raise KeyError(f"checkpoint.best_metric {self.best_metric!r} is not among the evaluation "
                     f"metrics {sorted(metrics)}")
    self.best.save(step, args=self._args(state, iterator), metrics=dict(metrics), force=True)

  def best_step(self) -> int | None:
    """The step of the kept-best save, or None without one."""
    if self.best is None:
      return None
    self.best.wait_until_finished()
    return self.best.best_step()

  def best_state(self, step: int, state):
    """The kept-best save of `step` (`best_step`); `state` gives the structure."""
    with errors.library_logs_quieted(ocp):
      restored = self.best.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_like(state))))
    return restored.state

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    for manager in (self.last, self.best):
      if manager is not None:
        manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    for manager in (self.last, self.best):
      if manager is not None:
        manager.close()
    if self.lock is not None:
      self.lock.release()


def _root_cause(error: BaseException) -> BaseException:
  """The innermost exception: orbax wraps tensorstore's short reason ("Error reading ... byte
  range ... not valid") in a message that dumps the whole tensorstore spec."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  return error


def _incomplete(directory) -> str | None:
  """Why a step folder is not a whole save (None when its metadata files are all there and its
  commit record reads)."""
  for name in (_COMMITTED, f"state/{_ITEM_METADATA}"):
    if not (directory / name).exists():
      return f"is incomplete ({name} is missing)"
  try:
    json.loads((directory / _COMMITTED).read_text())
  except (ValueError, UnicodeDecodeError):
    return f"is incomplete ({_COMMITTED} is half-written: it does not parse)"
  return None


def _check_fits(directory, state, model_name: str) -> str | None:
  """None when the saved params have the shapes of `state`'s; raises one line when they do not
  (another model's checkpoint); returns the cause when the metadata does not read."""
  try:
    metadata = ocp.StandardCheckpointer().metadata(directory / "state").item_metadata
  except Exception as e:  # pylint: disable=broad-except (orbax raises what its readers raise)
    return f"has unreadable metadata ({errors.first_line(_root_cause(e), 300)})"
  if metadata is None:  # (orbax logs why, and returns nothing)
    return f"has unreadable metadata (state/{_ITEM_METADATA} does not parse)"
  stored = metadata.tree
  try:
    check_keys(flat_shapes(stored.get("params", {})), flat_shapes(state.params),
               f"checkpoint {directory}", model_name or "of this run")
  except CheckpointMismatchError as e:
    raise ValueError(f"{errors.first_line(e)}: it was written by another model; train in a new "
                     "workdir (or set checkpoint.directory)") from e
  return None
