"""TensorFlow Datasets builders for the study's data, in array_record files read without TensorFlow.

  hard_positives    REPLACE (attributes, relations) and SWAP: the authors' data/ + swapped_data/
                    files and the Visual Genome images from `manual_dir`, paired and checked by
                    `suites.load_hard_positive_suite`; one split per suite, crop boxes included.
  coco_hard_texts   training records: COCO captions + line-aligned hard-text files
                    (config `coco2017`) or NegCLIP's TSVs (config `negclip`), images embedded.
  synthetic_world   the embedded default's world (`synthetic.write_world`): config `train` in
                    the training schema, config `suites` in the hard_positives schema.

Images are stored as their files' encoded bytes, unchanged, so a TFDS dataset gives the same
batches as `train_builders.write_array_record` on the same records. Examples keep the source
files' order (`disable_shuffling`), so index i of a split is record i. Builders only write;
`hpjax.data.tfds_sources` reads them (the trainer, the evaluator). Build with `build()` or
`python tools/build_tfds.py` (TFDS's `tfds build` command works too but imports TensorFlow).

TFDS finds a prepared dataset by name, config name and version only, so `build()` keeps what a
dataset was built from (`source_key`: the config's fields, manual_dir, the synthetic world's
parameters) beside it: the same build reuses it, another is refused, naming the fields.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from hpjax.data import records as records_lib
from hpjax.data import suites as suites_lib
from hpjax.data import synthetic, train_builders

# One split per REPLACE/SWAP suite, named as the paper (and the evaluator) names it -> its file.
SUITE_SPLITS = suites_lib.HARD_POSITIVE_FILES
_FILE_FORMAT = "array_record"
SOURCE_RECORD = "hpjax_source.json"  # beside a prepared dataset: what it was built from


def training_features() -> tfds.features.FeaturesDict:
  """The schema of `hpjax.data.records`, the image as its encoded bytes."""
  texts = tfds.features.Sequence(tfds.features.Text())
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(), "image_name": tfds.features.Text(),
      "caption": tfds.features.Text(), "hard_negatives": texts, "hard_positives": texts})


def suite_features() -> tfds.features.FeaturesDict:
  """One (c, c_n, c_p) record; `crop` is (x, y, w, h) in pixels or empty (uncropped)."""
  return tfds.features.FeaturesDict({
      "index": tfds.features.Scalar(np.int64), "image": tfds.features.Image(),
      "image_path": tfds.features.Text(), "crop": tfds.features.Sequence(np.float32),
      "caption": tfds.features.Text(), "hard_negative": tfds.features.Text(),
      "hard_positive": tfds.features.Text()})


def _info(builder, features, description: str) -> tfds.core.DatasetInfo:
  return tfds.core.DatasetInfo(builder=builder, description=description, features=features,
                               disable_shuffling=True)


def _require(paths, what: str) -> None:
  """One error naming every missing file (the first 10) and how many there are."""
  missing = [p for p in dict.fromkeys(map(os.fspath, paths)) if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"{what}: {len(missing)} file(s) not found: {missing[:10]}")


def suite_examples(root: str, file_name: str, image_dir: str):
  """(key, example) of one REPLACE/SWAP suite in the authors' layout under `root`."""
  suite = suites_lib.check_image_paths(
      suites_lib.load_hard_positive_suite(root, file_name, image_dir), image_dir)
  _require([r.image for r in suite.records], f"{file_name}.json's images under {image_dir}")
  for record in suite.records:
    c, c_n, c_p = (record.caption(role) for role in (suites_lib.C, suites_lib.C_N, suites_lib.C_P))
    yield record.index, {
        "index": record.index, "image": record.image,
        "image_path": os.path.relpath(record.image, image_dir), "crop": list(record.crop or ()),
        "caption": c, "hard_negative": c_n, "hard_positive": c_p}


def training_examples(records, image_root: str, what: str):
  """(index, example) of training records; a missing image is an error naming it."""
  for index, record in enumerate(records):
    _require([record["image"]], f"{what}: record {index}'s image")
    yield index, {**record, "image_name": os.path.relpath(record["image"], image_root)}


def _suite_splits(root: str, image_dir: str, swap_image_dir: str) -> dict:
  return {split: suite_examples(root, file,
                                swap_image_dir if file == suites_lib.SWAP_NAME else image_dir)
          for split, file in suites_lib.present_hard_positive_files(root).items()}


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Examples come from the module's functions above, one iterable per split."""

  def _generate_examples(self, examples):
    yield from examples

  def source_key(self, manual_dir: str | None) -> dict:
    """What the prepared files depend on beyond the builder's version: its config's own
    fields and, for a builder that reads one, the manual_dir."""
    base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    cfg = self.builder_config
    key = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in base}
    if self.MANUAL_DOWNLOAD_INSTRUCTIONS:
      key["manual_dir"] = os.path.abspath(manual_dir) if manual_dir else None
    return key

  def _splits(self, examples_by_split: dict) -> dict:
    return {split: self._generate_examples(examples)
            for split, examples in examples_by_split.items()}


@dataclasses.dataclass
class HardPositivesConfig(tfds.core.BuilderConfig):
  """Where the images are, relative to manual_dir (or absolute): "" is manual_dir itself, and
  SWAP's folder defaults to REPLACE's."""
  image_dir: str = ""
  swap_image_dir: str = ""


class HardPositives(_Builder):
  """REPLACE and SWAP (Kamath et al., ECCV 2024) with their Visual Genome images."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [HardPositivesConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  manual_dir holds the authors' layout: data/<file>.json and swapped_data/<file>.json for any of
  the suites below, and the images at the records' image_path relative to manual_dir (or to the
  config's image_dir / swap_image_dir). Each suite present under data/ becomes a split:"""
  MANUAL_DOWNLOAD_INSTRUCTIONS += "".join(
      f"\n    {file}.json -> split {split}" for split, file in SUITE_SPLITS.items()) + "\n"

  def _info(self):
    return _info(self, suite_features(), "REPLACE and SWAP hard-positive suites.")

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    cfg = self.builder_config
    return self._splits(_suite_splits(root, os.path.join(root, cfg.image_dir),
                                      os.path.join(root, cfg.swap_image_dir or cfg.image_dir)))


class CocoHardTexts(_Builder):
  """COCO captions with hard negatives and hard positives, the training records of the study."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="coco2017", description=(
          "annotations/captions_{train,val}2017.json, images in {train,val}2017/, hard texts in "
          "hard_texts/{train,val}2017/{positives,negatives}/*.jsonl (line-aligned)")),
      tfds.core.BuilderConfig(name="negclip", description=(
          "NegCLIP's train_neg_clip.tsv and valid_neg_clip.tsv, images under manual_dir")),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  coco2017: manual_dir/annotations/captions_train2017.json and captions_val2017.json, the images
  in manual_dir/train2017/ and val2017/, and optional line-aligned hard-text files (one line per
  caption annotation, in file order) in manual_dir/hard_texts/<train2017|val2017>/positives/*.jsonl
  and .../negatives/*.jsonl (read in name order).
  negclip: manual_dir/train_neg_clip.tsv and valid_neg_clip.tsv; their filepath column is
  relative to manual_dir.
  """

  def _info(self):
    return _info(self, training_features(), "COCO captions with hard negatives and positives.")

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    splits = {"train": "train", "validation": "val"}
    if self.builder_config.name == "negclip":
      tsvs = {split: os.path.join(root, f"{short}_neg_clip.tsv")
              for split, short in {"train": "train", "validation": "valid"}.items()}
      _require(tsvs.values(), "coco_hard_texts/negclip manual_dir")
      return self._splits({
          # (the TFDS schema holds texts only: NegCLIP's negative images need array_record)
          split: training_examples(train_builders.negclip_tsv(tsv, root, negative_images=False),
                                   root, tsv)
          for split, tsv in tsvs.items()})
    out = {}
    for split, short in splits.items():
      captions = os.path.join(root, "annotations", f"captions_{short}2017.json")
      _require([captions], "coco_hard_texts/coco2017 manual_dir")
      texts = os.path.join(root, "hard_texts", f"{short}2017")
      image_root = os.path.join(root, f"{short}2017")
      records = train_builders.coco_with_hard_texts(
          captions, image_root,
          hard_positive_files=sorted(glob.glob(os.path.join(texts, "positives", "*.jsonl"))),
          hard_negative_files=sorted(glob.glob(os.path.join(texts, "negatives", "*.jsonl"))))
      out[split] = training_examples(records, image_root, captions)
    return self._splits(out)


@dataclasses.dataclass
class SyntheticWorldConfig(tfds.core.BuilderConfig):
  """`part` is 'train' (training records) or 'suites'; the rest are write_world's parameters
  (the defaults are configs/common.py's data.synthetic)."""
  part: str = "train"
  num_train: int = 3000
  num_eval: int = 300
  image_size: int = 64
  seed: int = 0


class SyntheticWorld(_Builder):
  """The synthetic compositional world (hpjax.data.synthetic), no manual_dir needed."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [SyntheticWorldConfig(name="train", part="train"),
                     SyntheticWorldConfig(name="suites", part="suites")]

  def _info(self):
    if self.builder_config.part not in ("train", "suites"):
      raise ValueError(f"synthetic_world config {self.builder_config.name!r}: part is "
                       f"{self.builder_config.part!r}, expected 'train' or 'suites'")
    features = training_features() if self.builder_config.part == "train" else suite_features()
    return _info(self, features, "The synthetic world of hard negatives and positives.")

  def source_key(self, manual_dir: str | None) -> dict:
    """The config's fields, and every parameter of the world written (write_world's defaults
    for the rest) with the generator's version: a changed default is another world."""
    defaults = {name: p.default for name, p in
                inspect.signature(synthetic.write_world).parameters.items()
                if p.default is not inspect.Parameter.empty and name != "rebuild"}
    key = super().source_key(manual_dir)
    key.update({f"world.{k}": v for k, v in {**defaults, "version": synthetic.VERSION}.items()
                if k not in self._world_params()})
    return key

  def _world_params(self) -> dict:
    cfg = self.builder_config
    return {k: getattr(cfg, k) for k in ("num_train", "num_eval", "image_size", "seed")}

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    params = self._world_params()
    world_dir = os.path.join(os.fspath(dl_manager.download_dir), "synthetic_world",
                             "_".join(f"{k}{v}" for k, v in params.items()))
    world = synthetic.write_world(world_dir, **params)
    if cfg.part == "train":
      records = records_lib.read_jsonl(world.train_jsonl)
      return self._splits(
          {"train": training_examples(records, world.image_root, world.train_jsonl)})
    return self._splits(_suite_splits(world.eval_root, world.image_root, world.image_root))


def build(name: str, data_dir: str | None = None, manual_dir: str | None = None,
          config: tfds.core.BuilderConfig | None = None) -> tfds.core.DatasetBuilder:
  """Prepares `name` ('hard_positives', 'coco_hard_texts/negclip', 'synthetic_world/suites',
  or a builder name with a custom `config`) as array_record files under `data_dir`."""
  kwargs = {"config": config} if config is not None else {}
  builder = tfds.builder(name, data_dir=data_dir, file_format=_FILE_FORMAT, **kwargs)
  wanted = json.loads(json.dumps(builder.source_key(manual_dir), sort_keys=True, default=str))
  record = epath.Path(builder.data_dir) / SOURCE_RECORD
  if builder.is_prepared():
    built = json.loads(record.read_text()) if record.exists() else None
    if built is None:
      logging.warning("%s holds a prepared %s without a record of what it was built from; "
                      "reusing it", builder.data_dir, name)
    elif built != wanted:
      changed = sorted(k for k in {*built, *wanted} if built.get(k) != wanted.get(k))
      raise ValueError(
          f"{builder.data_dir} holds {name} built from other {', '.join(changed)} ("
          + "; ".join(f"{k}: {built.get(k)!r:.80} -> {wanted.get(k)!r:.80}" for k in changed)
          + "): not rebuilt over it; build into another data_dir (or config name), or remove "
          "that folder")
    return builder
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  aside = record.parent / f"{record.name}.{os.getpid()}.tmp"
  aside.write_text(json.dumps(wanted, sort_keys=True, indent=1))
  aside.rename(record)
  return builder
