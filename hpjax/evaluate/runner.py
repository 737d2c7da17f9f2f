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
from hpjax.evaluate import hard_positive
from hpjax.evaluate import reports


def split_list(value) -> list[str]:
  """'a+b' or ('a', 'b') -> ['a', 'b'] (config arguments are comma-separated, lists use '+')."""
  if isinstance(value, str):
    return [v for v in value.split("+") if v]
  return [v for v in value if v]


def load_config_suites(config) -> dict[str, suites_lib.Suite]:
  """REPLACE/SWAP from `suite_root`, plus any other benchmark whose path the config names."""
  suites = {}
  if config.suite_root:
    suites.update(hard_positive.load_suites(config.suite_root, split_list(config.suites),
                                            swap_image_dir=config.swap_image_dir or None,
                                            tfds_data_dir=config.get("tfds_data_dir") or None))
  extra = config.extra
  if extra.sugarcrepe_root:
    suites.update(suites_lib.load_sugarcrepe(extra.sugarcrepe_root, extra.coco_image_dir or None))
  if extra.sugarcrepe_pp_root:
    suites.update(suites_lib.load_sugarcrepe_pp(extra.sugarcrepe_pp_root,
                                                extra.coco_image_dir or None))
  for path in split_list(extra.aro_files):
    suite = suites_lib.load_aro(path, extra.aro_image_dir or None)
    suites[suite.name] = suite
  for path in split_list(extra.vl_checklist_files):
    suite = suites_lib.load_vl_checklist(path, extra.vl_checklist_image_dir or None)
    suites[suite.name] = suite
  if not suites:
    raise ValueError("no suites to evaluate: set suite_root (REPLACE/SWAP) or an extra.* path")
  return suites


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
          matmul_precision=config.matmul_precision)
    figures = evaluator.run(params)
    logging.info("%s: %s", label, {k: round(v, 2) for k, v in figures.items()
                                   if k.split("/")[-1] in ("original", "augmented",
                                                           "brittleness", "accuracy")})
    results.append(evaluator.last_result(label, config.model, ckpt))
  if jax.process_index() == 0:
    written = reports.write_reports(workdir, results, config.image_root or None,
                                    config.gallery_size)
    logging.info("reports: %s", sorted(written.values()))
  return {r.label: r.metrics for r in results}
