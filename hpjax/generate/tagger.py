"""Part-of-speech tags for captions, from a tagger that installs with its data inside.

The default is textblob's bundled English lexicon tagger (`textblob.en.parser.find_tags`, no
NLTK download) fed by our own tokenizer, then a few caption rules for what a lexicon tagger gets
wrong in captions: a word between an article and a noun is an adjective ("a flowered umbrella"),
an article's word that ends the phrase is a noun ("next to a sink."), a base-form verb
after a noun is a present one ("two chairs sit") and one not after "to", a subject or
"verb and" is a noun ("a keyboard and monitor"),
an -ing word before an object is a verb ("and petting a yak") and one before a noun that ends
its phrase a modifier ("and cooking utensils"), a plural-looking word after a
noun and before an object is a verb ("a man rides a horse"), a colour before a noun is an
adjective. Multi-word relations ("on top of") are found by the rules, not here.

Any object with `tag(text) -> list[Token]` is a tagger: a spaCy user wraps a pipeline as
`[Token(t.text, t.idx, t.idx + len(t), t.tag_) for t in nlp(text)]` and names its factory in
`config.tagger` ("module:function").
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from typing import Protocol

import lemminflect

_WORD = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")
COLOURS = frozenset("red orange yellow green blue purple pink brown black white gray grey silver "
                    "gold tan beige maroon".split())
_DETERMINERS = frozenset(("DT", "PRP$", "CD"))
_OBJECT_STARTS = _DETERMINERS | {"JJ", "NN", "NNS", "PRP"}
_NOUNS = frozenset(("NN", "NNS", "NNP", "NNPS"))


@dataclasses.dataclass(frozen=True)
class Token:
  text: str
  start: int  # character offsets in the caption: outputs are built by replacing spans
  end: int
  tag: str  # Penn Treebank tag


class Tagger(Protocol):
  def tag(self, text: str) -> list[Token]:
    ...


def tokenize(text: str) -> list[tuple[str, int, int]]:
  return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


@functools.lru_cache(maxsize=1 << 16)
def lemma(word: str, upos: str) -> str | None:
  """lemminflect's lemma (cached: its lookups deep-copy tables, and captions repeat words)."""
  lemmas = lemminflect.getLemma(word, upos)
  return lemmas[0] if lemmas else None


@functools.lru_cache(maxsize=1 << 16)
def inflection(lemma_: str, tag: str) -> str | None:
  forms = lemminflect.getInflection(lemma_, tag)
  return forms[0] if forms else None


def _is_verb_form(word: str, tag: str) -> bool:
  base = lemma(word, "VERB")
  return base is not None and inflection(base, tag) == word


def caption_rules(words: list[str], tags: list[str]) -> list[str]:
  """The lexicon tagger's tags corrected by the caption rules of the module docstring."""
  tags = list(tags)
  for i, word in enumerate(words):  # the lexicon's blunders that the rules below build on
    low, before = word.lower(), tags[i - 1] if i else ""
    if low in ("is", "are"):
      tags[i] = "VBZ" if low == "is" else "VBP"
    elif low == "next" and i + 1 < len(words) and words[i + 1].lower() == "to":
      tags[i] = "IN"
    elif tags[i] == "VB" and before in _NOUNS:
      tags[i] = "VBP"  # "two chairs sit"
    elif (tags[i] == "VB" and before not in ("TO", "MD", "RB") and words[i - 1].lower() != "to"
          and not (before == "CC" and i > 1 and tags[i - 2].startswith("VB"))):
      tags[i] = "NN"  # a base-form verb follows "to", a subject or a verb and "and"; else a noun
  for i, word in enumerate(words):
    low = word.lower()
    before = tags[i - 1] if i else ""
    after = tags[i + 1] if i + 1 < len(tags) else ""
    if before in _DETERMINERS and tags[i].startswith(("VB", "RB")) and after in _NOUNS | {"JJ"}:
      tags[i] = "JJ"
    elif (before in _DETERMINERS and tags[i].startswith(("VB", "JJ")) and after not in _NOUNS
          and after not in ("JJ", "CC", ",") and not after.startswith("VB")):
      tags[i] = "NNS" if tags[i] == "VBZ" or low.endswith("s") and before == "CD" else "NN"
    elif (tags[i] == "VBG" and after in ("NN", "NNS") and before in ("DT", "CC", "IN", "JJ", ",")
          and (i + 2 >= len(tags) or tags[i + 2] not in _DETERMINERS)
          and not (before == "CC" and "VBG" in tags[:i - 1])):  # "looking ... and crossing"
      tags[i] = "JJ"
    elif (low.endswith("ing") and tags[i] in ("NN", "JJ") and after in _OBJECT_STARTS
          and before not in ("DT", "PRP$", "JJ", "IN") and _is_verb_form(low, "VBG")
          and (after in ("DT", "PRP$", "CD", "PRP") or "VBG" in tags[:i])):
      tags[i] = "VBG"
    elif (tags[i] == "NNS" and before in ("NN", "NNP") and after in ("DT", "PRP$", "IN", "RP")
          and _is_verb_form(low, "VBZ")):
      tags[i] = "VBZ"
    elif low in COLOURS and tags[i] in _NOUNS and after in _NOUNS:
      tags[i] = "JJ"
  return tags


class LexiconTagger:
  """textblob's lexicon tagger + the caption rules (fast: no model, no download)."""

  def __init__(self):
    from textblob.en import parser  # pylint: disable=g-import-not-at-top (1 s import)
    self._find_tags = parser.find_tags

  def tag(self, text: str) -> list[Token]:
    spans = tokenize(text)
    if not spans:
      return []
    words = [w for w, _, _ in spans]
    tags = caption_rules(words, [t for _, t in self._find_tags(words)])
    return [Token(w, s, e, t) for (w, s, e), t in zip(spans, tags)]


def make_tagger(spec: str) -> Tagger:
  """'lexicon' (the default) or 'module:factory', a callable returning a Tagger."""
  if spec == "lexicon":
    return LexiconTagger()
  module, _, name = spec.partition(":")
  if not name:
    raise ValueError(f"tagger {spec!r}: expected 'lexicon' or 'module:factory'")
  try:
    return getattr(importlib.import_module(module), name)()
  except (ImportError, AttributeError) as e:
    raise ValueError(f"tagger {spec!r}: cannot load it ({e})") from e
