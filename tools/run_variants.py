"""The embedded study: one pretrained model, every variant finetuned from it, several seeds.

The paper's protocol on the synthetic world: the captions-only pretraining stage runs once
(`pretrain.cache_dir=WORKDIR/pretrain`, hpjax/train/pretrain.py), then every variant of
hpjax.evaluate.study.STUDY (coco_control, hn, hp, hnhp and the ablation hnhp with hn_frac 0.25 /
0.5 / 0.75: rows of the paper's Table 1, whose recipes are their configs) is finetuned
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
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]  # `configs` and `hpjax` from this checkout

from hpjax.data import synthetic  # pylint: disable=g-import-not-at-top (after the path)
from hpjax.evaluate import study  # pylint: disable=g-import-not-at-top
from hpjax.train import pretrain  # pylint: disable=g-import-not-at-top


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="runs go to WORKDIR/<variant>/seed<s>")
  p.add_argument("--variants", default=",".join(study.STUDY),
                 help=f"of {sorted(study.STUDY)}")
  p.add_argument("--seeds", default="0,1,2", help="training seeds (the world stays the same)")
  p.add_argument("--config_args", default="",
                 help="key=value,... for every config (configs/common.py), e.g. total_steps=300")
  p.add_argument("--heldout", action="store_true",
                 help="also score every final model on the world's eval_heldout/ suites "
                      "(records naming held-out colour-shape combinations)")
  return p.parse_args(argv)


def load_config(variant: str, config_args: str):
  """The variant's config with `config_args`; it must train on the synthetic world."""
  name, args = study.variant_args(variant, config_args)
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


def run_one(variant: str, seed: int, config_args: str, run_dir: str,
            world: synthetic.WorldPaths, cache_dir: str) -> dict[tuple[str, str], float]:
  """Trains and evaluates one (variant, seed) unless its results exist; returns the figures
  of its kept (best by retrieval) model."""
  results = os.path.join(run_dir, study.RESULTS)
  if os.path.isfile(results):
    print(f"[variants] {variant} seed {seed}: reusing {results}", flush=True)
  else:
    os.makedirs(run_dir, exist_ok=True)
    link = os.path.join(run_dir, "world")
    if not os.path.lexists(link):
      os.symlink(world.image_root, link)
    name, args = study.variant_args(variant, config_args)
    hpjax_main(f"{REPO}/configs/{name}.py:{args},seed={seed}", run_dir, "train", cache_dir)
  ((_, metrics),) = study.read_models(results)
  return study.suite_metrics(metrics, results)


def heldout_metrics(exports: dict, world: synthetic.WorldPaths, model: str, workdir: str,
                    cache_dir: str) -> dict[str, dict[tuple[str, str], float]]:
  """Scores every model (key -> checkpoint path) on the world's eval_heldout/ suites in one
  evaluation run; returns key -> {("heldout:<suite>", metric): value}."""
  checkpoints = "+".join(exports.values())
  config = (f"{REPO}/configs/eval_hp.py:suite_root={world.heldout_eval_root},"
            f"image_root={world.image_root},model={model},checkpoints={checkpoints},"
            "suites=replace+swap")
  hpjax_main(config, workdir, "evaluate", cache_dir)
  return study.heldout_metrics(os.path.join(workdir, "results.json"), exports)


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
                                **config.data.synthetic.to_dict())
  cache_dir = os.path.join(args.workdir, "jax_cache")
  start = time.time()
  figures, models = {}, {}
  for variant in variants:
    for seed in seeds:
      run_dir = os.path.join(args.workdir, variant, f"seed{seed}")
      figures[(variant, seed)] = run_one(variant, seed, config_args, run_dir, world, cache_dir)
      models[(variant, seed)] = os.path.join(run_dir, "best")
  stage = pretrain.stage_dir(config, args.workdir, world)
  stage_run = os.path.join(stage, "run")
  figures[(study.PRETRAINED, 0)] = study.suite_metrics(study.evaluations(stage_run)[-1],
                                                 os.path.join(stage_run, "metrics.jsonl"))
  models[(study.PRETRAINED, 0)] = os.path.join(stage, pretrain.PARAMS)
  if args.heldout:
    links = {key: _link(path, os.path.join(args.workdir, "heldout_models", (
        "pretrained.safetensors" if key[0] == study.PRETRAINED else f"{key[0]}_seed{key[1]}")))
             for key, path in models.items()}
    for key, heldout in heldout_metrics(links, world, config.model.name,
                                        os.path.join(args.workdir, "heldout_eval"),
                                        cache_dir).items():
      figures[key].update(heldout)
  print(f"[variants] {len(variants) * len(seeds)} finetunes (and any missing stage) in "
        f"{time.time() - start:.0f}s", flush=True)
  table = study.aggregate({study.PRETRAINED: [figures[(study.PRETRAINED, 0)]],
                           **{v: [figures[(v, s)] for s in seeds] for v in variants}})
  suites = sorted({suite for rows in table.values() for suite, _ in rows},
                  key=lambda name: (name.startswith("heldout:"), name))
  text = study.markdown(table, suites)
  with open(os.path.join(args.workdir, "comparison.md"), "w") as f:
    f.write(f"variants {variants}, seeds {seeds}, config args {args.config_args!r}\n\n{text}")
  study.plot(table, suites, os.path.join(args.workdir, "comparison.png"))
  print(text)
  print(f"[variants] wrote {args.workdir}/comparison.md and comparison.png")


if __name__ == "__main__":
  main()
