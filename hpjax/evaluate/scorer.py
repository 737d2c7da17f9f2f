"""Scores every caption option of every record against its image, doing each piece of work once.

The suites repeat themselves: REPLACE has up to 26 records per image and c_n appears in both the
data/ and swapped_data/ files. The scorer therefore encodes each distinct (image, crop) once and
each distinct token sequence once, then forms the scores as dot products of the normalised
features in fp32 on the host.

* Images: decoded and preprocessed by a thread pool a few batches ahead of the device, encoded in
  fixed-shape batches (the last one padded and its rows dropped), so the encoder compiles once;
  results are fetched one batch late, so the device is busy while the host assembles the next.
* Text: captions are sorted into length buckets (16/32/77 tokens) and each bucket is encoded at
  its own length. Under the causal mask the pooled EOT feature only sees the tokens before it,
  so this is exact, and each bucket compiles once. A text tower that sees every position
  (SigLIP's, CoCa's, HF's) is always given its full input length.
* Several models: `score_models` feeds every model that shares a preprocessing from one decode
  pass (each distinct (image, crop) is decoded once and encoded by each model in turn).
* Score dtype: 'float32' normalises on the device and forms fp32 dot products; 'float16' copies
  the authors' fp16 rows (hpjax.zoo): unnormalised features rounded to fp16, normalised and dotted
  in fp16 with numpy, as their numpy code did, so fp16 ties appear where theirs did.
* Devices: batches are sharded over a 1-D `data` mesh of all devices (`sharding.data_mesh`;
  every host feeds its slice via `sharding.put_batch`); params are replicated; outputs come
  back replicated, so every host gets every score. Hosts OR their unreadable-image masks after
  each batch (`sharding.host_any`, a tiny all-gather), so they all stop, or all skip the same
  records.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import time
from typing import Callable, Sequence

from absl import logging
import jax
import numpy as np

from hpjax import preprocess
from hpjax import sharding
from hpjax import tokenizer as tokenizer_lib
from hpjax.data import suites as suites_lib


class ImageError(RuntimeError):
  """Images that could not be read; raised unless the user asked to skip them."""

  def __init__(self, what: str, paths: Sequence[str], reasons: Sequence[str] = ()):
    shown = "\n  ".join(f"{p}{f' ({r})' if r else ''}"
                        for p, r in zip(paths[:10], list(reasons[:10]) + [""] * 10))
    super().__init__(f"{len(paths)} {what} image(s), first ones:\n  {shown}\n"
                     "Pass skip_missing_images=True to score without them (skipped records are "
                     "counted in the results).")
    self.paths = list(paths)


@dataclasses.dataclass
class ScoreResult:
  """Scores of a list of records.

  Attributes:
    scores: (num_records, max_captions) fp32 cosine similarities; NaN past a record's captions
      and for records whose image was skipped.
    valid: (num_records,) False where the record's image was missing/unreadable and skipped.
    text_sims: (num_records, max_captions, max_captions) caption-caption cosines, if asked for.
    skipped_images: paths of the skipped images.
    padded: (num_records,) True where the record's crop box ran past its image and was padded
      black (as PIL's crop does).
    stats: counts and timings (distinct images/texts, seconds, images/s, captions/s).
  """
  scores: np.ndarray
  valid: np.ndarray
  text_sims: np.ndarray | None
  skipped_images: list[str]
  padded: np.ndarray
  stats: dict[str, float]


class _Progress:
  """A log line every few seconds: items done, total and the rate."""

  def __init__(self, what: str, total: int, every_s: float = 10.0):
    self.what, self.total, self.every_s = what, total, every_s
    self.start = self.last = time.perf_counter()

  def update(self, done: int):
    now = time.perf_counter()
    if now - self.last >= self.every_s or done >= self.total:
      self.last = now
      rate = done / max(now - self.start, 1e-9)
      logging.info("scorer: %s %d/%d (%.1f %s/s)", self.what, done, self.total, rate, self.what)


class _OneStepLate:
  """Copies device results into a host array one batch late: the device computes batch b while
  the host assembles batch b + 1 (jit dispatch is asynchronous; np.asarray waits)."""

  def __init__(self, out: np.ndarray):
    self.out, self._pending = out, None

  def add(self, rows, device_array):
    self.flush()
    self._pending = (rows, device_array)

  def flush(self):
    if self._pending is not None:
      rows, device_array = self._pending
      self.out[rows] = np.asarray(device_array)[:len(rows)]
      self._pending = None


def _gathered_dots(a, a_idx, b, b_idx, chunk: int = 4096) -> np.ndarray:
  """out[r, k, l] = a[a_idx[r, k]] . b[b_idx[r, l]] in a's dtype (fp32 or fp16), stored as fp32,
  a few thousand rows at a time."""
  out = np.empty((len(a_idx), a_idx.shape[1], b_idx.shape[1]), np.float32)
  for s in range(0, len(a_idx), chunk):
    out[s:s + chunk] = np.einsum("rkd,rld->rkl", a[a_idx[s:s + chunk]], b[b_idx[s:s + chunk]])
  return out


SCORE_DTYPES = ("float32", "float16")


def host_features(feats: np.ndarray, score_dtype: str) -> np.ndarray:
  """Features as the dot products use them: fp32 ones came normalised from the device; fp16
  ones are rounded to fp16 and normalised there, as the authors' numpy code did."""
  if score_dtype == "float32":
    return feats
  half = feats.astype(np.float16)
  return half / np.linalg.norm(half, axis=-1, keepdims=True)


def exact_buckets(model_config) -> tuple[int, ...]:
  """Text lengths at which encoding is exact: 16/32/77 for the causal, EOT-pooled CLIP text
  tower; only the full input for any other tower (a CLS token appended at the end, or
  bidirectional attention with mean pooling over every id that is not RoBERTa's pad, sees every
  position; CLIP ids fed to RoBERTa, as the paper did, have no such pad)."""
  text = model_config.text
  if text.causal_eot_pooled:
    return (16, 32, text.context_length)
  return (text.input_length,)


def load_pixels(path: str, crop, transform, where: str) -> tuple[np.ndarray, bool]:
  """One decoded, cropped and transformed image, and whether its crop box was padded (it runs
  past the image: black, as PIL's crop); errors name the file (and the record)."""
  try:
    image, padded = preprocess.load_cropped(path, crop_box=crop)
  except OSError as e:  # missing, truncated or not an image (PIL's errors are OSErrors)
    raise ImageError("unreadable", [path], [str(e)]) from e
  except ValueError as e:  # an empty crop box, or one wholly outside the image
    raise ValueError(f"{where}: {e}") from e
  return np.asarray(transform(image), np.float32), padded


class Scorer:
  """Cosine scores of (image, caption option) pairs for lists of `EvalRecord`s.

  Args:
    model: an `hpjax.models.CLIP`.
    tokenizer: an `hpjax.tokenizer.Tokenizer` (or any callable list[str] -> int32 (N, 77)).
    image_root: relative record image paths are resolved against it.
    transform: PIL image -> float32 (H, W, 3); default `preprocess.model_transform`, the eval
      transform OpenCLIP gives the model's weights (SigLIP's for a SigLIP tower).
    image_batch_size / text_batch_size: global batch sizes (rounded up to a multiple of the
      device count).
    buckets: text lengths to encode at; the last must be the model's context length.
    num_workers: image decoding threads; `prefetch` batches are prepared ahead of the device.
    skip_missing_images: score without missing/unreadable images instead of stopping.
    devices: devices to shard over (default all).
    matmul_precision: precision of fp32 matmuls. 'highest' (default) keeps scores in true fp32
      on GPUs (no TF32) and TPUs (no one-pass bf16), as the paper's PyTorch scores are; near-ties
      decide the strict comparisons. 'default' trades that for speed. A bfloat16 or float16
      model computes in its own dtype either way.
    score_dtype: 'float32' (default) or 'float16' (the authors' fp16 rows; see the module
      docstring). Scores are returned as fp32 arrays either way.
  """

  def __init__(self, model, tokenizer: Callable[[list[str]], np.ndarray], *,
               image_root: str | None = None, transform: Callable | None = None,
               image_batch_size: int = 128, text_batch_size: int = 512,
               buckets: Sequence[int] = (16, 32, 77), num_workers: int = 8, prefetch: int = 2,
               skip_missing_images: bool = False, devices: Sequence[jax.Device] | None = None,
               matmul_precision: str = "highest", score_dtype: str = "float32"):
    if score_dtype not in SCORE_DTYPES:
      raise ValueError(f"score_dtype {score_dtype!r}: expected one of {SCORE_DTYPES}")
    self.model = model
    self.score_dtype = score_dtype
    self.tokenizer = tokenizer
    self.image_root = image_root
    image_size = model.config.vision.image_size
    self.transform = transform or preprocess.model_transform(model.config)
    self.image_shape = (image_size, image_size, 3)
    self.mesh = sharding.data_mesh(devices)
    n = self.mesh.devices.size
    self.image_batch_size = -(-image_batch_size // n) * n
    self.text_batch_size = -(-text_batch_size // n) * n
    context = model.config.text.input_length
    if not model.config.text.causal_eot_pooled:
      buckets = ()  # Shorter rows would change (or be refused by) such a tower.
    self.buckets = tuple(sorted(b for b in buckets if b < context)) + (context,)
    self.num_workers, self.prefetch = num_workers, prefetch
    self.skip_missing_images = skip_missing_images
    self._replicated = sharding.replicated(self.mesh)

    normalize = score_dtype == "float32"
    if jax.numpy.dtype(model.dtype) != jax.numpy.float32:
      matmul_precision = "default"  # a half-precision model multiplies in its own dtype

    def apply(method):
      def encode(params, x):
        with jax.default_matmul_precision(matmul_precision):
          return model.apply({"params": params}, x, normalize=normalize, method=method)
      return encode

    self.encode_images = jax.jit(apply("encode_image"), out_shardings=self._replicated)
    self.encode_texts = jax.jit(apply("encode_text"), out_shardings=self._replicated)

  # -- helpers --------------------------------------------------------------------------------

  def image_path(self, image: str) -> str:
    """A record image path resolved against the image root."""
    return os.path.join(self.image_root, image) if self.image_root else image

  def decode_key(self) -> tuple:
    """What decides the decoded pixels and their batches: models with equal keys share a pass."""
    return (self.transform, self.image_shape, self.image_root, self.image_batch_size,
            self.skip_missing_images, self.num_workers, self.prefetch,
            tuple(d.id for d in self.mesh.devices.flat))

  # -- encoders -------------------------------------------------------------------------------

  def encode_tokens(self, params, tokens: np.ndarray) -> np.ndarray:
    """Features of (N, 77) token rows, encoded by length bucket (normalised unless fp16)."""
    text = self.model.config.text
    vocab = text.vocab_size if text.hf is None else text.hf.vocab_size
    if len(tokens) and not 0 <= tokens.min() <= tokens.max() < vocab:
      # An embedding lookup out of range gives NaN features, hence silently wrong figures.
      raise ValueError(f"{self.model.config.name}: token ids span [{tokens.min()}, "
                       f"{tokens.max()}], outside its vocabulary of {vocab}: the tokenizer does "
                       "not belong to this model")
    if len(self.buckets) == 1:  # Full length only: ids need no EOT (SigLIP's pad = EOS).
      bucket_of = np.full(len(tokens), self.buckets[0])
    else:
      lengths = tokenizer_lib.token_lengths(tokens)
      bucket_of = np.array([tokenizer_lib.bucket_length(int(n), self.buckets) for n in lengths])
    feats = _OneStepLate(np.zeros((len(tokens), self.model.config.embed_dim), np.float32))
    batch, local = self.text_batch_size, sharding.process_rows(self.text_batch_size)
    progress, done = _Progress("captions", len(tokens)), 0
    for length in self.buckets:
      ids = np.flatnonzero(bucket_of == length)
      for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        rows = np.zeros((batch, length), np.int32)
        rows[:len(chunk)] = tokens[chunk, :length]
        feats.add(chunk, self.encode_texts(params, sharding.put_batch(rows[local], self.mesh)))
        done += len(chunk)
        progress.update(done)
    feats.flush()
    return feats.out

  # -- the public entry point -----------------------------------------------------------------

  def score(self, params, records: Sequence[suites_lib.EvalRecord],
            text_sims: bool = False) -> ScoreResult:
    """Scores every caption of every record; see `ScoreResult`."""
    return score_models([(self, params)], records, text_sims)[0]


def _encode_all_images(models, keys, wheres, skip: set[int]
                       ) -> tuple[list[np.ndarray], list, np.ndarray, int]:
  """Features of every key not in `skip` for each (scorer, params) of `models`, each image
  decoded once; the keys whose image could not be read; which keys' crop boxes were padded;
  the number of images decoded here."""
  lead = models[0][0]
  todo = [i for i in range(len(keys)) if i not in skip]
  batch = lead.image_batch_size
  local = sharding.process_rows(batch)
  feats = [_OneStepLate(np.zeros((len(keys), s.model.config.embed_dim), np.float32))
           for s, _ in models]
  failed = np.zeros(len(keys), bool)
  padded = np.zeros(len(keys), bool)
  reasons: dict[int, str] = {}
  progress = _Progress("images", len(todo))
  batches = [todo[s:s + batch] for s in range(0, len(todo), batch)]
  decoded = 0

  def submit(pool, ids):
    nonlocal decoded
    rows = (ids + [None] * batch)[:batch][local]
    decoded += sum(i is not None for i in rows)
    return [None if i is None else
            pool.submit(load_pixels, lead.image_path(keys[i][0]), keys[i][1],
                        lead.transform, wheres[i])
            for i in rows]

  with concurrent.futures.ThreadPoolExecutor(lead.num_workers) as pool:
    pending = collections.deque(submit(pool, ids) for ids in batches[:lead.prefetch + 1])
    for b, ids in enumerate(batches):
      futures = pending.popleft()
      if b + lead.prefetch + 1 < len(batches):
        pending.append(submit(pool, batches[b + lead.prefetch + 1]))
      pixels = np.zeros((len(futures),) + lead.image_shape, np.float32)
      for row, future in enumerate(futures):
        if future is None:
          continue
        try:
          pixels[row], padded[ids[row + local.start]] = future.result()
        except ImageError as e:
          failed[ids[row + local.start]] = True
          reasons[ids[row + local.start]] = str(e.__cause__)
      failed = sharding.host_any(failed)  # every host must stop (or skip) alike
      if failed.any() and not lead.skip_missing_images:
        for remaining in pending:  # stop early; do not wait for the prefetched batches
          for f in remaining:
            if f is not None:
              f.cancel()
        bad = np.flatnonzero(failed)
        raise ImageError("unreadable", [lead.image_path(keys[i][0]) for i in bad],
                         [reasons.get(i, "read by another host") for i in bad])
      pixels = sharding.put_batch(pixels, lead.mesh)
      for out, (scorer, params) in zip(feats, models):
        out.add(ids, scorer.encode_images(params, pixels))
      progress.update(min((b + 1) * batch, len(todo)))
  for out in feats:
    out.flush()
  return ([f.out for f in feats], np.flatnonzero(failed).tolist(), sharding.host_any(padded),
          decoded)


def index_images(records, path_of: Callable[[str], str], skip_missing_images: bool):
  """The distinct (image, crop) keys, each record's key, a record naming each key (for errors)
  and the keys whose file is missing (an error unless they may be skipped)."""
  keys = suites_lib.unique_images(records)
  key_id = {k: i for i, k in enumerate(keys)}
  image_of = np.array([key_id[(r.image, r.crop)] for r in records], np.int64)
  wheres = [""] * len(keys)
  for r, i in zip(records, image_of):
    wheres[i] = wheres[i] or r.where
  missing = [i for i, (image, _) in enumerate(keys) if not os.path.isfile(path_of(image))]
  if missing and not skip_missing_images:
    raise ImageError("missing", [path_of(keys[i][0]) for i in missing])
  return keys, image_of, wheres, missing


def scorer_for(model, tokenizer=None, scorer: Scorer | None = None, **scorer_kwargs
               ) -> Scorer | None:
  """`scorer` if given, else one for `model` (its own tokenizer by default); None without a
  model (the caller then passes a scorer to each run)."""
  if scorer is not None or model is None:
    return scorer
  return Scorer(model, tokenizer or tokenizer_lib.get_tokenizer(model.config), **scorer_kwargs)


def image_features(models: Sequence[tuple[Scorer, object]], images: Sequence[str], source: str
                   ) -> tuple[list[np.ndarray], np.ndarray]:
  """Features of image files (one row per entry of `images`, as the dot products use them) for
  each (scorer, params) of `models`, each distinct file decoded once (as `score_models`); and
  which rows are valid (False: missing or unreadable and skipped). `source` names the file
  listing them, for errors."""
  lead = models[0][0]
  models = [(s, jax.device_put(p, s._replicated)) for s, p in models]
  records = [suites_lib.EvalRecord(image, (), (), source, i) for i, image in enumerate(images)]
  keys, image_of, wheres, missing = index_images(records, lead.image_path,
                                                 lead.skip_missing_images)
  feats, failed, _, _ = _encode_all_images(models, keys, wheres, set(missing))
  valid = ~np.isin(image_of, sorted(set(missing) | set(failed)))
  return [host_features(f, s.score_dtype)[image_of] for f, (s, _) in zip(feats, models)], valid


def text_features(scorer: Scorer, params, texts: Sequence[str]) -> np.ndarray:
  """Features of `texts` (as the dot products use them), each distinct token row encoded once."""
  tokens = np.asarray(scorer.tokenizer(list(texts)), np.int32)
  distinct, token_of_text = np.unique(tokens, axis=0, return_inverse=True)
  params = jax.device_put(params, scorer._replicated)
  feats = scorer.encode_tokens(params, distinct)[token_of_text.reshape(-1)]
  return host_features(feats, scorer.score_dtype)


def score_models(models: Sequence[tuple[Scorer, object]], records: Sequence[suites_lib.EvalRecord],
                 text_sims: bool = False) -> list[ScoreResult]:
  """Scores `records` with every (scorer, params) of `models` in one image decode pass.

  The scorers must share a preprocessing (`Scorer.decode_key`): each distinct (image, crop) is
  decoded once and fed to every model; captions are tokenised and encoded per model. Returns one
  `ScoreResult` per model; `stats['images_decoded']` counts the pass's decodes (all hosts).
  """
  lead = models[0][0]
  for scorer, _ in models[1:]:
    if scorer.decode_key() != lead.decode_key():
      raise ValueError("score_models: the models do not share one preprocessing (image size, "
                       "transform, image_root, batch size or devices differ); score them in "
                       "separate passes")
  start = time.perf_counter()
  models = [(s, jax.device_put(p, s._replicated)) for s, p in models]
  keys, image_of, wheres, missing = index_images(records, lead.image_path,
                                                 lead.skip_missing_images)
  all_image_feats, failed, padded, decoded = _encode_all_images(models, keys, wheres,
                                                                set(missing))
  image_seconds = time.perf_counter() - start
  skipped = sorted(set(missing) | set(failed))
  valid = ~np.isin(image_of, skipped)

  texts = list(dict.fromkeys(c for r in records for c in r.captions))
  text_id = {t: i for i, t in enumerate(texts)}
  width = max(len(r.captions) for r in records)
  caption_of = np.full((len(records), width), -1, np.int64)
  for row, r in enumerate(records):
    caption_of[row, :len(r.captions)] = [text_id[c] for c in r.captions]
  present = caption_of >= 0

  results = []
  for (scorer, params), image_feats in zip(models, all_image_feats):
    text_start = time.perf_counter()
    tokens = np.asarray(scorer.tokenizer(texts), np.int32)
    distinct, token_of_text = np.unique(tokens, axis=0, return_inverse=True)
    text_feats = scorer.encode_tokens(params, distinct)[token_of_text.reshape(-1)]
    text_seconds = time.perf_counter() - text_start
    image_feats = host_features(image_feats, scorer.score_dtype)
    text_feats = host_features(text_feats, scorer.score_dtype)
    scores = _gathered_dots(image_feats, image_of[:, None], text_feats, caption_of)[:, 0]
    scores[~present | ~valid[:, None]] = np.nan
    sims = None
    if text_sims:
      sims = _gathered_dots(text_feats, caption_of, text_feats, caption_of)
      sims[~(present[:, :, None] & present[:, None, :])] = np.nan
    # The pass's image time is shared; each model adds its own text time.
    seconds = image_seconds + time.perf_counter() - text_start
    stats = dict(
        records=float(len(records)), distinct_images=float(len(keys)),
        distinct_captions=float(len(texts)), distinct_token_rows=float(len(distinct)),
        skipped_images=float(len(skipped)), skipped_records=float((~valid).sum()),
        padded_boxes=float(padded.sum()),
        images_decoded=float(sharding.host_sum(decoded)), models_in_decode_pass=float(len(models)),
        seconds=seconds, image_seconds=image_seconds, text_seconds=text_seconds,
        images_per_s=(len(keys) - len(skipped)) / seconds,
        captions_per_s=len(texts) / seconds)
    results.append(ScoreResult(scores, valid, sims,
                               [lead.image_path(keys[i][0]) for i in skipped], padded[image_of],
                               stats))
  return results
