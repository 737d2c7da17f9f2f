"""Two processes x 2 CPU devices (gloo collectives, loopback coordinator) train to the same
parameters as one process with 4 devices and the same global batch."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import hnhp
from hpjax import factory
from hpjax.train import trainer
from test_trainer import REPO, final_params, fixture_args, source  # pylint: disable=unused-import

STEPS = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(source, tmp_path):
  args = fixture_args(source, total_steps=STEPS, **{"checkpoint.every_steps": STEPS})
  one = tmp_path / "one"
  trainer.run(hnhp.get_config(args + ",mesh.num_devices=4"), str(one))

  two = tmp_path / "two"
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  processes = [subprocess.Popen(
      [sys.executable, "-m", "hpjax.main", f"--config=configs/hnhp.py:{args}",
       f"--config.distributed.coordinator_address=127.0.0.1:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
       f"--workdir={two}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = [p.communicate(timeout=600)[1] for p in processes]
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log[-3000:]
  assert "process 0 of 2; 2 local of 4 devices" in logs[0]

  step_one, params_one = final_params(one)
  step_two, params_two = final_params(two)
  assert step_one == step_two == STEPS
  # The hosts' rows sit in another order in the global batch, so sums run in another order;
  # Adam's first steps move every weight by about +-lr whatever its gradient's size, so an entry
  # whose gradient is ~0 can differ by a few 1e-6 (lr is 1e-3).
  for a, b in zip(jax.tree.leaves(params_two), jax.tree.leaves(params_one)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
  _, initial = factory.create_model("hpjax-tiny", rng=jax.random.key(0))
  moved = np.abs(params_one["text_projection"] - np.asarray(initial["text_projection"])).max()
  assert moved > 1e-4, "training did not change the parameters: the comparison would be empty"
