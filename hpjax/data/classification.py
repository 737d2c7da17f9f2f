"""Zero-shot classification data: class sets (names + prompt templates) and labelled images.

A class set is data: JSON `{"classnames": [...], "templates": ["a photo of a {}.", ...]}`.
Classes are indexed by position, never by name (two of ImageNet-1k's names repeat: 'missile'
and 'sunglasses'). `imagenet1k` names the shipped set (hpjax/assets/imagenet1k_zeroshot.json:
OpenCLIP's 1,000 class names and OpenAI's 80 templates, written by tools/make_class_set.py).

Labelled images come from a class-per-folder tree (folders sorted by name give the labels, as
torchvision's ImageFolder), a JSONL (`{"image": path, "label": int}` per line) or CSV (header
`image,label`) list, or a prepared TFDS image-classification dataset (`tfds:imagenet2012:
validation`, `tfds:cifar100:test`, ...; features `image` and `label`, read without TensorFlow).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import tempfile

import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")
SHIPPED = {"imagenet1k": os.path.join(ASSETS, "imagenet1k_zeroshot.json")}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class ClassSet:
  """Class names (by position) and prompt templates (each with one `{}`)."""
  names: tuple[str, ...]
  templates: tuple[str, ...]
  source: str


@dataclasses.dataclass(frozen=True)
class LabelledImages:
  """Image paths and their class indices; `skipped` counts what the user asked to skip."""
  images: tuple[str, ...]
  labels: np.ndarray
  source: str
  skipped: int = 0


def load_class_set(spec: str) -> ClassSet:
  """A shipped set's name (`imagenet1k`) or a class-set JSON file."""
  path = SHIPPED.get(spec, spec)
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a readable class-set JSON file ({e}); known names: "
                     f"{sorted(SHIPPED)}") from e
  for key in ("classnames", "templates"):
    values = data.get(key) if isinstance(data, dict) else None
    if not values or not all(isinstance(v, str) for v in values):
      raise ValueError(f"{path}: '{key}' must be a non-empty list of strings")
  bad = [t for t in data["templates"] if t.count("{}") != 1]
  if bad:
    raise ValueError(f"{path}: template {bad[0]!r} must hold exactly one '{{}}'")
  return ClassSet(tuple(data["classnames"]), tuple(data["templates"]), path)


def write_class_set(path: str, names, templates, overwrite: bool = False) -> None:
  """Writes a class-set JSON file (aside, then renamed); an existing file is kept unless
  `overwrite`."""
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite to replace it")
  with open(path + ".tmp", "w") as f:
    json.dump({"classnames": list(names), "templates": list(templates)}, f, indent=0)
    f.write("\n")
  os.replace(path + ".tmp", path)


def _check_labels(labels: np.ndarray, num_classes: int, source: str, where) -> None:
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if len(bad):
    raise ValueError(f"{source} {where(int(bad[0]))}: label {int(labels[bad[0]])} is outside "
                     f"the class list's {num_classes} classes")


def load_image_folder(root: str, num_classes: int, skip_empty_classes: bool = False
                      ) -> LabelledImages:
  """A class-per-folder tree: label = the folder's position in name order. The folder count
  must equal the class list's length; a folder with no image is an error unless skipped
  (counted in `skipped`)."""
  if not os.path.isdir(root):
    raise ValueError(f"{root}: not a folder of class folders")
  folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if len(folders) != num_classes:
    raise ValueError(f"{root}: {len(folders)} class folders, but the class list has "
                     f"{num_classes} classes")
  images, labels, empty = [], [], []
  for label, folder in enumerate(folders):
    found = sorted(os.path.join(dirpath, f)
                   for dirpath, _, files in os.walk(os.path.join(root, folder))
                   for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
      empty.append(folder)
    images += found
    labels += [label] * len(found)
  if empty and not skip_empty_classes:
    raise ValueError(f"{root}/{empty[0]}: a class folder with no image ({len(empty)} such "
                     "folders); pass skip_empty_classes to score without them")
  return LabelledImages(tuple(images), np.array(labels, np.int64), root, len(empty))


def csv_rows(path: str, columns: tuple[str, ...]) -> list[tuple[str, dict]]:
  """('line N', row) of a CSV file with a header naming at least `columns` (quoted fields as
  the csv module and pandas' `to_csv` write them)."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    if not set(columns) <= set(reader.fieldnames or ()):
      raise ValueError(f"{path}: the CSV header must name the columns {list(columns)} (it names "
                       f"{reader.fieldnames})")
    return [(f"line {reader.line_num}", row) for row in reader]


def load_labelled_list(path: str, num_classes: int, image_root: str | None = None
                       ) -> LabelledImages:
  """A JSONL (`{"image": path, "label": int}` per line) or CSV (`image,label` header) list;
  relative paths resolve against `image_root`."""
  rows = []
  if path.endswith(".csv"):
    rows = [(where, r["image"], r["label"]) for where, r in csv_rows(path, ("image", "label"))]
  else:
    with open(path) as f:
      for i, line in enumerate(f):
        if line.strip():
          try:
            record = json.loads(line)
            rows.append((f"line {i + 1}", record["image"], record["label"]))
          except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} line {i + 1}: expected {{\"image\": path, \"label\": "
                             f"int}} ({e})") from e
  labels = []
  for where, _, label in rows:
    try:
      labels.append(int(label))
    except ValueError as e:
      raise ValueError(f"{path} {where}: label {label!r} is not an integer") from e
  labels = np.array(labels, np.int64)
  _check_labels(labels, num_classes, path, lambda i: rows[i][0])
  resolve = lambda p: os.path.join(image_root, p) if image_root else p
  return LabelledImages(tuple(resolve(p) for _, p, _ in rows), labels, path)


def open_tfds(spec: str, default_split: str, data_dir: str | None, needed: tuple[str, ...]):
  """(`tfds.data_source` of `tfds:<name>[:<split>]`, the paths of its images): read without
  TensorFlow, images left encoded and written to a new temporary folder (the scorer reads
  files). A dataset without the `needed` features is an error naming them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (only for tfds:)
  name, _, split = spec[len(TFDS_PREFIX):].partition(":")
  source = tfds.data_source(name, split=split or default_split, data_dir=data_dir,
                            decoders={"image": tfds.decode.SkipDecoding()})
  have = set(source.dataset_info.features.keys())
  if not set(needed) <= have:
    raise ValueError(f"{spec}: features {sorted(have)}; expected {list(needed)}")
  image_dir = tempfile.mkdtemp(prefix="hpjax-tfds-images-")
  paths = []
  for i in range(len(source)):
    paths.append(os.path.join(image_dir, f"{i:08d}.img"))
    with open(paths[-1], "wb") as f:
      f.write(source[i]["image"])
  return source, paths


def load_tfds(spec: str, num_classes: int, data_dir: str | None = None) -> LabelledImages:
  """`tfds:<name>[:<split>]` (split 'test' unless given) with `image` and `label` features;
  the dataset's class count must equal the class list's."""
  source, paths = open_tfds(spec, "test", data_dir, ("image", "label"))
  label = source.dataset_info.features["label"]
  if label.num_classes != num_classes:
    raise ValueError(f"{spec}: {label.num_classes} classes, but the class list has "
                     f"{num_classes}")
  labels = np.array([int(source[i]["label"]) for i in range(len(source))], np.int64)
  return LabelledImages(tuple(paths), labels, spec)


def load_labelled_images(spec: str, num_classes: int, image_root: str | None = None,
                         skip_empty_classes: bool = False, tfds_data_dir: str | None = None
                         ) -> LabelledImages:
  """A folder tree, a .jsonl/.csv list or `tfds:name[:split]` (see the module docstring)."""
  if spec.startswith(TFDS_PREFIX):
    return load_tfds(spec, num_classes, tfds_data_dir)
  if os.path.isdir(spec):
    return load_image_folder(spec, num_classes, skip_empty_classes)
  if spec.endswith((".jsonl", ".csv")):
    return load_labelled_list(spec, num_classes, image_root)
  raise ValueError(f"{spec}: expected a class-per-folder tree, a .jsonl or .csv list, or "
                   "tfds:<name>[:<split>]")
