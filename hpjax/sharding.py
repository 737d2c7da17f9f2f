"""Meshes, multi-host start-up, putting host-local batches on devices and reductions over hosts.

One mesh axis `data` carries the batch; an optional `model` axis shards the large parameter
matrices (ViT-H/g/bigG) over devices of a host (training); the scorer uses the `data` axis
alone (`data_mesh`). Axes are `AxisType.Auto`, so the compiler chooses the collectives (jax
0.10's `make_mesh` would default to Explicit axes, where a matmul over a sharded contraction
needs explicit out_shardings).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
MODEL = "model"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts multi-host JAX once, before any device is touched.

  With explicit arguments (tests, clusters without auto-detection) they are passed through; on
  Cloud TPU VMs and SLURM, `jax.distributed.initialize()` detects everything, which we do when the
  environment says we are one of several processes (`HPJAX_DISTRIBUTED=1` or TPU worker hosts).
  """
  if jax.distributed.is_initialized():
    return
  if coordinator_address is not None:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif os.environ.get("HPJAX_DISTRIBUTED") == "1" or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d; %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(model_parallel: int = 1, devices=None) -> Mesh:
  """A (data, model) mesh over `devices` (default: all), model axis innermost (within a host)."""
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) % model_parallel:
    raise ValueError(f"{len(devices)} devices do not split into model_parallel={model_parallel}")
  shape = (len(devices) // model_parallel, model_parallel)
  return jax.make_mesh(shape, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def data_mesh(devices=None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: all, across hosts) in their given order: the
  devices of process i hold rows [i * n, (i + 1) * n) of a global batch, the rows
  `process_rows` gives it to feed."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices, (DATA,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_sharding(mesh: Mesh, params, min_size: int = 2 ** 18):
  """Shardings for a parameter tree: matrices of >= min_size elements split their largest
  dimension divisible by the model axis over it; everything else is replicated."""
  size = mesh.shape[MODEL]

  def spec(x):
    if size == 1 or x.ndim < 2 or x.size < min_size:
      return replicated(mesh)
    dims = [d for d in np.argsort(x.shape)[::-1] if x.shape[d] % size == 0]
    if not dims:
      return replicated(mesh)
    axes = [None] * x.ndim
    axes[dims[0]] = MODEL
    return NamedSharding(mesh, P(*axes))

  return jax.tree.map(spec, params)


def local_batch_size(global_batch_size: int) -> int:
  """This process's share of a global batch."""
  if global_batch_size % jax.process_count():
    raise ValueError(f"batch size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def process_rows(global_batch_size: int) -> slice:
  """The rows of a global batch this process feeds (`data_mesh` order)."""
  n = local_batch_size(global_batch_size)
  return slice(jax.process_index() * n, (jax.process_index() + 1) * n)


def put_batch(batch, mesh: Mesh):
  """Host-local numpy arrays (leading axis = this host's examples) -> global arrays on the mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


def _from_every_host(value: np.ndarray) -> np.ndarray:
  """`value` of every process stacked on a new leading axis (no collective on one process)."""
  if jax.process_count() == 1:
    return np.asarray(value)[None]
  return np.asarray(multihost_utils.process_allgather(value))


def host_max(value: int) -> int:
  """The maximum of an integer over all processes (every host must pick the same shapes)."""
  return int(_from_every_host(np.asarray(value, np.int32)).max())


def host_sum(value: int) -> int:
  """The sum of an integer over all processes."""
  return int(_from_every_host(np.int64(value)).sum())


def host_any(mask: np.ndarray) -> np.ndarray:
  """Elementwise OR of a boolean array over all processes (every host stops, or skips, alike)."""
  return _from_every_host(mask).any(axis=0)
