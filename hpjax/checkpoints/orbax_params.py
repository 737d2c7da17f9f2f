"""hpjax parameter checkpoints in orbax directories.

`save_params` writes one StandardCheckpointer directory holding the params tree. `restore_params`
reads that, and also the trainer's checkpoints: a step directory (`<step>/state` holding a
TrainState, of which only `params` is read) or the CheckpointManager folder above it (its
latest step). The stored tree is checked against the architecture first, so a checkpoint of
another model fails with the same missing/unexpected/mis-shaped listing as an OpenCLIP file.
"""

from __future__ import annotations

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from hpjax import errors
from hpjax.checkpoints import files
from hpjax.checkpoints.mapping import check_keys
from hpjax.models.clip import CLIP, param_shapes
from hpjax.models.config import CLIPConfig

_METADATA = "_METADATA"  # Written by orbax into every item directory.


def save_params(directory, params) -> epath.Path:
  """Writes `params` to a new orbax directory (which must not exist yet; gs:// works)."""
  path = absolute_path(directory)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, params)
  checkpointer.wait_until_finished()
  return path


def restore_params(directory, config: CLIPConfig, param_dtype=None, sharding=None) -> dict:
  """Restores params of `config` from a params, trainer step or trainer checkpoints directory.

  Args:
    directory: the checkpoint directory.
    config: the architecture the params must fit.
    param_dtype: cast to this dtype while restoring (default: the stored dtype).
    sharding: a jax Sharding for every leaf (default: the first local device).
  """
  item, subtree, stored = checked_metadata(directory, config)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, param_dtype or m.dtype, sharding=sharding), stored)
  if subtree:
    target = {subtree: target}
  restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype),
                              target)
  try:
    restored = ocp.PyTreeCheckpointer().restore(item, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  except (ValueError, OSError, KeyError) as e:  # tensorstore's pages about a damaged array
    raise _damaged(directory, item, e) from e
  return restored[subtree] if subtree else restored


def checked_metadata(directory, config: CLIPConfig):
  """(item directory, key of the params inside it or None, the params' stored metadata), the
  stored tree checked against `config`: what `restore_params` reads before any array (a
  checkpoint is checked with it alone, `loading.check_params`)."""
  item, subtree = _resolve(absolute_path(directory))
  try:
    stored = _stored_tree(item)
  except Exception as e:  # pylint: disable=broad-except  (orbax's errors vary; named below)
    raise _damaged(directory, item, e) from e
  if subtree:
    if subtree not in stored:
      raise ValueError(f"orbax checkpoint {item} has no {subtree!r} entry: {sorted(stored)}")
    stored = stored[subtree]
  check_keys(flat_shapes(stored), flat_shapes(param_shapes(CLIP(config))),
             f"orbax checkpoint {item}", config.name)
  return item, subtree, stored


def absolute_path(directory) -> epath.Path:
  """Orbax refuses relative checkpoint paths; URLs such as gs://... stay as they are."""
  path = epath.Path(directory)
  return path.absolute() if files.is_local(path) else path


def _resolve(path: epath.Path) -> tuple[epath.Path, str | None]:
  """(orbax item directory, key of the params inside it or None)."""
  if not path.is_dir():
    raise FileNotFoundError(f"orbax checkpoint directory {path} does not exist")
  if (path / "state" / _METADATA).exists():  # A trainer step: its TrainState item.
    return path / "state", "params"
  if (path / _METADATA).exists():
    return path, None
  steps = sorted((int(p.name), p) for p in path.iterdir() if p.name.isdigit() and p.is_dir())
  if not steps:
    raise ValueError(f"{path} is not an hpjax checkpoint: no orbax metadata and no step folders")
  logging.info("using the latest step %d of %s", steps[-1][0], path)
  return _resolve(steps[-1][1])


def _stored_tree(item: epath.Path):
  metadata = ocp.StandardCheckpointer().metadata(item)
  if metadata is None or metadata.item_metadata is None:
    raise ValueError(f"its {_METADATA} does not read")
  return metadata.item_metadata.tree


def _damaged(directory, item: epath.Path, error: BaseException) -> ValueError:
  """One error for a checkpoint that does not read, naming the intact steps beside it when
  `directory` is a trainer's folder of steps (its newest step is what was read)."""
  root, step_dir = absolute_path(directory), item.parent if item.name == "state" else item
  intact = []
  if root != step_dir:
    for step in sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True):
      try:
        if root / str(step) != step_dir and _stored_tree(_resolve(root / str(step))[0]):
          intact.append(step)
      except Exception:  # pylint: disable=broad-except  (another damaged step: not named)
        continue
  hint = (f"; intact step(s) of {root}: {', '.join(map(str, intact))}: give {root / str(intact[0])}"
          if intact else "")
  return ValueError(f"orbax checkpoint {item} is damaged ({errors.first_line(error, 300)})"
                    + hint)


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  """'a/b/c' -> shape of every leaf (arrays, ShapeDtypeStructs or orbax metadata)."""
  return {"/".join(str(getattr(p, "key", p)) for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
