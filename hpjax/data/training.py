"""The grain input pipeline over training records (schema: `hpjax.data.records`).

Records come from a plain JSONL file, from array_record files written by
`hpjax.data.train_builders` (which embed the encoded image, so a multi-host job reads one
self-contained dataset from any filesystem), or from a prepared TFDS dataset.

The pipeline: records -> global shuffle (seed; reshuffled every epoch) -> per-example decode,
RandomResizedCrop and tokenization, with randomness drawn from the *global* example position ->
this host's slice -> fixed-shape batches -> worker processes. Because the randomness and the
order are global, N hosts with B/N examples each see the same global batches as one host with B.
Whether an example keeps its hard negatives / positives (`hn_frac`, `hp_frac`) is decided once
per record (seed, record index), so the ablation's 25% means the same 25% of records every epoch.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import grain
import numpy as np
from absl import logging

from hpjax import preprocess
from hpjax.data import records as records_lib
from hpjax.data import tfds_sources

SKIPPED = "skipped_record"


class JsonlSource(grain.sources.RandomAccessDataSource):
  """Random access over the records of a training JSONL (images read from their paths)."""

  def __init__(self, path: str, allow_outside: bool = False):
    self._path = path
    self._records = records_lib.read_jsonl(path, allow_outside)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    record = {**self._records[index], "image_name": self._records[index]["image"]}
    if records_lib.NEGATIVE_IMAGES in record:
      record["negative_image_names"] = record[records_lib.NEGATIVE_IMAGES]
    return record

  def __repr__(self) -> str:
    return f"JsonlSource({self._path!r})"


class ArrayRecordSource(grain.sources.RandomAccessDataSource):
  """Random access over array_record files of `records.serialize`d records (images embedded)."""

  def __init__(self, paths: Sequence[str]):
    self._paths = list(paths)
    try:
      self._source = grain.sources.ArrayRecordDataSource(self._paths)
    except RuntimeError as e:  # riegeli's message names the damage, not the file
      raise ValueError(f"training data {'+'.join(self._paths)}: not a readable array_record file "
                       f"(truncated or damaged; build it again): {e}") from e

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return records_lib.deserialize(self._source[index])

  def __repr__(self) -> str:
    return f"ArrayRecordSource({self._paths!r})"


def open_source(paths: str | Sequence[str], tfds_data_dir: str | None = None,
                allow_outside: bool = False) -> grain.sources.RandomAccessDataSource:
  """A JSONL file (its image paths under its folder unless `allow_outside`), one or more
  array_record files (`*.array_record`, or shards named `*.array_record-00000-of-00008`), or a
  prepared TFDS dataset `tfds:<name>[:<split>]` (hpjax.data.tfds_sources). Other names, such as
  a builder's `*.partial` temporary file, are refused."""
  paths = [paths] if isinstance(paths, str) else list(paths)
  if len(paths) == 1 and paths[0].startswith("tfds:"):
    return tfds_sources.open_training_source(paths[0], tfds_data_dir)
  if len(paths) == 1 and paths[0].endswith(".jsonl"):
    return JsonlSource(paths[0], allow_outside)
  if paths and all(re.search(r"\.array_record(-\d+-of-\d+)?$", p) for p in paths):
    return ArrayRecordSource(paths)
  raise ValueError(f"training data {'+'.join(paths)!r}: expected one .jsonl file or "
                   ".array_record files ('+'-separated in a config)")


def keeps(seed: int, index: int, kind: int, fraction: float) -> bool:
  """Whether record `index` keeps its hard texts of `kind` (0: negatives, 1: positives)."""
  if fraction >= 1.0:
    return True
  return bool(np.random.default_rng([seed, index, kind]).random() < fraction)


class ExampleTransform:
  """Record -> fixed-shape arrays. Picklable, so it runs in grain's worker processes.

  Texts beyond the first caption are tokenized together; empty slots are filled with the
  tokenization of "" (valid tokens, length 2) and masked out. With num_negative_images, up to
  that many of the record's negative images (chosen at random, as the hard texts) are cropped
  as the image is, into `negative_images` (K_i, H, W, 3) with `negative_image_mask`.
  """

  def __init__(self, *, tokenizer: Callable, image_size: int, num_hard_negatives: int,
               num_hard_positives: int, hn_frac: float, hp_frac: float, seed: int,
               crop_scale: Sequence[float] = (0.9, 1.0), skip_bad_images: bool = False,
               num_negative_images: int = 0):
    self.tokenizer = tokenizer
    self.image_transform = preprocess.train_transform(image_size, tuple(crop_scale))
    self.num = {"hard_negatives": num_hard_negatives, "hard_positives": num_hard_positives}
    self.frac = {"hard_negatives": hn_frac, "hard_positives": hp_frac}
    self.seed = seed
    self.skip_bad_images = skip_bad_images
    self.num_negative_images = num_negative_images

  def __call__(self, indexed_record, rng: np.random.Generator):
    index, record = indexed_record
    try:
      image = self.image_transform(preprocess.load_image(record["image"]), rng)
    except (OSError, ValueError) as e:
      return self._bad_image(index, record["image_name"], e)
    texts, example = [record["caption"]], {"image": image}
    for kind, key in enumerate(records_lib.TEXT_LISTS):
      available = record[key] if keeps(self.seed, index, kind, self.frac[key]) else []
      count = min(self.num[key], len(available))
      chosen = [available[i] for i in np.sort(rng.choice(len(available), count, replace=False))]
      texts += chosen + [""] * (self.num[key] - count)
      example[f"{key[:-1]}_mask"] = np.arange(self.num[key]) < count
    if self.num_negative_images:
      available = record.get(records_lib.NEGATIVE_IMAGES, [])
      count = min(self.num_negative_images, len(available))
      images = []
      for i in np.sort(rng.choice(len(available), count, replace=False)):
        try:
          images.append(self.image_transform(preprocess.load_image(available[i]), rng))
        except (OSError, ValueError) as e:
          return self._bad_image(index, record["negative_image_names"][i], e)
      images += [np.zeros_like(image)] * (self.num_negative_images - count)
      example["negative_images"] = np.stack(images)
      example["negative_image_mask"] = np.arange(self.num_negative_images) < count
    tokens = self.tokenizer(texts)
    k_n = self.num["hard_negatives"]
    example["caption"] = tokens[0]
    example["hard_negatives"] = tokens[1:1 + k_n]
    example["hard_positives"] = tokens[1 + k_n:]
    return example

  def _bad_image(self, index: int, name: str, error: Exception) -> dict:
    if not self.skip_bad_images:
      raise ValueError(f"training record {index} ({name}): {error}") from error
    logging.warning("skipping training record %d (%s): %s", index, name, error)
    return {SKIPPED: index}  # (not None: grain would drop it before it can be counted)


class _CountSkips:
  """Drops the examples whose image could not be decoded, counting them (main process)."""

  def __init__(self):
    self.skipped = 0

  def __call__(self, example) -> bool:
    if SKIPPED in example:
      self.skipped += 1
      logging.warning("%d training example(s) skipped so far for undecodable images",
                      self.skipped)
    return SKIPPED not in example


def make_dataset(source, *, global_batch_size: int, seed: int, transform: ExampleTransform,
                 process_index: int = 0, process_count: int = 1, num_epochs: int | None = None,
                 worker_count: int = 0, read_threads: int = 4) -> grain.IterDataset:
  """The training pipeline: global shuffle, per-example transform, this host's share, batches.

  Workers decode single examples and hand them back in order, and batches are formed here, so
  the batches do not depend on the number of workers (or hosts). With skip_bad_images, the
  skips are counted in `dataset.skips.skipped` as they are consumed.
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} does not split over {process_count} hosts")
  num_records = len(source)
  if global_batch_size > num_records:
    raise ValueError(f"training data {source!r}: a global batch of {global_batch_size} is larger "
                     f"than its {num_records} records; a batch would hold copies of the same "
                     "records as each other's negatives: use a batch_size of at most "
                     f"{num_records}")
  # The record's own index (grain passes epoch * num_records + i through repeat).
  ds = grain.MapDataset.source(source).map_with_index(lambda i, r: (i % num_records, r))
  ds = ds.shuffle(seed=seed).repeat(num_epochs).random_map(transform, seed=seed)
  local_batch = global_batch_size // process_count
  ds = ds[process_index::process_count].to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=2 * local_batch))
  if worker_count:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=local_batch))
  skips = _CountSkips()
  if transform.skip_bad_images:
    ds = ds.filter(skips)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds.skips = skips
  return ds
