"""Prompt templates for LLM generators of hard positives, as files a user reads, edits or
replaces: the study's four kinds (`prompts/*.txt`: swap the phrases around "and", replace a
word by a synonym, a verb, a spatial relation), each with one `{caption}` placeholder.

An LLM generator (a `rules.Generator` over a batched sampler) fills a template per caption and
parses the answer; `load` refuses a template it could not fill, naming the file.
"""

from __future__ import annotations

import os
import string

PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")
PLACEHOLDER = "caption"


def names() -> list[str]:
  """The shipped templates' names."""
  return sorted(n[:-len(".txt")] for n in os.listdir(PROMPTS) if n.endswith(".txt"))


def load(name_or_path: str) -> str:
  """A shipped template by name (e.g. 'swap_and') or a template file of one's own."""
  path = name_or_path if os.path.sep in name_or_path or name_or_path.endswith(".txt") else (
      os.path.join(PROMPTS, name_or_path + ".txt"))
  if not os.path.exists(path):
    raise ValueError(f"prompt template {name_or_path!r}: no such file; the shipped ones are "
                     f"{names()}")
  with open(path, encoding="utf-8") as f:
    template = f.read()
  try:
    fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
  except ValueError as e:
    raise ValueError(f"{path}: not a template ({e}); write a literal brace as {{{{ or }}}}") from e
  if fields != [PLACEHOLDER]:
    raise ValueError(f"{path}: expected one {{{PLACEHOLDER}}} placeholder and no other, found "
                     f"{fields or 'none'}")
  return template


def fill(template: str, caption: str) -> str:
  return template.format(**{PLACEHOLDER: caption})
