"""The four training variants on the synthetic world, several seeds, one comparison.

Runs `python -m hpjax.main --config=configs/<variant>.py:<args>,seed=<s> --workdir=...` for each
variant (coco_control, hn, hp, hnhp) and training seed, each in its own process and workdir
(a finished run, one with reports/results.json, is reused). All runs share one synthetic world,
built once under WORKDIR/world and linked into each run's workdir (the trainer's cache finds
it). Then it reads every run's final REPLACE/SWAP figures and writes `comparison.md` (original,
augmented and brittleness per suite: mean +- std over seeds) and `comparison.png` (bars, the
seed spread as error bars) into WORKDIR.

  python tools/run_variants.py --workdir=/tmp/variants --seeds=0,1,2 \
      --config_args=total_steps=300

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
RESULTS = os.path.join("reports", "results.json")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="runs go to WORKDIR/<variant>/seed<s>")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--seeds", default="0,1,2", help="training seeds (the world stays the same)")
  p.add_argument("--config_args", default="",
                 help="key=value,... for every config (configs/common.py), e.g. total_steps=300")
  return p.parse_args(argv)


def shared_world(variant: str, config_args: str, workdir: str) -> str:
  """Builds the world the configs ask for once, under WORKDIR/world."""
  config = importlib.import_module(f"configs.{variant}").get_config(config_args or None)
  if config.data.source != "synthetic":
    raise ValueError(f"config_args {config_args!r} leave the synthetic world (data.source = "
                     f"{config.data.source!r}); this tool compares variants on it")
  return synthetic.write_world(os.path.join(workdir, "world"),
                               **config.data.synthetic.to_dict()).image_root


def run_one(variant: str, seed: int, config_args: str, run_dir: str, world: str,
            cache_dir: str) -> str:
  """Trains and evaluates one (variant, seed) unless its results exist; returns their path."""
  results = os.path.join(run_dir, RESULTS)
  if os.path.isfile(results):
    print(f"[variants] {variant} seed {seed}: reusing {results}", flush=True)
    return results
  os.makedirs(run_dir, exist_ok=True)
  link = os.path.join(run_dir, "world")
  if not os.path.lexists(link):
    os.symlink(world, link)
  args = ",".join(a for a in (config_args, f"seed={seed}") if a)
  cmd = [sys.executable, "-m", "hpjax.main", f"--config={REPO}/configs/{variant}.py:{args}",
         f"--workdir={run_dir}"]
  log_path = os.path.join(run_dir, "train.log")
  print(f"[variants] {variant} seed {seed}: {' '.join(cmd)} > {log_path}", flush=True)
  start = time.time()
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # later runs skip the compiles
  with open(log_path, "w") as log:
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  if done.returncode:
    with open(log_path) as log:
      tail = log.readlines()[-30:]
    raise RuntimeError(f"{variant} seed {seed} failed (exit {done.returncode}); the end of "
                       f"{log_path}:\n{''.join(tail)}")
  if not os.path.isfile(results):
    raise FileNotFoundError(f"{variant} seed {seed} finished without writing {results}")
  print(f"[variants] {variant} seed {seed}: done in {time.time() - start:.0f}s", flush=True)
  return results


def suite_metrics(path: str) -> dict[tuple[str, str], float]:
  """{(suite, metric): value} for original/augmented/brittleness of every suite of a run."""
  with open(path) as f:
    models = json.load(f).get("models") or [{}]
  out = {}
  for key, value in models[0].get("metrics", {}).items():
    match = _METRIC_KEY.match(key)
    if match:
      out[(match["suite"], match["metric"])] = float(value)
  if not out:
    raise ValueError(f"{path}: no '<suite>/<original|augmented|brittleness>' metrics in "
                     "models[0].metrics")
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
  fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4), sharey=False)
  width = 0.8 / len(variants)
  x = np.arange(len(suites))
  for ax, metric in zip(axes, METRICS):
    for i, variant in enumerate(variants):
      stats = [table[variant].get((s, metric), (np.nan, np.nan, 0)) for s in suites]
      ax.bar(x + (i - (len(variants) - 1) / 2) * width, [m for m, _, _ in stats], width,
             yerr=[s for _, s, _ in stats], capsize=3, label=variant)
    ax.set_xticks(x, [s.replace("/", "\n") for s in suites], fontsize=7)
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
  world = shared_world(variants[0], args.config_args, args.workdir)
  runs = {}
  for variant in variants:
    runs[variant] = [suite_metrics(run_one(variant, seed, args.config_args,
                                           os.path.join(args.workdir, variant, f"seed{seed}"),
                                           world, os.path.join(args.workdir, "jax_cache")))
                     for seed in seeds]
  table = aggregate(runs)
  suites = sorted({suite for rows in table.values() for suite, _ in rows})
  text = markdown(table, suites)
  with open(os.path.join(args.workdir, "comparison.md"), "w") as f:
    f.write(f"variants {variants}, seeds {seeds}, config args {args.config_args!r}\n\n{text}")
  plot(table, suites, os.path.join(args.workdir, "comparison.png"))
  print(text)
  print(f"[variants] wrote {args.workdir}/comparison.md and comparison.png")


if __name__ == "__main__":
  main()
