"""Texts packed several to a row, so the text tower's cost follows the tokens present.

The examples of a batch are split into G groups of consecutive examples, one per data shard, and
each group's texts (caption, hard positives, hard negatives of every example) are packed
first-fit decreasing into R rows of the context length. Inside a row attention is causal and
stays within each text, positions restart at 0 per text and each text is pooled at its own EOT,
so the features are those of encoding every text alone at 77 tokens (tests/test_text_packing.py).

Shapes stay fixed: R is the smallest step of a short ladder (1, 2, 3, 4, then m * 2**e with
m in 5..8, at most 25% above what is needed) that holds every group of every host (`host_max`),
so the step compiles once per ladder step a run meets, as it did once per length bucket. Per
group, the R rows hold as many tokens as the texts need plus the ladder's slack and the packing's
leftovers; bucketing the whole batch at its longest text (16/32/77) made every text pay for that
one. Nothing overflows: a group that needs more rows moves the batch to the next step, and R is
capped at one row per text, which always fits.
"""

from __future__ import annotations

import numpy as np

from hpjax import sharding
from hpjax import tokenizer as tokenizer_lib
from hpjax.train import step as step_lib


def ladder(needed: int) -> int:
  """The smallest row count of the ladder that is >= needed."""
  needed = int(needed)
  if needed <= 4:
    return max(needed, 1)
  shift = (needed - 1).bit_length() - 3  # needed lies in (4 * 2**shift, 8 * 2**shift]
  return -(-needed >> shift) << shift


def first_fit_decreasing(lengths: np.ndarray, row_length: int):
  """(row, offset) of each text, longest first into the first row with room; rows 0.. are used."""
  if lengths.max(initial=0) > row_length:
    raise ValueError(f"a text of {int(lengths.max())} tokens does not fit a row of {row_length}")
  free = np.full(len(lengths), row_length)
  row, offset = np.zeros(len(lengths), np.int32), np.zeros(len(lengths), np.int32)
  for i in np.argsort(-lengths, kind="stable"):
    r = int(np.argmax(free >= lengths[i]))
    row[i], offset[i] = r, row_length - free[r]
    free[r] -= lengths[i]
  return row, offset


def pack(texts: np.ndarray, lengths: np.ndarray, rows: np.ndarray, offsets: np.ndarray,
         num_rows: int, row_length: int) -> dict:
  """texts (G, T, L) of `lengths` placed at (rows, offsets) (G, T) -> the packed arrays of
  `CLIP.encode_text_packed`: tokens, positions, segments (G * num_rows, row_length), eot (G, T)."""
  groups, count, length = texts.shape
  col = np.arange(length)
  inside = col < lengths[..., None]  # (G, T, L): the tokens each text keeps
  start = (np.arange(groups)[:, None] * num_rows + rows) * row_length + offsets  # (G, T)
  flat = (start[..., None] + col)[inside]
  out = {name: np.zeros(groups * num_rows * row_length, np.int32)
         for name in ("tokens", "positions", "segments")}
  out["tokens"][flat] = texts[inside]
  out["positions"][flat] = np.broadcast_to(col, texts.shape)[inside]
  out["segments"][flat] = np.broadcast_to(np.arange(1, count + 1)[:, None], texts.shape)[inside]
  out = {name: v.reshape(groups * num_rows, row_length) for name, v in out.items()}
  out["eot"] = (rows * row_length + offsets + lengths - 1).astype(np.int32)
  return out


def _placed(texts: np.ndarray, groups: int, row_length: int):
  if len(texts) % groups:
    raise ValueError(f"{len(texts)} texts do not split into {groups} groups (one per data shard)")
  texts = np.asarray(texts).reshape(groups, len(texts) // groups, -1)
  lengths = tokenizer_lib.token_lengths(texts)
  rows, offsets = (np.stack(x) for x in zip(*[first_fit_decreasing(g, row_length)
                                              for g in lengths]))
  return texts, lengths, rows, offsets


def _agreed_rows(rows: np.ndarray) -> int:
  """The ladder step holding every group of every host, at most one row per text."""
  return min(ladder(sharding.host_max(int(rows.max(initial=0)) + 1)), rows.shape[1])


def rows_needed(texts: np.ndarray, groups: int, row_length: int) -> int:
  """The row count per group `pack_texts` would choose for `texts` (the same on every host)."""
  return _agreed_rows(_placed(texts, groups, row_length)[2])


def pack_texts(texts: np.ndarray, groups: int, row_length: int, num_rows: int | None = None):
  """texts (N, L) (N divisible by groups) -> packed arrays, G groups of consecutive texts in
  `num_rows` rows each (default: `rows_needed`)."""
  texts, lengths, rows, offsets = _placed(texts, groups, row_length)
  if num_rows is None:
    num_rows = _agreed_rows(rows)
  elif rows.max(initial=0) >= num_rows:
    raise ValueError(f"the texts need {int(rows.max()) + 1} rows of {row_length} per group, "
                     f"more than num_rows={num_rows}")
  return pack(texts, lengths, rows, offsets, num_rows, row_length)


def pack_batch(batch: dict, groups: int, row_length: int) -> dict:
  """A host-local train batch with its token arrays replaced by `text`, the packed arrays of
  `step.encode_batch` (groups = this host's data shards, so each device packs its own examples)."""
  texts = step_lib.stacked_texts(batch, np)
  out = {k: v for k, v in batch.items() if k not in step_lib.TEXT_KEYS}
  out["text"] = pack_texts(texts.reshape(-1, texts.shape[-1]), groups, row_length)
  return out
