"""Image-text retrieval recall@K on held-out training records (NegCLIP picks its epoch by it).

Every image is scored against every held-out caption; image->text counts a hit when the image's
own caption is among its top K, text->image when the caption's image is among the caption's top K.
Features are encoded in fixed-shape, padded batches sharded over the mesh (one compile); the
captions of a batch are packed several to a row (`text_packing`), one row count for every batch,
when the text tower allows it (`causal_eot_pooled`), else encoded at the full context length.
"""

from __future__ import annotations

import jax
import numpy as np

from hpjax import preprocess, sharding
from hpjax import tokenizer as tokenizer_lib
from hpjax.train import text_packing


def _key(direction: str, k: int) -> str:
  return f"retrieval/{direction}_recall@{k}"


# The headline figure: the log's retrieval R@1 and the figure keep-best picks the kept model by.
MEAN_RECALL_AT_1 = _key("mean", 1)

def recall_at_k(similarity: np.ndarray, ks=(1, 5)) -> dict[str, float]:
  """similarity: (N images, N captions), caption i belongs to image i."""
  n = similarity.shape[0]
  own = similarity[np.arange(n), np.arange(n)]
  # Rank = how many others score strictly higher (ties resolved in the model's favour).
  i2t_rank = np.sum(similarity > own[:, None], axis=1)
  t2i_rank = np.sum(similarity > own[None, :], axis=0)
  out = {}
  for k in ks:
    i2t, t2i = float(np.mean(i2t_rank < k) * 100), float(np.mean(t2i_rank < k) * 100)
    out[_key("image_to_text", k)], out[_key("text_to_image", k)] = i2t, t2i
    out[_key("mean", k)] = (i2t + t2i) / 2
  return out


class RetrievalEvaluator:
  """recall@1/5 over `records` (dicts with an image path or bytes and a caption); `tokenizer`
  defaults to `get_tokenizer(model.config)`."""

  def __init__(self, model, records, mesh, *, tokenizer=None, batch_size: int = 128):
    self.model = model
    self.records = list(records)
    self.mesh = mesh
    n = mesh.devices.size
    self.batch_size = -(-batch_size // n) * n
    self.transform = preprocess.eval_transform(model.config.vision.image_size)
    tokenizer = tokenizer or tokenizer_lib.get_tokenizer(model.config)
    self.tokens = tokenizer([r["caption"] for r in self.records])
    self._groups = mesh.shape[sharding.DATA] // jax.process_count()
    self._packed = model.config.text.causal_eot_pooled
    if self._packed:
      self._text_rows = max(text_packing.rows_needed(self.tokens[ids], self._groups,
                                                     self.tokens.shape[1])
                            for ids in self._local_ids())
    replicated = sharding.replicated(mesh)
    encode = lambda method: jax.jit(
        lambda p, x: model.apply({"params": p}, **x, normalize=True, method=method),
        out_shardings=replicated)
    self._encode_image = encode("encode_image")
    self._encode_text = encode("encode_text_packed" if self._packed else "encode_text")

  def _text_rows_of(self, ids) -> dict:
    if not self._packed:
      return {"tokens": self.tokens[ids]}
    return text_packing.pack_texts(self.tokens[ids], self._groups, self.tokens.shape[1],
                                   self._text_rows)

  def _local_ids(self):
    """This host's record ids of each batch (the last batch padded with a repeat)."""
    local = sharding.local_batch_size(self.batch_size)
    start = jax.process_index() * local
    for begin in range(0, len(self.records), self.batch_size):
      ids = list(range(begin, min(begin + self.batch_size, len(self.records))))
      ids += [ids[-1]] * (self.batch_size - len(ids))  # pad with a repeat, dropped below
      yield ids[start:start + local]

  def _batched(self, encode, params, rows_of):
    feats = []
    for begin, ids in zip(range(0, len(self.records), self.batch_size), self._local_ids()):
      out = np.asarray(encode(params, sharding.put_batch(rows_of(ids), self.mesh)))
      feats.append(out[:min(self.batch_size, len(self.records) - begin)])
    return np.concatenate(feats)

  def features(self, params) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (image, caption) features of every record, in record order."""
    images = self._batched(self._encode_image, params, lambda ids: {"images": np.stack(
        [self.transform(preprocess.load_image(self.records[i]["image"])) for i in ids])})
    texts = self._batched(self._encode_text, params, self._text_rows_of)
    return images, texts

  def run(self, params) -> dict[str, float]:
    images, texts = self.features(params)
    return recall_at_k(images @ texts.T)
