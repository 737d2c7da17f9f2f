"""One evaluation run over three models against three separate runs: wall time, images decoded.

  .venv/bin/python tools/bench_zoo_eval.py [--root ../shared/data/hard_positives]
      [--num_records 300] [--rounds 3] [--workdir /tmp/bench_zoo_eval]

The first N records of both real REPLACE files (data/ + swapped_data/, copied into a small
suite folder), one stand-in PNG per image (hpjax.evaluate.stand_in_images), three random models
of one small 224 px architecture (so decoding, not the encoders, is the work a shared pass
saves). "together" is one `runner.run` with the three as `models=...`: one decode pass feeds all
three; "separate" is three `runner.run` calls, one model each. Both sides compile their own
encoders, as separate processes would. Rounds interleave the sides (the machine is shared);
medians are printed with each round's figures, and the scores of both sides are compared.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]  # `configs` and `hpjax` from this checkout
from configs import eval_hp  # pylint: disable=g-import-not-at-top,wrong-import-position
from hpjax import factory  # pylint: disable=g-import-not-at-top,wrong-import-position
from hpjax.data import suites
from hpjax.evaluate import benchmarks
from hpjax.evaluate import runner
from hpjax.evaluate import stand_in_images

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "hard_positives")
# Small towers at the study's 224 px: the image decode + resize is most of the work.
SMALL_224 = {"embed_dim": 64, "quick_gelu": True,
             "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32,
                            "patch_size": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                          "layers": 2}}


def subset_root(root: str, out: str, num: int) -> str:
  """The first `num` records of both REPLACE files in the authors' layout under `out`."""
  for folder in ("data", "swapped_data"):
    os.makedirs(os.path.join(out, folder), exist_ok=True)
    for name in suites.REPLACE_NAMES:
      with open(os.path.join(root, folder, f"{name}.json")) as f:
        rows = json.load(f)[:num]
      with open(os.path.join(out, folder, f"{name}.json"), "w") as f:
        json.dump(rows, f)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default=DEFAULT_ROOT)
  parser.add_argument("--num_records", type=int, default=300, help="first N of each file")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--workdir", default="/tmp/bench_zoo_eval")
  args = parser.parse_args()

  root = subset_root(args.root, os.path.join(args.workdir, "suites"), args.num_records)
  loaded = benchmarks.load_hard_positive(root, ["replace"])
  images = os.path.join(args.workdir, "images")
  num_images = stand_in_images.write_stand_in_images(
      [r for s in loaded.values() for r in s.records], images)
  arch = os.path.join(args.workdir, "small224.json")
  with open(arch, "w") as f:
    json.dump(SMALL_224, f)
  paths = []
  for seed in range(3):
    paths.append(os.path.join(args.workdir, f"model{seed}.safetensors"))
    if not os.path.exists(paths[-1]):
      _, params = factory.create_model(arch, rng=jax.random.key(seed))
      factory.export_openclip(params, arch, paths[-1])
  common = (f"suite_root={root},image_root={images},suites=replace,batch_size=64,"
            "gallery_size=0,num_workers=8")
  print(f"{2 * args.num_records} records, {num_images} distinct images, 3 models, "
        f"{jax.device_count()} devices")

  def together(r):
    workdir = os.path.join(args.workdir, f"together{r}")
    out = runner.run(eval_hp.get_config(f"{common},models=" + "+".join(
        f"{arch}={p}" for p in paths)), workdir)
    with open(os.path.join(workdir, "results.json")) as f:
      decoded = sum(p["images_decoded"] for p in json.load(f)["decode_passes"])
    return out, decoded

  def separate(r):
    out, decoded = {}, 0
    for k, p in enumerate(paths):
      workdir = os.path.join(args.workdir, f"separate{r}_{k}")
      out.update(runner.run(eval_hp.get_config(f"{common},models={arch}={p}"), workdir))
      with open(os.path.join(workdir, "results.json")) as f:
        decoded += sum(q["images_decoded"] for q in json.load(f)["decode_passes"])
    return out, decoded

  walls = {"together": [], "separate": []}
  for r in range(args.rounds):
    for name, fn in (("together", together), ("separate", separate))[::1 if r % 2 == 0 else -1]:
      start = time.perf_counter()
      out, decoded = fn(r)
      walls[name].append(time.perf_counter() - start)
      print(f"round {r} {name}: {walls[name][-1]:.1f} s wall, {decoded} images decoded",
            flush=True)
      walls[name + "_out"] = out
  same = all(walls["together_out"][label][key] == walls["separate_out"][label][key]
             for label in walls["together_out"] for key in walls["together_out"][label]
             if not key.startswith("eval/"))
  t, s = (statistics.median(walls[k]) for k in ("together", "separate"))
  print(f"median: together {t:.1f} s, separate {s:.1f} s, ratio {s / t:.2f}x; "
        f"identical figures: {same}")


if __name__ == "__main__":
  main()
