"""`run(config, workdir)`: evaluate one or several checkpoints on the chosen suites, write reports.

Read top to bottom: suites -> for each checkpoint: model + params, scores, figures -> reports.
All checkpoints share one architecture, so one evaluator (and its compiled encoders) serves all.
Fields: see configs/eval_hp.py.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp

from hpjax import factory
from hpjax import sharding
from hpjax.data import suites as suites_lib
from hpjax.evaluate import benchmarks
from hpjax.evaluate import hard_positive
from hpjax.evaluate import reports


split_list = benchmarks.split_list  # the config list syntax, for `run` and existing callers


def load_config_suites(config) -> dict[str, suites_lib.Suite]:
  """Every suite the config names, by the benchmark catalog (hpjax.evaluate.benchmarks)."""
  return benchmarks.load_config(config)


RANDOM_INIT = "random"


def _labels(checkpoints: list[str]) -> list[str]:
  """Short distinct display names: the checkpoint's base name, or 'random-init'."""
  labels = []
  for ckpt in checkpoints:
    base = "random-init" if ckpt == RANDOM_INIT else os.path.basename(os.path.normpath(ckpt))
    label, k = base, 2
    while label in labels:
      label, k = f"{base}#{k}", k + 1
    labels.append(label)
  return labels


def run(config, workdir: str) -> dict[str, dict[str, float]]:
  """Evaluates every checkpoint of `config.checkpoints` ('random' = random init); returns
  label -> figures and writes the reports into `workdir`."""
  dist = config.distributed
  sharding.initialize_distributed(dist.coordinator_address or None, dist.num_processes or None,
                                  dist.process_id if dist.coordinator_address else None)
  suites = load_config_suites(config)
  logging.info("suites: %s", {name: len(s) for name, s in suites.items()})
  checkpoints = split_list(config.checkpoints)
  if not checkpoints:
    raise ValueError("config.checkpoints is empty: give paths and/or 'random'")
  dtype = jnp.dtype(config.dtype)
  evaluator, results = None, []
  for ckpt, label in zip(checkpoints, _labels(checkpoints)):
    ckpt = None if ckpt == RANDOM_INIT else ckpt
    model, params = factory.create_model(config.model, pretrained=ckpt, dtype=dtype,
                                         rng=jax.random.key(config.seed))
    if evaluator is None:
      evaluator = hard_positive.HardPositiveEvaluator(
          model, suites, config.image_root or None, batch_size=config.batch_size,
          text_batch_size=config.text_batch_size, num_workers=config.num_workers,
          skip_missing_images=config.skip_missing_images,
          allow_empty_suites=config.allow_empty_suites, matmul_precision=config.matmul_precision)
    figures = evaluator.run(params)
    logging.info("%s: %s", label, {k: round(v, 2) for k, v in figures.items()
                                   if k.split("/")[-1] == benchmarks.headline(k.split("/")[0])})
    results.append(evaluator.last_result(label, config.model, ckpt))
  if jax.process_index() == 0:
    written = reports.write_reports(workdir, results, config.image_root or None,
                                    config.gallery_size)
    logging.info("reports: %s", sorted(written.values()))
  return {r.label: r.metrics for r in results}
