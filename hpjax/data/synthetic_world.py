"""The synthetic world's meaning: scenes as data, captions as parsed structures, truth by lookup.

A scene is a handful of coloured shapes at known positions. A caption is two noun phrases joined
by "and" or by a spatial relation ("a big crimson circle to the left of a blue square"). Every
caption string the generator emits is parsed back into a `Caption` and judged by `holds`, so a
hard negative is kept only when it is false of its scene and a hard positive only when it is
true: the labels are checked, never assumed from the edit that made them.

Words map to concepts through small synonym tables (red/crimson, large/big, left of/to the left
of); a synonym changes the words, never the meaning. The first word of each table is the plain
one, the word a COCO-style caption uses; the others are what web captions (the pretraining
corpus) and the edit generator also write.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Iterable, Sequence

import numpy as np

# concept -> the words that name it; the first word is the plain one.
COLOURS = {
    "red": ("red", "crimson"),
    "green": ("green", "emerald"),
    "blue": ("blue", "azure"),
    "yellow": ("yellow", "golden"),
    "purple": ("purple", "violet"),
    "white": ("white", "ivory"),
}
SIZES = {"small": ("small", "tiny"), "large": ("large", "big")}
SHAPES = ("circle", "square", "triangle", "diamond")
RELATIONS = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
CONVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
AND = "and"
_DET_OF = {"a": "a", "an": "a", "the": "the"}  # "an" is how "a" is written before a vowel

# Objects sit in distinct cells of a 2x2 grid with a small jitter: centres in different columns
# are >= 0.42 apart and in the same column <= 0.08 apart, so a 0.2 margin makes every relation
# clearly true or clearly false.
GRID_CENTRES = (0.25, 0.75)
JITTER = 0.04
RELATION_MARGIN = 0.2

def combos() -> list[tuple[str, str]]:
  """Every (colour, shape) combination, in a fixed order (the zero-shot probe's labels are
  positions in it)."""
  return list(itertools.product(COLOURS, SHAPES))


_COLOUR_OF = {w: c for c, words in COLOURS.items() for w in words}
_SIZE_OF = {w: c for c, words in SIZES.items() for w in words}
_RELATION_OF = {w: c for c, words in RELATIONS.items() for w in words}
_ATTRIBUTES = {"colour": (COLOURS, _COLOUR_OF), "size": (SIZES, _SIZE_OF)}


class CaptionError(ValueError):
  """A string is not a caption of the synthetic world's grammar."""


@dataclasses.dataclass(frozen=True)
class Obj:
  """One shape: its concepts and its centre as fractions of the image side (y grows down)."""
  shape: str
  colour: str
  size: str
  x: float
  y: float

  @property
  def combo(self) -> tuple[str, str]:
    return (self.colour, self.shape)


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[Obj, ...]

  def to_json(self) -> dict:
    return {"objects": [dataclasses.asdict(o) for o in self.objects]}

  @classmethod
  def from_json(cls, data: dict) -> "Scene":
    return cls(tuple(Obj(**o) for o in data["objects"]))

  def line(self, image: str) -> str:
    """The image's line of a world's scenes.jsonl."""
    return json.dumps({"image": image, **self.to_json()}) + "\n"


def relation_holds(relation: str, a: Obj, b: Obj) -> bool:
  """Whether `a <relation> b`: centres differ by more than the margin along the axis."""
  if relation == "left":
    return b.x - a.x > RELATION_MARGIN
  if relation == "right":
    return a.x - b.x > RELATION_MARGIN
  if relation == "above":
    return b.y - a.y > RELATION_MARGIN
  if relation == "below":
    return a.y - b.y > RELATION_MARGIN
  raise ValueError(f"unknown relation {relation!r}; expected one of {sorted(RELATIONS)}")


@dataclasses.dataclass(frozen=True)
class Phrase:
  """A noun phrase as written: determiner, optional size and colour words, the shape."""
  det: str
  size: str | None
  colour: str | None
  shape: str

  @property
  def words(self) -> list[str]:
    words = [w for w in (self.size, self.colour, self.shape) if w]
    det = "an" if self.det == "a" and words[0][0] in "aeiou" else self.det
    return [det] + words

  def matches(self, obj: Obj) -> bool:
    return (self.shape == obj.shape
            and (self.colour is None or _COLOUR_OF[self.colour] == obj.colour)
            and (self.size is None or _SIZE_OF[self.size] == obj.size))

  def combo(self) -> tuple[str, str] | None:
    """(colour, shape) concepts when the phrase names both, else None."""
    return (_COLOUR_OF[self.colour], self.shape) if self.colour else None


@dataclasses.dataclass(frozen=True)
class Caption:
  """`first link second`, link being "and" or a relation phrase as written."""
  first: Phrase
  link: str
  second: Phrase

  @property
  def text(self) -> str:
    return " ".join(self.first.words + [self.link] + self.second.words)

  @property
  def relation(self) -> str | None:
    return None if self.link == AND else _RELATION_OF[self.link]


def _parse_phrase(words: Sequence[str], text: str) -> Phrase:
  if len(words) < 2 or words[0] not in _DET_OF or words[-1] not in SHAPES:
    raise CaptionError(f"caption {text!r}: {' '.join(words)!r} is not '<a|the> [size] [colour] "
                       f"<shape>' with shapes {SHAPES}")
  size = colour = None
  for word in words[1:-1]:
    if word in _SIZE_OF and size is None and colour is None:
      size = word
    elif word in _COLOUR_OF and colour is None:
      colour = word
    else:
      raise CaptionError(f"caption {text!r}: unexpected word {word!r} in a noun phrase "
                         "(size, then colour, then shape)")
  phrase = Phrase(_DET_OF[words[0]], size, colour, words[-1])
  if phrase.words[0] != words[0]:
    raise CaptionError(f"caption {text!r}: article {words[0]!r} does not fit {words[1]!r}")
  return phrase


def parse(text: str) -> Caption:
  """The structure of a caption string; raises CaptionError outside the grammar."""
  words = text.split()
  shape_at = [i for i, w in enumerate(words) if w in SHAPES]
  if len(shape_at) != 2:
    raise CaptionError(f"caption {text!r}: expected two shapes {SHAPES}, found {len(shape_at)}")
  first_end = shape_at[0] + 1
  # The second phrase opens at the last article before its shape ("to the left of a ...").
  second_start = max((i for i in range(first_end, shape_at[1]) if words[i] in _DET_OF),
                     default=None)
  if second_start is None or shape_at[1] != len(words) - 1:
    raise CaptionError(f"caption {text!r}: expected '<phrase> <link> <phrase>'")
  link = " ".join(words[first_end:second_start])
  if link != AND and link not in _RELATION_OF:
    raise CaptionError(f"caption {text!r}: link {link!r} is neither 'and' nor one of "
                       f"{sorted(_RELATION_OF)}")
  return Caption(_parse_phrase(words[:first_end], text), link,
                 _parse_phrase(words[second_start:], text))


def holds(caption: Caption | str, scene: Scene) -> bool:
  """Truth: two distinct objects fit the phrases (and stand in the relation, if one is named)."""
  caption = parse(caption) if isinstance(caption, str) else caption
  relation = caption.relation
  return any(
      i != j and caption.first.matches(a) and caption.second.matches(b)
      and (relation is None or relation_holds(relation, a, b))
      for i, a in enumerate(scene.objects) for j, b in enumerate(scene.objects))


def meaning(caption: Caption | str) -> tuple:
  """The caption in concepts, words aside: equal for captions that differ only by synonyms."""
  caption = parse(caption) if isinstance(caption, str) else caption
  concepts = lambda p: (p.det, _SIZE_OF.get(p.size), _COLOUR_OF.get(p.colour), p.shape)
  return concepts(caption.first), caption.relation, concepts(caption.second)


def named_combos(caption: Caption | str) -> set[tuple[str, str]]:
  """The (colour, shape) pairs a caption names: what held-out combinations must never leak as."""
  caption = parse(caption) if isinstance(caption, str) else caption
  return {c for c in (caption.first.combo(), caption.second.combo()) if c}


# ---------------------------------------------------------------------------------------------
# Sampling scenes and captions.

# One random stream per image and purpose: a split does not change when another one's size does.
STREAMS = {"train": 0, "eval": 1, "zeroshot": 2, "retrieval": 3}


def scene_rng(seed: int, stream: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, STREAMS[stream], index])


def object_count(rng: np.random.Generator, three_object_frac: float) -> int:
  return 3 if rng.random() < three_object_frac else 2


def sample_scene(rng: np.random.Generator, combos: Sequence[tuple[str, str]],
                 num_objects: int) -> Scene:
  """`num_objects` (1 to 4) shapes of the allowed (colour, shape) combos in distinct grid cells
  (captions need two; the zero-shot probe shows one)."""
  if not 1 <= num_objects <= 4:
    raise ValueError(f"num_objects={num_objects}: a scene holds 1 to 4 objects (a 2x2 grid)")
  cells = rng.permutation(4)[:num_objects]
  objects = []
  for cell in cells:
    colour, shape = combos[rng.integers(len(combos))]
    jitter = rng.uniform(-JITTER, JITTER, size=2)
    objects.append(Obj(shape=shape, colour=colour, size=str(rng.choice(list(SIZES))),
                       x=round(GRID_CENTRES[cell % 2] + jitter[0], 4),
                       y=round(GRID_CENTRES[cell // 2] + jitter[1], 4)))
  return Scene(tuple(objects))


def _word(rng: np.random.Generator, table: dict, concept: str, plain: bool = False) -> str:
  words = table[concept]
  return words[0] if plain else words[rng.integers(len(words))]


def describe(rng: np.random.Generator, obj: Obj, det: str, detail: str,
             plain: bool = False) -> Phrase:
  """A phrase for `obj` naming its `detail`: "colour", "size" or "both", in random synonyms
  (`plain`: in each concept's plain word)."""
  size = _word(rng, SIZES, obj.size, plain) if detail in ("size", "both") else None
  colour = _word(rng, COLOURS, obj.colour, plain) if detail in ("colour", "both") else None
  return Phrase(det, size, colour, obj.shape)


def relate(rng: np.random.Generator, a: Obj, b: Obj, plain: bool = False) -> str:
  """A relation phrase, in random synonyms (or the plain word), for one that holds of (a, b)."""
  true = [r for r in RELATIONS if relation_holds(r, a, b)]
  if not true:
    raise ValueError(f"no relation holds between {a} and {b}")
  return _word(rng, RELATIONS, true[rng.integers(len(true))], plain)


# How often a caption's phrase names the colour, the size or both.
_DETAILS, _DETAIL_CDF = ("colour", "size", "both"), (0.35, 0.5)


def ordered_pairs(rng: np.random.Generator, scene: Scene) -> list[tuple[Obj, Obj]]:
  pairs = list(itertools.permutations(scene.objects, 2))
  return [pairs[i] for i in rng.permutation(len(pairs))]


def conjoined(rng, a: Obj, b: Obj, detail_a: str, detail_b: str, plain: bool) -> Caption:
  """"the A and the B", each object described by its detail ("size", "colour", "both")."""
  return Caption(describe(rng, a, "the", detail_a, plain), AND,
                 describe(rng, b, "the", detail_b, plain))


def related(rng, a: Obj, b: Obj, detail_a: str, detail_b: str, plain: bool) -> Caption:
  """"a A <relation> a B" with a relation that holds of (a, b); the words drawn in this order."""
  return Caption(describe(rng, a, "a", detail_a, plain), relate(rng, a, b, plain),
                 describe(rng, b, "a", detail_b, plain))


def scene_caption(rng: np.random.Generator, scene: Scene, plain: bool) -> Caption:
  """A true caption of two of the scene's objects, in either order, joined by "and" or by a
  relation that holds; in plain words or in random synonyms."""
  a, b = ordered_pairs(rng, scene)[0]
  d1, d2 = (_DETAILS[i] for i in np.searchsorted(_DETAIL_CDF, rng.random(2), side="right"))
  caption = (conjoined if rng.random() < 0.5 else related)(rng, a, b, d1, d2, plain)
  if not holds(caption.text, scene):
    raise AssertionError(f"generated caption {caption.text!r} is false of {scene}")
  return caption


# ---------------------------------------------------------------------------------------------
# Edits. Each returns candidates; callers keep those the semantics labels as intended.

SLOTS = ("first", "second")


def _phrases(caption: Caption, slots: Iterable[str]) -> list[tuple[str, Phrase]]:
  return [(slot, getattr(caption, slot)) for slot in slots]


def attribute_replacements(caption: Caption, rng: np.random.Generator,
                           features: Iterable[str] = ("colour", "size"),
                           slots: Iterable[str] = SLOTS) -> list[Caption]:
  """REPLACE: one named attribute of one phrase set to another concept (random synonym)."""
  out = []
  for slot, phrase in _phrases(caption, slots):
    for feature in features:
      word = getattr(phrase, feature)
      if word is None:
        continue
      table, concept_of = _ATTRIBUTES[feature]
      for concept in table:
        if concept != concept_of[word]:
          new = dataclasses.replace(phrase, **{feature: _word(rng, table, concept)})
          out.append(dataclasses.replace(caption, **{slot: new}))
  return out


def relation_replacements(caption: Caption, rng: np.random.Generator) -> list[Caption]:
  """REPLACE: the relation set to another one (random synonym)."""
  if caption.relation is None:
    return []
  return [dataclasses.replace(caption, link=_word(rng, RELATIONS, r))
          for r in RELATIONS if r != caption.relation]


def attribute_swaps(caption: Caption) -> list[Caption]:
  """SWAP: an attribute rebound across the two phrases (their words exchanged)."""
  out = []
  for feature in ("colour", "size"):
    a, b = getattr(caption.first, feature), getattr(caption.second, feature)
    if a and b and a != b:
      out.append(dataclasses.replace(
          caption, first=dataclasses.replace(caption.first, **{feature: b}),
          second=dataclasses.replace(caption.second, **{feature: a})))
  return out


def object_swaps(caption: Caption) -> list[Caption]:
  """SWAP (NegCLIP-style): the two phrases exchanged around a relation that is kept."""
  if caption.relation is None:
    return []  # around "and" the exchange keeps the meaning: see `reorderings`
  return [_exchange(caption, caption.link)]


def _exchange(caption: Caption, link: str) -> Caption:
  first = dataclasses.replace(caption.second, det=caption.first.det)
  second = dataclasses.replace(caption.first, det=caption.second.det)
  return Caption(first, link, second)


def synonym_swaps(caption: Caption, features: Iterable[str] = ("colour", "size", "relation"),
                  slots: Iterable[str] = SLOTS) -> list[Caption]:
  """REPLACE-style positives: one word traded for another word of the same concept."""
  out = []
  for feature in features:
    if feature == "relation":
      if caption.relation is not None:
        out += [dataclasses.replace(caption, link=w) for w in RELATIONS[caption.relation]
                if w != caption.link]
      continue
    table, concept_of = _ATTRIBUTES[feature]
    for slot, phrase in _phrases(caption, slots):
      word = getattr(phrase, feature)
      if word is not None:
        out += [dataclasses.replace(caption, **{slot: dataclasses.replace(phrase, **{feature: w})})
                for w in table[concept_of[word]] if w != word]
  return out


def reorderings(caption: Caption, rng: np.random.Generator) -> list[Caption]:
  """SWAP-style positives: "X and Y" -> "Y and X"; "X left of Y" -> "Y right of X"."""
  if caption.relation is None:
    return [_exchange(caption, AND)]
  return [_exchange(caption, _word(rng, RELATIONS, CONVERSE[caption.relation]))]
