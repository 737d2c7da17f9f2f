"""The front door: `python -m hpjax.main --config=configs/hnhp.py --workdir=DIR`.

A config names its `program` (train, evaluate, convert); main loads the config file, resolves the
workdir and hands both to that program's `run(config, workdir)`. Programs know nothing of flags.
"""

import importlib

from absl import app, flags, logging
from ml_collections import config_flags

PROGRAMS = {
    "train": "hpjax.train.trainer",
    "evaluate": "hpjax.evaluate.runner",
    "convert": "hpjax.checkpoints.convert",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: the config's).")


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/hnhp.py")
  program = config.get("program")
  if program not in PROGRAMS:
    raise app.UsageError(f"config.program is {program!r}; expected one of {sorted(PROGRAMS)}")
  workdir = _WORKDIR.value or config.get("workdir")
  if not workdir:
    raise app.UsageError("no workdir: pass --workdir or set config.workdir")
  logging.info("running %s in %s", program, workdir)
  importlib.import_module(PROGRAMS[program]).run(config, workdir)


if __name__ == "__main__":
  app.run(main)
