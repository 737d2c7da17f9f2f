"""What both LLM samplers share: the model folder's facts (config.json, its end and padding
ids) and the fixed-shape batches they see (a full batch, prompts padded to a bucket)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence


def model_config(model_dir: str) -> dict:
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"generate.llm.model: {model_dir!r} holds no config.json; expected a "
                     "Hugging Face model folder (save_pretrained output)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _ids(value) -> list[int]:
  return [] if value is None else [value] if isinstance(value, int) else list(value)


def stop_ids(model_dir: str) -> list[int]:
  """The model's end-of-text ids (generation_config.json first, as transformers reads them)."""
  path = os.path.join(model_dir, "generation_config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      found = _ids(json.load(f).get("eos_token_id"))
      if found:
        return found
  return _ids(model_config(model_dir).get("eos_token_id"))


def pad_id(model_dir: str) -> int:
  config = model_config(model_dir)
  return config.get("pad_token_id") if config.get("pad_token_id") is not None else (
      stop_ids(model_dir) or [0])[0]


def padded_length(prompts: Sequence[Sequence[int]], bucket: int) -> int:
  """The longest prompt's length rounded up to a multiple of `bucket`."""
  return -(-max(len(p) for p in prompts) // bucket) * bucket


def full_batch(prompts: Sequence[Sequence[int]], batch_size: int) -> list[Sequence[int]]:
  """The prompts, then copies of the first up to batch_size (a fixed shape; copies discarded)."""
  if not 0 < len(prompts) <= batch_size:
    raise ValueError(f"{len(prompts)} prompts for a sampler batch of {batch_size}")
  return list(prompts) + [prompts[0]] * (batch_size - len(prompts))


def cut(new_ids: Sequence[int], stops: Sequence[int], limit: int) -> list[int]:
  """New ids up to the first stop id, at most `limit`."""
  out = []
  for token in list(new_ids)[:limit]:
    if token in stops:
      break
    out.append(int(token))
  return out


def batch_seed(seed: int, prompts: Sequence[Sequence[int]]) -> int:
  """A sampling seed from the run's seed and the batch's prompts: the same batch samples the same
  answers whatever ran before it (a resumed run, another process layout)."""
  digest = hashlib.sha256(json.dumps([seed, [list(map(int, p)) for p in prompts]]).encode())
  return int.from_bytes(digest.digest()[:4], "little") >> 1
