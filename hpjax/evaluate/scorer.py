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
  so this is exact, and each bucket compiles once.
* Devices: batches are sharded over a 1-D `data` mesh of all devices (every host feeds its slice
  via `jax.make_array_from_process_local_data`); params are replicated; outputs come back
  replicated, so every host gets every score. Hosts OR their unreadable-image masks after each
  batch (a tiny all-gather), so they all stop, or all skip the same records.
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
from jax.experimental import multihost_utils
import numpy as np

from hpjax import preprocess
from hpjax import tokenizer as tokenizer_lib
from hpjax.data import suites as suites_lib

DATA_AXIS = "data"


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


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all, across hosts) with classic automatic sharding."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


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

  @property
  def seconds(self) -> float:
    return time.perf_counter() - self.start


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


def _union_over_hosts(mask: np.ndarray) -> np.ndarray:
  """Elementwise OR of a boolean array over all processes."""
  if jax.process_count() == 1:
    return mask
  return np.asarray(multihost_utils.process_allgather(mask)).any(axis=0)


def _gathered_dots(a, a_idx, b, b_idx, chunk: int = 4096) -> np.ndarray:
  """out[r, k, l] = a[a_idx[r, k]] . b[b_idx[r, l]] in fp32, a few thousand rows at a time."""
  out = np.empty((len(a_idx), a_idx.shape[1], b_idx.shape[1]), np.float32)
  for s in range(0, len(a_idx), chunk):
    out[s:s + chunk] = np.einsum("rkd,rld->rkl", a[a_idx[s:s + chunk]], b[b_idx[s:s + chunk]])
  return out


class Scorer:
  """Cosine scores of (image, caption option) pairs for lists of `EvalRecord`s.

  Args:
    model: an `hpjax.models.CLIP`.
    tokenizer: an `hpjax.tokenizer.Tokenizer` (or any callable list[str] -> int32 (N, 77)).
    image_root: relative record image paths are resolved against it.
    transform: PIL image -> float32 (H, W, 3); default `preprocess.eval_transform` at the
      model's image size.
    image_batch_size / text_batch_size: global batch sizes (rounded up to a multiple of the
      device count).
    buckets: text lengths to encode at; the last must be the model's context length.
    num_workers: image decoding threads; `prefetch` batches are prepared ahead of the device.
    skip_missing_images: score without missing/unreadable images instead of stopping.
    devices: devices to shard over (default all).
    matmul_precision: precision of fp32 matmuls. 'highest' (default) keeps scores in true fp32
      on GPUs (no TF32) and TPUs (no one-pass bf16), as the paper's PyTorch scores are; near-ties
      decide the strict comparisons. 'default' trades that for speed. A bfloat16 model
      computes in bfloat16 either way.
  """

  def __init__(self, model, tokenizer: Callable[[list[str]], np.ndarray], *,
               image_root: str | None = None, transform: Callable | None = None,
               image_batch_size: int = 128, text_batch_size: int = 512,
               buckets: Sequence[int] = (16, 32, 77), num_workers: int = 8, prefetch: int = 2,
               skip_missing_images: bool = False, devices: Sequence[jax.Device] | None = None,
               matmul_precision: str = "highest"):
    self.model = model
    self.tokenizer = tokenizer
    self.image_root = image_root
    image_size = model.config.vision.image_size
    self.transform = transform or preprocess.eval_transform(image_size)
    self.image_shape = (image_size, image_size, 3)
    self.mesh = data_mesh(devices)
    n = self.mesh.devices.size
    self.image_batch_size = -(-image_batch_size // n) * n
    self.text_batch_size = -(-text_batch_size // n) * n
    context = model.config.text.context_length
    self.buckets = tuple(sorted(b for b in buckets if b < context)) + (context,)
    self.num_workers, self.prefetch = num_workers, prefetch
    self.skip_missing_images = skip_missing_images
    self._replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self._batch_sharding = jax.sharding.NamedSharding(self.mesh,
                                                      jax.sharding.PartitionSpec(DATA_AXIS))

    def apply(method):
      def encode(params, x):
        with jax.default_matmul_precision(matmul_precision):
          return model.apply({"params": params}, x, normalize=True, method=method)
      return encode

    self.encode_images = jax.jit(apply("encode_image"), out_shardings=self._replicated)
    self.encode_texts = jax.jit(apply("encode_text"), out_shardings=self._replicated)

  # -- helpers --------------------------------------------------------------------------------

  def image_path(self, image: str) -> str:
    """A record image path resolved against the image root."""
    return os.path.join(self.image_root, image) if self.image_root else image

  def _global_batch(self, local_rows: np.ndarray) -> jax.Array:
    """This host's rows of a global batch -> one sharded global array."""
    global_shape = (local_rows.shape[0] * jax.process_count(),) + local_rows.shape[1:]
    return jax.make_array_from_process_local_data(self._batch_sharding, local_rows, global_shape)

  def _local_slice(self, batch_size: int) -> slice:
    per_host = batch_size // jax.process_count()
    return slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)

  def _load(self, path: str, crop, where: str) -> tuple[np.ndarray, bool]:
    try:
      image, padded = preprocess.load_cropped(path, crop_box=crop)
    except OSError as e:  # missing, truncated or not an image (PIL's errors are OSErrors)
      raise ImageError("unreadable", [path], [str(e)]) from e
    except ValueError as e:  # an empty crop box
      raise ValueError(f"{where}: {e}") from e
    return np.asarray(self.transform(image), np.float32), padded

  # -- encoders -------------------------------------------------------------------------------

  def _encode_all_images(self, params, keys, wheres,
                         skip: set[int]) -> tuple[np.ndarray, list, np.ndarray]:
    """Features of every key not in `skip`, the keys whose image could not be read, and which
    keys' crop boxes were padded."""
    todo = [i for i in range(len(keys)) if i not in skip]
    batch = self.image_batch_size
    local = self._local_slice(batch)
    feats = _OneStepLate(np.zeros((len(keys), self.model.config.embed_dim), np.float32))
    failed = np.zeros(len(keys), bool)
    padded = np.zeros(len(keys), bool)
    reasons: dict[int, str] = {}
    progress = _Progress("images", len(todo))
    batches = [todo[s:s + batch] for s in range(0, len(todo), batch)]

    def submit(pool, ids):
      rows = (ids + [None] * batch)[:batch][local]
      return [None if i is None else
              pool.submit(self._load, self.image_path(keys[i][0]), keys[i][1], wheres[i])
              for i in rows]

    with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
      pending = collections.deque(submit(pool, ids) for ids in batches[:self.prefetch + 1])
      for b, ids in enumerate(batches):
        futures = pending.popleft()
        if b + self.prefetch + 1 < len(batches):
          pending.append(submit(pool, batches[b + self.prefetch + 1]))
        pixels = np.zeros((len(futures),) + self.image_shape, np.float32)
        for row, future in enumerate(futures):
          if future is None:
            continue
          try:
            pixels[row], padded[ids[row + local.start]] = future.result()
          except ImageError as e:
            failed[ids[row + local.start]] = True
            reasons[ids[row + local.start]] = str(e.__cause__)
        failed = _union_over_hosts(failed)  # every host must stop (or skip) alike
        if failed.any() and not self.skip_missing_images:
          for remaining in pending:  # stop early; do not wait for the prefetched batches
            for f in remaining:
              if f is not None:
                f.cancel()
          bad = np.flatnonzero(failed)
          raise ImageError("unreadable", [self.image_path(keys[i][0]) for i in bad],
                           [reasons.get(i, "read by another host") for i in bad])
        feats.add(ids, self.encode_images(params, self._global_batch(pixels)))
        progress.update(min((b + 1) * batch, len(todo)))
    feats.flush()
    return feats.out, np.flatnonzero(failed).tolist(), _union_over_hosts(padded)

  def encode_tokens(self, params, tokens: np.ndarray) -> np.ndarray:
    """Normalised features of (N, 77) token rows, encoded by length bucket."""
    lengths = tokenizer_lib.token_lengths(tokens)
    bucket_of = np.array([tokenizer_lib.bucket_length(int(n), self.buckets) for n in lengths])
    feats = _OneStepLate(np.zeros((len(tokens), self.model.config.embed_dim), np.float32))
    batch, local = self.text_batch_size, self._local_slice(self.text_batch_size)
    progress, done = _Progress("captions", len(tokens)), 0
    for length in self.buckets:
      ids = np.flatnonzero(bucket_of == length)
      for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        rows = np.zeros((batch, length), np.int32)
        rows[:len(chunk)] = tokens[chunk, :length]
        feats.add(chunk, self.encode_texts(params, self._global_batch(rows[local])))
        done += len(chunk)
        progress.update(done)
    feats.flush()
    return feats.out

  # -- the public entry point -----------------------------------------------------------------

  def score(self, params, records: Sequence[suites_lib.EvalRecord],
            text_sims: bool = False) -> ScoreResult:
    """Scores every caption of every record; see `ScoreResult`."""
    start = time.perf_counter()
    params = jax.device_put(params, self._replicated)
    keys = suites_lib.unique_images(records)
    key_id = {k: i for i, k in enumerate(keys)}
    image_of = np.array([key_id[(r.image, r.crop)] for r in records], np.int64)
    wheres = [""] * len(keys)
    for r, i in zip(records, image_of):
      wheres[i] = wheres[i] or r.where

    missing = [i for i, (image, _) in enumerate(keys) if not os.path.isfile(self.image_path(image))]
    if missing and not self.skip_missing_images:
      raise ImageError("missing", [self.image_path(keys[i][0]) for i in missing])
    image_feats, failed, padded = self._encode_all_images(params, keys, wheres, set(missing))
    image_seconds = time.perf_counter() - start
    skipped = sorted(set(missing) | set(failed))

    texts = list(dict.fromkeys(c for r in records for c in r.captions))
    tokens = np.asarray(self.tokenizer(texts), np.int32)
    distinct, token_of_text = np.unique(tokens, axis=0, return_inverse=True)
    text_feats = self.encode_tokens(params, distinct)[token_of_text.reshape(-1)]
    text_seconds = time.perf_counter() - start - image_seconds

    text_id = {t: i for i, t in enumerate(texts)}
    width = max(len(r.captions) for r in records)
    caption_of = np.full((len(records), width), -1, np.int64)
    for row, r in enumerate(records):
      caption_of[row, :len(r.captions)] = [text_id[c] for c in r.captions]
    present = caption_of >= 0
    valid = ~np.isin(image_of, skipped)
    scores = _gathered_dots(image_feats, image_of[:, None], text_feats, caption_of)[:, 0]
    scores[~present | ~valid[:, None]] = np.nan
    sims = None
    if text_sims:
      sims = _gathered_dots(text_feats, caption_of, text_feats, caption_of)
      sims[~(present[:, :, None] & present[:, None, :])] = np.nan

    seconds = time.perf_counter() - start
    stats = dict(
        records=float(len(records)), distinct_images=float(len(keys)),
        distinct_captions=float(len(texts)), distinct_token_rows=float(len(distinct)),
        skipped_images=float(len(skipped)), skipped_records=float((~valid).sum()),
        padded_boxes=float(padded.sum()),
        seconds=seconds, image_seconds=image_seconds, text_seconds=text_seconds,
        images_per_s=(len(keys) - len(skipped)) / seconds,
        captions_per_s=len(texts) / seconds)
    return ScoreResult(scores, valid, sims, [self.image_path(keys[i][0]) for i in skipped],
                       padded[image_of], stats)
