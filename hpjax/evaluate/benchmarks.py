"""The benchmark catalog: per benchmark, how its files are found and read, its official figure
and how its official report combines files.

Both ways of loading suites (an eval config via `load_config`; REPLACE and SWAP by the paper's
names via `load_hard_positive`, the evaluator's and trainer's loader) and the evaluator's
combined figures read this one table, as the conversion reads the rule table: a new benchmark
is one `Benchmark` entry. REPLACE's and SWAP's file names come from `suites.HARD_POSITIVE_SUITES`.

Suites are named by their file's path relative to the benchmark root, a dot for each `/`
(`vl_checklist.Attribute.vaw.action`), so files with the same base name in different folders
(VL-CheckList's `Attribute/vaw/action.json`, `Attribute/vg/action.json`,
`Relation/vg/action.json`) stay apart. An explicit file list is named relative to the files'
common folder. Two files that would give one name are an error naming both.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Sequence

from absl import logging

from hpjax import config_fields
from hpjax.data import groups as groups_lib
from hpjax.data import suites as suites_lib
from hpjax.data import tfds_sources
from hpjax.evaluate import metrics as metrics_lib

Figures = dict[str, float]


class DuplicateSuiteError(ValueError):
  """Two files give the same suite name (one would silently replace the other)."""


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One benchmark.

  Attributes:
    name: the prefix of its suite names (`<name>.<path>`) and its key in `BENCHMARKS`.
    read: (path, image_dir, source) -> Suite: one file's records; `source` is the file's path
      relative to the root, shown in record locations.
    headline: the official figure of each of its suites (`<suite>/<headline>`).
    files: its files relative to a root (all required); None: every `*<suffix>` below it.
    aliases: relative path -> suite name, for the paper's names of the authors' files.
    combine: (figures of its suites, its suites) -> more named figure sets, as the
      benchmark's official report combines files; None: none.
    root_field, files_field, image_field: its eval-config fields ('' where it has none).
    suffix: the ending of its files, when a folder is walked.
    follows: the published files and code (repository@commit: path) its reader and figures
      follow ('' for the formats hpjax's own suites document).
  """
  name: str
  read: Callable[[str, str | None, str], suites_lib.Suite]
  headline: str
  files: tuple[str, ...] | None = None
  aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
  combine: Callable[[Mapping[str, Figures], Mapping[str, suites_lib.Suite]],
                    dict[str, Figures]] | None = None
  root_field: str = ""
  files_field: str = ""
  image_field: str = ""
  suffix: str = ".json"
  follows: str = ""

  def owns(self, suite_name: str) -> bool:
    """Whether a suite (or combined figure set) name is this benchmark's."""
    return (suite_name == self.name or suite_name.startswith(self.name + ".")
            or suite_name in self.aliases.values())

  def suite_name(self, relative_path: str) -> str:
    if relative_path in self.aliases:
      return self.aliases[relative_path]
    stem = os.path.splitext(os.path.normpath(relative_path))[0]
    return f"{self.name}." + stem.replace(os.sep, ".")


# ---------------------------------------------------------------------------------------------
# Readers and combined figures of the benchmarks.

def _read_hard_positive(path: str, image_dir: str | None, source: str) -> suites_lib.Suite:
  """`<root>/data/<name>.json` with its `<root>/swapped_data/<name>.json` partner."""
  del source  # the file's own name is the record source, as in the authors' layout
  root = os.path.dirname(os.path.dirname(path))
  return suites_lib.load_hard_positive_suite(root, os.path.splitext(os.path.basename(path))[0],
                                             image_dir)


def _mean_of_members(name: str, members: Sequence[str] | None = None):
  """Combines the listed suites (all present), or every suite of the benchmark, into `name`:
  the unweighted mean of each figure, counts summed (REPLACE's and SugarCrepe's headline)."""
  def combine(figures: Mapping[str, Figures], suites) -> dict[str, Figures]:
    del suites
    chosen = list(figures) if members is None else list(members)
    if not chosen or not all(m in figures for m in chosen):
      return {}
    return {name: metrics_lib.mean_of([figures[m] for m in chosen])}
  return combine


VL_CHECKLIST_TOPS = ("Attribute", "Object", "Relation")


def vl_checklist_type(path: str) -> tuple[str, str] | None:
  """(type, corpus) of a file of the official VL-CheckList tree, as its `corpus/v1/<type>/
  <corpus>*.yaml` configs file it: `Attribute/vaw/action.json` -> ('Attribute/action', 'vaw'),
  `Object/Size/swig_size/swig_tool/swig_tool_large.json` -> ('Object/Size/large', 'swig'),
  `Relation/hake_action.json` -> ('Relation/action', 'hake'). None outside that layout."""
  parts = os.path.normpath(path).split(os.sep)
  tops = [i for i, p in enumerate(parts) if p in VL_CHECKLIST_TOPS]
  if not tops:
    return None
  top, rest = parts[tops[-1]], parts[tops[-1] + 1:]
  if not rest:
    return None
  stem = os.path.splitext(rest[-1])[0]
  if top in ("Attribute", "Relation") and len(rest) == 2:
    return f"{top}/{stem}", rest[0]
  if top == "Relation" and len(rest) == 1 and "_" in stem:
    corpus, relation = stem.split("_", 1)
    return f"Relation/{relation}", corpus
  if top == "Object" and len(rest) >= 2 and rest[0] in ("Location", "Size") and "_" in stem:
    tokens = stem.split("_")
    return f"Object/{rest[0]}/{tokens[-1]}", tokens[0]
  return None


def _dotted(path: str) -> str:
  return path.replace("/", ".")


def _vl_checklist_report(figures: Mapping[str, Figures],
                         suites: Mapping[str, suites_lib.Suite]) -> dict[str, Figures]:
  """The official report's figures (its `corpus.json` + `radar.py`): per type and corpus the
  mean over that corpus's files, per type the mean over its corpora; and, ours, per top
  category (Attribute, Object, Relation) the mean over its types.

  Named `vl_checklist.corpus.<type>.<corpus>` and `vl_checklist.type.<type>` (dots for `/`).
  Files outside the official tree are reported per file only (logged).
  """
  by_type: dict[str, dict[str, list[str]]] = {}
  for name in figures:
    found = vl_checklist_type(suites[name].path or name)
    if found is None:
      logging.info("vl_checklist: %s is not in the official tree; reported per file only",
                   suites[name].path)
      continue
    by_type.setdefault(found[0], {}).setdefault(found[1], []).append(name)
  out: dict[str, Figures] = {}
  type_figures: dict[str, Figures] = {}
  for type_name, corpora in sorted(by_type.items()):
    per_corpus = []
    for corpus, members in sorted(corpora.items()):
      per_corpus.append(metrics_lib.mean_of([figures[m] for m in members]))
      out[f"vl_checklist.corpus.{_dotted(type_name)}.{corpus}"] = per_corpus[-1]
    type_figures[type_name] = metrics_lib.mean_of(per_corpus)
    out[f"vl_checklist.type.{_dotted(type_name)}"] = type_figures[type_name]
  for top in VL_CHECKLIST_TOPS:
    members = [f for t, f in type_figures.items() if t.split("/")[0] == top]
    if members:
      out[f"vl_checklist.type.{top}"] = metrics_lib.mean_of(members)
  return out


def _data_file(file_name: str) -> str:
  """data/<file>.json: a REPLACE/SWAP suite's file relative to the benchmark root."""
  return suites_lib.hard_positive_paths("", file_name)[0]


def _hard_positive_aliases(benchmark: str) -> dict[str, str]:
  """data/<file>.json -> the paper's name, for each suite of REPLACE or SWAP."""
  return {_data_file(file): name
          for name, file in suites_lib.HARD_POSITIVE_SUITES[benchmark].items()}


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("replace", _read_hard_positive, "augmented",
              tuple(_hard_positive_aliases("replace")), _hard_positive_aliases("replace"),
              _mean_of_members("replace", tuple(suites_lib.HARD_POSITIVE_SUITES["replace"])),
              root_field="suite_root"),
    Benchmark("swap", _read_hard_positive, "augmented",
              tuple(_hard_positive_aliases("swap")), _hard_positive_aliases("swap"),
              root_field="suite_root", image_field="swap_image_dir"),
    Benchmark("sugarcrepe", suites_lib.load_sugarcrepe_file, "accuracy",
              tuple(f"{f}.json" for f in suites_lib.SUGARCREPE_FILES),
              combine=_mean_of_members("sugarcrepe"), root_field="extra.sugarcrepe_root",
              files_field="extra.sugarcrepe_files", image_field="extra.coco_image_dir"),
    Benchmark("sugarcrepe_pp", suites_lib.load_sugarcrepe_pp_file, "itt",
              tuple(f"{f}.json" for f in suites_lib.SUGARCREPE_PP_FILES),
              combine=_mean_of_members("sugarcrepe_pp"), root_field="extra.sugarcrepe_pp_root",
              files_field="extra.sugarcrepe_pp_files", image_field="extra.coco_image_dir"),
    Benchmark("aro", suites_lib.load_aro, "macro_accuracy",
              tuple(f"{f}.json" for f in suites_lib.ARO_FILES),
              {"visual_genome_relation.json": "aro.vg_relation",
               "visual_genome_attribution.json": "aro.vg_attribution"},
              root_field="extra.aro_root", files_field="extra.aro_files",
              image_field="extra.aro_image_dir"),
    Benchmark("vl_checklist", suites_lib.load_vl_checklist, "accuracy", None,
              combine=_vl_checklist_report, root_field="extra.vl_checklist_root",
              files_field="extra.vl_checklist_files", image_field="extra.vl_checklist_image_dir"),
    # The image-group suites (hpjax.data.groups).
    Benchmark("winoground", groups_lib.load_winoground, "group_score", ("examples.jsonl",),
              {"examples.jsonl": "winoground"}, root_field="extra.winoground_root",
              files_field="extra.winoground_files", image_field="extra.winoground_image_dir",
              follows="huggingface.co/datasets/facebook/winoground: data/examples.jsonl and "
                      "the dataset card's fields (no git commit is published)"),
    Benchmark("whatsup", groups_lib.load_whatsup, "accuracy",
              ("controlled_images_dataset.json", "controlled_clevr_dataset.json"),
              {"controlled_images_dataset.json": "whatsup.controlled_a",
               "controlled_clevr_dataset.json": "whatsup.controlled_b"},
              root_field="extra.whatsup_root", files_field="extra.whatsup_files",
              image_field="extra.whatsup_image_dir",
              follows="amitakamath/whatsup_vlms@7c1f2550eace32e7b8c77de5a792347c402960d1: "
                      "dataset_zoo/aro_datasets.py (Controlled_Images, COCO_QA, VG_QA)"),
    Benchmark("valse", groups_lib.load_valse, "acc_r", None, combine=_mean_of_members("valse"),
              root_field="extra.valse_root", files_field="extra.valse_files",
              image_field="extra.valse_image_dir",
              follows="Heidelberg-NLP/VALSE@2152d90d4aecd11f7f74cf03420abcb63efff9c5: data/*.json, "
                      "README.md (the valid subset), lxmert_valse_eval.py (acc_r)"),
    Benchmark("cola", groups_lib.load_cola_multi, "accuracy",
              ("COLA_multiobjects_matching_benchmark.json",),
              {"COLA_multiobjects_matching_benchmark.json": "cola.multi_object"},
              root_field="extra.cola_root", files_field="extra.cola_files",
              image_field="extra.cola_image_dir",
              follows="arijitray1993/COLA@1fa52fba9cff4e6ffb7bfcf3550838748347273b: "
                      "data/COLA_multiobjects_matching_benchmark.json, scripts/eval.py "
                      "(ColaMultiObjAcc)"),
    Benchmark("imagecode", groups_lib.load_imagecode, "accuracy", ("valid_data.json",),
              {"valid_data.json": "imagecode.valid"}, root_field="extra.imagecode_root",
              files_field="extra.imagecode_files", image_field="extra.imagecode_image_dir",
              follows="McGill-NLP/imagecode@609f07611aed2599f946c30d730f40a41af1079b: "
                      "data/valid_data.json, baselines/clip/zero_shot.py"),
    Benchmark("bivlc", groups_lib.load_bivlc, "t2i", None, root_field="extra.bivlc_root",
              files_field="extra.bivlc_files", image_field="extra.bivlc_image_dir",
              suffix=".parquet",
              follows="IMirandaM/BiVLC@84f0d1751e7212d97cdeaeb01353862c09908bcb: README.md "
                      "(the fields of huggingface.co/datasets/imirandam/BiVLC), "
                      "src/CLIP_fine_tuning/CLIP_utils.py (evaluate_BiVLC)"),
)}


# ---------------------------------------------------------------------------------------------
# Finding, reading and naming files.

def _walk(root: str, suffix: str) -> list[str]:
  """Every `*<suffix>` below `root`, relative to it, sorted."""
  found = sorted(os.path.relpath(os.path.join(d, f), root)
                 for d, _, files in os.walk(root) for f in files if f.endswith(suffix))
  if not found:
    raise FileNotFoundError(f"no {suffix} suite files below {root}")
  return found


def _files_and_root(benchmark: Benchmark, root: str | None,
                    files: Sequence[str]) -> tuple[str, list[str]]:
  """(root, paths relative to it) of the files to read."""
  if root:
    if not os.path.isdir(root):
      raise FileNotFoundError(f"{benchmark.name}: benchmark folder not found: {root}")
    if files:
      relative = [os.path.relpath(f, root) if os.path.isabs(f) else f for f in files]
      outside = [f for f, rel in zip(files, relative) if rel.startswith(os.pardir)]
      if outside:
        raise ValueError(f"{benchmark.name}: files {outside} are not below the benchmark folder "
                         f"{root}")
      return root, relative
    if benchmark.files is not None:
      return root, list(benchmark.files)
    return root, _walk(root, benchmark.suffix)
  for f in files:
    if not os.path.isfile(f):
      raise FileNotFoundError(f"{benchmark.name}: suite file not found: {f}")
  common = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
  return common, [os.path.relpath(os.path.abspath(f), common) for f in files]


def add_suites(into: dict[str, suites_lib.Suite], new: Mapping[str, suites_lib.Suite]) -> None:
  """`into.update(new)`, but a name given twice is an error naming both files."""
  for name, suite in new.items():
    if name in into:
      raise DuplicateSuiteError(
          f"two suites named {name!r}: {into[name].path or '<in memory>'} and "
          f"{suite.path or '<in memory>'}; suites are named by their path below the benchmark "
          "folder, so pass the folder itself (or files that differ below their common folder)")
    into[name] = suite


def load(benchmark: Benchmark | str, root: str | None = None, files: Sequence[str] = (),
         image_dir: str | None = None, allow_outside: bool = False,
         skip_empty_captions: bool = False) -> dict[str, suites_lib.Suite]:
  """A benchmark's suites, named by path: `files` below `root` (default: its known files, or
  every file of its kind below it), or `files` alone (named below their common folder).

  A file with no records in a walked folder (VL-CheckList ships three empty `swig_place`
  files, which its official configs do not list) is left out with a log line; a named one is
  kept, so that the evaluator's empty-suite check reports it. Image paths stay under
  `image_dir` unless `allow_outside` (`suites.check_image_paths`). A record with an empty
  caption is an error, or with `skip_empty_captions` left out and counted in its suite's
  `skipped_empty_captions` (`suites.empty_captions_skipped`).
  """
  benchmark = BENCHMARKS[benchmark] if isinstance(benchmark, str) else benchmark
  if not root and not files:
    raise ValueError(f"{benchmark.name}: give a benchmark folder or a list of files")
  root, relative = _files_and_root(benchmark, root, files)
  walked = not files and benchmark.files is None
  suites: dict[str, suites_lib.Suite] = {}
  for rel in relative:
    path = os.path.join(root, rel)
    with suites_lib.empty_captions_skipped(skip_empty_captions):
      suite = suites_lib.check_image_paths(benchmark.read(path, image_dir, rel), image_dir,
                                           allow_outside)
    if walked and not suite.records:
      logging.warning("%s: %s has no records; left out", benchmark.name, path)
      continue
    add_suites(suites, {benchmark.suite_name(rel): dataclasses.replace(
        suite, name=benchmark.suite_name(rel), path=path)})
  return suites


# ---------------------------------------------------------------------------------------------
# REPLACE / SWAP selection and the eval config.

def load_hard_positive(root: str, names: Sequence[str] | None = ("replace", "swap"),
                       image_dir: str | None = None,
                       swap_image_dir: str | None = None,
                       tfds_data_dir: str | None = None, allow_outside: bool = False,
                       skip_empty_captions: bool = False) -> dict[str, suites_lib.Suite]:
  """REPLACE ('replace' = both files, or 'replace_attributes' / 'replace_relations') and SWAP
  ('swap') from the authors' layout under `root`, keyed by the paper's names: the one loader
  of both (the evaluator, the trainer and eval configs use it).

  `names=None` loads whichever of the three suites `root/data/` holds (at least one).
  A `root` of `tfds:<name>[:<split>]` reads a prepared TFDS dataset instead.
  """
  if root.startswith(tfds_sources.PREFIX):
    with suites_lib.empty_captions_skipped(skip_empty_captions):
      return tfds_sources.load_tfds_suites(root, tfds_data_dir, names)
  files = (suites_lib.present_hard_positive_files(root) if names is None
           else suites_lib.hard_positive_files(names))
  wanted: dict[str, list[str]] = {}  # benchmark -> its files, in the order first asked
  for name, file in files.items():
    benchmark = next(b for b, members in suites_lib.HARD_POSITIVE_SUITES.items()
                     if name in members)
    wanted.setdefault(benchmark, []).append(_data_file(file))
  suites: dict[str, suites_lib.Suite] = {}
  for benchmark, data_files in wanted.items():
    images = (swap_image_dir or image_dir) if benchmark == "swap" else image_dir
    add_suites(suites, load(benchmark, root, data_files, images, allow_outside,
                            skip_empty_captions))
  return suites


def load_config(config, required: bool = True) -> dict[str, suites_lib.Suite]:
  """Every suite an eval config (configs/eval_hp.py) names: REPLACE/SWAP from `suite_root` and
  `suites`, and each other benchmark whose folder (`extra.<name>_root`) or file list
  (`extra.<name>_files`) is set. None is an error when `required` (a run with zero-shot or
  retrieval figures needs no suite)."""
  suites: dict[str, suites_lib.Suite] = {}
  if config.suite_root:
    add_suites(suites, load_hard_positive(
        config.suite_root, config_fields.split_list(config.suites),
        swap_image_dir=config.swap_image_dir or None,
        tfds_data_dir=config.get("tfds_data_dir") or None,
        allow_outside=config.allow_paths_outside_root,
        skip_empty_captions=config.skip_empty_captions))
  for benchmark in BENCHMARKS.values():
    if benchmark.root_field == "suite_root":
      continue
    root = config_fields.get(config, benchmark.root_field) or None
    files = (config_fields.split_list(config_fields.get(config, benchmark.files_field))
             if benchmark.files_field else [])
    if root or files:
      add_suites(suites, load(benchmark, root, files,
                              config_fields.get(config, benchmark.image_field) or None,
                              config.allow_paths_outside_root, config.skip_empty_captions))
  if required and not suites:
    raise ValueError("nothing to evaluate: set suite_root (REPLACE/SWAP), an extra.* folder or "
                     "file list, zeroshot.images or retrieval.annotations")
  return suites


def combined_figures(figures: Mapping[str, Figures],
                     suites: Mapping[str, suites_lib.Suite]) -> dict[str, Figures]:
  """Every benchmark's combined figure sets over the suites it owns."""
  out: dict[str, Figures] = {}
  for benchmark in BENCHMARKS.values():
    if benchmark.combine is None:
      continue
    mine = {n: f for n, f in figures.items() if benchmark.owns(n)}
    if mine:
      out.update(benchmark.combine(mine, {n: suites[n] for n in mine}))
  return out


def headline(suite_name: str) -> str | None:
  """The official figure of a suite (by the benchmark owning its name), or None."""
  for benchmark in BENCHMARKS.values():
    if benchmark.owns(suite_name):
      return benchmark.headline
  return None
