"""hpjax parameter checkpoints: one orbax (StandardCheckpointer) directory holding the params tree.

Restoring checks the stored tree against the architecture first, so a checkpoint of another
model fails with the same missing/unexpected/mis-shaped listing as an OpenCLIP file.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp

from hpjax.checkpoints.mapping import check_keys
from hpjax.models.clip import CLIP, param_shapes
from hpjax.models.config import CLIPConfig


def save_params(directory, params) -> pathlib.Path:
  """Writes `params` to a new orbax directory (which must not exist yet)."""
  path = pathlib.Path(directory).absolute()
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, params)
  checkpointer.wait_until_finished()
  return path


def restore_params(directory, config: CLIPConfig, param_dtype=None, sharding=None) -> dict:
  """Restores params of `config` from an orbax directory written by `save_params`.

  Args:
    directory: the checkpoint directory.
    config: the architecture the params must fit.
    param_dtype: cast to this dtype while restoring (default: the stored dtype).
    sharding: a jax Sharding for every leaf (default: the first local device).
  """
  path = pathlib.Path(directory).absolute()
  checkpointer = ocp.StandardCheckpointer()
  stored = checkpointer.metadata(path).item_metadata.tree
  expected = param_shapes(CLIP(config))
  check_keys(_flat_shapes(stored), _flat_shapes(expected), f"orbax checkpoint {path}",
             config.name)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, param_dtype or m.dtype, sharding=sharding), stored)
  return checkpointer.restore(path, target)


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  return {"/".join(str(getattr(p, "key", p)) for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
