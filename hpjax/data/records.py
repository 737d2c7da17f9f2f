"""The training-record schema and its two file encodings (JSONL, array_record payloads).

A training record is one JSON object
  {"image": path, "caption": str, "hard_negatives": [str, ...], "hard_positives": [str, ...],
   "negative_images": [path, ...]}
(paths relative to the JSONL's folder; an absolute path, or one leaving the folder through '..',
only where the user allows it: `allow_paths_outside_root`; `negative_images` is optional: images
that are negatives of the caption in the text->image direction, as NegCLIP's `neg_image` rows).
The builders (`train_builders`, `tfds_builders`) write it and the readers (`training`,
`tfds_sources`) read it, so it sits below all of them. An array_record payload embeds the encoded
images (negative images too), so a multi-host job reads one self-contained dataset from any
filesystem.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Iterable, Iterator

import numpy as np

TEXT_LISTS = ("hard_negatives", "hard_positives")
NEGATIVE_IMAGES = "negative_images"
_KEYS = ("image", "caption", *TEXT_LISTS, NEGATIVE_IMAGES)


def validate_record(record: Any, where: str) -> dict:
  """Checks one record against the schema; `where` (file:line) names it in the error."""
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  missing = {"image", "caption"} - set(record)
  if missing:
    raise ValueError(f"{where}: missing key(s) {sorted(missing)}")
  unknown = set(record) - set(_KEYS)
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected {', '.join(_KEYS)}")
  caption = record["caption"]
  if not isinstance(caption, str) or not caption.strip():
    raise ValueError(f"{where}: 'caption' must be a non-empty string, got {caption!r}")
  out = {"image": record["image"], "caption": caption}
  for key in (*TEXT_LISTS, NEGATIVE_IMAGES):
    texts = record.get(key, [])
    if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
      raise ValueError(f"{where}: {key!r} must be a list of non-empty strings, got {texts!r}")
    if key in TEXT_LISTS or texts:  # (records without negative images keep their old form)
      out[key] = texts
  return out


OUTSIDE_ROOT_FIELD = "allow_paths_outside_root"  # the config field / flag that allows them


def leaves_root(path: str) -> bool:
  """Whether an image path read from an annotation file is absolute or leaves the folder it is
  relative to through '..': such a file would reach images outside the data it describes."""
  normal = os.path.normpath(path)
  return os.path.isabs(path) or normal == os.pardir or normal.startswith(os.pardir + os.sep)


def inside(root: str, path: str, where: str, allow_outside: bool = False) -> str:
  """`root`/`path`, refused when `path` leaves `root` (`leaves_root`) unless `allow_outside`."""
  if leaves_root(path) and not allow_outside:
    raise ValueError(f"{where}: image path {path!r} is outside {root} (absolute, or through "
                     f"'..'); move the images under it, or set {OUTSIDE_ROOT_FIELD} to read it")
  return os.path.join(root, path)


def json_lines(path: str, lines: Iterable[str]) -> Iterator[tuple[str, object]]:
  """(where, value) of each non-blank line of a JSON-lines file, `where` = 'path:line'; a line
  that is not JSON is an error naming it."""
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      yield where, json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: not valid JSON ({e})") from e


def relative_to(folder: str, record: dict) -> dict:
  """`record` as a JSONL in `folder` holds it: its image paths relative to the folder where they
  are under it (else absolute, which reading then has to allow: `inside`)."""
  def path(image: str) -> str:
    relative = os.path.relpath(os.path.abspath(image), folder)
    return os.path.abspath(image) if leaves_root(relative) else relative
  out = {**record, "image": path(record["image"])}
  if NEGATIVE_IMAGES in record:
    out[NEGATIVE_IMAGES] = [path(p) for p in record[NEGATIVE_IMAGES]]
  return out


def read_jsonl(path: str, allow_outside: bool = False) -> list[dict]:
  """All records of a training JSONL, image paths made absolute; paths leave the JSONL's
  folder only with `allow_outside` (`inside`)."""
  root = os.path.dirname(os.path.abspath(path))
  records = []
  with open(path, encoding="utf-8") as f:
    for where, raw in json_lines(path, f):
      record = validate_record(raw, where)
      if not isinstance(record["image"], str) or not record["image"]:
        raise ValueError(f"{where}: 'image' must be a path string, got {record['image']!r}")
      record["image"] = inside(root, record["image"], where, allow_outside)
      if NEGATIVE_IMAGES in record:
        record[NEGATIVE_IMAGES] = [inside(root, p, where, allow_outside)
                                   for p in record[NEGATIVE_IMAGES]]
        missing = [p for p in record[NEGATIVE_IMAGES] if not os.path.isfile(p)]
        if missing:
          raise ValueError(f"{where}: negative_images {missing} do not exist")
      records.append(record)
  if not records:
    raise ValueError(f"{path}: no training records")
  return records


def serialize(record: dict, image_bytes: bytes, negative_image_bytes=()) -> bytes:
  """array_record payload: 4-byte length, the record's JSON (image names kept, and the byte
  sizes of its negative images), the encoded image, then each encoded negative image."""
  if negative_image_bytes:
    record = {**record, "negative_image_sizes": [len(b) for b in negative_image_bytes]}
  header = json.dumps(record, ensure_ascii=False).encode("utf-8")
  return b"".join([struct.pack("<I", len(header)), header, image_bytes, *negative_image_bytes])


def deserialize(payload: bytes) -> dict:
  """A payload of `serialize` -> the record with image bytes in `image` (and `negative_images`,
  when it has some), their names in `image_name` (and `negative_image_names`)."""
  (size,) = struct.unpack_from("<I", payload)
  record = json.loads(payload[4:4 + size].decode("utf-8"))
  sizes = record.pop("negative_image_sizes", [])
  end = len(payload) - sum(sizes)
  out = {**record, "image_name": record["image"], "image": payload[4 + size:end]}
  if sizes:
    starts = end + np.cumsum([0] + sizes)
    out["negative_image_names"] = record[NEGATIVE_IMAGES]
    out[NEGATIVE_IMAGES] = [payload[a:b] for a, b in zip(starts[:-1], starts[1:])]
  return out
