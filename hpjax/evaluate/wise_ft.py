"""WiSE-FT: the finetuned and the starting weights interpolated, evaluated along the way.

For each alpha, theta(alpha) = (1 - alpha) * theta_start + alpha * theta_finetuned (alpha 0 =
the starting model, 1 = the finetuned one; Wortsman et al.'s weight-space ensemble), scored
on the hard-positive suites and, where configured, zero-shot classification and retrieval (the
evaluator's fields and evaluators, runner.spectrum_evaluators). Writes WORKDIR/wise_ft.json
(alpha -> figures), wise_ft.png (the headline figures against alpha), wise_ft_tradeoff.png (the
compositional score against zero-shot top-1, one point per alpha: WiSE-FT's figure) and, when
asked, the weights of one alpha as an OpenCLIP file.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from hpjax import config_fields
from hpjax import factory
from hpjax import tokenizer as tokenizer_lib
from hpjax.evaluate import benchmarks
from hpjax.evaluate import hard_positive as hard_positive_lib
from hpjax.evaluate import reports
from hpjax.evaluate import runner
from hpjax.evaluate.reports import plt

RESULTS, PLOT, TRADEOFF = "wise_ft.json", "wise_ft.png", "wise_ft_tradeoff.png"
_PLOTTED = ("original", "augmented", "brittleness")  # each suite's headline figures
_LOGGED = _PLOTTED + (reports.ZEROSHOT_FIGURE, "mean_R@1")


def interpolate(start, finetuned, alpha: float):
  """(1 - alpha) * start + alpha * finetuned, leaf by leaf (fp32 arithmetic, leaf dtypes)."""
  return jax.tree.map(
      lambda s, f: ((1.0 - alpha) * np.asarray(s, np.float32)
                    + alpha * np.asarray(f, np.float32)).astype(np.asarray(s).dtype),
      start, finetuned)


def alphas_of(config) -> list[float]:
  """The config's alphas; ValueError naming the field for a value outside [0, 1]."""
  values = config.alphas
  values = [float(a) for a in (config_fields.split_list(values) if isinstance(values, str)
                               else values)]
  if not values:
    raise ValueError("alphas: give at least one mixing weight in [0, 1], e.g. 0+0.5+1")
  bad = [a for a in values if not 0.0 <= a <= 1.0]
  if bad:
    raise ValueError(f"alphas: {bad} outside [0, 1] (0 = the starting weights, 1 = the "
                     "finetuned ones)")
  if config.export_openclip and not 0.0 <= config.export_alpha <= 1.0:
    raise ValueError(f"export_alpha={config.export_alpha!r} must be in [0, 1]")
  return values


def plot(path: str, results: dict[float, dict[str, float]]) -> bool:
  """One curve per headline figure against alpha."""
  alphas = sorted(results)
  names = sorted({k for r in results.values() for k in r if k.rsplit("/", 1)[-1] in _PLOTTED})
  if not names:
    return False
  fig, ax = plt.subplots(figsize=(6, 4))
  for name in names:
    ax.plot(alphas, [results[a].get(name, np.nan) for a in alphas], marker="o", label=name)
  ax.set_xlabel("alpha (0 = start, 1 = finetuned)")
  ax.set_ylabel("%")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_tradeoff(path: str, results: dict[float, dict[str, float]]) -> bool:
  """The compositional score (the mean of the suites' official figures) against the first
  zero-shot set's top-1, one point per alpha joined in alpha order; False without both."""
  alphas = sorted(results)
  first = results[alphas[0]]
  compositional = runner.compositional_headlines(first)
  zeroshot = [k for k in first if k.split("/")[-1] == reports.ZEROSHOT_FIGURE]
  if not compositional or not zeroshot:
    return False
  x = [results[a][zeroshot[0]] for a in alphas]
  y = [float(np.mean([results[a][k] for k in compositional])) for a in alphas]
  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.plot(x, y, marker="o", color="#2a9d8f")
  for alpha, xa, ya in zip(alphas, x, y):
    ax.annotate(f"alpha={alpha:g}", (xa, ya), fontsize=7, xytext=(4, 3), textcoords="offset points")
  reports.save_tradeoff(path, fig, ax, zeroshot[0], compositional,
                        "WiSE-FT: start (alpha 0) to finetuned (alpha 1)")
  return True


def _write_json(path: str, results: dict[float, dict[str, float]]) -> None:
  with open(path + ".partial", "w", encoding="utf-8") as f:
    json.dump({str(a): m for a, m in sorted(results.items())}, f, indent=1, sort_keys=True)
  os.replace(path + ".partial", path)


def run(config, workdir: str) -> dict[float, dict[str, float]]:
  """Evaluates every alpha of `config` (configs/wise_ft.py); returns alpha -> figures."""
  alphas = alphas_of(config)  # (bad input stops before any loading)
  if not config.start or not config.finetuned:
    raise ValueError("start and finetuned: both checkpoints are needed (OpenCLIP/HF files or "
                     "hpjax param directories of the same model)")
  os.makedirs(workdir, exist_ok=True)
  suites = benchmarks.load_hard_positive(config.suite_root,
                                         config_fields.split_list(config.suites) or None)
  # Zero-shot and retrieval data read (and checked) before the weights; scored by the model's
  # one scorer below.
  spectrum = runner.spectrum_evaluators(config, tfds_data_dir=config.tfds_data_dir or None)
  model, start = factory.create_model(config.model, pretrained=config.start)
  _, finetuned = factory.create_model(config.model, pretrained=config.finetuned)
  start, finetuned = jax.device_get(start), jax.device_get(finetuned)
  evaluator = hard_positive_lib.HardPositiveEvaluator(
      model, suites, image_root=config.image_root or None,
      tokenizer=tokenizer_lib.get_tokenizer(model.config), batch_size=config.batch_size)
  results = {}
  for alpha in alphas:
    params = interpolate(start, finetuned, alpha)
    results[alpha] = evaluator.run(params)
    for extra in spectrum:
      results[alpha].update(extra.run(params, evaluator.scorer))
    logging.info("WiSE-FT alpha %.3g: %s", alpha, {k: round(v, 2) for k, v in
                                                   results[alpha].items()
                                                   if k.rsplit("/", 1)[-1] in _LOGGED})
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, RESULTS), results)
    plot(os.path.join(workdir, PLOT), results)
    plot_tradeoff(os.path.join(workdir, TRADEOFF), results)
    if config.export_openclip:
      factory.export_openclip(interpolate(start, finetuned, config.export_alpha), model.config,
                              config.export_openclip)
      logging.info("exported alpha %.3g to %s", config.export_alpha, config.export_openclip)
  return results
