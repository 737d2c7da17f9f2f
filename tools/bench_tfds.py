"""Random-access reads of the same training records: a TFDS dataset vs hpjax's array_record file.

  .venv/bin/python tools/bench_tfds.py --workdir=/tmp/bench_tfds --num_train=3000 --rounds=5

Builds `synthetic_world` (config `bench`) as TFDS and the same world's records with
`train_builders.write_array_record`, checks that both give the same records, then times a full
pass in one random order over each, the two interleaved round by round (records/s per thread).
"""

import os
import time

from absl import app, flags
import numpy as np

from hpjax.data import records as records_lib
from hpjax.data import synthetic, tfds_builders, tfds_sources, train_builders, training

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/bench_tfds", "where both datasets are written")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 3000, "records")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "interleaved timing rounds")


def main(argv):
  del argv
  params = {"num_train": _NUM_TRAIN.value, "num_eval": 8, "image_size": 64, "seed": 0}
  data_dir = os.path.join(_WORKDIR.value, "tfds")
  tfds_builders.build("synthetic_world", data_dir, config=tfds_builders.SyntheticWorldConfig(
      name=f"bench{_NUM_TRAIN.value}", part="train", **params))
  world = synthetic.write_world(os.path.join(_WORKDIR.value, "world"), **params)
  path = os.path.join(_WORKDIR.value, "train.array_record")
  if not os.path.exists(path):
    train_builders.write_array_record(records_lib.read_jsonl(world.train_jsonl), path)
  sources = {"tfds": tfds_sources.open_training_source(f"tfds:synthetic_world/bench{_NUM_TRAIN.value}",
                                                        data_dir),
             "array_record": training.open_source(path)}
  order = [int(i) for i in np.random.default_rng(0).permutation(len(sources["tfds"]))]
  # The image name differs (TFDS keeps the path under the world's folder, write_array_record the
  # base name); everything else must be equal.
  strip = lambda r: {k: v for k, v in r.items() if k != "image_name"}  # pylint: disable=unnecessary-lambda-assignment
  if any(strip(sources["tfds"][i]) != strip(sources["array_record"][i]) for i in order):
    raise AssertionError("the two datasets hold different records")
  speeds = {name: [] for name in sources}
  for _ in range(_ROUNDS.value):
    for name, source in sources.items():
      start = time.perf_counter()
      for i in order:
        source[i]  # pylint: disable=pointless-statement
      speeds[name].append(len(order) / (time.perf_counter() - start))
  for name, values in speeds.items():
    print(f"{name}: median {np.median(values):.0f} records/s per thread "
          f"(rounds: {', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
  app.run(main)
