"""The front door: `python -m hpjax.main --config=configs/hnhp.py --workdir=DIR`.

A config names its `program` (train, evaluate, convert, generate, wise_ft); main loads the config
file, resolves the workdir and hands both to that program's `run(config, workdir)`. Programs
know nothing of flags.
An error caused by the input ends in one line naming the cause (`--traceback` for the rest).
"""

import importlib
import logging as std_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

from hpjax import errors

PROGRAMS = {
    "train": "hpjax.train.trainer",
    "evaluate": "hpjax.evaluate.runner",
    "convert": "hpjax.checkpoints.convert",
    "generate": "hpjax.generate.run",
    "wise_ft": "hpjax.evaluate.wise_ft",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: the config's).")
_LIBRARY_INFO = flags.DEFINE_bool(
    "library_info_logs", False, "Also show the INFO lines of libraries (orbax, grain, jax).")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _OwnInfoOnly(std_logging.Filter):
  """Lets through hpjax's own INFO lines and every library's warnings and errors: orbax alone
  writes a dozen INFO lines per checkpoint, which would bury the progress line."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/hnhp.py")
  try:
    program = config.get("program")
  except OSError as e:  # ml_collections defers a config file's read error to here, in 4 lines
    raise OSError(f"--config: {str(e).strip().splitlines()[-1].strip()}") from e
  if program not in PROGRAMS:
    raise app.UsageError(f"config.program is {program!r}; expected one of {sorted(PROGRAMS)}")
  workdir = _WORKDIR.value or config.get("workdir")
  if not workdir:
    raise app.UsageError("no workdir: pass --workdir or set config.workdir")
  if not _LIBRARY_INFO.value:
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
  logging.info("running %s in %s", program, workdir)
  importlib.import_module(PROGRAMS[program]).run(config, workdir)


if __name__ == "__main__":
  app.run(errors.reported(main), flags_parser=errors.parse_flags)
