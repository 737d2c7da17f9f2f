"""A run's folder: its manifest, its shards and their atomic commits.

  manifest.json              what the run is (input digest, generation settings, shard layout):
                             a rerun with other settings is refused, a rerun with the same resumes
  shards/shard-00003.jsonl   one record per caption of shard 3 (hard texts with family, rule and
                             span; rejections; skips), written aside and renamed
  shards/shard-00003.done    written (aside, renamed) after the shard: its record count and digest

A shard counts only with its `.done` whose digest matches, so a process killed at any moment
leaves whole shards and at most some hidden `*.partial` files, which the shard's next writer
removes (one beside the final outputs stays, and is never read: training refuses the name).
Shard s belongs to process s % process_count: processes (or hosts) share nothing but the folder.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from typing import BinaryIO, Iterator

MANIFEST = "manifest.json"
_FORMAT = "hpjax-generate/1"


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
  """A file written next to `path` and renamed over it when the block ends without error:
  readers never see half a file, and a failed or killed writer leaves `path` as it was."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=folder)
  try:
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the outputs from other users
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_atomically(path: str, data: bytes) -> None:
  with atomic_file(path) as f:
    f.write(data)


def open_run(workdir: str, fingerprint: dict, num_captions: int, shard_size: int) -> dict:
  """The run's manifest, created in an empty (or new) folder, or checked against the one there:
  a folder holding another run, or other files, is an error naming it."""
  manifest = {"format": _FORMAT, "fingerprint": fingerprint, "num_captions": num_captions,
              "shard_size": shard_size, "num_shards": max(1, -(-num_captions // shard_size))}
  path = os.path.join(workdir, MANIFEST)
  if not os.path.exists(path):
    os.makedirs(workdir, exist_ok=True)
    others = [n for n in os.listdir(workdir)
              if not (n.startswith(f".{MANIFEST}.") and n.endswith(".partial"))]
    if others:
      raise ValueError(f"{workdir}: holds other files ({', '.join(sorted(others)[:3])}) and no "
                       f"{MANIFEST}; generate into an empty or new folder")
    write_atomically(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
  with open(path, encoding="utf-8") as f:
    try:
      found = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not a generate manifest ({e})") from e
  if found.get("format") != _FORMAT:
    raise ValueError(f"{path}: not a manifest of this generator (format {found.get('format')!r})")
  for key in sorted(set(manifest["fingerprint"]) | set(found.get("fingerprint", {}))):
    old, new = found.get("fingerprint", {}).get(key), manifest["fingerprint"].get(key)
    if old != new:
      raise ValueError(f"{path}: this folder holds another run ({key} was {old!r}, now "
                       f"{new!r}); generate into a new folder, or rerun with the same settings "
                       "to resume")
  if found != manifest:
    raise ValueError(f"{path}: this folder holds another run ({found['num_captions']} captions "
                     f"in shards of {found['shard_size']}, now {num_captions} in {shard_size})")
  return manifest


def shard_path(workdir: str, shard: int) -> str:
  return os.path.join(workdir, "shards", f"shard-{shard:05d}.jsonl")


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def is_done(workdir: str, shard: int) -> bool:
  path = shard_path(workdir, shard)
  try:
    with open(path[:-len(".jsonl")] + ".done", encoding="utf-8") as f:
      done = json.load(f)
    with open(path, "rb") as f:
      return done.get("sha256") == _digest(f.read())
  except (OSError, ValueError):
    return False


def commit(workdir: str, shard: int, records: list[dict]) -> None:
  """Writes shard `shard`'s records, then its `.done`; removes the shard's stale partial files."""
  path = shard_path(workdir, shard)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  for stale in glob.glob(os.path.join(os.path.dirname(path), f".shard-{shard:05d}.*.partial")):
    os.remove(stale)
  data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
  write_atomically(path, data)
  write_atomically(path[:-len(".jsonl")] + ".done",
                   json.dumps({"records": len(records), "sha256": _digest(data)}).encode())


def read(workdir: str, shard: int) -> list[dict]:
  """The records of one committed shard, in caption order."""
  with open(shard_path(workdir, shard), encoding="utf-8") as f:
    return [json.loads(line) for line in f]
