"""The embedded study: one pretrained model, every variant finetuned from it, several seeds.

The paper's protocol on the synthetic world: the captions-only pretraining stage runs once
(`pretrain.cache_dir=WORKDIR/pretrain`, hpjax/train/pretrain.py), then every variant of STUDY
(coco_control, hn, hp, hnhp and the ablation hnhp with hn_frac 0.25 / 0.5 / 0.75) is finetuned
from its params for each seed with `python -m hpjax.main --config=configs/<variant>.py:<args>,
seed=<s> --workdir=...`, each in its own process and workdir (a finished run, one with
reports/results.json, is reused). All runs share one synthetic world, built once under
WORKDIR/world and linked into each run's workdir (the trainer's cache finds it).

Each run's figures are those of its reports (reports/results.json): the trainer's kept model,
the evaluation step with the highest retrieval R@1 (`checkpoint.best_metric`; step 0 is not a
candidate), as the paper picks its epoch. The tool writes `comparison.md` (original, augmented
and brittleness per suite: the mean over seeds and its 95% Student-t interval, the paper's own
figures beside ours, the pretrained model's figures as the starting point) and
`comparison.png` (bars, the interval as error bars).

  python tools/run_variants.py --workdir=/tmp/variants --seeds=0,1,2 --heldout

`--heldout` also scores the pretrained model and every run's keep-best checkpoint, in one
evaluation run, on the world's `eval_heldout/` suites (the records that name colour-shape
combinations no training image showed), reported as `heldout:<suite>` rows.

Whether hard negatives and hard positives act here as in the paper is a measurement, not an
assumption: the table says what happened.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]  # `configs` and `hpjax` from this checkout

from hpjax.data import synthetic  # pylint: disable=g-import-not-at-top (after the path)
from hpjax.train import pretrain  # pylint: disable=g-import-not-at-top

# name -> (config file, config arguments): the four variants and the hard-negative ablation.
STUDY = {"coco_control": ("coco_control", ""), "hn": ("hn", ""), "hp": ("hp", ""),
         "hnhp": ("hnhp", ""), "hnhp_hn0.25": ("hnhp", "hn_frac=0.25"),
         "hnhp_hn0.5": ("hnhp", "hn_frac=0.5"), "hnhp_hn0.75": ("hnhp", "hn_frac=0.75")}
PRETRAINED = "pretrained"  # the starting point's row
# The paper's figures (paper.md; secondary, REPLACE = mean of attributes and relations): the
# rows our variants stand for. OpenAI CLIP is the pretrained start, NegCLIP the HN-only finetune.
PAPER = {
    PRETRAINED: {("replace", "original"): 61.6, ("replace", "augmented"): 46.8,
                 ("replace", "brittleness"): 23.2, ("swap", "augmented"): 49.6},
    "hn": {("replace", "augmented"): 55.7, ("replace", "brittleness"): 21.0},
    "hp": {("replace", "augmented"): 49.8, ("replace", "brittleness"): 15.8},
    "hnhp": {("replace", "original"): 69.0, ("replace", "augmented"): 58.0,
             ("replace", "brittleness"): 16.9, ("swap", "augmented"): 61.1},
    "hnhp_hn0.25": {("replace", "augmented"): 55.5, ("replace", "brittleness"): 16.6},
    "hnhp_hn0.5": {("replace", "augmented"): 56.9, ("replace", "brittleness"): 16.4},
}
RETRIEVAL = "retrieval/mean_recall@1"
METRICS = ("original", "augmented", "brittleness")
_METRIC_KEY = re.compile(r"^(?P<suite>[^/]+)/(?P<metric>original|augmented|brittleness)$")
RESULTS = os.path.join("reports", "results.json")  # what a finished training run leaves


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="runs go to WORKDIR/<variant>/seed<s>")
  p.add_argument("--variants", default=",".join(STUDY), help=f"of {sorted(STUDY)}")
  p.add_argument("--seeds", default="0,1,2", help="training seeds (the world stays the same)")
  p.add_argument("--config_args", default="",
                 help="key=value,... for every config (configs/common.py), e.g. total_steps=300")
  p.add_argument("--heldout", action="store_true",
                 help="also score every final model on the world's eval_heldout/ suites "
                      "(records naming held-out colour-shape combinations)")
  return p.parse_args(argv)


def variant_args(variant: str, config_args: str) -> tuple[str, str]:
  """(config file name, its argument) of a STUDY variant, `config_args` after its own."""
  if variant not in STUDY:
    raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(STUDY)}")
  name, own = STUDY[variant]
  return name, ",".join(a for a in (own, config_args) if a)


def load_config(variant: str, config_args: str):
  """The variant's config with `config_args`; it must train on the synthetic world."""
  name, args = variant_args(variant, config_args)
  config = importlib.import_module(f"configs.{name}").get_config(args or None)
  if config.data.source != "synthetic":
    raise ValueError(f"config_args {config_args!r} leave the synthetic world (data.source = "
                     f"{config.data.source!r}); this tool compares variants on it")
  return config


def hpjax_main(config: str, workdir: str, what: str, cache_dir: str) -> None:
  """`python -m hpjax.main --config=... --workdir=...`, its output in WORKDIR/<what>.log."""
  cmd = [sys.executable, "-m", "hpjax.main", f"--config={config}", f"--workdir={workdir}"]
  log_path = os.path.join(workdir, f"{what}.log")
  print(f"[variants] {' '.join(cmd)} > {log_path}", flush=True)
  start = time.time()
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # later runs skip the compiles
  os.makedirs(workdir, exist_ok=True)
  with open(log_path, "w") as log:
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  if done.returncode:
    with open(log_path) as log:
      tail = log.readlines()[-30:]
    raise RuntimeError(f"{what} in {workdir} failed (exit {done.returncode}); the end of "
                       f"{log_path}:\n{''.join(tail)}")
  print(f"[variants] {what} done in {time.time() - start:.0f}s", flush=True)


def run_one(variant: str, seed: int, config_args: str, run_dir: str, world: str,
            cache_dir: str) -> dict[tuple[str, str], float]:
  """Trains and evaluates one (variant, seed) unless its results exist; returns the figures
  of its kept (best by retrieval) model."""
  results = os.path.join(run_dir, RESULTS)
  if os.path.isfile(results):
    print(f"[variants] {variant} seed {seed}: reusing {results}", flush=True)
  else:
    os.makedirs(run_dir, exist_ok=True)
    link = os.path.join(run_dir, "world")
    if not os.path.lexists(link):
      os.symlink(world, link)
    name, args = variant_args(variant, config_args)
    hpjax_main(f"{REPO}/configs/{name}.py:{args},seed={seed}", run_dir, "train", cache_dir)
  ((_, metrics),) = read_models(results)
  return suite_metrics(metrics, results)


def evaluations(path: str) -> list[dict]:
  """The evaluation rows (those with the retrieval figure) of a metrics.jsonl."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no metrics file {path}: the run did not start")
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  out = [r for r in rows if RETRIEVAL in r]
  if not out:
    raise ValueError(f"{path}: no evaluation rows (with {RETRIEVAL!r})")
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


def heldout_metrics(exports: dict, world: str, model: str, workdir: str,
                    cache_dir: str) -> dict[str, dict[tuple[str, str], float]]:
  """Scores every model (key -> checkpoint path) on the world's eval_heldout/ suites in one
  evaluation run; returns key -> {("heldout:<suite>", metric): value}."""
  checkpoints = "+".join(exports.values())
  config = (f"{REPO}/configs/eval_hp.py:suite_root={world}/eval_heldout,image_root={world},"
            f"model={model},checkpoints={checkpoints},suites=replace+swap")
  hpjax_main(config, workdir, "evaluate", cache_dir)
  results = os.path.join(workdir, "results.json")
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
  from scipy import stats  # pylint: disable=g-import-not-at-top
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
      paper = [PAPER.get(variant, {}).get((suite, metric)) for metric in METRICS]
      cells.append(" / ".join("-" if v is None else f"{v:.1f}" for v in paper)
                   if any(v is not None for v in paper) else "")
      lines.append(f"| {suite} | {variant} | {' | '.join(cells)} |")
  lines.append(f"\nmean +- half-width of the 95% Student-t interval over the seeds (up to {n}; "
               "t(0.975, n-1) * sample std / sqrt(n)); accuracies in percent. Paper: its "
               "figures for the row's counterpart (pretrained = OpenAI CLIP ViT-B/32, hn = HN "
               "only, hnhp = HN + HP, the ablation's fractions), REPLACE = mean of attributes "
               "and relations (paper.md).")
  return "\n".join(lines) + "\n"


def plot(table: dict, suites: list[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  variants = list(table)
  fig, axes = plt.subplots(len(METRICS), 1, figsize=(max(6, 1.3 * len(suites)), 9))
  width = 0.8 / len(variants)
  x = np.arange(len(suites))
  for ax, metric in zip(axes, METRICS):
    for i, variant in enumerate(variants):
      stats = [table[variant].get((s, metric), (np.nan, np.nan, 0)) for s in suites]
      ax.bar(x + (i - (len(variants) - 1) / 2) * width, [m for m, _, _ in stats], width,
             yerr=[0 if np.isnan(h) else h for _, h, _ in stats], capsize=3, label=variant)
    ax.set_xticks(x, [s.replace(":", ":\n").replace("_", "\n", 1) for s in suites], fontsize=7)
    ax.set_title(f"{metric} (mean, 95% t-interval over seeds)")
    ax.set_ylabel("%")
  # One legend above the panels, where it hides no bar.
  fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=min(len(variants), 8),
             fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 0.96))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _link(target: str, link: str) -> str:
  """`link` -> `target` (replaced if it points elsewhere); evaluation labels are link names."""
  os.makedirs(os.path.dirname(link), exist_ok=True)
  if os.path.lexists(link) and os.readlink(link) != target:
    os.remove(link)
  if not os.path.lexists(link):
    os.symlink(target, link)
  return link


def main(argv=None) -> None:
  args = parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  stage_root = os.path.join(os.path.abspath(args.workdir), "pretrain")
  config_args = ",".join(a for a in (args.config_args, f"pretrain.cache_dir={stage_root}") if a)
  config = load_config(variants[0], config_args)
  if not pretrain.applies(config):
    raise ValueError(f"config_args {args.config_args!r} switch the pretraining stage off "
                     "(pretrain.steps=0 or model.pretrained set): the study finetunes from it")
  world = synthetic.write_world(os.path.join(args.workdir, "world"),
                                **config.data.synthetic.to_dict()).image_root
  cache_dir = os.path.join(args.workdir, "jax_cache")
  start = time.time()
  figures, models = {}, {}
  for variant in variants:
    for seed in seeds:
      run_dir = os.path.join(args.workdir, variant, f"seed{seed}")
      figures[(variant, seed)] = run_one(variant, seed, config_args, run_dir, world, cache_dir)
      models[(variant, seed)] = os.path.join(run_dir, "best")
  stage = pretrain.stage_dir(config, args.workdir, world)
  stage_metrics = os.path.join(stage, "run", "metrics.jsonl")
  figures[(PRETRAINED, 0)] = suite_metrics(evaluations(stage_metrics)[-1], stage_metrics)
  models[(PRETRAINED, 0)] = os.path.join(stage, pretrain.PARAMS)
  if args.heldout:
    links = {key: _link(path, os.path.join(args.workdir, "heldout_models", (
        "pretrained.safetensors" if key[0] == PRETRAINED else f"{key[0]}_seed{key[1]}")))
             for key, path in models.items()}
    for key, heldout in heldout_metrics(links, world, config.model.name,
                                        os.path.join(args.workdir, "heldout_eval"),
                                        cache_dir).items():
      figures[key].update(heldout)
  print(f"[variants] {len(variants) * len(seeds)} finetunes (and any missing stage) in "
        f"{time.time() - start:.0f}s", flush=True)
  table = aggregate({PRETRAINED: [figures[(PRETRAINED, 0)]],
                     **{v: [figures[(v, s)] for s in seeds] for v in variants}})
  suites = sorted({suite for rows in table.values() for suite, _ in rows},
                  key=lambda name: (name.startswith("heldout:"), name))
  text = markdown(table, suites)
  with open(os.path.join(args.workdir, "comparison.md"), "w") as f:
    f.write(f"variants {variants}, seeds {seeds}, config args {args.config_args!r}\n\n{text}")
  plot(table, suites, os.path.join(args.workdir, "comparison.png"))
  print(text)
  print(f"[variants] wrote {args.workdir}/comparison.md and comparison.png")


if __name__ == "__main__":
  main()
