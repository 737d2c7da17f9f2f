"""The embedded study's variants and the reading of its runs (tools/run_variants.py runs them).

Every variant is a row of the paper's Table 1 (hpjax.zoo): its registry entry's recipe is the
config the variant trains with, and its figures in `zoo.PAPER_FIGURES` stand beside ours. The
study's figures of a model are those of its reports (reports/results.json); over the seeds they
are summarised as the mean and its 95% Student-t interval, in a markdown table and a bar plot.
"""

from __future__ import annotations

import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (after the backend)
import numpy as np
from scipy import stats

from hpjax import zoo
from hpjax.train import metrics_log
from hpjax.train import retrieval

# variant -> its registry row: the four variants and the hard-negative ablation.
STUDY = {"coco_control": "coco_control", "hn": "coco_crepe_negs", "hp": "coco_crepe_pos",
         "hnhp": "coco_crepe_negs_hard_pos", "hnhp_hn0.25": "coco_crepe_negs_hard_pos_25",
         "hnhp_hn0.5": "coco_crepe_negs_hard_pos_50", "hnhp_hn0.75": "coco_crepe_negs_hard_pos_75"}
PRETRAINED = "pretrained"  # the starting point's row; the paper's is OpenAI CLIP ViT-B/32
_ROWS = {PRETRAINED: "openai-clip:ViT-B/32", **STUDY}
METRICS = ("original", "augmented", "brittleness")
_METRIC_KEY = re.compile(r"^(?P<suite>[^/]+)/(?P<metric>original|augmented|brittleness)$")
RESULTS = os.path.join("reports", "results.json")  # what a finished training run leaves


def variant_args(variant: str, config_args: str) -> tuple[str, str]:
  """(config file name, its argument) of a STUDY variant, `config_args` after its own."""
  if variant not in STUDY:
    raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(STUDY)}")
  file_name, _, own = zoo.get(STUDY[variant]).recipe.partition(":")
  return file_name.removesuffix(".py"), ",".join(a for a in (own, config_args) if a)


def paper_figure(variant: str, suite: str, metric: str) -> float | None:
  """The paper's figure for the row `variant` stands for, where it reports one."""
  return zoo.PAPER_FIGURES.get(_ROWS.get(variant, ""), {}).get(f"{suite}/{metric}")


def evaluations(workdir: str) -> list[dict]:
  """The evaluation rows of a run's metrics.jsonl (`metrics_log.evaluations`)."""
  path = os.path.join(workdir, metrics_log.FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no metrics file {path}: the run did not start")
  out = metrics_log.evaluations(workdir)
  if not out:
    raise ValueError(f"{path}: no evaluation rows (with {retrieval.MEAN_RECALL_AT_1!r})")
  return out


def read_models(path: str) -> list[tuple[str, dict]]:
  """(label, flat metrics) of each model of a reports/results.json."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no results file {path}: the run ended without its reports")
  with open(path) as f:
    models = json.load(f).get("models")
  if not models:
    raise ValueError(f"{path}: no 'models' entries")
  return [(m.get("label", ""), m.get("metrics", {})) for m in models]


def suite_metrics(metrics: dict, where: str) -> dict[tuple[str, str], float]:
  """{(suite, metric): value} for original/augmented/brittleness of every suite of a model."""
  out = {}
  for key, value in metrics.items():
    match = _METRIC_KEY.match(key)
    if match:
      out[(match["suite"], match["metric"])] = float(value)
  if not out:
    raise ValueError(f"{where}: no '<suite>/<original|augmented|brittleness>' metrics")
  return out


def heldout_metrics(results: str, exports: dict) -> dict[str, dict[tuple[str, str], float]]:
  """key -> {("heldout:<suite>", metric): value} of every model of `exports` (key -> checkpoint
  path, labelled by its base name) in the evaluation run's `results` (results.json)."""
  by_label = dict(read_models(results))
  out = {}
  for key, path in exports.items():
    label = os.path.basename(path)
    if label not in by_label:
      raise ValueError(f"{results}: no model labelled {label!r} (has {sorted(by_label)})")
    out[key] = {(f"heldout:{suite}", metric): value for (suite, metric), value
                in suite_metrics(by_label[label], results).items()}
  return out


def aggregate(runs: dict[str, list[dict]]) -> dict[str, dict[tuple[str, str], tuple]]:
  """variant -> (suite, metric) -> (mean, half-width of the 95% t-interval, n) over seeds.

  The interval is mean +- t(0.975, n-1) * s / sqrt(n) with the sample standard deviation s;
  with one seed there is none (nan)."""
  out = {}
  for variant, per_seed in runs.items():
    keys = sorted(set().union(*per_seed))
    out[variant] = {}
    for key in keys:
      values = np.array([m[key] for m in per_seed if key in m], np.float64)
      n = len(values)
      half = (float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n > 1
              else float("nan"))
      out[variant][key] = (float(values.mean()), half, n)
  return out


def markdown(table: dict, suites: list[str]) -> str:
  """One row per (suite, variant): original/augmented/brittleness as mean +- the 95% interval's
  half-width, then the paper's figures for that row where it reports them."""
  n = max(n for rows in table.values() for _, _, n in rows.values())
  lines = [f"| suite | variant | {' | '.join(METRICS)} | paper ({'/'.join(METRICS)}) |",
           "| --- | --- |" + " --- |" * (len(METRICS) + 1)]
  for suite in suites:
    for variant, rows in table.items():
      cells = []
      for metric in METRICS:
        mean, half, _ = rows.get((suite, metric), (float("nan"),) * 3)
        cells.append(f"{mean:.1f}" if np.isnan(half) else f"{mean:.1f} +- {half:.1f}")
      paper = [paper_figure(variant, suite, metric) for metric in METRICS]
      cells.append(" / ".join("-" if v is None else f"{v:.1f}" for v in paper)
                   if any(v is not None for v in paper) else "")
      lines.append(f"| {suite} | {variant} | {' | '.join(cells)} |")
  lines.append(f"\nmean +- half-width of the 95% Student-t interval over the seeds (up to {n}; "
               "t(0.975, n-1) * sample std / sqrt(n)); accuracies in percent. Paper: its "
               "figures for the row's counterpart (pretrained = OpenAI CLIP ViT-B/32, hn = HN "
               "only, hnhp = HN + HP, the ablation's fractions), REPLACE = mean of attributes "
               "and relations (Kamath et al., ECCV 2024, arXiv 2409.17958).")
  return "\n".join(lines) + "\n"


def plot(table: dict, suites: list[str], path: str) -> None:
  variants = list(table)
  fig, axes = plt.subplots(len(METRICS), 1, figsize=(max(6, 1.3 * len(suites)), 9))
  width = 0.8 / len(variants)
  x = np.arange(len(suites))
  for ax, metric in zip(axes, METRICS):
    for i, variant in enumerate(variants):
      figures = [table[variant].get((s, metric), (np.nan, np.nan, 0)) for s in suites]
      ax.bar(x + (i - (len(variants) - 1) / 2) * width, [m for m, _, _ in figures], width,
             yerr=[0 if np.isnan(h) else h for _, h, _ in figures], capsize=3, label=variant)
    ax.set_xticks(x, [s.replace(":", ":\n").replace("_", "\n", 1) for s in suites], fontsize=7)
    ax.set_title(f"{metric} (mean, 95% t-interval over seeds)")
    ax.set_ylabel("%")
  # One legend above the panels, where it hides no bar.
  fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=min(len(variants), 8),
             fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 0.96))
  fig.savefig(path, dpi=120)
  plt.close(fig)
