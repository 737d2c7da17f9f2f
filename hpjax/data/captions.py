"""Image-caption retrieval sets in the standard protocol (COCO 5k and Flickr30k 1k test).

Each set is its images and every caption with the index of its image (5 per image in Karpathy's
splits). Read from
* Karpathy's split files (`dataset_coco.json`, `dataset_flickr30k.json`): `{"images": [{
  "filepath"?, "filename", "split", "sentences": [{"raw"}]}]}`; the `test` split (or `split`);
* CLIP_benchmark's annotation files (built by mehdidc/retrieval_annotations@12638bf's
  scripts, read by LAION-AI/CLIP_benchmark@48de38c's datasets/builder.py):
  `coco_{split}_karpathy.json` in the COCO captions format (`{"images": [{"id", "file_name"}],
  "annotations": [{"image_id", "caption"}]}`, file names below val2014/), and
  `flickr30k_{split}_karpathy.txt` / `flickr8k_...`, a CSV with an `image,caption` header and
  one line per caption (quoted as pandas writes it: CLIP_benchmark splits at '.jpg,' and keeps
  a quoted caption's quotes, this reader does not);
* LAVIS/BLIP's `coco_karpathy_test.json`, `flickr30k_test.json`: a list of
  `{"image": path, "caption": [str, ...]}`;
* the indexed form `{"images": [path, ...], "captions": [[image_index, text], ...]}`;
* TFDS `coco_captions` (`tfds:coco_captions/2014:test`, Karpathy's test split), without
  TensorFlow.
Relative image paths resolve against `image_root`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import numpy as np

from hpjax.data import classification


@dataclasses.dataclass(frozen=True)
class CaptionSet:
  """Images, captions and `caption_image[j]`, the index of caption j's image."""
  images: tuple[str, ...]
  captions: tuple[str, ...]
  caption_image: np.ndarray
  source: str

  def __post_init__(self):
    bad = np.flatnonzero((self.caption_image < 0) | (self.caption_image >= len(self.images)))
    if len(bad):
      raise ValueError(f"{self.source} caption {int(bad[0])}: names image index "
                       f"{int(self.caption_image[bad[0]])}, but there are {len(self.images)} "
                       "images")
    if not self.captions:
      raise ValueError(f"{self.source}: no caption")


def _from_lists(images, caption_lists, source: str) -> CaptionSet:
  captions = [c for cs in caption_lists for c in cs]
  owner = [i for i, cs in enumerate(caption_lists) for _ in cs]
  return CaptionSet(tuple(images), tuple(captions), np.array(owner, np.int64), source)


def _resolve(image_root: str | None, path: str) -> str:
  return os.path.join(image_root, path) if image_root else path


def _texts(value, path: str, where: str) -> list[str]:
  texts = [value] if isinstance(value, str) else value
  if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
    raise ValueError(f"{path} {where}: expected a caption string or a non-empty list of them")
  return texts


def _karpathy(data: dict, path: str, image_root: str | None, split: str) -> CaptionSet:
  entries = [(i, e) for i, e in enumerate(data["images"]) if e.get("split") == split]
  if not entries:
    splits = sorted({str(e.get("split")) for e in data["images"]})
    raise ValueError(f"{path}: no image in the {split!r} split (splits: {splits})")
  images, caption_lists = [], []
  for i, entry in entries:
    try:
      name = os.path.join(entry.get("filepath", ""), entry["filename"])
      caption_lists.append(_texts([s["raw"] for s in entry["sentences"]], path, f"image {i}"))
    except (KeyError, TypeError) as e:
      raise ValueError(f"{path} image {i}: expected 'filename' and 'sentences' with 'raw' "
                       f"({e!r} missing)") from e
    images.append(_resolve(image_root, name))
  return _from_lists(images, caption_lists, path)


def _annotation_list(data: list, path: str, image_root: str | None) -> CaptionSet:
  images, caption_lists = [], []
  for i, entry in enumerate(data):
    if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
      raise ValueError(f"{path} record {i}: expected {{\"image\": path, \"caption\": [...]}}")
    images.append(_resolve(image_root, entry["image"]))
    caption_lists.append(_texts(entry["caption"], path, f"record {i}"))
  return _from_lists(images, caption_lists, path)


def _coco(data: dict, path: str, image_root: str | None) -> CaptionSet:
  """The COCO captions format: images in the file's order, each with its annotations'."""
  try:
    images = {entry["id"]: entry["file_name"] for entry in data["images"]}
  except (KeyError, TypeError) as e:
    raise ValueError(f"{path}: every image needs 'id' and 'file_name' ({e!r} missing)") from e
  caption_lists = {image_id: [] for image_id in images}
  for j, ann in enumerate(data["annotations"]):
    if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
      raise ValueError(f"{path} annotation {j}: expected {{\"image_id\", \"caption\": str}}")
    if ann.get("image_id") not in caption_lists:
      raise ValueError(f"{path} annotation {j}: names image_id {ann.get('image_id')!r}, which "
                       "is not among the file's images")
    caption_lists[ann["image_id"]].append(ann["caption"])
  bare = [i for i, cs in caption_lists.items() if not cs]
  if bare:
    raise ValueError(f"{path} image id {bare[0]}: no caption ({len(bare)} such images)")
  return _from_lists([_resolve(image_root, n) for n in images.values()],
                     list(caption_lists.values()), path)


def load_caption_csv(path: str, image_root: str | None = None) -> CaptionSet:
  """CLIP_benchmark's Flickr annotation file: an `image,caption` CSV, one line per caption;
  images in first-seen order."""
  caption_lists = collections.defaultdict(list)
  for where, row in classification.csv_rows(path, ("image", "caption")):
    if not row["image"] or not row["caption"]:
      raise ValueError(f"{path} {where}: an empty image or caption")
    caption_lists[row["image"]].append(row["caption"])
  return _from_lists([_resolve(image_root, n) for n in caption_lists],
                     list(caption_lists.values()), path)


def _indexed(data: dict, path: str, image_root: str | None) -> CaptionSet:
  captions, owner = [], []
  for j, pair in enumerate(data["captions"]):
    if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int)
            and isinstance(pair[1], str)):
      raise ValueError(f"{path} caption {j}: expected [image_index, text]")
    owner.append(pair[0])
    captions.append(pair[1])
  return CaptionSet(tuple(_resolve(image_root, p) for p in data["images"]), tuple(captions),
                    np.array(owner, np.int64), path)


def load_caption_file(path: str, image_root: str | None = None, split: str = "test"
                      ) -> CaptionSet:
  """Any of the JSON forms of the module docstring, told apart by their keys."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a readable JSON file ({e})") from e
  if isinstance(data, list):
    return _annotation_list(data, path, image_root)
  if isinstance(data, dict) and isinstance(data.get("images"), list):
    if "captions" in data:
      return _indexed(data, path, image_root)
    if isinstance(data.get("annotations"), list):
      return _coco(data, path, image_root)
    return _karpathy(data, path, image_root, split)
  raise ValueError(f"{path}: neither a Karpathy split file, a COCO captions file, a LAVIS "
                   "annotation list nor the indexed form (see hpjax.data.captions)")


def load_tfds_captions(spec: str, data_dir: str | None = None) -> CaptionSet:
  """`tfds:coco_captions/2014[:split]` (split 'test', Karpathy's, unless given), without
  TensorFlow."""
  source, images = classification.open_tfds(spec, "test", data_dir, ("image", "captions"))
  caption_lists = [_texts([t.decode() if isinstance(t, bytes) else str(t)
                           for t in source[i]["captions"]["text"]], spec, f"example {i}")
                   for i in range(len(source))]
  return _from_lists(images, caption_lists, spec)


def load_caption_set(spec: str, image_root: str | None = None, split: str = "test",
                     tfds_data_dir: str | None = None) -> CaptionSet:
  """A JSON file (see `load_caption_file`), a CSV (.txt or .csv, `load_caption_csv`) or
  `tfds:coco_captions/2014[:split]`."""
  if spec.startswith(classification.TFDS_PREFIX):
    return load_tfds_captions(spec, tfds_data_dir)
  if spec.endswith((".txt", ".csv")):
    return load_caption_csv(spec, image_root)
  return load_caption_file(spec, image_root, split)
