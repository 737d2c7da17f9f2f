"""The tagger and the rule families on real COCO captions (tests/data/coco_captions.tsv, 40
captions of NegCLIP's validation TSV), against outputs checked by hand, and their properties."""

import collections
import difflib
import pathlib
import random
import re

import pytest

from hpjax.generate import phrases, rules, sources, tagger as tagger_lib

DATA = pathlib.Path(__file__).parent / "data"
CAPTIONS = [c.text for c in sources.read(str(DATA / "coco_captions.tsv"))]
_WORDS = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


@pytest.fixture(scope="module")
def tagger():
  return tagger_lib.LexiconTagger()


def _expected():
  table = collections.defaultdict(dict)
  for line in (DATA / "coco_captions_expected.tsv").read_text(encoding="utf-8").splitlines():
    if line and not line.startswith("#"):
      index, family, expected = line.split("\t")
      table[int(index)][family] = expected
  return table


def _run(family, text, tokens, seed):
  result = rules.FAMILIES[family][1](text, tokens, random.Random(seed))
  return result.text if isinstance(result, rules.Edit) else "-- " + result


def test_every_family_on_the_hand_checked_captions(tagger):
  expected = _expected()
  assert len(expected) == len(CAPTIONS) == 40
  wrong = []
  for index, text in enumerate(CAPTIONS):
    tokens = tagger.tag(text)
    for family in rules.FAMILIES:
      got = _run(family, text, tokens, text)
      if got != expected[index][family]:
        wrong.append(f"{index} {family}: {got!r} != {expected[index][family]!r}")
  assert not wrong, "\n".join(wrong)


def test_the_hand_checked_table_covers_every_family_and_swap_refusal():
  rows = list(_expected().values())
  for family in rules.FAMILIES:
    assert any(not row[family].startswith("-- ") for row in rows), family
  assert {row["swap_and"] for row in rows} >= {
      "-- sequence_of_actions", "-- ambiguous_scope", "-- fixed_pair", "-- shared_head",
      "-- not_two_noun_phrases", "-- no_and"}


@pytest.mark.parametrize("caption,word,tag", [
    ("A toilet sitting in a bathroom next to a sink.", "sink", "NN"),  # the lexicon says VB
    ("A child holding a flowered umbrella and petting a yak.", "petting", "VBG"),  # NN
    ("A gray chair and a black chair sit in a room.", "sit", "VBP"),
    ("a person at a desk with a keyboard and monitor", "monitor", "NN"),  # VB
    ("A red stop sign sitting in the middle of a street.", "red", "JJ"),  # NN
    ("A narrow kitchen filled with appliances and cooking utensils.", "cooking", "NN"),
    ("Two giraffes looking in opposite directions and crossing necks.", "crossing", "VBG"),
])
def test_caption_rules_correct_the_lexicon(tagger, caption, word, tag):
  assert {t.text: t.tag for t in tagger.tag(caption)}[word] == tag


def test_tokens_point_into_the_caption(tagger):
  for text in CAPTIONS:
    for token in tagger.tag(text):
      assert text[token.start:token.end] == token.text


def _one_changed_block(original: str, output: str) -> bool:
  a, b = _WORDS.findall(original.lower()), _WORDS.findall(output.lower())
  return len([op for op in difflib.SequenceMatcher(None, a, b).get_opcodes()
              if op[0] != "equal"]) == 1


def test_properties_over_seeds(tagger):
  """Outside its recorded span an output equals the original; a SWAP output uses exactly the
  original's words; a REPLACE output (and a hard-negative replacement) differs in one span."""
  made = collections.Counter()
  for text in CAPTIONS:
    tokens = tagger.tag(text)
    for seed in range(8):
      for family, (_, rule) in rules.FAMILIES.items():
        edit = rule(text, tokens, random.Random(seed))
        if not isinstance(edit, rules.Edit):
          continue
        made[family] += 1
        start, end = edit.span
        tail = len(text) - end
        assert edit.text[:start] == text[:start] and edit.text[len(edit.text) - tail:] == (
            text[end:]), (family, text, edit)
        assert edit.text != text and edit.rule.startswith(family + ":")
        if family == "swap_and":
          assert sorted(_WORDS.findall(edit.text.lower())) == sorted(
              _WORDS.findall(text.lower())), (text, edit.text)
        if family.startswith("replace_"):
          assert _one_changed_block(text, edit.text), (family, text, edit.text)
  assert min(made.values()) >= 10 and set(made) == set(rules.FAMILIES), made


def test_swap_and_refuses_where_order_carries_meaning(tagger):
  for caption, reason in [
      ("A man opens the door and then walks in.", "sequence_of_actions"),
      ("A dog and its owner on a beach.", "refers_back"),
      ("A plate of fish and chips.", "fixed_pair"),
      ("A mother and son elephant walking.", "shared_head"),
      ("A man and a man.", "identical_conjuncts"),
      ("A cat on a mat.", "no_and"),
  ]:
    assert rules.swap_and(caption, tagger.tag(caption), random.Random(0)) == reason, caption


def test_swaps_keep_attributes_with_their_objects(tagger):
  text = "A red car and a small blue bike on a road."
  edit = rules.swap_and(text, tagger.tag(text), random.Random(0))
  assert edit.text == "A small blue bike and a red car on a road."
  text = "A man and a woman on a bench."
  assert rules.swap_and(text, tagger.tag(text), random.Random(0)).text == (
      "A woman and a man on a bench.")


def test_replacements_keep_word_forms_and_articles(tagger):
  text = "Two men eating an apple on a couch."
  edits = {rules.replace_synonym(text, tagger.tag(text), random.Random(s)).text
           for s in range(20)}
  assert edits == {"Two guys eating an apple on a couch.",
                   "Two men consuming an apple on a couch.",
                   "Two men eating an apple on a sofa."}
  text = "An elephant next to a large rock."
  edits = {rules.replace_synonym(text, tagger.tag(text), random.Random(s)).text
           for s in range(20)}
  assert "An elephant next to a big rock." in edits and "An elephant next to a large stone." in (
      edits)


def test_tables_are_well_formed():
  for family in ("attribute", "relation"):
    for words, (kind, others) in phrases.contrasts(family).items():
      assert others and " ".join(words) not in others, (family, kind, words)
  for (pos, lemma), synonyms in phrases.synonyms().items():
    assert pos in ("noun", "verb", "adj") and lemma not in synonyms and all(synonyms)


class _CountingTagger:
  calls = 0

  def __init__(self):
    self._inner = tagger_lib.LexiconTagger()

  def tag(self, text):
    _CountingTagger.calls += 1
    return self._inner.tag(text)


def counting_tagger():
  return _CountingTagger()


def test_a_user_tagger_plugs_in():
  tagger = tagger_lib.make_tagger(f"{__name__}:counting_tagger")
  generator = rules.RuleGenerator(tagger, ["swap_and"], {rules.HARD_POSITIVE: 1})
  [outcome] = generator.generate(["A man and a woman on a bench."], [random.Random(0)])
  assert _CountingTagger.calls == 1
  assert [h.text for h in outcome.hard_texts] == ["A woman and a man on a bench."]
  with pytest.raises(ValueError, match="tagger 'nope': expected 'lexicon' or 'module:factory'"):
    tagger_lib.make_tagger("nope")


def test_the_generator_picks_distinct_families_and_counts_the_rest(tagger):
  generator = rules.RuleGenerator(tagger, list(rules.FAMILIES),
                                  {rules.HARD_NEGATIVE: 2, rules.HARD_POSITIVE: 1})
  outcomes = generator.generate(CAPTIONS, [random.Random(i) for i in range(len(CAPTIONS))])
  for text, outcome in zip(CAPTIONS, outcomes):
    kinds = collections.Counter(h.kind for h in outcome.hard_texts)
    assert kinds[rules.HARD_NEGATIVE] <= 2 and kinds[rules.HARD_POSITIVE] <= 1
    families = [h.family for h in outcome.hard_texts]
    assert len(set(families)) == len(families)
    assert not set(families) & set(outcome.rejections)
    # every family either made an output or says why not
    positives = {f for f, (k, _) in rules.FAMILIES.items() if k == rules.HARD_POSITIVE}
    if not kinds[rules.HARD_POSITIVE]:
      assert positives <= set(outcome.rejections), text
  with pytest.raises(ValueError, match="generate.families: unknown \\['swap_everything'\\]"):
    rules.RuleGenerator(tagger, ["swap_everything"], {})
