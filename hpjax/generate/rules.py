"""The rule families: hard negatives (NegCLIP-style swaps and replacements) and hard positives.

Hard negatives change what a caption says:
  swap_objects       two noun phrases' nouns trade places ("a child holding an umbrella" ->
                     "an umbrella holding a child")
  swap_attributes    two noun phrases' adjectives trade places
  swap_relations     two verbs, or two prepositions, trade places
  replace_attribute  an adjective becomes a contradicting one of its kind (contrasts.tsv)
  replace_relation   a relation becomes a contradicting one of its kind ("on top of" -> "under")
Hard positives keep it true:
  swap_and           the two noun phrases around "and" trade places, each with its adjectives
                     and determiner (SWAP); none where the order carries meaning: verbs on both
                     sides (a sequence of actions), "and then", a phrase that refers back ("its",
                     "the other"), a fixed pair ("salt and pepper"), a conjunct whose extent
                     is unclear (maybe the subject of the verb after it; "in the foreground and
                     mountains in the back"), a shared head ("a mother and son elephant") or a
                     shared "a" that would not fit the other noun
  replace_synonym    one word becomes a synonym from synonyms.tsv, inflected like it (REPLACE)
Each family returns its outputs as `Edit`s (the text, the changed character span of the
original, the rule) or the reason it fits nowhere; `RuleGenerator` picks among them per caption
with a random.Random seeded by (seed, caption index), so a run is reproducible.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable, Protocol, Sequence

from hpjax.generate import phrases as phrases_lib
from hpjax.generate import tagger as tagger_lib
from hpjax.generate.tagger import Tagger, Token

HARD_NEGATIVE = "hard_negative"
HARD_POSITIVE = "hard_positive"
BACK_REFERENCES = frozenset("its his her their it them other another same one ones each".split())
FIXED_PAIRS = frozenset(tuple(p.split("+")) for p in (
    "black+white salt+pepper fish+chips bread+butter ladies+gentlemen macaroni+cheese mac+cheese "
    "peanut+butter knife+fork knives+forks cup+saucer cups+saucers bow+arrow pen+paper "
    "arts+crafts rock+roll up+down back+forth in+out").split())
_AN = re.compile(r"(?i)(?:[aio]|e(?!u)|u(?!ni|s[eu]|ten|r[aio]))|hour|honest")


@dataclasses.dataclass(frozen=True)
class Edit:
  text: str
  span: tuple[int, int]  # characters of the original caption that changed
  rule: str


@dataclasses.dataclass(frozen=True)
class HardText:
  kind: str  # HARD_NEGATIVE or HARD_POSITIVE
  family: str
  rule: str
  text: str
  span: tuple[int, int]


@dataclasses.dataclass
class Outcome:
  """What the generators made of one caption: its hard texts, and per family that made none,
  why (counted in the run's summary)."""
  hard_texts: list[HardText] = dataclasses.field(default_factory=list)
  rejections: dict[str, str] = dataclasses.field(default_factory=dict)


class Generator(Protocol):
  """A batch of captions in, one Outcome per caption out: `RuleGenerator`, and the interface an
  LLM generator implements (it batches the captions through its sampler)."""

  def generate(self, captions: Sequence[str], rngs: Sequence[random.Random]) -> list[Outcome]:
    ...


def _article(word: str, capital: bool) -> str:
  article = "an" if _AN.match(word) else "a"
  return article.capitalize() if capital else article


def _apply(text: str, tokens: list[Token], replacements: list[tuple[int, int, str]]) -> Edit | str:
  """Replaces token ranges [i, j) by strings, fixing "a"/"an" before each and the capital at
  the start; returns the Edit or a reason."""
  edits = []
  for i, j, new in replacements:
    edits.append((tokens[i].start, tokens[j - 1].end, new))
    if i and tokens[i - 1].text.lower() in ("a", "an") and new:
      article = _article(new, tokens[i - 1].text[0].isupper())
      if article.lower() != tokens[i - 1].text.lower():
        edits.append((tokens[i - 1].start, tokens[i - 1].end, article))
  edits.sort()
  out, position = [], 0
  for start, end, new in edits:
    out += [text[position:start], new]
    position = end
  result = "".join(out + [text[position:]])
  if text[:1].isupper() and result[:1].islower():
    result = result[0].upper() + result[1:]
  if result.lower() == text.lower():
    return "unchanged"
  return Edit(result, (edits[0][0], edits[-1][1]), "")


def _piece(text: str, tokens: list[Token], i: int, j: int, to_start: bool) -> str:
  """Tokens [i, j) as written, lower-cased at the front when moved off the caption's start
  (a caption's first word is capitalised as the first, rarely as a name)."""
  piece = text[tokens[i].start:tokens[j - 1].end]
  if i == 0 and not to_start and tokens[0].text != "I" and not tokens[0].text[1:].isupper():
    piece = piece[0].lower() + piece[1:]
  return piece


def _swap(text, tokens, a: tuple[int, int], b: tuple[int, int], rule: str) -> Edit | str:
  edit = _apply(text, tokens, [(a[0], a[1], _piece(text, tokens, b[0], b[1], a[0] == 0)),
                               (b[0], b[1], _piece(text, tokens, a[0], a[1], False))])
  return dataclasses.replace(edit, rule=rule) if isinstance(edit, Edit) else edit


def _lower(tokens, i, j) -> str:
  return " ".join(t.text.lower() for t in tokens[i:j])


def _pick_pair(spans, tokens, rng, rule, text, empty_reason) -> Edit | str:
  pairs = [(a, b) for n, a in enumerate(spans) for b in spans[n + 1:]
           if _lower(tokens, *a) != _lower(tokens, *b)]
  if not pairs:
    return empty_reason
  return _swap(text, tokens, *rng.choice(pairs), rule)


def swap_objects(text, tokens, rng) -> Edit | str:
  nouns = [p.noun for p in phrases_lib.noun_phrases(tokens)]
  return _pick_pair(nouns, tokens, rng, "swap_objects:nouns", text, "fewer_than_two_objects")


def swap_attributes(text, tokens, rng) -> Edit | str:
  mods = [p.modifiers for p in phrases_lib.noun_phrases(tokens)
          if p.modifiers[1] > p.modifiers[0]]
  return _pick_pair(mods, tokens, rng, "swap_attributes:adjectives", text,
                    "fewer_than_two_attributes")


def swap_relations(text, tokens, rng) -> Edit | str:
  found = phrases_lib.relations(tokens)
  for kind in rng.sample(("verb", "preposition"), 2):
    edit = _pick_pair([(r.start, r.end) for r in found if r.kind == kind], tokens, rng,
                      f"swap_relations:{kind}s", text, "")
    if edit:
      return edit
  return "fewer_than_two_relations"


def _replace_from_table(text, tokens, rng, family, candidates) -> Edit | str:
  """candidates: (i, j) token ranges whose words are keys of the contrast table."""
  table = phrases_lib.contrasts(family)
  if not candidates:
    return f"no_{family}_in_table"
  i, j = rng.choice(candidates)
  kind, others = table[tuple(_lower(tokens, i, j).split())]
  present = f" {_lower(tokens, 0, len(tokens))} "
  others = [o for o in others if f" {o} " not in present]  # not "a white and white dog"
  if not others:
    return f"no_{family}_in_table"
  edit = _apply(text, tokens, [(i, j, rng.choice(others))])
  return dataclasses.replace(edit, rule=f"replace_{family}:{kind}") if isinstance(
      edit, Edit) else edit


def replace_attribute(text, tokens, rng) -> Edit | str:
  table = phrases_lib.contrasts("attribute")
  candidates = [(i, i + 1) for i, t in enumerate(tokens)
                if t.tag == "JJ" and (t.text.lower(),) in table]
  return _replace_from_table(text, tokens, rng, "attribute", candidates)


def replace_relation(text, tokens, rng) -> Edit | str:
  table = phrases_lib.contrasts("relation")
  candidates = [(r.start, r.end) for r in phrases_lib.relations(tokens)
                if tuple(_lower(tokens, r.start, r.end).split()) in table]
  return _replace_from_table(text, tokens, rng, "relation", candidates)


def _and_conjuncts(tokens: list[Token], i: int, nps) -> tuple[tuple[int, int], tuple[int, int]] | str:
  """The two noun phrases around the "and" at token i, or why they may not trade places."""
  words = [t.text.lower() for t in tokens]
  after = tokens[i + 1] if i + 1 < len(tokens) else None
  right = next((p for p in nps if p.start == i + 1), None)
  if after is not None and right is None and (
      after.text.lower() == "then" or after.tag in phrases_lib.VERBS or after.tag == "VB" or (
          after.tag == "RB" and i + 2 < len(tokens) and tokens[i + 2].tag in phrases_lib.VERBS)):
    return "sequence_of_actions"
  if i and after is not None and (words[i - 1], words[i + 1]) in FIXED_PAIRS:
    return "fixed_pair"
  comma = words[i - 1] == ","  # a list: "a tub, sink, mirror, and decorations"
  left = next((p for p in nps if p.end == i - comma), None)
  if left is None or right is None or comma and words[left.start - 1:left.start] != [","]:
    return "not_two_noun_phrases"
  left_start, right_end = left.start, right.end
  own_determiner = tokens[right.start].tag in phrases_lib.DETERMINERS
  article = words[left.start] if tokens[left.start].tag in phrases_lib.DETERMINERS else None
  # "a dog and cat" share the "a"; "a banana and slices of cheese" are two whole phrases
  shared = not own_determiner and article is not None and not (
      article in ("a", "an") and tokens[right.noun[1] - 1].tag == "NNS")
  if (left_start >= 2 and words[left_start - 1] == "of" and own_determiner
      and any(p.end == left_start - 1 for p in nps)):
    left_start = next(p.start for p in nps if p.end == left_start - 1)
  if right_end + 1 < len(tokens) and words[right_end] == "of":
    right_end = next((p.end for p in nps if p.start == right_end + 1), right_end)
  if left_start and tokens[left_start - 1].tag in phrases_lib.NOUNS | {"JJ"}:
    return "ambiguous_scope"  # "wood covered wall and floor": where the left phrase starts
  if (left_start and right_end < len(tokens) and tokens[left_start - 1].tag == "IN"
      and words[right_end] == words[left_start - 1]):
    return "ambiguous_scope"  # "animals in the foreground and mountains in the back"
  if (not own_determiner and (shared or article is None)
      and right.noun[1] - right.noun[0] > left.noun[1] - left.noun[0]):
    return "shared_head"  # "a mother and son elephant"
  if shared:
    left_start = left.modifiers[0]  # the determiner stays in front
    if article in ("a", "an") and _article(words[i + 1], False) != article:
      return "shared_article"
  if BACK_REFERENCES & set(words[right.start:right_end]):
    return "refers_back"
  if right_end < len(tokens) and tokens[right_end].tag in phrases_lib.VERBS and (
      any(t.tag in phrases_lib.VERBS for t in tokens[:left_start])
      or left.start and tokens[left.start - 1].tag == "IN"):
    return "ambiguous_scope"
  if words[left_start:i - comma] == words[i + 1:right_end]:
    return "identical_conjuncts"
  return (left_start, i - comma), (i + 1, right_end)


def swap_and(text, tokens, rng) -> Edit | str:
  nps = phrases_lib.noun_phrases(tokens)
  found, reasons = [], []
  for i, token in enumerate(tokens):
    if token.text.lower() == "and":
      pair = _and_conjuncts(tokens, i, nps)
      (found if isinstance(pair, tuple) else reasons).append(pair)
  if not found:
    return reasons[0] if reasons else "no_and"
  return _swap(text, tokens, *rng.choice(found), "swap_and:noun_phrases")


def _part_of_speech(tag: str) -> str | None:
  return ("noun" if tag in ("NN", "NNS") else "verb" if tag.startswith("VB")
          else "adj" if tag == "JJ" else None)


def _inflected(synonym: str, tag: str) -> str:
  """The synonym in the form of the word it replaces: a noun's last word, a verb's first."""
  words = synonym.split()
  at = 0 if tag.startswith("VB") else len(words) - 1
  if tag not in ("NN", "JJ", "VB"):
    words[at] = tagger_lib.inflection(words[at], tag) or words[at]
  return " ".join(words)


def replace_synonym(text, tokens, rng) -> Edit | str:
  table = phrases_lib.synonyms()
  candidates = []
  for i, t in enumerate(tokens):
    pos = _part_of_speech(t.tag)
    if pos is None or pos == "noun" and i + 1 < len(tokens) and tokens[i + 1].tag in (
        phrases_lib.NOUNS):
      continue  # a noun inside a compound ("street sign") keeps its word
    upos = {"noun": "NOUN", "verb": "VERB", "adj": "ADJ"}[pos]
    lemma = tagger_lib.lemma(t.text.lower(), upos) or t.text.lower()
    if (pos, lemma) in table:
      candidates.append((i, table[(pos, lemma)]))
  if not candidates:
    return "no_word_in_table"
  i, choices = rng.choice(candidates)
  new = _inflected(rng.choice(choices), tokens[i].tag)
  if tokens[i].text[:1].isupper():
    new = new[0].upper() + new[1:]
  edit = _apply(text, tokens, [(i, i + 1, new)])
  return dataclasses.replace(edit, rule=f"replace_synonym:{_part_of_speech(tokens[i].tag)}"
                             ) if isinstance(edit, Edit) else edit


FAMILIES: dict[str, tuple[str, Callable]] = {
    "swap_objects": (HARD_NEGATIVE, swap_objects),
    "swap_attributes": (HARD_NEGATIVE, swap_attributes),
    "swap_relations": (HARD_NEGATIVE, swap_relations),
    "replace_attribute": (HARD_NEGATIVE, replace_attribute),
    "replace_relation": (HARD_NEGATIVE, replace_relation),
    "swap_and": (HARD_POSITIVE, swap_and),
    "replace_synonym": (HARD_POSITIVE, replace_synonym),
}


def choose(texts: list[HardText], count: int, rng: random.Random,
           families: Sequence[str]) -> list[HardText]:
  """Up to `count` of one caption's hard texts of a kind, at random, in `families`' order."""
  chosen = rng.sample(texts, min(len(texts), count))
  return sorted(chosen, key=lambda h: list(families).index(h.family))


class RuleGenerator:
  """Every enabled family on every caption; then up to `per_caption[kind]` of the outputs of
  each kind, from distinct families chosen at random."""

  def __init__(self, tagger: Tagger, families: Sequence[str], per_caption: dict[str, int]):
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
      raise ValueError(f"generate.families: unknown {unknown}; expected some of "
                       f"{sorted(FAMILIES)}")
    self._tagger, self._families, self._per_caption = tagger, tuple(families), per_caption

  def generate(self, captions: Sequence[str], rngs: Sequence[random.Random]) -> list[Outcome]:
    return [self._one(text, rng) for text, rng in zip(captions, rngs)]

  def _one(self, text: str, rng: random.Random) -> Outcome:
    tokens = self._tagger.tag(text)
    outcome, made = Outcome(), {HARD_NEGATIVE: [], HARD_POSITIVE: []}
    for family in self._families:
      kind, rule = FAMILIES[family]
      result = rule(text, tokens, rng)
      if isinstance(result, Edit):
        made[kind].append(HardText(kind, family, result.rule, result.text, result.span))
      else:
        outcome.rejections[family] = result
    for kind, texts in made.items():
      outcome.hard_texts += choose(texts, self._per_caption.get(kind, 0), rng, self._families)
    return outcome
