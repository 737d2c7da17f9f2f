"""Captions/s of hpjax's tokenizer against open_clip's on the distinct REPLACE caption strings.

  .venv/bin/python tools/bench_tokenizer.py [--root ../shared/data/hard_positives] [--repeats 5]

Both tokenize the same list in one process, alternating, from a warm start (vocabularies
loaded; open_clip's per-word BPE cache and hpjax's Rust BPE cache warmed by one untimed pass,
as in a long evaluation). Reports medians and checks the ids are identical.
"""

import argparse
import os
import statistics
import time

import numpy as np
import open_clip

from hpjax import tokenizer as tokenizer_lib
from hpjax.data import suites

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "hard_positives")


def seconds(fn, texts) -> float:
  start = time.perf_counter()
  fn(texts)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default=DEFAULT_ROOT)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  captions = sorted({c for suite in suites.load_replace(args.root).values()
                     for record in suite.records for c in record.captions})
  print(f"{len(captions)} distinct REPLACE caption strings from {os.path.abspath(args.root)}")
  start = time.perf_counter()
  ours = tokenizer_lib.get_tokenizer("ViT-B-32")
  print(f"hpjax tokenizer construction (vocabulary + Rust BPE): {time.perf_counter() - start:.2f} s")
  reference = open_clip.get_tokenizer("ViT-B-32")
  if not np.array_equal(ours(captions), reference(captions).numpy()):
    raise SystemExit("ids differ from open_clip: fix the tokenizer before timing it")

  times = {"hpjax": [], "open_clip": []}
  for _ in range(args.repeats):
    times["hpjax"].append(seconds(ours, captions))
    times["open_clip"].append(seconds(reference, captions))
  medians = {name: statistics.median(t) for name, t in times.items()}
  for name, median in medians.items():
    print(f"{name:>9}: median {median:.3f} s over {args.repeats} runs = "
          f"{len(captions) / median:,.0f} captions/s (runs: {', '.join(f'{t:.3f}' for t in times[name])})")
  print(f"speed-up hpjax / open_clip: {medians['open_clip'] / medians['hpjax']:.1f}x")


if __name__ == "__main__":
  main()
