"""Errors a user causes end in one line: the file, key or field, and what was expected.

`reported(main)` wraps an absl main: the error types that bad input raises (a bad value, a
missing, damaged or foreign file, a full disk, a non-finite loss) print `error: <first line of
the message; the first lines of its listing>` as the last line and exit 1, instead of pages of
library traceback. The traceback stays available: `--traceback` re-raises, and it is logged
at debug level (`--verbosity=1`).
`parse_flags` does the same for errors while the flags (and the config file) are read.
`library_logs_quieted(module)` keeps a library's own warnings out of view while hpjax checks
its work and reports the outcome itself (both shown under `--traceback` or `--verbosity=1`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging as std_logging
import os
import sys

from absl import flags, logging

from hpjax import config_fields

USER_ERRORS = (ValueError, KeyError, OSError, FloatingPointError)
_LIMIT = 400  # characters of a library's message (tensorstore's run to pages)
_LISTED, _LISTED_LIMIT = 6, 200  # lines of a listing under the first, and characters of each


def first_line(error: BaseException, limit: int = _LIMIT) -> str:
  """The message's first non-blank line (a KeyError's without its quotes); a longer one keeps
  both ends, since a library names the file first and the cause last."""
  message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  lines = [l for l in str(message).splitlines() if l.strip()] or [type(error).__name__]
  return _cut(lines[0], limit)


def summary(error: BaseException) -> str:
  """The one line printed for a user error: the first line, then the first `_LISTED` lines of
  the listing under it (hpjax's listings are indented: the missing keys, the images that do not
  read, each model's cause), joined by '; '; a library's unindented continuation (a spec
  dump) is only counted."""
  lines = [l for l in str(error).splitlines() if l.strip()][1:]
  shown = [_cut(l.strip(), _LISTED_LIMIT) for l in lines if l[:1].isspace()][:_LISTED]
  more = len(lines) - len(shown)
  first = first_line(error)
  if shown:
    first += (" " if first.endswith(":") else "; ") + "; ".join(shown)
  return first + (
      f" ({more} more lines with --traceback)" if more > 0 else "")


def _cut(text: str, limit: int) -> str:
  return text if len(text) <= limit else text[:limit // 2] + " ... " + text[-limit // 2:]


def _define_traceback_flag() -> None:
  if "traceback" not in flags.FLAGS:
    flags.DEFINE_bool("traceback", False, "Show an error's full traceback instead of one line.")


def verbose() -> bool:
  """Whether the user asked for the libraries' own words: --traceback or --verbosity >= 1."""
  return flags.FLAGS["verbosity"].value >= 1 or bool(
      "traceback" in flags.FLAGS and flags.FLAGS["traceback"].value)


class _DropFrom(std_logging.Filter):

  def __init__(self, folder: str):
    super().__init__()
    self.folder = folder

  def filter(self, record):
    return not record.pathname.startswith(self.folder)


@contextlib.contextmanager
def library_logs_quieted(module):
  """Inside, the log lines of `module`'s package (any level, any thread) are dropped unless
  `verbose()`: while hpjax probes a damaged checkpoint, orbax's own warnings and errors would
  bury the one line that says which step was skipped and why."""
  if verbose():
    yield
    return
  quiet = _DropFrom(os.path.dirname(os.path.abspath(module.__file__)) + os.sep)
  logger = logging.get_absl_logger()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def _exit_with(error: BaseException, what: str = "error") -> None:
  logging.debug("traceback of the error below", exc_info=error)
  print(f"{what}: {summary(error)}", file=sys.stderr, flush=True)
  sys.exit(1)


def reported(main):
  """`main` for app.run, printing a user error as one last line (see the module docstring)."""
  _define_traceback_flag()

  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if flags.FLAGS["traceback"].value:
        raise
      _exit_with(e)

  return wrapped


def parse_flags(argv):
  """absl's flag parsing; a bad config argument, a config file's own error or an unknown
  `--config.a.b` flag is one line (absl would print the config file's traceback)."""
  _define_traceback_flag()
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, *USER_ERRORS) as e:
    if "--traceback" in argv:
      raise
    _exit_with(_config_problem(argv) or e, "flag error")


def _config_problem(argv) -> BaseException | None:
  """Loads the --config file again, unwrapped, to name what is wrong with it or an override."""
  values = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
  if not values:
    return None
  path, *arg = values[-1].split(":", 1)
  try:
    spec = importlib.util.spec_from_file_location("hpjax_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*arg)
  except Exception as e:  # pylint: disable=broad-except (the config file's own error, named)
    return e
  for a in argv[1:]:
    if a.startswith("--config."):
      problem = config_fields.field_error(config, a[len("--config."):].split("=", 1)[0])
      if problem:
        return KeyError(f"{a.split('=', 1)[0]}: {problem}")
  return None
