"""Train checkpoints: orbax CheckpointManager over (train state, grain iterator state).

`workdir/checkpoints/<step>` keeps the last K saves (async: the loop goes on while the arrays are
written); `workdir/best/<step>` keeps the best save by an evaluation metric. orbax writes each
save into a temporary folder and renames it when complete, so a run killed mid-save leaves the
previous checkpoint as the latest intact one. Paths may be gs:// (orbax uses etils.epath).
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from hpjax.checkpoints.orbax_params import absolute_path


def _plain_array_saves_on_cpu() -> None:
  """On CPU, save each array from one replica. orbax's replica-parallel writes slice every
  replicated array per device, and each distinct slice is a fresh XLA compile (17 of 24 s of
  three saves of the tiny model on 8 simulated devices); the devices share one disk anyway."""
  if jax.default_backend() == "cpu":
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


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
    self.every_steps = every_steps
    self.best_metric = best_metric
    self.last = _manager(os.path.join(workdir, "checkpoints"), max_to_keep=keep,
                         async_save=async_save)
    self.best = (_manager(os.path.join(workdir, "best"), max_to_keep=1, async_save=async_save,
                          best_metric=best_metric, best_mode=best_mode) if best_metric else None)

  def latest_step(self) -> int | None:
    return self.last.latest_step()

  def restore(self, state, iterator):
    """(state, iterator) restored from the latest save, or returned as given when there is none.

    `state` supplies the structure, dtypes and shardings; `iterator` is the fresh grain iterator
    whose position is set in place.
    """
    step = self.last.latest_step()
    if step is None:
      return state, iterator
    logging.info("resuming from %s/%d", self.last.directory, step)
    restored = self.last.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_like(state)),
        data=grain.checkpoint.CheckpointRestore(iterator)))
    return restored.state, restored.data

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
