"""Rule generation speed in captions per second, on one core and on two.

  python tools/bench_generate.py --captions=PATH/valid_neg_clip.tsv

Three figures, medians of --repeats, the tagger's warm-up excluded: the tagger alone (its share
of the cost), every rule family on one core, and the same on two worker processes that each
take half the captions (as two `process_index`es of `python -m hpjax.generate` would); then one
whole `hpjax.generate` run end to end (reading, checking, shards, outputs; start-up included).
"""

import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from hpjax import errors
from hpjax.generate import rules, sources, tagger as tagger_lib

_CAPTIONS = flags.DEFINE_string("captions", None, "captions file (COCO .json, .jsonl, .tsv, .txt)",
                                required=True)
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats (the median is reported)")

_GENERATOR = None


def _generator():
  return rules.RuleGenerator(tagger_lib.LexiconTagger(), list(rules.FAMILIES),
                             {rules.HARD_NEGATIVE: 1, rules.HARD_POSITIVE: 1})


def _init_worker():
  global _GENERATOR
  _GENERATOR = _generator()


def _generate(texts):
  return len(_GENERATOR.generate(texts, [random.Random(i) for i in range(len(texts))]))


def _median_rate(count, timed) -> float:
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    timed()
    times.append(time.perf_counter() - start)
  return count / statistics.median(times)


def main(argv):
  del argv
  texts = [c.text for c in sources.read(_CAPTIONS.value) if not sources.check(c, 100)]
  tagger = tagger_lib.LexiconTagger()
  generator = _generator()
  generator.generate(texts, [random.Random(i) for i in range(len(texts))])  # warm caches
  rates = {"tagger alone, 1 core": _median_rate(len(texts), lambda: [tagger.tag(t) for t in texts]),
           "all 7 families, 1 core": _median_rate(len(texts), lambda: generator.generate(
               texts, [random.Random(i) for i in range(len(texts))]))}
  halves = [texts[:len(texts) // 2], texts[len(texts) // 2:]]
  with multiprocessing.get_context("fork").Pool(2, initializer=_init_worker) as pool:
    pool.map(_generate, halves)  # warm-up
    rates["all 7 families, 2 processes"] = _median_rate(len(texts),
                                                        lambda: pool.map(_generate, halves))
  with tempfile.TemporaryDirectory() as workdir:
    config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                          "generate.py")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hpjax.generate", f"--workdir={workdir}/run",
                    f"--config={config}:input={_CAPTIONS.value}"], check=True,
                   capture_output=True)
    rates["python -m hpjax.generate end to end, 1 process"] = len(texts) / (
        time.perf_counter() - start)
  print(f"{len(texts)} captions of {_CAPTIONS.value}, {os.cpu_count()} CPUs visible\n")
  print("| what | captions/s | vs 1 core |\n|---|---:|---:|")
  one = rates["all 7 families, 1 core"]
  for name, rate in rates.items():
    print(f"| {name} | {rate:,.0f} | {rate / one:.2f} |")


if __name__ == "__main__":
  app.run(errors.reported(main))
