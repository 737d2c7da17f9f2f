"""Builders of training records from the corpora the paper uses, and the array_record writer.

Every reader yields records in the schema of `hpjax.data.training` (image path, caption,
hard_negatives, hard_positives) and names the file and row/line in every error:
- `negclip_tsv`: NegCLIP's TSV (`title, filepath, neg_caption` as a Python-literal list,
  `neg_image` row ids, which the schema does not use); quoted fields may span lines.
- `coco_with_hard_texts`: COCO `captions_*.json` (one record per annotation, in file order) plus
  line-aligned files with one line per caption: hard positives (`swap_hp.jsonl`,
  `replace_hp.jsonl`) and hard negatives. A line is `None`/empty (nothing), a JSON string, a
  JSON list of strings, or plain text.
`write_array_record` then embeds the encoded images, so training reads one self-contained
dataset (local or gs://) with random access: the grain pipeline shuffles globally without
an index file and each host reads only its own records.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import sys
from typing import Iterable, Iterator, Sequence

from absl import logging

from hpjax.data import training

NEGCLIP_COLUMNS = ("title", "filepath", "neg_caption")


def negclip_tsv(path: str, image_root: str) -> Iterator[dict]:
  """Records of a NegCLIP TSV; `filepath` is joined to `image_root`."""
  csv.field_size_limit(sys.maxsize)
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f, delimiter="\t")
    missing = set(NEGCLIP_COLUMNS) - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{path}: missing column(s) {sorted(missing)}; header is "
                       f"{reader.fieldnames}")
    for row_number, row in enumerate(reader, 1):
      where = f"{path}: row {row_number} (line {reader.line_num})"
      try:
        negatives = ast.literal_eval(row["neg_caption"])
      except (ValueError, SyntaxError) as e:
        raise ValueError(f"{where}: neg_caption is not a Python list literal: "
                         f"{row['neg_caption']!r}") from e
      yield training.validate_record(
          {"image": os.path.join(image_root, row["filepath"]), "caption": row["title"],
           "hard_negatives": negatives if isinstance(negatives, list) else [negatives],
           "hard_positives": []}, where)


def parse_hard_text_line(line: str, where: str) -> list[str]:
  """One line of a line-aligned hard-text file -> its texts ([] for None/empty)."""
  line = line.strip()
  if line in ("", "None", "null"):
    return []
  try:
    value = json.loads(line)
  except json.JSONDecodeError:
    return [line]
  if value is None:
    return []
  if isinstance(value, str):
    return [value] if value.strip() and value != "None" else []
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return [v for v in value if v.strip() and v != "None"]
  raise ValueError(f"{where}: expected None, a string or a list of strings, got {line[:200]!r}")


def _aligned_lines(path: str, expected: int, captions_path: str) -> list[list[str]]:
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if len(lines) != expected:
    raise ValueError(f"{path} has {len(lines)} lines but {captions_path} has {expected} "
                     "captions: the file must hold exactly one line per caption, in annotation "
                     "order")
  return [parse_hard_text_line(line, f"{path}:{i}") for i, line in enumerate(lines, 1)]


def coco_with_hard_texts(captions_json: str, image_root: str, *,
                         hard_positive_files: Sequence[str] = (),
                         hard_negative_files: Sequence[str] = ()) -> Iterator[dict]:
  """One record per COCO caption annotation, with its line of every hard-text file."""
  with open(captions_json, encoding="utf-8") as f:
    coco = json.load(f)
  try:
    file_of = {image["id"]: image["file_name"] for image in coco["images"]}
    annotations = coco["annotations"]
  except (KeyError, TypeError) as e:
    raise ValueError(f"{captions_json}: not a COCO captions file (needs images[].id/file_name "
                     f"and annotations[]): {e}") from e
  positives = [_aligned_lines(p, len(annotations), captions_json) for p in hard_positive_files]
  negatives = [_aligned_lines(p, len(annotations), captions_json) for p in hard_negative_files]
  for i, annotation in enumerate(annotations):
    where = f"{captions_json}: annotation {i} (id {annotation.get('id')})"
    if annotation.get("image_id") not in file_of:
      raise ValueError(f"{where}: image_id {annotation.get('image_id')!r} is not in images[]")
    yield training.validate_record(
        {"image": os.path.join(image_root, file_of[annotation["image_id"]]),
         "caption": annotation.get("caption", ""),
         "hard_negatives": [t for lines in negatives for t in lines[i]],
         "hard_positives": [t for lines in positives for t in lines[i]]}, where)


def write_jsonl(records: Iterable[dict], path: str) -> int:
  """Writes records as a training JSONL (image paths as given); returns the count."""
  count = 0
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
      count += 1
  return count


def write_array_record(records: Iterable[dict], path: str, *, skip_missing_images: bool = False
                       ) -> dict[str, int]:
  """Writes `training.serialize`d records with their image files' bytes embedded.

  A missing/unreadable image file is an error naming it, or, with skip_missing_images, a
  skip counted in the returned {'written', 'skipped'} and logged.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  counts = {"written": 0, "skipped": 0}
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  try:
    for index, record in enumerate(records):
      try:
        with open(record["image"], "rb") as f:
          image_bytes = f.read()
      except OSError as e:
        if not skip_missing_images:
          raise OSError(f"record {index}: cannot read image {record['image']}: {e}") from e
        counts["skipped"] += 1
        logging.warning("record %d: skipping unreadable image %s (%s)", index, record["image"], e)
        continue
      named = {**record, "image": os.path.basename(record["image"])}
      writer.write(training.serialize(named, image_bytes))
      counts["written"] += 1
  finally:
    writer.close()
  logging.info("%s: %d records written, %d skipped", path, counts["written"], counts["skipped"])
  return counts
