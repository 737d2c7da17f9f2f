"""The synthetic world's hard texts made by the rule generators (`hpjax.generate.rules`).

Every rule family runs on each training caption with its own lexicon tagger, as it would on
COCO's; the world then keeps an output only when its grammar parses it, its scene judges it as
its kind says (a negative false, a positive true), it names no held-out combination, it is
neither the caption nor a copy of a kept text, and every word of it occurs in some finetuning
caption, so no word occurs only in hard texts (the lexical cue the edit generator leaves). What
is kept beyond the record's limits is dropped at random, and counted too. The counts per family
and reason go into the world's `hard_texts.json`: per family, `captions` = `outputs` + the
generator's own reasons for making none (`no_output`), and `outputs` = `written` + `rejected`.
"""

from __future__ import annotations

import collections
import random
from typing import Sequence

from hpjax.data import synthetic_world as sw
from hpjax.generate import rules
from hpjax.generate import tagger as tagger_lib

NOT_IN_GRAMMAR = "not_in_world_grammar"
MISLABELLED = "mislabelled_by_scene"
NAMES_HELDOUT = "names_heldout"
SAME_AS_CAPTION = "same_as_caption"
DUPLICATE = "duplicate"
WORD_ONLY_IN_HARD_TEXTS = "word_only_in_hard_texts"
OVER_LIMIT = "over_record_limit"


def _rejection(text: str, kind: str, caption: str, scene: sw.Scene, heldout: frozenset,
               kept: set[str], vocabulary: set[str]) -> str | None:
  """Why `text` may not be written as a `kind` of `caption`, or None."""
  try:
    parsed = sw.parse(text)
  except sw.CaptionError:
    return NOT_IN_GRAMMAR
  if parsed.text != text:
    return NOT_IN_GRAMMAR  # parsed, but not as the world writes it (spacing, capitals)
  if sw.holds(parsed, scene) != (kind == rules.HARD_POSITIVE):
    return MISLABELLED
  if sw.named_combos(parsed) & heldout:
    return NAMES_HELDOUT
  if text == caption:
    return SAME_AS_CAPTION
  if text in kept:
    return DUPLICATE
  if not set(text.split()) <= vocabulary:
    return WORD_ONLY_IN_HARD_TEXTS
  return None


def rule_hard_texts(captions: Sequence[str], scenes: Sequence[sw.Scene], heldout: frozenset,
                    num_negatives: int, num_positives: int, seed: int
                    ) -> tuple[list[dict], dict]:
  """([{"hard_negatives", "hard_positives"} per caption], counts per family).

  Each caption's choices draw from random.Random(f"{seed}:{index}"), as `python -m
  hpjax.generate` seeds them.
  """
  vocabulary = {w for text in captions for w in text.split()}
  families = list(rules.FAMILIES)
  limits = {rules.HARD_NEGATIVE: num_negatives, rules.HARD_POSITIVE: num_positives}
  generator = rules.RuleGenerator(tagger_lib.LexiconTagger(), families,
                                  {kind: len(families) for kind in limits})  # every output
  rngs = [random.Random(f"{seed}:{i}") for i in range(len(captions))]
  counts = {family: {"kind": rules.FAMILIES[family][0], "captions": len(captions), "outputs": 0,
                     "written": 0, "rejected": collections.Counter(),
                     "no_output": collections.Counter()} for family in families}
  records = []
  for caption, scene, rng, outcome in zip(captions, scenes, rngs,
                                          generator.generate(captions, rngs)):
    for family, reason in outcome.rejections.items():
      counts[family]["no_output"][reason] += 1
    kept = {kind: [] for kind in limits}
    for hard in outcome.hard_texts:
      counts[hard.family]["outputs"] += 1
      why = _rejection(hard.text, hard.kind, caption, scene, heldout,
                       {h.text for texts in kept.values() for h in texts}, vocabulary)
      if why:
        counts[hard.family]["rejected"][why] += 1
      else:
        kept[hard.kind].append(hard)
    written = {}
    for kind, texts in kept.items():
      chosen = rules.choose(texts, limits[kind], rng, families)
      for hard in texts:
        if hard in chosen:
          counts[hard.family]["written"] += 1
        else:
          counts[hard.family]["rejected"][OVER_LIMIT] += 1
      written[kind] = [h.text for h in chosen]
    records.append({"hard_negatives": written[rules.HARD_NEGATIVE],
                    "hard_positives": written[rules.HARD_POSITIVE]})
  for c in counts.values():
    c.update(rejected=dict(sorted(c["rejected"].items())),
             no_output=dict(sorted(c["no_output"].items())))
  return records, counts


def log_lines(counts: dict) -> list[str]:
  """One line per family: outputs written and why the others were not."""
  return [f"{family} ({c['kind']}): {c['written']} of {c['outputs']} outputs written; "
          f"rejected {c['rejected'] or 'none'}; no output for {sum(c['no_output'].values())} "
          f"captions {c['no_output'] or ''}".rstrip() for family, c in counts.items()]
