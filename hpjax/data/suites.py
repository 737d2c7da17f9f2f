"""Evaluation suites as one record schema: an image (optionally cropped) and its caption options.

Every benchmark the evaluator knows is read into `EvalRecord`s whose captions carry a role:
`c` (a true caption), `c_n` (a hard negative) or `c_p` (a hard positive). The metrics of a
suite depend only on those roles and the suite's `kind`, so a loader knows nothing of models and
a scorer knows nothing of file formats.

The readers here read one file each; `hpjax.evaluate.benchmarks` (the catalog) finds a
benchmark's files and names its suites by their path below the benchmark root, with a dot for a
folder or a file (`sugarcrepe.add_att`, `vl_checklist.Attribute.vaw.action`), because figures
are named `<suite>/<figure>`. REPLACE and SWAP go by the paper's names, which
`HARD_POSITIVE_SUITES` maps to the authors' files: the one table of those names, from which the
catalog, the TFDS builder and reader, the evaluator and the synthetic world derive theirs.

Bad input fails loudly: a missing field, a mismatched data/ and swapped_data/ pair, a bad crop
box or an empty caption raises `SuiteFormatError` naming the file and the record's index. Inside
`empty_captions_skipped()` (the evaluation's `skip_empty_captions`), records with an empty caption
are left out instead, logged and counted in the suite's `skipped_empty_captions`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

from absl import logging

from hpjax.data import records as records_lib

# Roles of the caption options.
C, C_N, C_P = "c", "c_n", "c_p"

# Suite kinds: each one has its own metrics (see hpjax.evaluate.metrics).
HARD_POSITIVE = "hard_positive"  # (c, c_n, c_p): REPLACE and SWAP.
PAIR = "pair"  # c options vs c_n options, every c above every c_n: SugarCrepe.
VL_CHECKLIST = "vl_checklist"  # POS (c) and NEG (c_n) lists: the first POS above the first NEG.
ARO_RELATION = "aro_relation"  # (c, c_n), macro accuracy over relations.
ARO_ATTRIBUTION = "aro_attribution"  # (c, c_n), macro accuracy over attribute pairs.
SUGARCREPE_PP = "sugarcrepe_pp"  # (c, c_p, c_n): ITT and TOT accuracies.
KINDS = (HARD_POSITIVE, PAIR, VL_CHECKLIST, ARO_RELATION, ARO_ATTRIBUTION, SUGARCREPE_PP)

# REPLACE and SWAP: per benchmark, each suite's name in the paper (and in figures and TFDS
# splits) -> the authors' file, data/<file>.json paired with swapped_data/<file>.json.
HARD_POSITIVE_SUITES = {
    "replace": {"replace_attributes": "vl_checklist_attributes",
                "replace_relations": "vl_checklist_relations"},
    "swap": {"swap": "visual_genome_attribution"},
}
HARD_POSITIVE_FILES = {name: file for members in HARD_POSITIVE_SUITES.values()
                       for name, file in members.items()}  # paper name -> file
PAPER_NAMES = {file: name for name, file in HARD_POSITIVE_FILES.items()}  # file -> paper name
REPLACE_NAMES = tuple(HARD_POSITIVE_SUITES["replace"].values())  # REPLACE's files
SWAP_NAME = HARD_POSITIVE_FILES["swap"]  # SWAP's file

SUGARCREPE_FILES = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel",
                    "swap_att", "swap_obj")
SUGARCREPE_PP_FILES = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
ARO_FILES = ("visual_genome_relation", "visual_genome_attribution")


class SuiteFormatError(ValueError):
  """A suite file does not have the documented format."""


@dataclasses.dataclass(frozen=True)
class EvalRecord:
  """One test case.

  Attributes:
    image: image path, relative to the evaluator's image root unless absolute.
    captions: the caption options.
    roles: one of `c`, `c_n`, `c_p` per caption.
    source: the file the record came from (for error messages and reports).
    index: the record's index (or key) in that file.
    crop: optional (x, y, w, h) box in pixels; the image is cropped to it before scoring.
    group: optional label for macro-averaged metrics (ARO relation or attribute pair).
  """
  image: str
  captions: tuple[str, ...]
  roles: tuple[str, ...]
  source: str
  index: int
  crop: tuple[float, float, float, float] | None = None
  group: str | None = None

  def caption(self, role: str) -> str:
    """The first caption with `role`."""
    return self.captions[self.roles.index(role)]

  @property
  def where(self) -> str:
    return f"{self.source} [index {self.index}]"


_SKIP_EMPTY_CAPTIONS = contextvars.ContextVar("skip_empty_captions", default=False)


@contextlib.contextmanager
def empty_captions_skipped(skip: bool = True):
  """Suites built inside leave out (and count) their records with an empty caption instead of
  refusing them: the readers all build a `Suite`, which does the check."""
  token = _SKIP_EMPTY_CAPTIONS.set(skip)
  try:
    yield
  finally:
    _SKIP_EMPTY_CAPTIONS.reset(token)


def _empty_options(record: EvalRecord) -> list[str]:
  return [f"{i} ({role})" for i, (role, text) in enumerate(zip(record.roles, record.captions))
          if not text.strip()]


@dataclasses.dataclass(frozen=True)
class Suite:
  """Records of one kind; `path` is the file they were read from (for errors and reports);
  `skipped_empty_captions` counts the records left out for an empty caption."""
  name: str
  kind: str
  records: tuple[EvalRecord, ...]
  path: str | None = None
  skipped_empty_captions: int = dataclasses.field(default=0, kw_only=True)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"suite {self.name}: unknown kind {self.kind!r}; expected one of {KINDS}")
    # An empty option would be scored as if it were a caption.
    empty = [(r, e) for r in self.records for e in [_empty_options(r)] if e]
    if not empty:
      return
    where = self.path or empty[0][0].source
    if not _SKIP_EMPTY_CAPTIONS.get():
      r, options = empty[0]
      raise SuiteFormatError(f"{where} [index {r.index}]: caption {', '.join(options)} is "
                             f"empty (skip_empty_captions=True leaves such records out, counted)")
    left_out = {id(r) for r, _ in empty}
    object.__setattr__(self, "records", tuple(r for r in self.records if id(r) not in left_out))
    object.__setattr__(self, "skipped_empty_captions", self.skipped_empty_captions + len(empty))
    logging.warning("%s: %d record(s) with an empty caption skipped (skip_empty_captions): "
                    "index %s", where, len(empty),
                    ", ".join(str(r.index) for r, _ in empty[:10]) + (
                        ", ..." if len(empty) > 10 else ""))

  def __len__(self):
    return len(self.records)


# ---------------------------------------------------------------------------------------------
# Reading helpers.

def _read_json(path: str) -> Any:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"suite file not found: {path}")
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise SuiteFormatError(f"{path}: not valid JSON ({e})") from e


def _read_list(path: str) -> list:
  data = _read_json(path)
  if not isinstance(data, list):
    raise SuiteFormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
  return data


def _indexed_items(path: str) -> list[tuple[int, Any]]:
  """(index, record) pairs of a JSON list or of an object keyed by (non-contiguous) indices."""
  data = _read_json(path)
  if isinstance(data, list):
    return list(enumerate(data))
  if not isinstance(data, dict):
    raise SuiteFormatError(f"{path}: expected a JSON list or an object keyed by indices")
  items = []
  for key, value in data.items():
    try:
      items.append((int(key), value))
    except ValueError:
      raise SuiteFormatError(f"{path}: key {key!r} is not an integer index") from None
  return sorted(items, key=lambda kv: kv[0])


def _get(record: Any, key: str, path: str, index: int, kind: type | tuple = str) -> Any:
  if not isinstance(record, dict):
    raise SuiteFormatError(f"{path} [index {index}]: expected an object, got "
                           f"{type(record).__name__}")
  if key not in record:
    raise SuiteFormatError(f"{path} [index {index}]: missing field {key!r} "
                           f"(has {sorted(record)})")
  value = record[key]
  if not isinstance(value, kind) or isinstance(value, bool):
    raise SuiteFormatError(f"{path} [index {index}]: field {key!r} should be "
                           f"{getattr(kind, '__name__', kind)}, got {value!r}")
  return value


def _crop_box(record: dict, path: str, index: int) -> tuple[float, float, float, float]:
  box = tuple(float(_get(record, k, path, index, (int, float)))
              for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
  if box[2] <= 0 or box[3] <= 0:
    raise SuiteFormatError(f"{path} [index {index}]: crop box (x, y, w, h) = {box} must have "
                           "w, h > 0 (a box past the image is padded black, as PIL crops)")
  return box


def check_image_paths(suite: Suite, image_dir: str | None, allow_outside: bool = False) -> Suite:
  """`suite`, refused when a record names an image outside `image_dir` (without one, outside
  the image root its paths are relative to): absolute, or through '..'; unless
  `allow_outside`. The scorer and the gallery read what the records name."""
  outside = [r for r in suite.records if records_lib.leaves_root(
      os.path.relpath(r.image, image_dir) if image_dir else r.image)]
  if outside and not allow_outside:
    raise SuiteFormatError(
        f"{len(outside)} record(s) of {suite.path or suite.name} name images outside "
        f"{image_dir or 'the image root'} (absolute, or through '..'); move them under it, or "
        f"set {records_lib.OUTSIDE_ROOT_FIELD}:\n  "
        + "\n  ".join(f"{r.where}: {r.image}" for r in outside[:5]))
  return suite


def _image_path(image_dir: str | None, path: str) -> str:
  return os.path.join(image_dir, path) if image_dir else path


# ---------------------------------------------------------------------------------------------
# REPLACE and SWAP: the authors' data/ + swapped_data/ layout.

def hard_positive_files(names: Iterable[str]) -> dict[str, str]:
  """Paper name -> file of the suites `names` asks for, in the order asked; a benchmark's name
  ('replace') stands for all its suites."""
  wanted: dict[str, str] = {}
  for name in names:
    if name in HARD_POSITIVE_SUITES:
      wanted.update(HARD_POSITIVE_SUITES[name])
    elif name in HARD_POSITIVE_FILES:
      wanted[name] = HARD_POSITIVE_FILES[name]
    else:
      raise ValueError(f"unknown suite {name!r}; expected one of "
                       f"{sorted({*HARD_POSITIVE_SUITES, *HARD_POSITIVE_FILES})}")
  return wanted


def hard_positive_paths(root: str, file_name: str) -> tuple[str, str]:
  """The authors' pair of files (data/, swapped_data/) under `root` ('' gives them relative)."""
  return tuple(os.path.join(root, folder, f"{file_name}.json")
               for folder in ("data", "swapped_data"))


def present_hard_positive_files(root: str) -> dict[str, str]:
  """Paper name -> file of each suite whose data/ file is under `root` (at least one)."""
  present = {name: file for name, file in HARD_POSITIVE_FILES.items()
             if os.path.isfile(hard_positive_paths(root, file)[0])}
  if not present:
    raise FileNotFoundError(f"no REPLACE/SWAP suite file under {root}/data/: expected one of "
                            f"{[f + '.json' for f in HARD_POSITIVE_FILES.values()]}")
  return present


def load_hard_positive_suite(root: str, name: str, image_dir: str | None = None,
                             crop: bool | None = None) -> Suite:
  """Pairs `root/data/<name>.json` (c, c_n) with `root/swapped_data/<name>.json` (c_p, c_n).

  Records are paired by index; at each index both files must agree on the image (`image_id`
  where present, `image_path`, and the crop box) and on `false_caption` (= c_n).
  `crop` defaults to True for SWAP (ARO VG-Attribution boxes) and False for REPLACE.
  """
  crop = (name == SWAP_NAME) if crop is None else crop
  data_path, swap_path = hard_positive_paths(root, name)
  originals, swapped = _read_list(data_path), _read_list(swap_path)
  if len(originals) != len(swapped):
    raise SuiteFormatError(f"{data_path} has {len(originals)} records but {swap_path} has "
                           f"{len(swapped)}: the files are paired by index")
  keys = ["image_path", "false_caption"]
  keys += ["bbox_x", "bbox_y", "bbox_w", "bbox_h"] if crop else []
  records = []
  for index, (orig, swap) in enumerate(zip(originals, swapped)):
    c = _get(orig, "true_caption", data_path, index)
    c_p = _get(swap, "true_caption", swap_path, index)
    for key in keys:
      a, b = _get(orig, key, data_path, index, object), _get(swap, key, swap_path, index, object)
      if a != b:
        raise SuiteFormatError(f"{data_path} and {swap_path} disagree at index {index}: "
                               f"{key} {a!r} vs {b!r} (records are paired by index)")
    if "image_id" in orig or "image_id" in swap:
      a = _get(orig, "image_id", data_path, index, (str, int))
      b = _get(swap, "image_id", swap_path, index, (str, int))
      if a != b:
        raise SuiteFormatError(f"{data_path} and {swap_path} disagree at index {index}: "
                               f"image_id {a!r} vs {b!r} (records are paired by index)")
    c_n = _get(orig, "false_caption", data_path, index)
    records.append(EvalRecord(
        image=_image_path(image_dir, _get(orig, "image_path", data_path, index)),
        captions=(c, c_n, c_p), roles=(C, C_N, C_P), source=f"{name}.json", index=index,
        crop=_crop_box(orig, data_path, index) if crop else None))
  return Suite(name, HARD_POSITIVE, tuple(records), data_path)


# ---------------------------------------------------------------------------------------------
# Other compositionality benchmarks.

def _load_keyed_file(path: str, kind: str, fields: Sequence[str], roles: tuple[str, ...],
                     image_dir: str | None = None, source: str | None = None) -> Suite:
  """A SugarCrepe-style file: records (a list, or an object keyed by indices) with a COCO
  `filename` and the caption `fields` in `roles`."""
  source = source or os.path.basename(path)
  records = tuple(
      EvalRecord(image=_image_path(image_dir, _get(rec, "filename", path, index)),
                 captions=tuple(_get(rec, k, path, index) for k in fields), roles=roles,
                 source=source, index=index)
      for index, rec in _indexed_items(path))
  return Suite(source, kind, records, path)


def load_sugarcrepe_file(path: str, image_dir: str | None = None,
                         source: str | None = None) -> Suite:
  """SugarCrepe: objects keyed by (not always contiguous) string indices."""
  return _load_keyed_file(path, PAIR, ("caption", "negative_caption"), (C, C_N), image_dir, source)


def load_sugarcrepe_pp_file(path: str, image_dir: str | None = None,
                            source: str | None = None) -> Suite:
  """SugarCrepe++: two true captions (`caption`, `caption2`) and a `negative_caption`."""
  return _load_keyed_file(path, SUGARCREPE_PP, ("caption", "caption2", "negative_caption"),
                          (C, C_P, C_N), image_dir, source)


def load_aro(path: str, image_dir: str | None = None, source: str | None = None) -> Suite:
  """ARO VG-Relation (`relation_name`) or VG-Attribution (`attributes`), cropped to the box.

  The kind follows the file: records with `relation_name` are grouped by relation, records with
  `attributes` by the attribute pair, as the official ARO code does for its macro accuracy.
  """
  items = list(enumerate(_read_list(path)))
  if not items:
    raise SuiteFormatError(f"{path}: no records")
  source = source or os.path.basename(path)
  is_relation = isinstance(items[0][1], dict) and "relation_name" in items[0][1]
  records = []
  for index, rec in items:
    if is_relation:
      group = _get(rec, "relation_name", path, index)
    else:
      attributes = _get(rec, "attributes", path, index, list)
      if len(attributes) != 2:
        raise SuiteFormatError(f"{path} [index {index}]: 'attributes' should hold 2 items, got "
                               f"{attributes!r}")
      group = f"{attributes[0]}_{attributes[1]}"
    records.append(EvalRecord(
        image=_image_path(image_dir, _get(rec, "image_path", path, index)),
        captions=(_get(rec, "true_caption", path, index), _get(rec, "false_caption", path, index)),
        roles=(C, C_N), source=source, index=index, crop=_crop_box(rec, path, index),
        group=group))
  return Suite(source, ARO_RELATION if is_relation else ARO_ATTRIBUTION, tuple(records), path)


def load_vl_checklist(path: str, image_dir: str | None = None,
                      source: str | None = None) -> Suite:
  """VL-CheckList: a JSON list of `[image_path, {"POS": [...], "NEG": [...]}]`; the captions are
  the POS list (role c) then the NEG list (c_n), in file order."""
  source = source or os.path.basename(path)
  records = []
  for index, item in enumerate(_read_list(path)):
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
      raise SuiteFormatError(f"{path} [index {index}]: expected [image_path, "
                             f"{{'POS': [...], 'NEG': [...]}}], got {item!r:.200}")
    pos = _get(item[1], "POS", path, index, list)
    neg = _get(item[1], "NEG", path, index, list)
    if not pos or not neg or not all(isinstance(t, str) for t in pos + neg):
      raise SuiteFormatError(f"{path} [index {index}]: POS and NEG must be non-empty lists of "
                             "strings")
    records.append(EvalRecord(
        image=_image_path(image_dir, item[0]), captions=tuple(pos + neg),
        roles=(C,) * len(pos) + (C_N,) * len(neg), source=source, index=index))
  return Suite(source, VL_CHECKLIST, tuple(records), path)


def unique_images(records: Iterable[EvalRecord]) -> list[tuple[str, Any]]:
  """Distinct (image, crop) keys in first-seen order."""
  return list(dict.fromkeys((r.image, r.crop) for r in records))
