"""Test-wide set-up and the fixtures shared by the test modules.

8 simulated CPU devices, so sharding tests run on one machine: XLA reads the flag when the
backend starts, so it is set before anything imports jax. Plain helper functions are in
tests/helpers.py.
"""
import gc
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The authors' REPLACE/SWAP files and the NegCLIP TSV, next to the clone (<repo>/../shared), as
# on the development machines and in CI. Tests reach it through the `hard_positives` fixture.
HARD_POSITIVES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hard_positives"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops each module's compiled executables and models: in one process the whole suite
  otherwise grows past 10 GB of resident memory."""
  yield
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def hard_positives() -> str:
  """The real-data folder (../shared/data/hard_positives); skips, naming the path, without it."""
  if not HARD_POSITIVES.is_dir():
    pytest.skip(f"real data not found at {HARD_POSITIVES}")
  return str(HARD_POSITIVES)


@pytest.fixture(scope="module")
def tiny_pair():
  """helpers.paired_models("hpjax-tiny"): (config, Flax model, params, torch model) with the
  same random weights on both sides."""
  from helpers import paired_models  # pylint: disable=g-import-not-at-top (after the XLA flags)
  return paired_models("hpjax-tiny")


@pytest.fixture(scope="session")
def train_source(tmp_path_factory) -> str:
  """train.jsonl of helpers.write_train_fixture: 40 learnable images for trainer runs."""
  from helpers import write_train_fixture  # pylint: disable=g-import-not-at-top
  return write_train_fixture(str(tmp_path_factory.mktemp("train_fixture")))
