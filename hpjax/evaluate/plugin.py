"""`PluginScorer`: scores with any Python callable `(images, captions) -> scores`, for models
that are not dual encoders (X-VLM, BLIP, FLAVA score a pair with an image-text-matching head).

The callable gets a batch of pairs: `images` float32 (B, H, W, 3) from `transform` (one row per
pair, an image repeated for each of its captions) and `captions` a list of B strings, and
returns B scores (higher = better match). The work is deduplicated as the dual-encoder scorer's
is: each distinct (image, crop) is decoded once and each distinct (image, crop, caption) pair is
scored once, however many records repeat it. The result is a `scorer.ScoreResult`, so metrics,
reports and the runner treat it like any model's. One process (the callable runs on this host).
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Callable, Sequence

import numpy as np

from hpjax import preprocess
from hpjax.data import suites as suites_lib
from hpjax.evaluate import scorer as scorer_lib


class PluginScorer:
  """Args:
    fn: (images (B, H, W, 3) float32, captions list[str]) -> (B,) scores.
    image_root: relative record image paths are resolved against it.
    transform: PIL image -> float32 (H, W, 3); default the CLIP eval transform at `image_size`.
    batch_size: pairs per call (the last call may be smaller).
    num_workers: image decoding threads.
    skip_missing_images: score without missing/unreadable images instead of stopping.
  """

  score_dtype = "float32"

  def __init__(self, fn: Callable[[np.ndarray, list[str]], np.ndarray], *,
               image_root: str | None = None, transform: Callable | None = None,
               image_size: int = 224, batch_size: int = 64, num_workers: int = 8,
               skip_missing_images: bool = False):
    self.fn = fn
    self.image_root = image_root
    self.transform = transform or preprocess.eval_transform(image_size)
    self.batch_size, self.num_workers = batch_size, num_workers
    self.skip_missing_images = skip_missing_images

  def image_path(self, image: str) -> str:
    return os.path.join(self.image_root, image) if self.image_root else image

  def _decode(self, keys, wheres) -> tuple[list, np.ndarray, list[int]]:
    """Pixels of every key (None where unreadable), whether its crop box was padded, and the
    failed keys."""
    def one(i):
      return scorer_lib.load_pixels(self.image_path(keys[i][0]), keys[i][1], self.transform, wheres[i])

    pixels, padded, failed, reasons = [None] * len(keys), np.zeros(len(keys), bool), [], []
    with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
      for i, future in enumerate([pool.submit(one, i) for i in range(len(keys))]):
        try:
          pixels[i], padded[i] = future.result()
        except scorer_lib.ImageError as e:
          failed.append(i)
          reasons.append(str(e.__cause__))
    if failed and not self.skip_missing_images:
      raise scorer_lib.ImageError("unreadable", [self.image_path(keys[i][0]) for i in failed], reasons)
    return pixels, padded, failed

  def score(self, params, records: Sequence[suites_lib.EvalRecord],
            text_sims: bool = False) -> scorer_lib.ScoreResult:
    """Scores every caption of every record (`params` is unused: the callable holds its model)."""
    del params
    if text_sims:
      raise ValueError("a plug-in scorer scores image-caption pairs only; SugarCrepe++'s "
                       "text-to-text figure needs a text encoder")
    start = time.perf_counter()
    keys, image_of, wheres, missing = scorer_lib.index_images(records, self.image_path,
                                                              self.skip_missing_images)
    present_keys = [i for i in range(len(keys)) if i not in set(missing)]
    pixels, padded_present, failed = self._decode([keys[i] for i in present_keys],
                                                  [wheres[i] for i in present_keys])
    by_key = dict(zip(present_keys, pixels))
    padded = np.zeros(len(keys), bool)
    padded[present_keys] = padded_present
    skipped = sorted(set(missing) | {present_keys[i] for i in failed})
    skipped_set = set(skipped)
    image_seconds = time.perf_counter() - start

    # Distinct (image key, caption) pairs, grouped by image.
    pairs = list(dict.fromkeys((int(k), c) for r, k in zip(records, image_of)
                               if k not in skipped_set for c in r.captions))
    pair_score = np.empty(len(pairs), np.float32)
    for s in range(0, len(pairs), self.batch_size):
      chunk = pairs[s:s + self.batch_size]
      images = np.stack([by_key[k] for k, _ in chunk])
      out = np.asarray(self.fn(images, [c for _, c in chunk]), np.float32).reshape(-1)
      if out.shape != (len(chunk),):
        raise ValueError(f"plug-in scorer returned {out.shape[0]} scores for {len(chunk)} pairs; "
                         "expected one score per (image, caption) pair")
      pair_score[s:s + len(chunk)] = out
    pair_id = {p: i for i, p in enumerate(pairs)}

    width = max(len(r.captions) for r in records)
    scores = np.full((len(records), width), np.nan, np.float32)
    valid = ~np.isin(image_of, skipped)
    for row, (r, k) in enumerate(zip(records, image_of)):
      if valid[row]:
        scores[row, :len(r.captions)] = [pair_score[pair_id[(int(k), c)]] for c in r.captions]
    seconds = time.perf_counter() - start
    stats = dict(
        records=float(len(records)), distinct_images=float(len(keys)),
        distinct_captions=float(len({c for r in records for c in r.captions})),
        distinct_pairs=float(len(pairs)), skipped_images=float(len(skipped)),
        skipped_records=float((~valid).sum()), padded_boxes=float(padded.sum()),
        images_decoded=float(len(present_keys)),
        models_in_decode_pass=1.0, seconds=seconds, image_seconds=image_seconds,
        text_seconds=seconds - image_seconds,
        images_per_s=(len(keys) - len(skipped)) / seconds, captions_per_s=len(pairs) / seconds)
    return scorer_lib.ScoreResult(scores, valid, None, [self.image_path(keys[i][0]) for i in skipped],
                                  padded[image_of], stats)
