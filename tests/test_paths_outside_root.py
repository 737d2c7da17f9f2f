"""Image paths read from annotation files stay under the folder they are relative to: an
absolute path or one leaving it through '..' is refused, naming the file and record, unless the
user allows it (`allow_paths_outside_root`); each reader is tested in both modes."""

import json
import os

import pytest

from configs import eval_hp
from helpers import write_fixture_suites, write_random_image
from hpjax.data import records as records_lib
from hpjax.data import suites, tfds_builders, train_builders, training
from hpjax.evaluate import benchmarks

OUTSIDE = ("../outside.png", "{abs}")  # through '..', and absolute


@pytest.fixture
def layout(tmp_path):
  """data/ (the root) holding one image, and outside.png beside it."""
  os.makedirs(tmp_path / "data")
  write_random_image(tmp_path / "data" / "inside.png", 0)
  write_random_image(tmp_path / "outside.png", 1)
  return tmp_path


@pytest.mark.parametrize("image", OUTSIDE)
def test_training_jsonl(layout, image):
  image = image.format(abs=layout / "outside.png")
  path = layout / "data" / "train.jsonl"
  path.write_text(json.dumps({"image": "inside.png", "caption": "in"}) + "\n"
                  + json.dumps({"image": image, "caption": "out"}) + "\n")
  with pytest.raises(ValueError, match=rf"train.jsonl:2: image path .* is outside .*"
                                       rf"{records_lib.OUTSIDE_ROOT_FIELD}"):
    training.open_source(str(path))
  allowed = training.open_source(str(path), allow_outside=True)
  assert os.path.samefile(allowed[1]["image"], layout / "outside.png")


@pytest.mark.parametrize("image", OUTSIDE)
def test_builders_negclip_and_coco(layout, image):
  image = image.format(abs=layout / "outside.png")
  tsv = layout / "neg.tsv"
  tsv.write_text(f"title\tfilepath\tneg_caption\nA cat.\t{image}\t['A dog.']\n")
  root = str(layout / "data")
  with pytest.raises(ValueError, match=r"neg.tsv: row 1 .*outside"):
    list(train_builders.negclip_tsv(str(tsv), root))
  (record,) = train_builders.negclip_tsv(str(tsv), root, allow_outside=True)
  assert os.path.samefile(record["image"], layout / "outside.png")
  captions = layout / "captions.json"
  captions.write_text(json.dumps({"images": [{"id": 1, "file_name": image}],
                                  "annotations": [{"image_id": 1, "id": 5, "caption": "x"}]}))
  with pytest.raises(ValueError, match=r"captions.json: annotation 0 .*outside"):
    list(train_builders.coco_with_hard_texts(str(captions), root))
  (record,) = train_builders.coco_with_hard_texts(str(captions), root, allow_outside=True)
  assert os.path.samefile(record["image"], layout / "outside.png")


def test_a_built_jsonl_names_images_relative_to_its_folder(layout):
  """So that building then training needs no override where the images are under the JSONL."""
  tsv = layout / "neg.tsv"
  tsv.write_text("title\tfilepath\tneg_caption\nA cat.\tinside.png\t['A dog.']\n")
  out = layout / "data" / "train.jsonl"
  train_builders.write_jsonl(train_builders.negclip_tsv(str(tsv), str(layout / "data")), str(out))
  assert json.loads(out.read_text())["image"] == "inside.png"
  assert os.path.samefile(training.open_source(str(out))[0]["image"],
                          layout / "data" / "inside.png")


@pytest.mark.parametrize("image", OUTSIDE)
def test_evaluation_suites_and_the_tfds_builder(tmp_path, image):
  root = tmp_path / "suites"
  write_fixture_suites(str(root), num=3)
  image = image.format(abs=tmp_path / "outside.png")
  name = suites.SWAP_NAME
  for folder in ("data", "swapped_data"):
    path = root / folder / f"{name}.json"
    records = json.loads(path.read_text())
    records[1]["image_path"] = image
    path.write_text(json.dumps(records))
  with pytest.raises(suites.SuiteFormatError,
                     match=rf"(?s)1 record\(s\) of .*{name}.json name images outside .*"
                           rf"{name}.json \[index 1\]"):
    benchmarks.load_config(eval_hp.get_config(f"suite_root={root},suites=swap"))
  loaded = benchmarks.load_config(eval_hp.get_config(
      f"suite_root={root},suites=swap,allow_paths_outside_root=True"))
  assert loaded["swap"].records[1].image == image
  with pytest.raises(suites.SuiteFormatError, match="outside"):  # no override: shared data
    list(tfds_builders.suite_examples(str(root), name, str(root / "images")))
