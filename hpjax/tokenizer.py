"""CLIP BPE tokenizer with token ids identical to OpenCLIP's default `SimpleTokenizer`.

OpenCLIP defines the ids by Python code: ftfy + html clean-up, whitespace and case, then a
`regex` pre-tokenizer whose exact Unicode and case-insensitive semantics (`'ſ` matches `'s`,
literal `<start_of_text>` words become special ids) another regex engine need not share. So
the words are split here in Python with the very same pattern and flags, and only the
byte-pair encoding of each *distinct* word of a batch runs in the Rust `tokenizers` library;
the words' ids are then gathered into the (N, context_length) array with numpy. Printable
ASCII without `&` (nearly every caption) takes a short cut: ftfy and html unescaping, the
bulk of OpenCLIP's time, change nothing there, and the pattern reduces to an ASCII one that
the standard `re` module runs faster.

Configs with an HF text tower name an HF tokenizer instead (`hf_tokenizer_name`): `HFTokenizer`
reads it from a local folder through `transformers`, with open_clip's HFTokenizer's ids. SigLIP
configs (OpenCLIP's text tower, an HF tokenizer name) get `SentencePieceTokenizer`: the
SentencePiece model file itself (c4_en for SigLIP, Gemma's for SigLIP 2), as OpenCLIP tokenizes.
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import json
import pathlib
import re
import string
from collections.abc import Iterable, Sequence

import ftfy
import numpy as np
import regex
import tokenizers
from tokenizers import pre_tokenizers

from hpjax.models import config as config_lib

BPE_PATH = pathlib.Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes x 2 (with `</w>`), merges, 2 specials.
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
_SPECIAL_IDS = {SOT_TOKEN: SOT_ID, EOT_TOKEN: EOT_ID}
_SPECIALS_AND_CONTRACTIONS = f"{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d"
_WORD_RE = regex.compile(
    rf"{_SPECIALS_AND_CONTRACTIONS}|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE)
# The same pattern restricted to lower-case printable ASCII, where it means exactly this; the
# standard library runs it about twice as fast.
_ASCII_WORD_RE = re.compile(rf"{_SPECIALS_AND_CONTRACTIONS}|[a-z]+|[0-9]|[^\sa-z0-9]+")


def _bytes_to_unicode() -> list[str]:
  """GPT-2/CLIP byte alphabet: printable bytes keep their character, the others move to 256+."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  shifted = [b for b in range(256) if b not in printable]
  chars = {b: chr(b) for b in printable}
  chars.update({b: chr(256 + n) for n, b in enumerate(shifted)})
  return [chars[b] for b in printable + shifted]


@functools.cache
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
  """CLIP's token -> id table in OpenCLIP's order (bytes, bytes + `</w>`, merges, specials)."""
  with gzip.open(BPE_PATH, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
  alphabet = _bytes_to_unicode()
  tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
  tokens += [SOT_TOKEN, EOT_TOKEN]
  vocab = {t: i for i, t in enumerate(tokens)}
  if len(vocab) != VOCAB_SIZE or vocab[SOT_TOKEN] != SOT_ID or vocab[EOT_TOKEN] != EOT_ID:
    raise ValueError(f"{BPE_PATH}: expected {VOCAB_SIZE} distinct tokens with "
                     f"{SOT_TOKEN}={SOT_ID}, {EOT_TOKEN}={EOT_ID}; got {len(vocab)}")
  return vocab, merges


@functools.cache
def _bpe_backend() -> tokenizers.Tokenizer:
  """Rust BPE of single pre-split words (UTF-8 bytes -> CLIP alphabet, `</w>` word ends)."""
  vocab, merges = _vocab_and_merges()
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges, end_of_word_suffix="</w>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  return tok


def clean_whitespace(text: str) -> str:
  """OpenCLIP's 'whitespace' cleaning (its HFTokenizer's): ftfy, html unescape (twice),
  whitespace runs collapsed."""
  return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split())


def clean_text(text: str) -> str:
  """OpenCLIP's 'lower' cleaning: 'whitespace' cleaning, then lower case."""
  return clean_whitespace(text).lower()


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str) -> str:
  """OpenCLIP's 'canonicalize' cleaning (SigLIP's, big_vision's prompt canonicalisation after
  ftfy and html unescaping): `_` to space, ASCII punctuation removed, lower case, whitespace runs
  collapsed."""
  return " ".join(clean_whitespace(text).replace("_", " ").translate(_NO_PUNCTUATION)
                  .lower().split())


def split_words(text: str) -> list[str]:
  """The words OpenCLIP's BPE sees: `_WORD_RE` matches of the cleaned text."""
  # ftfy's fixes act only on non-ASCII text, control characters, line breaks and entities, and
  # html.unescape only on `&`: printable ASCII without `&` needs lower-casing only (runs of
  # spaces need no collapsing, as no word contains a space).
  if text.isascii() and text.isprintable() and "&" not in text:
    return _ASCII_WORD_RE.findall(text.lower())
  return _WORD_RE.findall(clean_text(text))


def _starts(lengths: np.ndarray) -> np.ndarray:
  return np.cumsum(lengths) - lengths


def _flatten(rows: Sequence[Sequence], dtype) -> tuple[np.ndarray, np.ndarray]:
  lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
  flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(lengths.sum()))
  return flat, lengths


def encode(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """BPE ids of all strings, concatenated, and the number of ids per string (no SOT/EOT)."""
  words_per_text = [split_words(t) for t in texts]
  words, words_per_text_count = _flatten(words_per_text, object)
  word_index = {w: i for i, w in enumerate(dict.fromkeys(words))}
  word_ids = np.fromiter(map(word_index.__getitem__, words), np.int64, count=len(words))
  encoded = _bpe_backend().encode_batch([[w] for w in word_index], is_pretokenized=True,
                                        add_special_tokens=False)
  pieces, piece_lengths = _flatten(
      [[_SPECIAL_IDS[w]] if w in _SPECIAL_IDS else e.ids for w, e in zip(word_index, encoded)],
      np.int32)
  # Output id k of word j is pieces[start of word j's ids + (k - first output id of word j)].
  ids_per_word = piece_lengths[word_ids]
  gather = (np.repeat(_starts(piece_lengths)[word_ids] - _starts(ids_per_word), ids_per_word)
            + np.arange(ids_per_word.sum()))
  text_of_word = np.repeat(np.arange(len(texts)), words_per_text_count)
  lengths = np.bincount(text_of_word, weights=ids_per_word, minlength=len(texts)).astype(np.int64)
  return pieces[gather], lengths


def pack(ids: np.ndarray, lengths: np.ndarray, context_length: int) -> np.ndarray:
  """SOT + ids + EOT per row, zero-padded; longer rows are cut so that EOT stays last."""
  if context_length < 2:
    raise ValueError(f"context_length must be >= 2 (room for SOT and EOT), got {context_length}")
  n = len(lengths)
  kept = np.minimum(lengths, context_length - 2)
  rows = np.repeat(np.arange(n), lengths)
  position = np.arange(ids.size) - np.repeat(_starts(lengths), lengths)
  keep = position < np.repeat(kept, lengths)
  out = np.zeros((n, context_length), np.int32)
  out[:, 0] = SOT_ID
  out[rows[keep], position[keep] + 1] = ids[keep]
  out[np.arange(n), kept + 1] = EOT_ID
  return out


class Tokenizer:
  """Callable like `open_clip.get_tokenizer(name)`, returning numpy int32 (N, context_length)."""

  default_clean = "lower"  # OpenCLIP's `tokenizer_kwargs.clean` that these ids follow.
  sot_token_id = SOT_ID
  eot_token_id = EOT_ID
  vocab_size = VOCAB_SIZE

  def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH):
    self.context_length = context_length

  def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> np.ndarray:
    return pack(*encode(_text_list(texts)), context_length or self.context_length)

  def encode_unique(self, texts: Sequence[str],
                    context_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens of the distinct strings, index per input) so each string is tokenized once."""
    distinct, inverse = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
    return self(list(distinct), context_length), inverse.reshape(-1)


class HFTokenizer(Tokenizer):
  """open_clip's HFTokenizer ids from a local transformers tokenizer folder (no downloads).

  As open_clip: 'whitespace' cleaning, then the transformers tokenizer with its special tokens,
  truncated and padded (with its pad id: 1 for RoBERTa) to context_length.
  """

  default_clean = "whitespace"

  def __init__(self, folder, context_length: int = DEFAULT_CONTEXT_LENGTH):
    super().__init__(context_length)
    import transformers  # pylint: disable=g-import-not-at-top  (only HF-text models need it)
    folder = pathlib.Path(folder)
    if not folder.is_dir():
      raise FileNotFoundError(f"HF tokenizer folder {folder} does not exist")
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    self.sot_token_id = self.tokenizer.bos_token_id
    self.eot_token_id = self.tokenizer.eos_token_id
    self.pad_token_id = self.tokenizer.pad_token_id
    self.vocab_size = len(self.tokenizer)

  def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> np.ndarray:
    texts = [clean_whitespace(t) for t in _text_list(texts)]
    return self.tokenizer(texts, max_length=context_length or self.context_length,
                          padding="max_length", truncation=True,
                          return_tensors="np").input_ids.astype(np.int32)


SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model")  # SigLIP's c4_en, SigLIP 2's Gemma.


def sentencepiece_file(path) -> pathlib.Path:
  """The SentencePiece model: `path` itself (a `.model` file) or the one in folder `path` (an HF
  or timm repository: `spiece.model`, or Gemma's `tokenizer.model`)."""
  path = pathlib.Path(path)
  if path.is_dir():
    found = [path / n for n in SENTENCEPIECE_FILES if (path / n).is_file()]
    if len(found) != 1:
      raise FileNotFoundError(f"tokenizer folder {path} must hold one SentencePiece model of "
                              f"{SENTENCEPIECE_FILES}; found {[f.name for f in found]}")
    return found[0]
  if not path.is_file():
    raise FileNotFoundError(f"SentencePiece model {path} does not exist (pass the .model file or "
                            f"a folder holding one of {SENTENCEPIECE_FILES})")
  return path


class SentencePieceTokenizer(Tokenizer):
  """SigLIP / SigLIP 2 ids as OpenCLIP's HFTokenizer gives them for the timm repositories.

  'canonicalize' cleaning, the SentencePiece pieces, EOS appended (and kept when the ids are cut
  to context_length), no BOS, padded to context_length. The pad id is the vocabulary's: SigLIP's
  T5 vocabularies (c4_en, mc4), which have no BOS piece, pad with EOS (1), as big_vision
  trained; Gemma's, which has one, pads with its `<pad>` (0). The text tower pools the last
  position with no mask, so the pad id is part of every feature.
  """

  default_clean = "canonicalize"
  sot_token_id = None

  def __init__(self, path, context_length: int = 64):
    super().__init__(context_length)
    import sentencepiece  # pylint: disable=g-import-not-at-top  (only SigLIP needs it)
    self.model_file = sentencepiece_file(path)
    self.processor = sentencepiece.SentencePieceProcessor(model_file=str(self.model_file))
    self.eot_token_id = self.processor.eos_id()
    if self.eot_token_id < 0:
      raise ValueError(f"SentencePiece model {self.model_file} defines no EOS piece")
    self.pad_token_id = (self.eot_token_id if self.processor.bos_id() < 0
                         else self.processor.pad_id())
    self.vocab_size = self.processor.get_piece_size()

  def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> np.ndarray:
    length = context_length or self.context_length
    pieces = self.processor.encode([canonicalize(t) for t in _text_list(texts)])
    out = np.full((len(pieces), length), self.pad_token_id, np.int32)
    for row, ids in zip(out, pieces):
      ids = ids[:length - 1] + [self.eot_token_id]
      row[:len(ids)] = ids
    return out


def _text_list(texts: str | Iterable[str]) -> list[str]:
  texts = [texts] if isinstance(texts, str) else list(texts)
  for i, t in enumerate(texts):
    if not isinstance(t, str):
      raise TypeError(f"text {i} is a {type(t).__name__}, expected str: {t!r}")
  return texts


@functools.cache
def _tokenizer(context_length: int) -> Tokenizer:
  _bpe_backend()  # Build the vocabulary once, up front.
  return Tokenizer(context_length)


def _check_tokenizer_kwargs(name_or_path: str, tokenizer_class: type[Tokenizer]) -> None:
  """OpenCLIP configs may pass tokenizer arguments (another cleaning): accept the cleaning the
  chosen tokenizer applies, refuse anything else rather than ignore it."""
  path = pathlib.Path(name_or_path)
  if not (path.suffix == ".json" and path.is_file()):
    path = config_lib.CONFIG_DIR / f"{name_or_path}.json"
  kwargs = json.loads(path.read_text()).get("text_cfg", {}).get("tokenizer_kwargs") or {}
  if kwargs and kwargs != {"clean": tokenizer_class.default_clean}:
    raise ValueError(f"{path}: text_cfg asks for tokenizer_kwargs {kwargs}; hpjax's "
                     f"{tokenizer_class.__name__} takes none but clean="
                     f"{tokenizer_class.default_clean!r}")


def get_tokenizer(name_or_config: str | config_lib.CLIPConfig | None = None,
                  context_length: int | None = None, tokenizer_dir=None,
                  field: str = "tokenizer_dir") -> Tokenizer:
  """The tokenizer for a model name, JSON config path or config (context length from its text_cfg:
  `config.text.input_length`, 77 for CoCa with coca_legacy).

  A config whose text_cfg names an HF tokenizer (`hf_tokenizer_name`) reads it from
  `tokenizer_dir`; hpjax downloads nothing. With an HF text tower (roberta-ViT-B-32) that is a
  folder holding the transformers tokenizer (e.g. written by `save_pretrained`): an
  `HFTokenizer`. With OpenCLIP's own text tower (SigLIP, SigLIP 2) it is the SentencePiece model
  (`spiece.model`, Gemma's `tokenizer.model`) or a folder holding it: a
  `SentencePieceTokenizer`. Every other config gets the CLIP BPE tokenizer. `field` is what
  the error asking for `tokenizer_dir` calls it (the trainer's `model.tokenizer`).
  """
  config = (config_lib.get_model_config(name_or_config) if isinstance(name_or_config, str)
            else name_or_config)
  text = None if config is None else config.text
  hf_name = None if text is None else text.hf_tokenizer_name
  tokenizer_class = (Tokenizer if hf_name is None
                     else HFTokenizer if text.hf_model_name else SentencePieceTokenizer)
  if isinstance(name_or_config, str):
    _check_tokenizer_kwargs(name_or_config, tokenizer_class)
  if context_length is None:
    context_length = DEFAULT_CONTEXT_LENGTH if text is None else text.input_length
  if hf_name is not None:
    if tokenizer_dir is None:
      needed = ("a local folder holding it" if tokenizer_class is HFTokenizer else
                f"its SentencePiece model file or a local folder holding one of "
                f"{SENTENCEPIECE_FILES}")
      raise ValueError(f"{config.name}: text_cfg names the HF tokenizer {hf_name!r}; pass "
                       f"{field}=, {needed} (hpjax downloads nothing)")
    tokenizer = tokenizer_class(tokenizer_dir, context_length)
    if tokenizer_class is SentencePieceTokenizer and tokenizer.vocab_size > text.vocab_size:
      raise ValueError(f"{config.name}: the SentencePiece model {tokenizer.model_file} has "
                       f"{tokenizer.vocab_size} pieces, more than text_cfg.vocab_size "
                       f"{text.vocab_size}: it is not this model's tokenizer")
    return tokenizer
  if tokenizer_dir is not None:
    raise ValueError(f"tokenizer_dir={tokenizer_dir} is given, but the config names no HF "
                     "tokenizer (hf_tokenizer_name): it uses the CLIP BPE tokenizer")
  return _tokenizer(context_length)


def token_lengths(tokens: np.ndarray) -> np.ndarray:
  """Index of the first EOT + 1 per row: the prefix the text tower needs (it pools at argmax)."""
  tokens = np.asarray(tokens)
  first_max = np.argmax(tokens, axis=-1)
  missing = np.take_along_axis(tokens, first_max[..., None], -1)[..., 0] != EOT_ID
  if missing.any():
    raise ValueError(f"rows {np.flatnonzero(missing)[:10].tolist()} have no EOT token ({EOT_ID})")
  return first_max + 1


def bucket_length(max_len: int, buckets: Sequence[int] = (16, 32, 77)) -> int:
  """Smallest bucket >= max_len, so a batch is encoded at one of a few fixed lengths."""
  fitting = [b for b in sorted(buckets) if b >= max_len]
  if not fitting:
    raise ValueError(f"token length {max_len} exceeds the largest bucket of {tuple(buckets)}")
  return fitting[0]
