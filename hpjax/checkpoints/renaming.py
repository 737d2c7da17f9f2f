"""Two-way renaming rules between checkpoint layouts: the engine of hf.py and big_vision.py.

A rule pairs a key template of side "a" with one of side "b" and a `Change` of the tensor.
Templates hold placeholders (`{n}` a block index, `{p}` weight|bias, ...) that match on one side
and fill in the other. A piece placeholder (`{qkv}`, `{q_kv}`, ...) on one side only makes the
rule a fusion: that side's pieces, each changed, are concatenated along the table's `fuse_axis`
into the other side's tensor (q/k/v projections <-> one fused in-projection), and split back.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import numpy as np

_PLACEHOLDERS = {"n": r"\d+", "i": r"\d", "p": "weight|bias", "kb": "kernel|bias",
                 "sb": "scale|bias"}
# A piece placeholder's pieces in concatenation order, with their relative sizes.
PIECES = {"qkv": (("q", 1), ("k", 1), ("v", 1)), "q_kv": (("q", 1), ("kv", 2)),
          "query_key_value": (("query", 1), ("key", 1), ("value", 1)),
          "key_value": (("key", 1), ("value", 1))}
_PATTERNS = {**_PLACEHOLDERS, **{k: "|".join(p for p, _ in v) for k, v in PIECES.items()}}

Context = Mapping[str, Any]  # What a change needs beyond the tensor (e.g. head counts).


def _same(value, context):
  del context
  return value


@dataclasses.dataclass(frozen=True)
class Change:
  """How a tensor (or each piece of a fused one) changes from side a to side b, and back."""
  name: str
  to_b: Callable[[np.ndarray, Context], np.ndarray] = _same
  to_a: Callable[[np.ndarray, Context], np.ndarray] = _same


def _drop_axis(value, context):
  del context
  if value.ndim == 0 or value.shape[0] != 1:
    raise ValueError(f"expected a leading axis of 1, got shape {value.shape}")
  return value[0]


SAME = Change("same")
TRANSPOSE = Change("transpose", lambda v, c: v.T, lambda v, c: v.T)
ADD_AXIS = Change("add_axis", lambda v, c: v[None], _drop_axis)  # Only b has a leading 1.
DROP_AXIS = Change("drop_axis", _drop_axis, lambda v, c: v[None])  # Only a has a leading 1.


def _regex(template: str) -> re.Pattern:
  parts = re.split(r"\{(\w+)\}", template)
  return re.compile("".join(
      re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_PATTERNS[part]})"
      for i, part in enumerate(parts)))


def _pieces_of(template: str) -> str | None:
  return next((name for name in PIECES if f"{{{name}}}" in template), None)


class RuleTable:
  """Rules (a template, b template, Change), read in either direction; the first match wins."""

  def __init__(self, rules, fuse_axis: int = 0):
    self.rules = tuple((_regex(a), _regex(b), a, b, change) for a, b, change in rules)
    self.fuse_axis = fuse_axis

  def convert(self, state: Mapping[str, np.ndarray], to_b: bool, source: str,
              context: Context | None = None
              ) -> tuple[dict[str, np.ndarray], list[str], dict[str, list[str]]]:
    """(renamed tensors, the keys no rule matches, new key -> the keys it was made from)."""
    side = 0 if to_b else 1
    out, pieces, unmatched, origin = {}, {}, [], {}
    for key, value in state.items():
      rule = next(((found.groupdict(), r[3 - side], r[4]) for r in self.rules
                   for found in [r[side].fullmatch(key)] if found), None)
      if rule is None:
        unmatched.append(key)
        continue
      groups, template, change = rule
      change_fn = change.to_b if to_b else change.to_a

      def changed(tensor, key=key, change_fn=change_fn):
        try:
          return np.array(change_fn(np.asarray(tensor), context or {}), order="C")
        except (ValueError, KeyError) as e:
          raise ValueError(f"{source}: {key} (shape {np.shape(tensor)}) cannot be converted: "
                           f"{e}") from e

      held = next((name for name in PIECES if name in groups), None)
      if held:  # This side holds one piece of the other side's fused tensor.
        name = template.format(**groups)
        pieces.setdefault((name, held), {})[groups[held]] = changed(value)
        origin.setdefault(name, []).append(key)
      elif (name := _pieces_of(template)):  # The other side holds this tensor's pieces.
        sizes = np.cumsum([size for _, size in PIECES[name]])
        value = np.asarray(value)
        bounds = (value.shape[self.fuse_axis] * sizes[:-1]) // sizes[-1]
        chunks = np.split(value, bounds, axis=self.fuse_axis)
        for (part, _), chunk in zip(PIECES[name], chunks):
          new = template.format(**groups, **{name: part})
          out[new], origin[new] = changed(chunk), [key]
      else:
        new = template.format(**groups)
        out[new], origin[new] = changed(value), [key]
    for (name, held), parts in pieces.items():
      want = [part for part, _ in PIECES[held]]
      if sorted(parts) != sorted(want):
        raise ValueError(f"{source}: {name} has only the {sorted(parts)} pieces, expected {want}")
      try:
        out[name] = np.concatenate([parts[part] for part in want], axis=self.fuse_axis)
      except ValueError as e:
        raise ValueError(f"{source}: the pieces {origin[name]} of {name} do not fit together: "
                         f"{e}") from e
    return out, unmatched, origin
