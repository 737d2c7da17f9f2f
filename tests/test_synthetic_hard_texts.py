"""The synthetic world's hard texts by the rule generators: checked by the scene, free of held-out
combinations and of words no finetuning caption uses, every output counted."""

import collections
import json

import pytest

from hpjax.data import synthetic
from hpjax.data import synthetic_hard_texts as hard_lib
from hpjax.data import synthetic_world as sw
from hpjax.generate import rules

SMALL = dict(num_train=300, num_eval=4, num_probe=24, num_retrieval=4)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
  root = tmp_path_factory.mktemp("worlds")
  return {route: synthetic.write_world(str(root / route), seed=2, hard_texts=route, **SMALL)
          for route in synthetic.HARD_TEXTS}


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _scenes(paths):
  return {r["image"]: sw.Scene.from_json(r) for r in _jsonl(paths.scenes_jsonl)}


def _words_only_in_hard_texts(paths) -> set[str]:
  records = _jsonl(paths.train_jsonl)
  captions = {w for r in records for w in r["caption"].split()}
  return {w for r in records for t in r["hard_negatives"] + r["hard_positives"]
          for w in t.split()} - captions


def test_kept_rule_texts_are_labelled_by_the_scene_and_name_no_heldout_combination(worlds):
  paths = worlds["rules"]
  scenes, heldout = _scenes(paths), set(synthetic.DEFAULT_HELDOUT)
  records = _jsonl(paths.train_jsonl)
  for r in records:
    scene = scenes[r["image"]]
    texts = r["hard_negatives"] + r["hard_positives"]
    assert len(set(texts)) == len(texts) and r["caption"] not in texts, r
    assert len(r["hard_negatives"]) <= 3 and len(r["hard_positives"]) <= 2, r
    for text in texts:
      assert sw.parse(text).text == text
      assert not sw.named_combos(text) & heldout, text
    assert not any(sw.holds(t, scene) for t in r["hard_negatives"]), r
    assert all(sw.holds(t, scene) for t in r["hard_positives"]), r
  assert sum(map(bool, (r["hard_negatives"] for r in records))) > 0.5 * len(records)
  assert sum(map(bool, (r["hard_positives"] for r in records))) > 0.3 * len(records)


def test_no_word_occurs_only_in_hard_texts_by_the_rules_unlike_by_the_edits(worlds):
  assert _words_only_in_hard_texts(worlds["rules"]) == set()
  assert _words_only_in_hard_texts(worlds["edits"])  # the old world's lexical cue


def test_every_output_is_counted_per_family_and_reason(worlds):
  paths = worlds["rules"]
  with open(paths.hard_texts_counts) as f:
    counts = json.load(f)["families"]
  assert sorted(counts) == sorted(rules.FAMILIES)
  records = _jsonl(paths.train_jsonl)
  written = collections.Counter()
  for family, c in counts.items():
    assert c["kind"] == rules.FAMILIES[family][0]
    assert c["captions"] == len(records) == c["outputs"] + sum(c["no_output"].values()), family
    assert c["outputs"] == c["written"] + sum(c["rejected"].values()), family
    written[c["kind"]] += c["written"]
  assert written[rules.HARD_NEGATIVE] == sum(len(r["hard_negatives"]) for r in records)
  assert written[rules.HARD_POSITIVE] == sum(len(r["hard_positives"]) for r in records)
  # The world's own filters reject real outputs of the generators.
  reasons = collections.Counter()
  for c in counts.values():
    reasons.update(c["rejected"])
  for reason in (hard_lib.NOT_IN_GRAMMAR, hard_lib.MISLABELLED, hard_lib.NAMES_HELDOUT,
                 hard_lib.WORD_ONLY_IN_HARD_TEXTS):
    assert reasons[reason] > 0, reason


@pytest.mark.parametrize("text, kind, why", [
    ("a red blob left of a blue square", rules.HARD_NEGATIVE, hard_lib.NOT_IN_GRAMMAR),
    ("A red circle left of a blue square", rules.HARD_POSITIVE, hard_lib.NOT_IN_GRAMMAR),
    ("a blue square right of a red circle", rules.HARD_NEGATIVE, hard_lib.MISLABELLED),
    ("a red square left of a blue circle", rules.HARD_POSITIVE, hard_lib.MISLABELLED),
    ("a red square left of a blue circle", rules.HARD_NEGATIVE, hard_lib.NAMES_HELDOUT),
    ("a red circle left of a blue square", rules.HARD_POSITIVE, hard_lib.SAME_AS_CAPTION),
    ("a red circle right of a blue square", rules.HARD_NEGATIVE, hard_lib.DUPLICATE),
    ("a crimson circle left of a blue square", rules.HARD_POSITIVE,
     hard_lib.WORD_ONLY_IN_HARD_TEXTS),
    ("a red circle above a blue square", rules.HARD_NEGATIVE, None),
    ("a blue square right of a red circle", rules.HARD_POSITIVE, None),
])
def test_each_rejection_reason(text, kind, why):
  scene = sw.Scene((sw.Obj("circle", "red", "small", 0.25, 0.25),
                    sw.Obj("square", "blue", "large", 0.75, 0.27)))
  caption = "a red circle left of a blue square"
  vocabulary = set((caption + " above right red blue circle square").split())
  assert hard_lib._rejection(text, kind, caption, scene, frozenset({("blue", "circle")}),
                             {"a red circle right of a blue square"}, vocabulary) == why
