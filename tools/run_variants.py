"""The four training variants on the synthetic world, several seeds, one comparison.

Runs `python -m hpjax.main --config=configs/<variant>.py:<args>,seed=<s> --workdir=...` for each
variant (coco_control, hn, hp, hnhp) and training seed, each in its own process and workdir
(a finished run, one with reports/results.json, is reused). All runs share one synthetic world,
built once under WORKDIR/world and linked into each run's workdir (the trainer's cache finds
it). Then it reads every run's final REPLACE/SWAP figures and writes `comparison.md` (original,
augmented and brittleness per suite: mean +- std over seeds) and `comparison.png` (bars, the
seed spread as error bars) into WORKDIR.

  python tools/run_variants.py --workdir=/tmp/variants --seeds=0,1,2 --heldout \
      --config_args=total_steps=300

`--heldout` also exports each final model and scores them all, in one evaluation run, on the
world's `eval_heldout/` suites (the records that name colour-shape combinations no training
image showed), reported as `heldout:<suite>` rows.

Whether hard positives help here is a measurement, not an assumption: the table says what
happened.
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

VARIANTS = ("coco_control", "hn", "hp", "hnhp")
METRICS = ("original", "augmented", "brittleness")
_METRIC_KEY = re.compile(r"^(?P<suite>[^/]+)/(?P<metric>original|augmented|brittleness)$")
RESULTS = os.path.join("reports", "results.json")  # what a finished training run leaves


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="runs go to WORKDIR/<variant>/seed<s>")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--seeds", default="0,1,2", help="training seeds (the world stays the same)")
  p.add_argument("--config_args", default="",
                 help="key=value,... for every config (configs/common.py), e.g. total_steps=300")
  p.add_argument("--heldout", action="store_true",
                 help="also score every final model on the world's eval_heldout/ suites "
                      "(records naming held-out colour-shape combinations)")
  return p.parse_args(argv)


def load_config(variant: str, config_args: str):
  """The variant's config with `config_args`; it must train on the synthetic world."""
  config = importlib.import_module(f"configs.{variant}").get_config(config_args or None)
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
            cache_dir: str, export: str = "") -> dict[tuple[str, str], float]:
  """Trains and evaluates one (variant, seed) unless its results exist; returns its figures."""
  results = os.path.join(run_dir, RESULTS)
  if os.path.isfile(results) and (not export or os.path.isfile(export)):
    print(f"[variants] {variant} seed {seed}: reusing {results}", flush=True)
  else:
    os.makedirs(run_dir, exist_ok=True)
    link = os.path.join(run_dir, "world")
    if not os.path.lexists(link):
      os.symlink(world, link)
    args = ",".join(a for a in (config_args, f"seed={seed}",
                                export and f"export_openclip={export}") if a)
    hpjax_main(f"{REPO}/configs/{variant}.py:{args}", run_dir, "train", cache_dir)
  return suite_metrics(read_models(results)[0][1], results)


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


def heldout_metrics(exports: dict[str, str], world: str, model: str, workdir: str,
                    cache_dir: str) -> dict[str, dict[tuple[str, str], float]]:
  """Scores every exported model on the world's eval_heldout/ suites in one evaluation run;
  returns export path -> {("heldout:<suite>", metric): value}."""
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
  """variant -> (suite, metric) -> (mean, std, n) over that variant's seeds."""
  out = {}
  for variant, per_seed in runs.items():
    keys = sorted(set().union(*per_seed))
    out[variant] = {}
    for key in keys:
      values = np.array([m[key] for m in per_seed if key in m], np.float64)
      out[variant][key] = (float(values.mean()), float(values.std()), len(values))
  return out


def markdown(table: dict, suites: list[str]) -> str:
  """One row per (suite, variant), columns original/augmented/brittleness as mean +- std."""
  n = max(n for rows in table.values() for _, _, n in rows.values())
  lines = [f"| suite | variant | {' | '.join(METRICS)} |", "| --- | --- |" + " --- |" * len(METRICS)]
  for suite in suites:
    for variant, rows in table.items():
      cells = []
      for metric in METRICS:
        mean, std, _ = rows.get((suite, metric), (float("nan"),) * 3)
        cells.append(f"{mean:.1f} +- {std:.1f}")
      lines.append(f"| {suite} | {variant} | {' | '.join(cells)} |")
  lines.append(f"\nmean +- std (population) over up to {n} seeds; accuracies in percent.")
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
             yerr=[s for _, s, _ in stats], capsize=3, label=variant)
    ax.set_xticks(x, [s.replace(":", ":\n").replace("_", "\n", 1) for s in suites], fontsize=7)
    ax.set_title(metric)
    ax.set_ylabel("%")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  args = parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  config = load_config(variants[0], args.config_args)
  world = synthetic.write_world(os.path.join(args.workdir, "world"),
                                **config.data.synthetic.to_dict()).image_root
  cache_dir = os.path.join(args.workdir, "jax_cache")
  figures, exports = {}, {}
  for variant in variants:
    for seed in seeds:
      run_dir = os.path.join(args.workdir, variant, f"seed{seed}")
      if args.heldout:
        exports[(variant, seed)] = os.path.join(run_dir, f"{variant}_seed{seed}.pt")
      figures[(variant, seed)] = run_one(variant, seed, args.config_args, run_dir, world,
                                         cache_dir, exports.get((variant, seed), ""))
  if exports:
    for key, heldout in heldout_metrics(exports, world, config.model.name,
                                        os.path.join(args.workdir, "heldout_eval"),
                                        cache_dir).items():
      figures[key].update(heldout)
  table = aggregate({v: [figures[(v, s)] for s in seeds] for v in variants})
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
