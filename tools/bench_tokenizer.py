"""Captions/s of hpjax's tokenizer against open_clip's on the distinct REPLACE caption strings.

  .venv/bin/python tools/bench_tokenizer.py [--root ../shared/data/hard_positives] [--repeats 5]
      [--batch_sizes 0,256]

Both tokenize the same list in one process, alternating, in calls of each batch size (0: the
whole list in one call, as the evaluator does; 256: as a training step does), warm: the
vocabularies are loaded and one untimed pass (the check that the ids are identical) fills
open_clip's per-word BPE cache and the Rust one, as in a long run. Reports medians of wall
and CPU time.
"""

import argparse
import os
import statistics
import time

import numpy as np
import open_clip

from hpjax import tokenizer as tokenizer_lib
from hpjax.evaluate import benchmarks

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "hard_positives")


def seconds(fn, texts, batch_size: int) -> tuple[float, float]:
  """(wall, CPU) seconds: CPU time is the steadier figure on a machine shared with others."""
  batch_size = batch_size or len(texts)
  wall, cpu = time.perf_counter(), time.process_time()
  for i in range(0, len(texts), batch_size):
    fn(texts[i:i + batch_size])
  return time.perf_counter() - wall, time.process_time() - cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default=DEFAULT_ROOT)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batch_sizes", default="0,256")
  args = parser.parse_args()

  replace = benchmarks.load_hard_positive(args.root, ["replace"])
  captions = sorted({c for suite in replace.values()
                     for record in suite.records for c in record.captions})
  print(f"{len(captions)} distinct REPLACE caption strings from {os.path.abspath(args.root)}")
  start = time.perf_counter()
  ours = tokenizer_lib.get_tokenizer("ViT-B-32")
  print(f"hpjax tokenizer construction (vocabulary + Rust BPE): {time.perf_counter() - start:.2f} s")
  reference = open_clip.get_tokenizer("ViT-B-32")
  if not np.array_equal(ours(captions), reference(captions).numpy()):
    raise SystemExit("ids differ from open_clip: fix the tokenizer before timing it")

  tokenizers = {"hpjax": ours, "open_clip": reference}
  for batch_size in map(int, args.batch_sizes.split(",")):
    print(f"batch size {batch_size or len(captions)}:")
    times = {(name, clock): [] for name in tokenizers for clock in ("wall", "CPU")}
    for _ in range(args.repeats):
      for name, fn in tokenizers.items():
        wall, cpu = seconds(fn, captions, batch_size)
        times[name, "wall"].append(wall)
        times[name, "CPU"].append(cpu)
    medians = {key: statistics.median(t) for key, t in times.items()}
    for (name, clock), median in medians.items():
      runs = ", ".join(f"{t:.3f}" for t in times[name, clock])
      print(f"  {name:>9} {clock:>4}: median {median:.3f} s over {args.repeats} runs = "
            f"{len(captions) / median:,.0f} captions/s (runs: {runs})")
    for clock in ("wall", "CPU"):
      ratio = medians["open_clip", clock] / medians["hpjax", clock]
      print(f"  speed-up hpjax / open_clip ({clock}): {ratio:.1f}x")

if __name__ == "__main__":
  main()
