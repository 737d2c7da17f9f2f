"""The tokenizer against OpenCLIP's own: same ids on real captions and on awkward strings."""

import ast
import csv
import functools
import json
import os
import pickle
import string

import numpy as np
import open_clip
import pytest

from hpjax import tokenizer as tokenizer_lib
from hpjax.evaluate import benchmarks
from hpjax.models import config as config_lib

EDGE_CASES = [
    "",
    " ",
    "a photo of a CAT ON A MAT",
    "  leading and  double   spaces ",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds",
    "café naïve façade Ελληνικά русский 日本語のテキスト 한국어",
    "emoji 🐱🚀👩‍👩‍👧 and flags 🇫🇷",
    "mojibake: cafÃ© â€œquotedâ€\x9d",
    "entities &amp; &lt;b&gt; &amp;amp;lt; &#39;x&#39; &nbsp;",
    "it's we're they've I'M you'll he'd DON'T 'ſ",
    "digits 1234567 and ٣٤ and ½",
    "ﬁne ﬂour ｆｕｌｌｗｉｄｔｈ",
    "literal <start_of_text> and <END_OF_TEXT> and !<start_of_text> inside <ſtart_of_text>",
    "İSTANBUL ΣΟΦΟΣ straße ǅ",
    "control\x00chars\x1b[31m red",
    "punctuation!!! ... ?!? --- (brackets) [x] {y} @#$%^*",
    "word " * 100,
    "supercalifragilisticexpialidocious " * 20,
]


@functools.cache
def reference():
  return open_clip.get_tokenizer("ViT-B-32")


def assert_same_ids(texts, context_length=None):
  expected = reference()(texts, context_length=context_length).numpy()
  got = tokenizer_lib.get_tokenizer("ViT-B-32")(texts, context_length=context_length)
  assert got.dtype == np.int32 and got.shape == expected.shape
  bad = np.flatnonzero((got != expected).any(axis=1))
  assert not bad.size, [(texts[i], got[i][:12], expected[i][:12]) for i in bad[:5]]


def test_edge_cases_match_openclip():
  assert_same_ids(EDGE_CASES)


def test_each_edge_case_alone_and_a_bare_string():
  for text in EDGE_CASES:
    assert_same_ids([text])
  expected = reference()("A Single String").numpy()
  np.testing.assert_array_equal(tokenizer_lib.get_tokenizer()("A Single String"), expected)


def test_truncation_keeps_eot_last_at_any_context_length():
  for length in (2, 5, 16, 77):
    assert_same_ids(EDGE_CASES, context_length=length)
  long = tokenizer_lib.get_tokenizer()(["word " * 100])
  assert long[0, -1] == tokenizer_lib.EOT_ID and (long[0] != 0).all()


def test_random_ascii_strings_match_openclip():
  """Covers the printable-ASCII short cut and its boundary: `&`, tabs, CR and other controls."""
  rng = np.random.default_rng(0)
  specials = ["&amp;", "<start_of_text>", "<END_OF_TEXT>", "'s", "'LL"]
  printable = list(string.printable[:-5]) + specials  # Without \t \n \r \x0b \x0c.
  controls = list(string.printable) + [chr(c) for c in range(32)] + ["\x7f"] + specials
  texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 40)))
           for alphabet in (printable, controls) for _ in range(1000)]
  assert_same_ids(texts)


def test_random_unicode_strings_match_openclip():
  rng = np.random.default_rng(1)
  codepoints = np.concatenate([rng.integers(0x20, 0x3000, 4000), rng.integers(0x1F300, 0x1FAFF, 400)])
  codepoints = [c for c in codepoints if not 0xD800 <= c < 0xE000]
  texts = ["".join(map(chr, rng.choice(codepoints, size=rng.integers(1, 30)))) for _ in range(300)]
  assert_same_ids(texts)


def hard_positive_captions(root):
  """Every caption string of ../shared/data/hard_positives: REPLACE JSONs and the NegCLIP TSV."""
  replace = {c for suite in benchmarks.load_hard_positive(root, ["replace"]).values()
             for record in suite.records for c in record.captions}
  tsv = os.path.join(root, "temp_data", "valid_neg_clip.tsv")
  with open(tsv, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  negclip = {r["title"] for r in rows} | {n for r in rows for n in ast.literal_eval(r["neg_caption"])}
  return replace, sorted(replace | negclip)


def test_every_hard_positive_caption_matches_openclip(hard_positives):
  replace, captions = hard_positive_captions(hard_positives)
  assert len(replace) == 50_891  # The count the data README states.
  assert_same_ids(captions)


def test_token_lengths_and_buckets():
  """Lengths where the text tower pools (first EOT); tests/test_models.py shows a prefix suffices."""
  texts = ["a dog", "a dog on a red mat beside the door", "word " * 100, ""]
  tokens = tokenizer_lib.get_tokenizer()(texts)
  lengths = tokenizer_lib.token_lengths(tokens)
  np.testing.assert_array_equal(lengths, reference()(texts).argmax(-1).numpy() + 1)
  assert tokenizer_lib.bucket_length(lengths[:2].max()) == 16
  assert tokenizer_lib.bucket_length(17) == 32
  assert tokenizer_lib.bucket_length(77) == 77
  with pytest.raises(ValueError, match="exceeds the largest bucket"):
    tokenizer_lib.bucket_length(78)
  with pytest.raises(ValueError, match=r"rows \[1\] have no EOT"):
    tokenizer_lib.token_lengths(np.array([tokens[0], np.zeros(77, np.int32)]))


def test_config_asking_for_another_tokenizer_is_refused(tmp_path):
  config = json.loads((config_lib.CONFIG_DIR / "ViT-B-32.json").read_text())
  config["text_cfg"]["context_length"] = 32
  path = tmp_path / "mine.json"
  path.write_text(json.dumps(config))
  assert tokenizer_lib.get_tokenizer(str(path)).context_length == 32
  config["text_cfg"]["tokenizer_kwargs"] = {"clean": "canonicalize"}
  path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="mine.json: text_cfg asks for tokenizer_kwargs"):
    tokenizer_lib.get_tokenizer(str(path))
  del config["text_cfg"]["tokenizer_kwargs"]
  config["text_cfg"]["hf_tokenizer_name"] = "some/hf-tokenizer"
  path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="mine: text_cfg names the HF tokenizer 'some/hf-tokenizer'"
                                       "; pass tokenizer_dir="):
    tokenizer_lib.get_tokenizer(str(path))


def test_encode_unique_and_config_lookup():
  tok = tokenizer_lib.get_tokenizer("ViT-B-32")
  texts = ["b", "a", "b", "c", "a"]
  distinct, inverse = tok.encode_unique(texts)
  assert len(distinct) == 3
  np.testing.assert_array_equal(distinct[inverse], tok(texts))
  assert tokenizer_lib.get_tokenizer("ViT-B-32", context_length=16)(["x"]).shape == (1, 16)
  assert tokenizer_lib.get_tokenizer(config_lib.get_model_config("hpjax-tiny")).context_length == 77
  assert tok(["x"]).shape == (1, 77) and tok([]).shape == (0, 77)
  np.testing.assert_array_equal(tok(t for t in texts), tok(texts))
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok))(texts), tok(texts))
  with pytest.raises(ValueError, match="known models"):
    tokenizer_lib.get_tokenizer("no-such-model")
  with pytest.raises(TypeError, match="text 1 is a int"):
    tok(["fine", 3])
