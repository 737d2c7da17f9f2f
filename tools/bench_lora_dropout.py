"""The cost of LoRA dropout: the train step with adapters merged (lora.dropout=0) against the
step running them unmerged on dropped inputs (lora.dropout > 0), on this machine's devices.

  .venv/bin/python tools/bench_lora_dropout.py [--model hpjax-tiny] [--batch 32] [--steps 10]

Random init, random images and tokens (one hard negative and one hard positive per example),
rank-4 adapters on TSVLC's placement in both towers, the trainer's optimizer. After compiling
and one untimed step each, the two steps take turns for --steps rounds, so the machine's noise
falls on both alike; prints the medians and the median of the paired ratios as a JSON line.
"""

import argparse
import functools
import json
import os
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]  # `configs` and `hpjax` from this checkout

from configs import common
from hpjax import factory
from hpjax.train import lora, optim
from hpjax.train import step as step_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="hpjax-tiny")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--dropout", type=float, default=0.1)
  args = parser.parse_args()
  config = common.get_config(f"model={args.model},lora.image_rank=4,lora.text_rank=4")
  model, params = factory.create_model(args.model, rng=jax.random.key(0))
  adapters = lora.init_adapters(params, lora.plan(params, *lora.options(config)),
                                jax.random.key(1))
  tx, schedule = optim.make_optimizer(config.optim, 100)
  rng = np.random.default_rng(0)
  size, b = model.config.vision.image_size, args.batch
  tokens = lambda: rng.integers(1, 1000, (b, 1, 77)).astype(np.int32)
  batch = {"image": rng.standard_normal((b, size, size, 3)).astype(np.float32),
           "caption": tokens()[:, 0], "hard_positives": tokens(), "hard_negatives": tokens(),
           "hard_positive_mask": np.ones((b, 1), bool), "hard_negative_mask": np.ones((b, 1), bool)}
  steps = {p: jax.jit(functools.partial(
      step_lib.train_step, model=model, tx=tx, schedule=schedule, positives="multi",
      local_weight=0.0, lora_dropout=p)) for p in (0.0, args.dropout)}
  states = {p: step_lib.init_state(params, tx, adapters) for p in steps}

  def run(p):
    start = time.perf_counter()
    states[p], metrics = steps[p](states[p], batch)
    jax.block_until_ready(metrics["loss"])
    return time.perf_counter() - start

  compile_s = {p: run(p) for p in steps}  # compile + first step
  for p in steps:
    run(p)
  times = {p: [] for p in steps}
  for _ in range(args.steps):
    for p in steps:
      times[p].append(run(p))
  merged, dropped = times[0.0], times[args.dropout]
  print(json.dumps({
      "model": args.model, "batch": b, "devices": jax.device_count(),
      "device": jax.devices()[0].device_kind, "dropout": args.dropout, "rounds": args.steps,
      "merged_step_s": float(np.median(merged)), "dropout_step_s": float(np.median(dropped)),
      "paired_ratio": float(np.median(np.array(dropped) / np.array(merged))),
      "first_call_s": {str(p): round(s, 2) for p, s in compile_s.items()}}))


if __name__ == "__main__":
  main()
