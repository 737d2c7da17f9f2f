"""Image-group suites: records with several images and/or several captions, read from each
benchmark's published files.

A group holds images, captions and which (image, caption) pairs match. The scorer sees a group
as one `EvalRecord` per image with all the group's captions (a caption that matches that image
is a `c`, any other a `c_n`), so every distinct image and caption of a run is still decoded and
encoded once (hpjax.evaluate.scorer dedups them); `hpjax.evaluate.group_scorer` puts the rows
back into one images x captions matrix per group and `hpjax.evaluate.group_metrics` applies each
benchmark's official definition.

Readers (the file and commit each follows are recorded in hpjax.evaluate.benchmarks):
  Winoground  examples.jsonl: `image_0/1` (names of images/<name>.png), `caption_0/1`, tags.
  What'sUp    controlled_{images,clevr}_dataset.json: `image_path`, `caption_options` (the first
              is right); {coco,vg}_qa_{one,two}_obj.json: [image id, right, wrong].
  VALSE       <piece>.json: an object of samples with `image_file`, `caption`, `foil` and the
              annotators' `mturk` votes; only the valid samples (mturk.caption >= 2) are read.
  COLA        COLA_multiobjects_matching_benchmark.json: [image 1 URL, caption 1, image 2 URL,
              caption 2]; images are found by the URL's file name.
  ImageCoDe   {valid,train}_data.json: {image set: {image index: description}}; the index is a
              position among the set folder's images sorted by their number (imgN.jpg).
  BiVLC       the Hugging Face dataset's parquet files: `image`, `caption`, `negative_caption`,
              `negative_image` (images embedded as {bytes, path}), `type`, `subtype`; each
              embedded image is written once into the image dir, named by its content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import pyarrow.parquet as pq

from hpjax.data import suites as suites_lib

# Group kinds: each has its benchmark's metrics (hpjax.evaluate.group_metrics).
WINOGROUND = "winoground"
WHATSUP = "whatsup"
VALSE = "valse"
COLA_MULTI = "cola_multi"
IMAGECODE = "imagecode"
BIVLC = "bivlc"
GROUP_KINDS = (WINOGROUND, WHATSUP, VALSE, COLA_MULTI, IMAGECODE, BIVLC)

# VALSE's valid subset: at least two of three annotators chose the caption (its README).
VALSE_MIN_CAPTION_VOTES = 2
# What'sUp's controlled sets (controlled_images_dataset.json: A, controlled_clevr_dataset.json:
# B): an image name's second token is its position; the official pairs of opposite positions.
WHATSUP_CONTROLLED_PREFIX = "controlled_"
WHATSUP_POSITION_PAIRS = (("left", "right"), ("on", "under"), ("in-front", "behind"))
# What'sUp's QA files: image path of an image id.
WHATSUP_QA_IMAGES = {"coco_qa": "val2017/{:012d}.jpg", "vg_qa": "vg_images/{}.jpg"}


@dataclasses.dataclass(frozen=True)
class ImageGroup:
  """One test case of an image-group benchmark.

  Attributes:
    images: image paths (relative to the evaluator's image root unless absolute).
    captions: the captions.
    matches: the (image index, caption index) pairs that belong together.
    source, index: the file and the record's position (or key) in it, for errors and reports.
    tags: (name, value) pairs for breakdowns (Winoground's `collapsed_tag`, What'sUp's set).
  """
  images: tuple[str, ...]
  captions: tuple[str, ...]
  matches: tuple[tuple[int, int], ...]
  source: str
  index: int | str
  tags: tuple[tuple[str, str], ...] = ()

  @property
  def where(self) -> str:
    return f"{self.source} [index {self.index}]"

  def tag(self, name: str) -> str | None:
    return dict(self.tags).get(name)

  def records(self) -> tuple[suites_lib.EvalRecord, ...]:
    """One scorer record per image: all captions, `c` where they match that image."""
    return tuple(
        suites_lib.EvalRecord(
            image=image, captions=self.captions,
            roles=tuple(suites_lib.C if (i, j) in self.matches else suites_lib.C_N
                        for j in range(len(self.captions))),
            source=self.source, index=self.index)
        for i, image in enumerate(self.images))


@dataclasses.dataclass(frozen=True)
class GroupSuite(suites_lib.Suite):
  """A suite of `ImageGroup`s; `records` are their per-image scorer records, in group order."""
  groups: tuple[ImageGroup, ...] = ()

  def __post_init__(self):
    if self.kind not in GROUP_KINDS:
      raise ValueError(f"suite {self.name}: unknown group kind {self.kind!r}; expected one of "
                       f"{GROUP_KINDS}")


def group_suite(name: str, kind: str, groups, path: str | None = None) -> GroupSuite:
  groups = tuple(groups)
  return GroupSuite(name, kind, tuple(r for g in groups for r in g.records()), path, groups)


def _checked(group: ImageGroup) -> ImageGroup:
  """A group whose matches name existing images and captions (else an error naming it)."""
  for i, j in group.matches:
    if not (0 <= i < len(group.images) and 0 <= j < len(group.captions)):
      raise suites_lib.SuiteFormatError(
          f"{group.where}: match (image {i}, caption {j}) names no such image or caption "
          f"({len(group.images)} images, {len(group.captions)} captions)")
  return group


_get = suites_lib._get  # pylint: disable=protected-access  (the suites' one field reader)
_image_path = suites_lib._image_path  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------------
# Winoground.

def load_winoground(path: str, image_dir: str | None = None,
                    source: str | None = None) -> GroupSuite:
  """examples.jsonl of facebook/winoground: two images, two captions, caption k of image k."""
  source = source or os.path.basename(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"suite file not found: {path}")
  groups = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise suites_lib.SuiteFormatError(f"{path} [line {line_no + 1}]: not valid JSON "
                                          f"({e})") from e
      index = rec.get("id", line_no) if isinstance(rec, dict) else line_no
      images = tuple(_image_path(image_dir, _get(rec, f"image_{k}", path, index) + ".png")
                     for k in (0, 1))
      captions = tuple(_get(rec, f"caption_{k}", path, index) for k in (0, 1))
      tags = (("collapsed_tag", _get(rec, "collapsed_tag", path, index)),
              ("num_main_preds", str(_get(rec, "num_main_preds", path, index, int))))
      groups.append(ImageGroup(images, captions, ((0, 0), (1, 1)), source, index, tags))
  return group_suite(source, WINOGROUND, groups, path)


# ---------------------------------------------------------------------------------------------
# What'sUp.

def _whatsup_set(image_path: str, path: str, index: int) -> tuple[str, str]:
  """(set, position) from a controlled image's name `<obj1>_<position>_..._<obj2>.jpeg`, as the
  official evaluator keys its pair and set tables."""
  parts = os.path.basename(image_path).split("_")
  if len(parts) < 3:
    raise suites_lib.SuiteFormatError(f"{path} [index {index}]: image name {image_path!r} is not "
                                      "<object>_<position>_..._<object>.<ext>")
  return f"{parts[0]}|{os.path.splitext(parts[-1])[0]}", parts[1]


def load_whatsup(path: str, image_dir: str | None = None,
                 source: str | None = None) -> GroupSuite:
  """One What'sUp file: a controlled set (4 captions, the first right; tagged with its set and
  position) or a COCO/VG QA file (the right caption, then the wrong one)."""
  source = source or os.path.basename(path)
  stem = os.path.splitext(os.path.basename(path))[0]
  groups = []
  for index, rec in enumerate(suites_lib._read_list(path)):  # pylint: disable=protected-access
    if isinstance(rec, list):
      qa = next((k for k in WHATSUP_QA_IMAGES if stem.startswith(k)), None)
      if qa is None or len(rec) != 3 or not all(isinstance(c, str) for c in rec[1:]):
        raise suites_lib.SuiteFormatError(
            f"{path} [index {index}]: a list record is [image id, right caption, wrong caption] "
            f"of a {'/'.join(WHATSUP_QA_IMAGES)}_*.json file, got {rec!r}")
      image = WHATSUP_QA_IMAGES[qa].format(int(rec[0]))
      groups.append(ImageGroup((_image_path(image_dir, image),), tuple(rec[1:]), ((0, 0),),
                               source, index))
      continue
    image_path = _get(rec, "image_path", path, index)
    options = _get(rec, "caption_options", path, index, list)
    if len(options) < 2 or not all(isinstance(c, str) for c in options):
      raise suites_lib.SuiteFormatError(f"{path} [index {index}]: caption_options should be two "
                                        f"or more captions, got {options!r}")
    # The files name images under the authors' data folder (data/controlled_images/x.jpeg):
    # the last two parts are found below the image dir.
    image = os.path.join(*os.path.normpath(image_path).split(os.sep)[-2:])
    tags = ()
    if stem.startswith(WHATSUP_CONTROLLED_PREFIX):
      set_key, position = _whatsup_set(image_path, path, index)
      tags = (("set", set_key), ("position", position))
    groups.append(ImageGroup((_image_path(image_dir, image),), tuple(options), ((0, 0),),
                             source, index, tags))
  return group_suite(source, WHATSUP, groups, path)


# ---------------------------------------------------------------------------------------------
# VALSE.

def load_valse(path: str, image_dir: str | None = None, source: str | None = None) -> GroupSuite:
  """One VALSE piece: its valid samples (mturk.caption >= 2), each an image with its caption and
  foil; keyed by the sample id."""
  source = source or os.path.basename(path)
  data = suites_lib._read_json(path)  # pylint: disable=protected-access
  if not isinstance(data, dict):
    raise suites_lib.SuiteFormatError(f"{path}: expected an object of samples keyed by id")
  groups = []
  for key, rec in data.items():
    votes = _get(rec, "mturk", path, key, dict)
    caption_votes = votes.get("caption")
    if not isinstance(caption_votes, int):
      raise suites_lib.SuiteFormatError(f"{path} [index {key}]: mturk.caption should be a vote "
                                        f"count, got {caption_votes!r}")
    if caption_votes < VALSE_MIN_CAPTION_VOTES:
      continue
    groups.append(ImageGroup(
        (_image_path(image_dir, _get(rec, "image_file", path, key)),),
        (_get(rec, "caption", path, key), _get(rec, "foil", path, key)), ((0, 0),), source, key))
  return group_suite(source, VALSE, groups, path)


# ---------------------------------------------------------------------------------------------
# COLA multi-object.

def load_cola_multi(path: str, image_dir: str | None = None,
                    source: str | None = None) -> GroupSuite:
  """COLA's multi-object matching file: [image 1, caption 1, image 2, caption 2]; an image is
  found by its URL's file name."""
  source = source or os.path.basename(path)
  groups = []
  for index, rec in enumerate(suites_lib._read_list(path)):  # pylint: disable=protected-access
    if not (isinstance(rec, list) and len(rec) == 4 and all(isinstance(x, str) for x in rec)):
      raise suites_lib.SuiteFormatError(f"{path} [index {index}]: expected [image 1, caption 1, "
                                        f"image 2, caption 2], got {rec!r}")
    images = tuple(_image_path(image_dir, rec[k].rsplit("/", 1)[-1]) for k in (0, 2))
    groups.append(ImageGroup(images, (rec[1], rec[3]), ((0, 0), (1, 1)), source, index))
  return group_suite(source, COLA_MULTI, groups, path)


# ---------------------------------------------------------------------------------------------
# ImageCoDe.

_FRAME = re.compile(r"img(\d+)\.jpg$")


def imagecode_set_images(folder: str) -> list[str]:
  """A set folder's images in ImageCoDe's order: by the number N of imgN.jpg."""
  found = [(int(m.group(1)), name) for name in os.listdir(folder)
           if (m := _FRAME.fullmatch(name))]
  return [name for _, name in sorted(found)]


def load_imagecode(path: str, image_dir: str | None = None,
                   source: str | None = None) -> GroupSuite:
  """ImageCoDe's {set: {image index: description}} file: per description, the set's images and
  the target. The image-sets folder (`image_dir`) is needed to order each set's images; a set
  folder that is missing gives a group of that folder alone (missing: an error, or skipped)."""
  source = source or os.path.basename(path)
  if not image_dir:
    raise ValueError(f"{path}: ImageCoDe needs its image-sets folder (the image dir) to order "
                     "each set's images")
  data = suites_lib._read_json(path)  # pylint: disable=protected-access
  if not isinstance(data, dict):
    raise suites_lib.SuiteFormatError(f"{path}: expected an object {{image set: {{index: "
                                      "description}}}}")
  groups = []
  for set_name, descriptions in data.items():
    if not isinstance(descriptions, dict):
      raise suites_lib.SuiteFormatError(f"{path} [index {set_name}]: expected an object "
                                        "{image index: description}")
    folder = os.path.join(image_dir, set_name)
    names = imagecode_set_images(folder) if os.path.isdir(folder) else []
    images = tuple(os.path.join(folder, n) for n in names) or (folder,)
    for key, text in descriptions.items():
      where = f"{set_name}/{key}"
      if not isinstance(text, str) or not key.isdigit():
        raise suites_lib.SuiteFormatError(f"{path} [index {where}]: expected an image index "
                                          f"and a description, got {key!r}: {text!r}")
      target = int(key) if names else 0
      kind = "static" if set_name.startswith("open-images") else "video"
      groups.append(_checked(ImageGroup(images, (text.strip(),), ((target, 0),), source, where,
                                        (("source", kind),))))
  return group_suite(source, IMAGECODE, groups, path)


# ---------------------------------------------------------------------------------------------
# BiVLC.

BIVLC_FIELDS = ("image", "caption", "negative_caption", "negative_image", "type", "subtype")


def _write_embedded_image(cell, image_dir: str, where: str) -> str:
  """An embedded image ({bytes, path}) as a file of `image_dir` named by its content, written
  aside and renamed, once; its path."""
  data = cell.get("bytes") if isinstance(cell, dict) else None
  if not data:
    raise suites_lib.SuiteFormatError(f"{where}: expected an embedded image {{bytes, path}}, got "
                                      f"{type(cell).__name__}")
  suffix = os.path.splitext(cell.get("path") or "")[1] or ".img"
  path = os.path.join(image_dir, hashlib.sha256(data).hexdigest()[:32] + suffix)
  if not os.path.isfile(path):
    partial = f"{path}.partial.{os.getpid()}"
    with open(partial, "wb") as f:
      f.write(data)
    os.replace(partial, path)
  return path


def load_bivlc(path: str, image_dir: str | None = None, source: str | None = None) -> GroupSuite:
  """A BiVLC parquet file: per row two images (the COCO one and the generated negative) and two
  captions, caption k of image k; tagged with its `type` and `subtype`. The embedded images
  are written into `image_dir` (default: `<file>.images/` beside the file)."""
  source = source or os.path.basename(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"suite file not found: {path}")
  image_dir = image_dir or path + ".images"
  try:
    table = pq.read_table(path)
  except Exception as e:  # pylint: disable=broad-except  (pyarrow's errors are many)
    raise suites_lib.SuiteFormatError(f"{path}: not a readable parquet file ({e})") from e
  absent = [f for f in BIVLC_FIELDS if f not in table.column_names]
  if absent:
    raise suites_lib.SuiteFormatError(f"{path}: missing columns {absent} (has "
                                      f"{table.column_names})")
  os.makedirs(image_dir, exist_ok=True)
  groups = []
  for index, row in enumerate(table.select(list(BIVLC_FIELDS)).to_pylist()):
    where = f"{source} [index {index}]"
    images = tuple(_write_embedded_image(row[f], image_dir, where)
                   for f in ("image", "negative_image"))
    captions = tuple(_get(row, f, path, index) for f in ("caption", "negative_caption"))
    tags = tuple((f, _get(row, f, path, index)) for f in ("type", "subtype"))
    groups.append(ImageGroup(images, captions, ((0, 0), (1, 1)), source, index, tags))
  return group_suite(source, BIVLC, groups, path)
