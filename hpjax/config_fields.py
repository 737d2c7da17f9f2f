"""Config fields by dotted name, and '+'-joined lists: the ground floor every program reads
its ml_collections config through (evaluation, training, the flag parser)."""

from __future__ import annotations

import ml_collections


def split_list(value) -> list[str]:
  """'a+b' or ('a', 'b') -> ['a', 'b'] (config arguments are comma-separated, lists use '+')."""
  if isinstance(value, str):
    return [v for v in value.split("+") if v]
  return [v for v in value if v]


def get(config, dotted: str):
  """The value at `dotted` ('extra.aro_root') of a config or any nested mapping."""
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def field_error(config: ml_collections.ConfigDict, dotted: str) -> str | None:
  """Why `dotted` names no value field of `config` (None when it does)."""
  node, done = config, []
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = f"{'.'.join(done)!r}" if done else "the config"
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      return f"config has no field {dotted!r}: {where} has {known}"
    node = node[part]
    done.append(part)
  if isinstance(node, ml_collections.ConfigDict):
    return f"config field {dotted!r} is a group of fields, not a value: {sorted(node.keys())}"
  return None


def value_problems(values: dict, positive=(), non_negative=(), choices=None) -> list[str]:
  """One line per field of `values` ({'a.b': value}) whose value is not a positive integer,
  an integer >= 0 or one of its choices, as the programs check their configs before work."""
  problems = []
  for field in positive:
    if not (isinstance(values[field], int) and values[field] > 0):
      problems.append(f"{field}={values[field]!r} must be a positive integer")
  for field in non_negative:
    if not (isinstance(values[field], int) and values[field] >= 0):
      problems.append(f"{field}={values[field]!r} must be an integer >= 0")
  for field, allowed in (choices or {}).items():
    if values[field] not in allowed:
      problems.append(f"{field}={values[field]!r} must be one of {list(allowed)}")
  return problems
