"""TFDS builders on small fixtures in the real formats, read back without TensorFlow."""

import json
import os
import shutil
import sys

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from configs import hnhp
from helpers import final_params, train_args, training_batches, write_random_image
from hpjax import factory
from hpjax.checkpoints import convert
from hpjax.data import suites, tfds_builders, tfds_sources, train_builders, training
from hpjax.evaluate import benchmarks
from hpjax.train import trainer
from openclip_reference import random_images, random_tokens


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def _authors_layout(root):
  """REPLACE attributes (3), relations (2), SWAP (3, boxed); VG images as JPEG and PNG."""
  os.makedirs(root / "data" / "VG_100K")
  os.makedirs(root / "vg")
  for i in range(4):
    write_random_image(root / "data" / "VG_100K" / f"{i}.{'jpg' if i % 2 else 'png'}", i, (40 + i, 30))
    write_random_image(root / "vg" / f"{i}.jpg", 10 + i)
  def pairs(name, n, extra):
    data = [{"image_id": str(i), "true_caption": f"{name} true {i}", "false_caption": f"false {i}",
             "image_path": f"data/VG_100K/{i}.{'jpg' if i % 2 else 'png'}", **extra(i)}
            for i in range(n)]
    _write(root / "data" / f"{name}.json", data)
    _write(root / "swapped_data" / f"{name}.json",
           [dict(r, true_caption=f"{name} positive {i}") for i, r in enumerate(data)])
  pairs("vl_checklist_attributes", 3, extra=lambda i: {})
  pairs("vl_checklist_relations", 2, extra=lambda i: {})
  pairs(suites.SWAP_NAME, 3, extra=lambda i: {
      "image_path": f"{i}.jpg", "bbox_x": i, "bbox_y": 2.5, "bbox_w": 10 + i, "bbox_h": 7})


@pytest.fixture(scope="module")
def tfds_hard_positives(tmp_path_factory):
  manual, data_dir = tmp_path_factory.mktemp("manual"), tmp_path_factory.mktemp("tfds")
  _authors_layout(manual)
  config = tfds_builders.HardPositivesConfig(name="fixture", swap_image_dir="vg")
  builder = tfds_builders.build("hard_positives", str(data_dir), str(manual), config)
  return manual, str(data_dir), builder


def test_hard_positives_keep_every_record_crop_and_image(tfds_hard_positives, tmp_path):
  manual, data_dir, builder = tfds_hard_positives
  assert "tensorflow" not in sys.modules
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      "replace_attributes": 3, "replace_relations": 2, "swap": 3}
  got = tfds_sources.load_tfds_suites("tfds:hard_positives/fixture", data_dir,
                                      image_dir=str(tmp_path))
  assert list(got) == ["replace_attributes", "replace_relations", "swap"]
  for split, file_name in tfds_builders.SUITE_SPLITS.items():
    image_dir = str(manual / "vg") if split == "swap" else str(manual)
    want = suites.load_hard_positive_suite(str(manual), file_name, image_dir)
    assert got[split].name == want.name and got[split].kind == want.kind
    assert len(got[split]) == len(want)
    for a, b in zip(got[split].records, want.records):
      assert (a.captions, a.roles, a.source, a.index, a.crop) == (
          b.captions, b.roles, b.source, b.index, b.crop)
      assert os.path.relpath(a.image, tmp_path) == os.path.relpath(b.image, image_dir)
      assert open(a.image, "rb").read() == open(b.image, "rb").read()
  assert got["swap"].records[1].crop == (1.0, 2.5, 11.0, 7.0)
  # The evaluator's entry point, one suite by name:
  only_swap = benchmarks.load_hard_positive("tfds:hard_positives/fixture", ["swap"],
                                            tfds_data_dir=data_dir)
  assert list(only_swap) == ["swap"] and len(only_swap["swap"]) == 3
  with pytest.raises(ValueError, match="not a training dataset"):
    tfds_sources.open_training_source("tfds:hard_positives/fixture:swap", data_dir)
  stale = tmp_path / "stale"  # an image folder holding another image at a record's path
  os.makedirs(stale)
  write_random_image(stale / "0.jpg", 99)
  with pytest.raises(FileExistsError, match=r"swap \[0\]: .*stale/0.jpg exists with other"):
    tfds_sources.load_tfds_suites("tfds:hard_positives/fixture:swap", data_dir,
                                  image_dir=str(stale))


def test_missing_manual_dir_files_are_named(tfds_hard_positives, tmp_path):
  manual, _, _ = tfds_hard_positives
  copy = tmp_path / "manual"
  shutil.copytree(manual, copy)
  os.remove(copy / "vg" / "2.jpg")
  config = tfds_builders.HardPositivesConfig(name="fixture", swap_image_dir="vg")
  with pytest.raises(FileNotFoundError, match=r"1 file\(s\) not found: .*vg/2.jpg"):
    tfds_builders.build("hard_positives", str(tmp_path / "a"), str(copy), config)
  os.remove(copy / "swapped_data" / "vl_checklist_relations.json")
  with pytest.raises(FileNotFoundError, match="swapped_data/vl_checklist_relations.json"):
    tfds_builders.build("hard_positives", str(tmp_path / "b"), str(copy), config)
  with pytest.raises(FileNotFoundError, match="valid_neg_clip.tsv"):
    (copy / "train_neg_clip.tsv").write_text("title\tfilepath\tneg_caption\n")
    tfds_builders.build("coco_hard_texts/negclip", str(tmp_path / "c"), str(copy))


def _coco_layout(root):
  """COCO train/val captions, line-aligned hard-text files for train, images."""
  for split, n_images, n_captions in (("train", 3, 5), ("val", 2, 3)):
    os.makedirs(root / f"{split}2017")
    images = [{"id": 100 + i, "file_name": f"{i:012d}.jpg"} for i in range(n_images)]
    for i, image in enumerate(images):
      write_random_image(root / f"{split}2017" / image["file_name"], i + (0 if split == "train" else 50))
    annotations = [{"image_id": 100 + i % n_images, "id": i, "caption": f"{split} caption {i}"}
                   for i in range(n_captions)]
    _write(root / "annotations" / f"captions_{split}2017.json",
           {"images": images, "annotations": annotations})
  texts = root / "hard_texts" / "train2017"
  os.makedirs(texts / "positives")
  os.makedirs(texts / "negatives")
  (texts / "positives" / "swap_hp.jsonl").write_text(
      '"swap positive 0"\nNone\n"swap positive 2"\nNone\n["p4a", "p4b"]\n')
  (texts / "negatives" / "hn.jsonl").write_text(
      '["negative 0"]\n["negative 1"]\n[]\n"negative 3"\n["negative 4"]\n')
  return [str(texts / "positives" / "swap_hp.jsonl")], [str(texts / "negatives" / "hn.jsonl")]


def test_coco_hard_texts_give_the_batches_of_the_array_record_files(tmp_path):
  manual, data_dir = tmp_path / "coco", str(tmp_path / "tfds")
  positives, negatives = _coco_layout(manual)
  builder = tfds_builders.build("coco_hard_texts/coco2017", data_dir, str(manual))
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      "train": 5, "validation": 3}
  records = list(train_builders.coco_with_hard_texts(
      str(manual / "annotations" / "captions_train2017.json"), str(manual / "train2017"),
      hard_positive_files=positives, hard_negative_files=negatives))
  array_record = str(tmp_path / "train.array_record")
  train_builders.write_array_record(records, array_record)
  ours = training.open_source("tfds:coco_hard_texts/coco2017", data_dir)
  theirs = training.open_source(array_record)
  assert len(ours) == len(theirs) == 5
  for i in range(5):
    assert ours[i] == theirs[i]  # texts, image bytes and image name, record by record
  assert ours[4]["hard_positives"] == ["p4a", "p4b"] and ours[1]["hard_positives"] == []
  for a, b in zip(training_batches(ours, 3), training_batches(theirs, 3)):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  validation = training.open_source("tfds:coco_hard_texts/coco2017:validation", data_dir)
  assert [validation[i]["caption"] for i in range(3)] == [f"val caption {i}" for i in range(3)]


def test_trainer_runs_resumes_and_exports_hf_from_the_synthetic_world_builder(tmp_path):
  data_dir = str(tmp_path / "tfds")
  for part in ("train", "suites"):
    tfds_builders.build("synthetic_world", data_dir, config=tfds_builders.SyntheticWorldConfig(
        name=f"tiny_{part}", part=part, num_train=40, num_eval=8))
  args = train_args("tfds:synthetic_world/tiny_train", total_steps=4, **{
      "data.tfds_data_dir": data_dir, "eval.hard_positive": True,
      "eval.replace_swap_root": "tfds:synthetic_world/tiny_suites"})
  workdir = str(tmp_path / "run")
  metrics = trainer.run(hnhp.get_config(args), workdir)
  assert metrics["replace_attributes/n"] == metrics["swap/n"] == 8
  step, params = final_params(workdir)
  assert step == 4
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  trainer.run(hnhp.get_config(args), workdir)  # resumes from step 2
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["step"] for l in lines if "loss" in l] == [1, 2, 3, 4, 3, 4]
  resumed_step, resumed = final_params(workdir)
  assert resumed_step == 4
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

  # The trainer's checkpoints -> an HF folder whose CLIPModel computes the trained features.
  run = ml_collections.ConfigDict({"src": os.path.join(workdir, "checkpoints"), "dst": "",
                                   "model": "hpjax-tiny", "direction": "to_hf"})
  folder = convert.run(run, tmp_path / "convert")["dst"]
  hf_model = transformers.CLIPModel.from_pretrained(folder, local_files_only=True).eval()
  model, trained = factory.create_model("hpjax-tiny", pretrained=os.path.join(workdir,
                                                                               "checkpoints"))
  rng = np.random.default_rng(0)
  images, tokens = random_images(rng, 2, 64), random_tokens(rng, 2)
  with jax.default_matmul_precision("highest"):
    image, text, _ = model.apply({"params": trained}, images.transpose(0, 2, 3, 1), tokens)
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(tokens).long(), pixel_values=torch.from_numpy(images))
  np.testing.assert_allclose(out.image_embeds.numpy(), image, rtol=0, atol=1e-4)
  np.testing.assert_allclose(out.text_embeds.numpy(), text, rtol=0, atol=1e-4)


def test_a_dataset_never_built_is_named_and_nothing_is_written(tmp_path):
  """tfds would try to build it inside the trainer (with a cause about manual files) and
  write into the data folder."""
  data_dir = tmp_path / "tfds"
  os.makedirs(data_dir)
  with pytest.raises(FileNotFoundError, match=r"tfds:coco_hard_texts/coco2017 is not prepared .*"
                                              r"tools/build_tfds.py"):
    training.open_source("tfds:coco_hard_texts/coco2017:train", str(data_dir))
  assert not os.listdir(data_dir)


def test_temporary_image_folders_of_killed_evaluations_are_removed(tfds_hard_positives,
                                                                   monkeypatch, tmp_path):
  from test_writers import dead_pid  # pylint: disable=g-import-not-at-top
  from hpjax import leftovers  # pylint: disable=g-import-not-at-top
  _, data_dir, _ = tfds_hard_positives
  monkeypatch.setattr(tfds_sources.tempfile, "gettempdir", lambda: str(tmp_path))
  host = leftovers.name("").rsplit("-", 2)[0]
  stale = tmp_path / f"hpjax-tfds-images-{host}-{dead_pid()}-0123abcd"
  os.makedirs(stale / "vg")
  got = tfds_sources.load_tfds_suites("tfds:hard_positives/fixture:swap", data_dir)
  (folder,) = os.listdir(tmp_path)  # the stale one went; this run's holds the images
  assert folder.startswith(f"hpjax-tfds-images-{host}-{os.getpid()}-")
  assert got["swap"].records[0].image.startswith(str(tmp_path / folder))
