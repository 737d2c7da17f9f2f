"""Temporary files and folders that name the process writing them, so that what a killed run
left behind is recognised, removed and logged by the next run on the same host.

A name is `<stem><host>-<pid>-<random>` (`name`); `remove_stale(folder, stem)` removes the
entries of `folder` so named whose process is gone on this host. Entries of another host (a
shared disk) or of a running process are left alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid

from absl import logging


def _host() -> str:
  return socket.gethostname().replace("-", "_") or "host"


def name(stem: str) -> str:
  """A fresh temporary name for this process: `<stem><host>-<pid>-<random>`."""
  return f"{stem}{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale(folder: str | os.PathLike, stem: str) -> list[str]:
  """Removes the `name(stem)` entries of `folder` left by stopped processes of this host;
  returns their paths."""
  mine = f"{stem}{_host()}-"
  try:
    entries = os.listdir(folder)
  except FileNotFoundError:
    return []
  removed = []
  for entry in entries:
    pid = entry[len(mine):].split("-")[0] if entry.startswith(mine) else ""
    if pid.isdigit() and not alive(int(pid)):
      path = os.path.join(folder, entry)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)
      removed.append(path)
      logging.warning("removed %s, left by a run that was stopped", path)
  return removed


def alive(pid: int) -> bool:
  """Whether process `pid` of this host is running (another user's counts as running)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True
