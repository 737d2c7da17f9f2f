"""Prepared TFDS datasets (hpjax.data.tfds_builders) as training sources and evaluation suites.

A dataset is named `tfds:<name>[:<split>]`, e.g. `tfds:coco_hard_texts/coco2017:train` or
`tfds:hard_positives`; `data_dir` (local or gs://) defaults to TFDS's own (`TFDS_DATA_DIR`,
else ~/tensorflow_datasets). Reading goes through `tfds.data_source`: random access over the
array_record files, no TensorFlow, images left encoded.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Sequence

import grain
import tensorflow_datasets as tfds

from hpjax import leftovers
from hpjax.data import suites as suites_lib
from hpjax.data import records as records_lib
from hpjax.data import tfds_builders

PREFIX = "tfds:"
_IMAGE_DIR = "hpjax-tfds-images-"  # the default image_dir (leftovers.name), in the temp folder


def parse_spec(spec: str) -> tuple[str, str | None]:
  """'tfds:name[:split]' -> (name, split or None)."""
  if not spec.startswith(PREFIX) or not spec[len(PREFIX):]:
    raise ValueError(f"{spec!r} is not a TFDS dataset: expected 'tfds:<name>[:<split>]'")
  name, _, split = spec[len(PREFIX):].partition(":")
  return name, split or None


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _open(name: str, split: str, data_dir: str | None, features, what: str):
  """tfds.data_source with the image left encoded; a dataset of another schema is an error."""
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():  # (tfds would try to build it here, into data_dir)
    raise FileNotFoundError(f"tfds:{name} is not prepared in {builder.data_dir}: build it first "
                            f"(python tools/build_tfds.py --name={name} --data_dir=...)")
  source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
  have, want = set(source.dataset_info.features.keys()), set(features.keys())
  if have != want:
    raise ValueError(f"tfds:{name}:{split} is not {what}: its features are {sorted(have)}, "
                     f"expected {sorted(want)}")
  return source


class TfdsTrainingSource(grain.sources.RandomAccessDataSource):
  """Random access over a training split, records as `training.ArrayRecordSource` gives them."""

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
    self._where = (name, split, data_dir)
    self._source = _open(name, split, data_dir, tfds_builders.training_features(),
                         "a training dataset (hpjax.data.tfds_builders.training_features)")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    example = self._source[index]
    record = {"caption": _text(example["caption"]), "image_name": _text(example["image_name"]),
              "image": example["image"]}
    record.update({key: [_text(t) for t in example[key]] for key in records_lib.TEXT_LISTS})
    return record

  def __reduce__(self):  # grain's worker processes reopen the dataset.
    return type(self), self._where

  def __repr__(self) -> str:
    return f"TfdsTrainingSource{self._where!r}"


def open_training_source(spec: str, data_dir: str | None = None) -> TfdsTrainingSource:
  """`tfds:<name>[:<split>]` (split 'train' unless given) as a grain data source."""
  name, split = parse_spec(spec)
  return TfdsTrainingSource(name, split or "train", data_dir)


def _wanted_splits(spec_split: str | None, names: Sequence[str] | None) -> list[str]:
  if spec_split:
    names = [spec_split]
  if names is None:
    return list(tfds_builders.SUITE_SPLITS)
  return list(suites_lib.hard_positive_files(names))


def load_tfds_suites(spec: str, data_dir: str | None = None,
                     names: Sequence[str] | None = None,
                     image_dir: str | None = None) -> dict[str, suites_lib.Suite]:
  """REPLACE/SWAP suites of a hard_positives-schema dataset, keyed by the paper's names.

  `names` as `suites.hard_positive_files` takes them ('replace', 'swap', ...); None loads every
  split the dataset has (a split in `spec` loads only that one). The scorer reads image files,
  so each distinct image is written once to `image_dir` (default: a new temporary folder) at
  its original relative path, and the records point there.
  """
  name, split = parse_spec(spec)
  available = tfds.builder(name, data_dir=data_dir).info.splits
  wanted = _wanted_splits(split, names)
  if names is None and not split:
    wanted = [s for s in wanted if s in available]
  missing = [s for s in wanted if s not in available]
  if missing or not wanted:
    raise ValueError(f"tfds:{name} has no split(s) {missing or wanted}; it has {sorted(available)}")
  image_dir, written = image_dir or _temporary_image_dir(), set()
  return {split: _suite(name, split, data_dir, image_dir, written) for split in wanted}


def _temporary_image_dir() -> str:
  """A new folder in the system's temporary folder, removed at exit; those of runs that were
  killed are removed here."""
  root = tempfile.gettempdir()
  leftovers.remove_stale(root, _IMAGE_DIR)
  folder = os.path.join(root, leftovers.name(_IMAGE_DIR))
  os.makedirs(folder)
  atexit.register(shutil.rmtree, folder, True)
  return folder


def _suite(name: str, split: str, data_dir: str | None, image_dir: str, written: set
           ) -> suites_lib.Suite:
  source = _open(name, split, data_dir, tfds_builders.suite_features(),
                 "a hard_positives dataset (hpjax.data.tfds_builders.suite_features)")
  file_name = tfds_builders.SUITE_SPLITS[split]
  records = []
  for i in range(len(source)):
    example = source[i]
    path = _write_image(image_dir, _text(example["image_path"]), example["image"],
                        f"tfds:{name}:{split} [{i}]", written)
    crop = tuple(float(v) for v in example["crop"])
    records.append(suites_lib.EvalRecord(
        image=path, captions=tuple(_text(example[k]) for k in ("caption", "hard_negative",
                                                               "hard_positive")),
        roles=(suites_lib.C, suites_lib.C_N, suites_lib.C_P), source=f"{file_name}.json",
        index=int(example["index"]), crop=crop or None))
  return suites_lib.Suite(file_name, suites_lib.HARD_POSITIVE, tuple(records))


def _write_image(image_dir: str, relative: str, data: bytes, where: str, written: set) -> str:
  """image_dir/relative, written once (`written` holds the paths done); a path leaving
  image_dir, or a file already there with other bytes, is an error."""
  path = os.path.normpath(os.path.join(image_dir, relative))
  if os.path.isabs(relative) or not path.startswith(os.path.normpath(image_dir) + os.sep):
    raise ValueError(f"{where}: image_path {relative!r} leaves the image folder {image_dir}")
  if path in written:
    return path
  if os.path.exists(path):
    with open(path, "rb") as f:
      if f.read() != data:
        raise FileExistsError(f"{where}: {path} exists with other content than the dataset's "
                              "image; use an empty image_dir")
  else:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(data)
  written.add(path)
  return path
