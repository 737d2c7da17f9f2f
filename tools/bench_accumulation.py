"""Accumulation that keeps every negative (accum_freq): the largest batch within a memory budget
with and without it, and its step-time cost.

  .venv/bin/python tools/bench_accumulation.py --model=hpjax-tiny --budget_mib=128 --micro_batch=16

Memory is XLA's own analysis of the compiled step (arguments + outputs + temporaries, donated
state counted once), so it needs no run and does not depend on the machine's load. The largest
batch: doubled from --micro_batch until the step no longer fits, without accumulation (one
micro-batch) and with micro-batches of --micro_batch examples. Step time: the median of --steps
steps at --time_batch, with accum_freq 1 and --time_accum_freq, taken in turns.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]  # `configs` and `hpjax` from this checkout

from configs import common
from hpjax.train import benchmark_step

_MODEL = flags.DEFINE_string("model", "hpjax-tiny", "model config name")
_BUDGET = flags.DEFINE_integer("budget_mib", 128, "memory budget of the step (MiB)")
_MICRO = flags.DEFINE_integer("micro_batch", 16, "examples per micro-batch when accumulating")
_LIMIT = flags.DEFINE_integer("max_batch", 1024, "stop the search here")
_TIME_BATCH = flags.DEFINE_integer("time_batch", 64, "batch of the step-time comparison")
_TIME_ACCUM = flags.DEFINE_integer("time_accum_freq", 4, "micro-batches of the timed step")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps per side (after one untimed)")


def _step(batch_size: int, micro_batches: int):
  batch = benchmark_step.stand_in_batch(_MODEL.value, batch_size, 1, 1)
  return benchmark_step.make(_MODEL.value, batch, common.get_config(None).optim,
                             micro_batches=micro_batches)


def _largest(accumulate: bool) -> tuple[int, int]:
  """(largest batch within the budget, its memory in bytes); (0, 0) when none fits."""
  best, batch = (0, 0), _MICRO.value
  while batch <= _LIMIT.value:
    used = _step(batch, batch // _MICRO.value if accumulate else 1).memory_bytes()
    logging.info("batch %d, accumulating %s: %.1f MiB", batch, accumulate, used / 2 ** 20)
    if used > _BUDGET.value * 2 ** 20:
      break
    best, batch = (batch, used), batch * 2
  return best


def main(argv):
  del argv
  sides = {"without": _largest(False), "with": _largest(True)}
  steps = {f: _step(_TIME_BATCH.value, f) for f in (1, _TIME_ACCUM.value)}
  times = {f: [] for f in steps}
  for s in steps.values():
    s.run()  # compile
  for _ in range(_STEPS.value):
    for f, s in steps.items():
      start = time.perf_counter()
      s.run()
      times[f].append(time.perf_counter() - start)
  median = {f: sorted(t)[len(t) // 2] for f, t in times.items()}
  result = {
      "model": _MODEL.value, "device": str(jax.devices()[0].device_kind),
      "budget_mib": _BUDGET.value, "micro_batch": _MICRO.value,
      "largest_batch_without": sides["without"][0], "largest_batch_with": sides["with"][0],
      "memory_mib_without": sides["without"][1] / 2 ** 20,
      "memory_mib_with": sides["with"][1] / 2 ** 20,
      "time_batch": _TIME_BATCH.value, "time_accum_freq": _TIME_ACCUM.value,
      "step_s_accum_1": median[1], f"step_s_accum_{_TIME_ACCUM.value}": median[_TIME_ACCUM.value],
      "step_time_ratio": median[_TIME_ACCUM.value] / median[1]}
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
