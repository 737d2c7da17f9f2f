"""Builders of training records from the corpora the paper uses, and the array_record writer.

Every reader yields records in the schema of `hpjax.data.records` (image path, caption,
hard_negatives, hard_positives) and names the file and row/line in every error:
- `negclip_tsv`: NegCLIP's TSV (`title, filepath, neg_caption` as a Python-literal list,
  `neg_image` row ids, which become the record's negative images); quoted fields may span lines.
- `coco_with_hard_texts`: COCO `captions_*.json` (one record per annotation, in file order) plus
  line-aligned files with one line per caption: hard positives (`swap_hp.jsonl`,
  `replace_hp.jsonl`) and hard negatives. A line is `None`/empty (nothing), a JSON string, a
  JSON list of strings, or plain text.
`write_array_record` then embeds the encoded images, so training reads one self-contained
dataset (local or gs://) with random access: the grain pipeline shuffles globally without
an index file and each host reads only its own records. Both writers decode every image first
and write to a temporary file renamed over the output only when the whole build succeeded.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import os
import sys
from typing import Iterable, Iterator, Sequence

from absl import logging

from hpjax import leftovers
from hpjax import preprocess
from hpjax.data import records as records_lib

NEGCLIP_COLUMNS = ("title", "filepath", "neg_caption")


def _negclip_rows(path: str):
  """(where, row) of every data row of a NegCLIP TSV, its header checked."""
  csv.field_size_limit(sys.maxsize)
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f, delimiter="\t")
    missing = set(NEGCLIP_COLUMNS) - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{path}: missing column(s) {sorted(missing)}; header is "
                       f"{reader.fieldnames}")
    for row_number, row in enumerate(reader, 1):
      yield f"{path}: row {row_number} (line {reader.line_num})", row


def _literal_list(row: dict, column: str, where: str) -> list:
  try:
    value = ast.literal_eval(row[column])
  except (ValueError, SyntaxError) as e:
    raise ValueError(f"{where}: {column} is not a Python list literal: {row[column]!r}") from e
  return value if isinstance(value, list) else [value]


def negclip_tsv(path: str, image_root: str, allow_outside: bool = False, *,
                negative_images: bool = True) -> Iterator[dict]:
  """Records of a NegCLIP TSV; `filepath` is joined to `image_root` (and stays under it unless
  `allow_outside`: `records.inside`). With `negative_images`, a `neg_image` column's row ids (the
  TSV's index column, or the 0-based row when it has none) become each record's
  `negative_images`, the image files of those rows."""
  rows = list(_negclip_rows(path))
  with_ids = negative_images and rows and "neg_image" in rows[0][1]
  if with_ids:
    index = {(int(row[""]) if row.get("", "").strip().isdigit() else i): row["filepath"]
             for i, (_, row) in enumerate(rows)}
  for where, row in rows:
    record = {"image": records_lib.inside(image_root, row["filepath"], where, allow_outside),
              "caption": row["title"],
              "hard_negatives": _literal_list(row, "neg_caption", where), "hard_positives": []}
    if with_ids:
      ids = _literal_list(row, "neg_image", where)
      unknown = [i for i in ids if i not in index]
      if unknown:
        raise ValueError(f"{where}: neg_image row id(s) {unknown} name no row of the TSV")
      record[records_lib.NEGATIVE_IMAGES] = [
          records_lib.inside(image_root, index[i], where, allow_outside) for i in ids]
    yield records_lib.validate_record(record, where)


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
                         hard_negative_files: Sequence[str] = (),
                         allow_outside: bool = False) -> Iterator[dict]:
  """One record per COCO caption annotation, with its line of every hard-text file; image
  files stay under `image_root` unless `allow_outside` (`records.inside`)."""
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
    yield records_lib.validate_record(
        {"image": records_lib.inside(image_root, file_of[annotation["image_id"]], where,
                                     allow_outside),
         "caption": annotation.get("caption", ""),
         "hard_negatives": [t for lines in negatives for t in lines[i]],
         "hard_positives": [t for lines in positives for t in lines[i]]}, where)


def checked_images(records: Iterable[dict], *, skip_bad_images: bool = False
                   ) -> Iterator[tuple[dict, list[bytes] | None]]:
  """(record, the bytes of its image file and then of each negative image) per record, after
  checking that every one decodes.

  A build finds bad images, not the training run hours later: an image that is missing or does
  not decode is an error naming the record and the file, or, with skip_bad_images, a logged
  skip yielded as (record, None). Each distinct file is decoded once (COCO has five captions
  per image; NegCLIP's negative images are other records' images).
  """
  decoded: dict[str, OSError | None] = {}

  def read(path: str) -> bytes:
    if path not in decoded:
      try:
        preprocess.load_image(path)
        decoded[path] = None
      except OSError as e:
        decoded[path] = e
    if decoded[path] is not None:
      raise decoded[path]
    try:
      with open(path, "rb") as f:
        return f.read()
    except OSError as e:
      decoded[path] = e
      raise

  for index, record in enumerate(records):
    files = None
    try:
      files = [read(p) for p in [record["image"], *record.get(records_lib.NEGATIVE_IMAGES, [])]]
    except OSError as error:
      if not skip_bad_images:
        raise OSError(f"record {index}: {error}") from error
      logging.warning("record %d: skipping it (%s)", index, error)
    yield record, files


@contextlib.contextmanager
def _replaced_on_success(path: str):
  """Yields a temporary path next to `path`, renamed to `path` only when the block succeeds:
  a failed or killed build leaves the old `path` as it was, and its temporary file (removed on
  failure; named *.partial, which `training.open_source` refuses) is never mistaken for data."""
  folder, stem = os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.partial-"
  leftovers.remove_stale(folder, stem)  # what a killed build of `path` left
  tmp = os.path.join(folder, leftovers.name(stem) + ".partial")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _write(records: Iterable[dict], path: str, skip_bad_images: bool, open_writer, write_one
           ) -> dict[str, int]:
  """The shared writer loop: checked images, atomic output, counts; no empty outputs."""
  counts = {"written": 0, "skipped": 0}
  with _replaced_on_success(path) as tmp:
    writer = open_writer(tmp)
    try:
      for record, image_files in checked_images(records, skip_bad_images=skip_bad_images):
        if image_files is None:
          counts["skipped"] += 1
        else:
          write_one(writer, record, image_files)
          counts["written"] += 1
    finally:
      writer.close()
    if not counts["written"]:
      raise ValueError(f"{path}: no record to write ({counts['skipped']} skipped for bad "
                       "images); the old file, if any, is left as it was")
  logging.info("%s: %d records written, %d skipped", path, counts["written"], counts["skipped"])
  return counts


def write_jsonl(records: Iterable[dict], path: str, *, skip_bad_images: bool = False
                ) -> dict[str, int]:
  """Writes records as a training JSONL (each image checked to decode), image paths relative
  to its folder where they are under it (`records.relative_to`); returns {'written',
  'skipped'}."""
  folder = os.path.dirname(os.path.abspath(path))

  def line(record) -> str:
    return json.dumps(records_lib.relative_to(folder, record), ensure_ascii=False) + "\n"

  return _write(records, path, skip_bad_images, lambda tmp: open(tmp, "w", encoding="utf-8"),
                lambda f, record, _: f.write(line(record)))


def write_array_record(records: Iterable[dict], path: str, *, skip_bad_images: bool = False
                       ) -> dict[str, int]:
  """Writes `records.serialize`d records with their image files' bytes embedded (negative
  images too); returns {'written', 'skipped'}. Images are checked as `checked_images` says."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  return _write(records, path, skip_bad_images,
                lambda tmp: array_record_module.ArrayRecordWriter(tmp, "group_size:1"),
                lambda writer, record, files: writer.write(records_lib.serialize(
                    _file_names(record), files[0], files[1:])))


def _file_names(record: dict) -> dict:
  """The record with its image paths cut to file names (the bytes travel in the payload)."""
  out = {**record, "image": os.path.basename(record["image"])}
  if records_lib.NEGATIVE_IMAGES in record:
    out[records_lib.NEGATIVE_IMAGES] = [os.path.basename(p)
                                        for p in record[records_lib.NEGATIVE_IMAGES]]
  return out
