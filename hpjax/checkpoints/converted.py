"""Converted Flax params cached beside the downloads, so a model is converted from PyTorch once.

An entry is `<hub cache>/hpjax-converted/<key>.safetensors` (the params, flat '/'-joined keys,
float32) and `<key>.json` (the conversion's version, the source's checksum, the architecture,
and the SHA-256 of the .safetensors file). The key hashes the source file's checksum, the
architecture, the LoRA settings and `VERSION`: a changed conversion or architecture misses. An
entry whose file does not hash to its record is removed and converted again, never loaded. Both
files are written aside, then renamed, the record last: a half-written entry is a miss, and a
full disk leaves the cache as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

from absl import logging
from flax import traverse_util
import numpy as np
import safetensors.numpy

from hpjax.checkpoints import download
from hpjax.models.config import CLIPConfig

# Bump when a conversion's output changes: old entries then miss. (2: scalars such as
# logit_scale keep their shape (); version 1 stored them as (1,).)
VERSION = 2


def folder() -> pathlib.Path:
  return download.cache_root() / "hpjax-converted"


def key(source_digest: str, config: CLIPConfig | None, extra=None) -> str:
  """The entry's name for a source checksum, an architecture (None: inferred) and settings."""
  described = json.dumps([VERSION, source_digest, _describe(config), repr(extra)],
                         sort_keys=True)
  return hashlib.sha256(described.encode()).hexdigest()[:32]


def _describe(config: CLIPConfig | None):
  return None if config is None else {"name": config.name, **config.to_dict()}


def lookup(entry: str) -> tuple[CLIPConfig, dict] | None:
  """(config, float32 params) of a good entry, else None (a corrupt one is removed)."""
  data, record_path = folder() / f"{entry}.safetensors", folder() / f"{entry}.json"
  if not (record_path.is_file() and data.is_file()):
    return None
  try:
    record = json.loads(record_path.read_text())
    good = record["version"] == VERSION and download.sha256(data) == record["sha256"]
  except (ValueError, KeyError, OSError):
    good = False
  if not good:
    logging.warning("converted params %s do not match their record; converting again", data)
    data.unlink(missing_ok=True)
    record_path.unlink(missing_ok=True)
    return None
  config = CLIPConfig.from_dict(record["config"]["dict"], name=record["config"]["name"])
  flat = safetensors.numpy.load_file(str(data))
  return config, traverse_util.unflatten_dict(flat, sep="/")


def store(entry: str, source_digest: str, config: CLIPConfig, params) -> None:
  """Writes an entry; a failure (a full disk) is logged and leaves the cache as it was: the
  params were converted and are used all the same."""
  target = folder()
  data = target / f"{entry}.safetensors"
  tmp_data = target / f"{entry}.{os.getpid()}.safetensors.tmp"
  tmp_record = target / f"{entry}.{os.getpid()}.json.tmp"
  try:
    target.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(params, sep="/")
    safetensors.numpy.save_file(
        {k: np.asarray(v, np.float32, order="C") for k, v in flat.items()},  # 0-d stays 0-d
        str(tmp_data))
    record = {"version": VERSION, "source": source_digest, "sha256": download.sha256(tmp_data),
              "config": {"name": config.name, "dict": config.to_dict()}}
    tmp_record.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp_data, data)  # Both written before either is renamed: no orphan file.
    os.replace(tmp_record, target / f"{entry}.json")
  except OSError as e:
    logging.warning("converted params not cached in %s: %s", target, e)
    tmp_data.unlink(missing_ok=True)
    tmp_record.unlink(missing_ok=True)
