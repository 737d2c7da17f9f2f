"""Noun phrases and relations of a tagged caption, and the tables the rules draw words from.

A noun phrase is determiners, modifiers, then a run of nouns ("a flowered umbrella", "two
coach buses"); a relation is a verb or a preposition between phrases, multi-word ones ("on top
of", "next to") taken whole from the contrast table. The tables are data files in `data/`,
reviewed for captions: `contrasts.tsv` (words whose swap makes a caption false) and
`synonyms.tsv` (words whose swap keeps it true).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

from hpjax.generate.tagger import Token

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
NOUNS = frozenset(("NN", "NNS", "NNP", "NNPS"))
DETERMINERS = frozenset(("DT", "PRP$", "CD"))
VERBS = frozenset(("VBG", "VBZ", "VBP", "VBD", "VBN"))
_NOT_RELATIONS = frozenset(("is", "are", "was", "were", "be", "been", "has", "have", "that", "of",
                            "as", "while", "if", "because", "than", "so"))


@dataclasses.dataclass(frozen=True)
class NounPhrase:
  start: int  # token indices, end exclusive
  modifiers: tuple[int, int]  # the adjective run (empty when start == end)
  noun: tuple[int, int]  # the run of nouns
  end: int


@dataclasses.dataclass(frozen=True)
class Relation:
  start: int
  end: int
  kind: str  # "verb" or "preposition": only relations of one kind are swapped


def noun_phrases(tokens: list[Token]) -> list[NounPhrase]:
  phrases, i = [], 0
  while i < len(tokens):
    start = i
    while i < len(tokens) and tokens[i].tag in DETERMINERS:
      i += 1
    mods = i
    while i + 1 < len(tokens) and tokens[i].tag in ("JJ", "VBN") and (
        tokens[i + 1].tag in NOUNS or tokens[i + 1].tag == "JJ"):
      i += 1
    nouns = i
    while i < len(tokens) and tokens[i].tag in NOUNS:
      i += 1
    if i > nouns:
      phrases.append(NounPhrase(start, (mods, nouns), (nouns, i), i))
    else:
      i = max(start + 1, i)
  return phrases


@functools.lru_cache(maxsize=None)
def _rows(name: str) -> tuple[tuple[str, ...], ...]:
  with open(os.path.join(DATA, name), encoding="utf-8") as f:
    return tuple(tuple(line.rstrip("\n").split("\t")) for line in f
                 if line.strip() and not line.startswith("#"))


@functools.lru_cache(maxsize=None)
def contrasts(family: str) -> dict[tuple[str, ...], tuple[str, tuple[str, ...]]]:
  """{entry as lower-case words: (kind, the entries of the other groups)} for 'attribute' or
  'relation'."""
  table = {}
  for row_family, kind, groups in _rows("contrasts.tsv"):
    if row_family != family:
      continue
    groups = [[e.strip() for e in g.split(",") if e.strip()] for g in groups.split("|")]
    for g, group in enumerate(groups):
      others = tuple(e for h, other in enumerate(groups) if h != g for e in other)
      for entry in group:
        table[tuple(entry.split())] = (kind, others)
  return table


@functools.lru_cache(maxsize=None)
def synonyms() -> dict[tuple[str, str], tuple[str, ...]]:
  """{(part of speech, lemma): synonyms}."""
  return {(pos, lemma): tuple(s.strip() for s in words.split(","))
          for pos, lemma, words in _rows("synonyms.tsv")}


def table_digest() -> str:
  """Changes when a table changes: a run's manifest records it."""
  digest = hashlib.sha256()
  for name in sorted(os.listdir(DATA)):
    with open(os.path.join(DATA, name), "rb") as f:
      digest.update(name.encode() + b"\0" + f.read())
  return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _longest_relation() -> int:
  return max(len(k) for k in contrasts("relation"))


def relations(tokens: list[Token]) -> list[Relation]:
  """Verbs and prepositions; a multi-word relation of the contrast table counts as one."""
  words = [t.text.lower() for t in tokens]
  table, longest = contrasts("relation"), _longest_relation()
  found, i = [], 0
  while i < len(tokens):
    for size in range(min(longest, len(words) - i), 1, -1):
      if tuple(words[i:i + size]) in table:
        found.append(Relation(i, i + size, "preposition"))
        i += size
        break
    else:
      plain = words[i] not in _NOT_RELATIONS and words[i - 1:i + 1] != ["close", "up"]
      if plain and tokens[i].tag in VERBS:
        found.append(Relation(i, i + 1, "verb"))
      elif plain and tokens[i].tag in ("IN", "RP"):
        found.append(Relation(i, i + 1, "preposition"))
      i += 1
  return found
