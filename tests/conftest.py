"""Test-wide set-up: 8 simulated CPU devices, so sharding tests run on one machine.

XLA reads the flag when the backend starts, so it is set before anything imports jax.
"""
import gc
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops each module's compiled executables and models: in one process the whole suite
  otherwise grows past 10 GB of resident memory."""
  yield
  jax.clear_caches()
  gc.collect()
