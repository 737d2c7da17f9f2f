"""A SentencePiece model trained on a few texts, for SigLIP runs on the synthetic world.

SigLIP tokenizes with a SentencePiece model file (c4_en, 32k pieces) that hpjax never downloads;
the synthetic world's few dozen words need only a small one, trained here offline in well under a
second. It has c4_en's layout (T5's: pad 0, EOS 1, unk 2, no BOS), so `SentencePieceTokenizer`
pads with EOS as it does for SigLIP, and it is trained on the texts as that tokenizer cleans them.
"""

from __future__ import annotations

import io
import json
import os

from hpjax import tokenizer as tokenizer_lib

FILE = "spiece.model"


def jsonl_texts(train_jsonl: str) -> list[str]:
  """Every caption, hard negative and hard positive of a training JSONL."""
  texts = []
  with open(train_jsonl, encoding="utf-8") as f:
    for line in filter(str.strip, f):
      record = json.loads(line)
      texts += [record["caption"], *record.get("hard_negatives", []),
                *record.get("hard_positives", [])]
  return texts


def train_sentencepiece(texts, path: str, vocab_size: int) -> str:
  """Writes a SentencePiece model of at most `vocab_size` pieces (the text tower's embedding
  rows) trained on `texts` to `path`, atomically; returns `path`."""
  import sentencepiece  # pylint: disable=g-import-not-at-top  (only SigLIP runs need it)
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter([tokenizer_lib.canonicalize(t) for t in texts]), model_writer=model, vocab_size=vocab_size,
      hard_vocab_limit=False, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      num_threads=1, minloglevel=2)
  tmp = path + ".partial"
  with open(tmp, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, path)
  return path
