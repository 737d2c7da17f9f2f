"""One run per checkpoint folder: `<folder>/hpjax-run.lock`, held while a trainer writes there.

The file names the holder (host, pid, start time) and is held with an OS file lock, which the
system drops when the process dies however it ends: a second run on the folder is refused in one
line naming the holder, and a lock file left by a dead process is stale: reported, then taken
over. The holder's name is only a report; the OS lock decides (a file lock on a network disk is
not trusted across hosts: a lock naming another host is refused, with the file to delete when
that run is gone). Object stores (gs://) have no file locks; a run there is not locked.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from absl import logging

from hpjax import leftovers

NAME = "hpjax-run.lock"


class FolderHeldError(ValueError):
  """Another run holds the checkpoint folder."""


class RunLock:
  """Holds `folder`'s lock until `release()` (or the process ends)."""

  def __init__(self, folder: str):
    self.path = os.path.join(folder, NAME)
    self._fd = None
    if "://" in folder:
      logging.info("%s is not a local folder: runs on it are not locked against each other",
                   folder)
      return
    os.makedirs(folder, exist_ok=True)
    self._fd = self._take()

  def _take(self) -> int:
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise FolderHeldError(
            f"{os.path.dirname(self.path)} is in use by another run ({_describe(holder)}): two "
            "runs must not write the same checkpoints; wait for it to end, or train in another "
            "workdir (or checkpoint.directory)") from None
      if os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path)):
        break  # (else the holder removed the file as we opened it: take the new one)
      os.close(fd)
    holder = _read(fd)
    if holder and holder.get("pid") != os.getpid():
      if holder.get("host") != socket.gethostname():
        os.close(fd)
        raise FolderHeldError(
            f"{self.path} names a run of host {holder.get('host')!r} ({_describe(holder)}), "
            "whose lock cannot be checked from here: if that run has ended, delete the file")
      logging.warning("%s: the run that held it (%s) is gone; taking it over", self.path,
                      _describe(holder))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    os.fsync(fd)
    return fd

  def release(self) -> None:
    """Removes the file and drops the lock (again: nothing)."""
    if self._fd is None:
      return
    os.remove(self.path)
    os.close(self._fd)
    self._fd = None


def _read(fd: int) -> dict:
  try:
    holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
  except ValueError:
    return {"unreadable": True}
  return holder if isinstance(holder, dict) else {"unreadable": True}


def _describe(holder: dict) -> str:
  if not holder or "pid" not in holder:
    return "its lock file names no process"
  alive = (holder.get("host") == socket.gethostname()
           and leftovers.alive(int(holder["pid"])))
  return (f"pid {holder['pid']} on {holder.get('host')}, started {holder.get('started')}"
          + (", running" if alive else ""))
