"""Metrics as JSON lines + TensorBoard event files (process 0 only), and the progress line."""

from __future__ import annotations

import json
import os
import time

import jax
from absl import logging

from hpjax.data import records
from hpjax.train import retrieval

FILE = "metrics.jsonl"


def read(workdir: str) -> list[dict]:
  """Every row of WORKDIR/metrics.jsonl in order (a resumed run's repeated steps included: the
  later row is the newer); [] when the run has logged nothing."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [row for _, row in records.json_lines(path, f)]


def evaluations(workdir: str) -> list[dict]:
  """The evaluation rows of WORKDIR/metrics.jsonl: those holding the held-out retrieval figure,
  which every evaluation logs and a training row does not."""
  return [row for row in read(workdir) if retrieval.MEAN_RECALL_AT_1 in row]


class MetricsLog:
  """Appends `{"step": s, name: value, ...}` to workdir/metrics.jsonl and TensorBoard scalars."""

  def __init__(self, workdir: str, total_steps: int):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self._last_time = None
    self._last_step = 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top (heavy)
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, FILE), "a", encoding="utf-8")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def progress(self, step: int, loss: float, examples_per_step: int) -> dict:
    """Logs `step, loss, examples/s, ETA` and returns the throughput metrics."""
    now = time.perf_counter()
    out = {}
    if self._last_time is not None and step > self._last_step:
      seconds_per_step = (now - self._last_time) / (step - self._last_step)
      out = {"examples_per_second": examples_per_step / seconds_per_step,
             "seconds_per_step": seconds_per_step}
      eta = seconds_per_step * (self.total_steps - step)
      logging.info("step %d/%d  loss %.4f  %.1f examples/s  ETA %dm%02ds", step,
                   self.total_steps, loss, out["examples_per_second"], eta // 60, eta % 60)
    else:
      logging.info("step %d/%d  loss %.4f", step, self.total_steps, loss)
    self._last_time, self._last_step = now, step
    return out

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
