"""Captions in: COCO caption annotations, JSONL, NegCLIP's TSV, plain text.

Every caption comes with its image (a path as the training records hold it; "" where the input
has none) and `where`, the file and line (or row, or annotation) that names it in an error.
Files are decoded with `surrogateescape`, so bytes that are not UTF-8 reach `check`, which turns
them, an empty caption or an overlong one into an error naming `where`, or, when the user asked
for it, a counted skip.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import sys

from hpjax.data import records
from hpjax.data.train_builders import NEGCLIP_COLUMNS

FORMATS = {".json": "coco", ".jsonl": "jsonl", ".tsv": "negclip_tsv", ".txt": "text"}
_UNDECODED = re.compile("[\udc80-\udcff]")


@dataclasses.dataclass(frozen=True)
class Caption:
  where: str
  image: str
  text: str


def _image(image_root: str, path: str, where: str, allow_outside: bool) -> str:
  """The input's image path under `image_root` (`records.inside`); "" where it names none."""
  return records.inside(image_root, path, where, allow_outside) if path else ""


def _read(path: str) -> str:
  with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
    return f.read()


def _coco(path: str, image_root: str, allow_outside: bool) -> list[Caption]:
  try:
    coco = json.loads(_read(path))
    file_of = {image["id"]: image["file_name"] for image in coco["images"]}
    annotations = coco["annotations"]
  except (KeyError, TypeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a COCO captions file (needs images[].id/file_name and "
                     f"annotations[].image_id/caption): {e}") from e
  captions = []
  for i, annotation in enumerate(annotations):
    where = f"{path}: annotation {i} (id {annotation.get('id')})"
    if annotation.get("image_id") not in file_of:
      raise ValueError(f"{where}: image_id {annotation.get('image_id')!r} is not in images[]")
    captions.append(Caption(where, _image(image_root, file_of[annotation["image_id"]], where,
                                          allow_outside), annotation.get("caption", "")))
  return captions


def _jsonl(path: str, image_root: str, allow_outside: bool) -> list[Caption]:
  captions = []
  for where, record in records.json_lines(path, _read(path).splitlines()):
    if not isinstance(record, dict) or not isinstance(record.get("caption"), str):
      raise ValueError(f"{where}: expected an object with a 'caption' string")
    captions.append(Caption(where, _image(image_root, record.get("image", ""), where,
                                          allow_outside), record["caption"]))
  return captions


def _negclip_tsv(path: str, image_root: str, allow_outside: bool) -> list[Caption]:
  csv.field_size_limit(sys.maxsize)
  reader = csv.DictReader(io.StringIO(_read(path)), delimiter="\t")
  missing = set(NEGCLIP_COLUMNS[:2]) - set(reader.fieldnames or ())
  if missing:
    raise ValueError(f"{path}: missing column(s) {sorted(missing)}; header is {reader.fieldnames}")
  captions = []
  for n, row in enumerate(reader, 1):
    where = f"{path}: row {n} (line {reader.line_num})"
    captions.append(Caption(where, _image(image_root, row["filepath"], where, allow_outside),
                            row["title"] or ""))
  return captions


def _text(path: str, image_root: str, allow_outside: bool) -> list[Caption]:
  """One caption a line, or `image<TAB>caption`."""
  captions = []
  for number, line in enumerate(_read(path).splitlines(), 1):
    image, tab, text = line.partition("\t")
    image, text = (image, text) if tab else ("", image)
    where = f"{path}:{number}"
    captions.append(Caption(where, _image(image_root, image, where, allow_outside), text))
  return captions


READERS = {"coco": _coco, "jsonl": _jsonl, "negclip_tsv": _negclip_tsv, "text": _text}


def read(path: str, input_format: str = "auto", image_root: str = "",
         allow_outside: bool = False) -> list[Caption]:
  """All captions of `path`, in file order; image paths stay under `image_root` unless
  `allow_outside`."""
  if input_format == "auto":
    input_format = FORMATS.get(os.path.splitext(path)[1].lower())
    if input_format is None:
      raise ValueError(f"{path}: cannot tell the format from the name; set input.format to one "
                       f"of {sorted(READERS)}")
  if input_format not in READERS:
    raise ValueError(f"input.format is {input_format!r}; expected 'auto' or one of "
                     f"{sorted(READERS)}")
  return READERS[input_format](path, image_root, allow_outside)


def check(caption: Caption, max_words: int) -> str | None:
  """Why the caption cannot be used (None when it can): the reason starts with its name as a
  skip reason, then says what was found."""
  bad = _UNDECODED.search(caption.text)
  if bad:
    return (f"not_utf8: byte 0x{ord(bad.group()) - 0xdc00:02x} at character {bad.start()} is "
            "not UTF-8")
  if not caption.text.strip():
    return "empty: the caption is empty"
  words = len(caption.text.split())
  if words > max_words:
    return f"too_long: the caption has {words} words; input.max_words is {max_words}"
  return None
