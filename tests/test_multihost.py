"""Two processes x 2 CPU devices (gloo collectives, loopback coordinator) train to the same
parameters as one process with 4 devices and the same global batch."""

import jax
import numpy as np
import pytest

from configs import hnhp
from helpers import assert_same_tree, final_params, run_main_on_processes, train_args
from hpjax import factory
from hpjax.train import trainer

STEPS = 3


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(train_source, tmp_path):
  args = train_args(train_source, total_steps=STEPS, **{"checkpoint.every_steps": STEPS})
  one = tmp_path / "one"
  trainer.run(hnhp.get_config(args + ",mesh.num_devices=4"), str(one))

  two = tmp_path / "two"
  logs = run_main_on_processes(f"configs/hnhp.py:{args}", two)
  assert "process 0 of 2; 2 local of 4 devices" in logs[0]

  step_one, params_one = final_params(one)
  step_two, params_two = final_params(two)
  assert step_one == step_two == STEPS
  # The hosts' rows sit in another order in the global batch, so sums run in another order;
  # Adam's first steps move every weight by about +-lr whatever its gradient's size, so an entry
  # whose gradient is ~0 can differ by a few 1e-6 (lr is 1e-3).
  assert_same_tree(params_two, params_one, rtol=1e-4, atol=2e-5)
  _, initial = factory.create_model("hpjax-tiny", rng=jax.random.key(0))
  moved = np.abs(params_one["text_projection"] - np.asarray(initial["text_projection"])).max()
  assert moved > 1e-4, "training did not change the parameters: the comparison would be empty"
