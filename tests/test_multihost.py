"""Two processes x 2 CPU devices (gloo collectives, loopback coordinator) train to the same
parameters as one process with 4 devices and the same global batch."""

import jax
import numpy as np
import pytest

from configs import hnhp
from helpers import assert_two_processes_match_one, train_args
from hpjax import factory
from hpjax.train import trainer

STEPS = 3


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(train_source, tmp_path):
  args = train_args(train_source, total_steps=STEPS, **{"checkpoint.every_steps": STEPS})
  one = tmp_path / "one"
  trainer.run(hnhp.get_config(args + ",mesh.num_devices=4"), str(one))

  params_one = assert_two_processes_match_one(args, one, tmp_path / "two", STEPS)
  _, initial = factory.create_model("hpjax-tiny", rng=jax.random.key(0))
  moved = np.abs(params_one["text_projection"] - np.asarray(initial["text_projection"])).max()
  assert moved > 1e-4, "training did not change the parameters: the comparison would be empty"
