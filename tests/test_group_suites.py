"""Image-group suites (Winoground, What'sUp, VALSE, COLA multi-object, ImageCoDe, BiVLC): each
metric against a direct reimplementation of its benchmark's official definition, the loaders on
the real files (VALSE, COLA, ImageCoDe ship theirs; tests/data holds them with their MIT
licences) or on fixtures in the published format, and the group scorer against a per-record
OpenCLIP loop."""

import io
import json
import os
import pathlib

import jax
import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import eval_hp
from helpers import per_record_scores, torch_encoders, write_json, write_random_image
from hpjax import tokenizer as tokenizer_lib
from hpjax.data import groups
from hpjax.data import suites
from hpjax.evaluate import benchmarks
from hpjax.evaluate import group_metrics
from hpjax.evaluate import group_scorer
from hpjax.evaluate import hard_positive
from hpjax.evaluate import runner
from hpjax.evaluate import scorer as scorer_lib

DATA = pathlib.Path(__file__).parent / "data"
TAGS = ("Object", "Relation", "Both")


def _winoground_file(path, num=12):
  """examples.jsonl as facebook/winoground publishes it."""
  with open(path, "w") as f:
    for k in range(num):
      f.write(json.dumps({
          "id": k, "image_0": f"ex_{k}_img_0", "image_1": f"ex_{k}_img_1",
          "caption_0": f"the {k} dog chases the cat", "caption_1": f"the cat chases the {k} dog",
          "tag": "Relation", "secondary_tag": "", "num_main_preds": 1 + k % 2,
          "collapsed_tag": TAGS[k % 3]}) + "\n")
  return str(path)


# ---------------------------------------------------------------------------------------------
# Metrics against the official definitions.

def test_winoground_scores_match_the_official_definition(tmp_path):
  suite = groups.load_winoground(_winoground_file(tmp_path / "examples.jsonl", 60), "/img")
  rng = np.random.default_rng(0)
  matrices = [rng.integers(0, 3, (2, 2)).astype(np.float32) for _ in suite.groups]  # many ties
  got = group_metrics.group_figures(groups.WINOGROUND, suite.groups, matrices)
  # The Winoground paper's scores, with s[i][j] = score(image i, caption j).
  text = np.array([s[0][0] > s[0][1] and s[1][1] > s[1][0] for s in matrices])
  image = np.array([s[0][0] > s[1][0] and s[1][1] > s[0][1] for s in matrices])
  assert got["text_score"] == 100 * text.mean() and got["image_score"] == 100 * image.mean()
  assert got["group_score"] == 100 * (text & image).mean() and got["n"] == 60
  for k, tag in enumerate(TAGS):
    rows = np.arange(60) % 3 == k
    assert got[f"collapsed_tag.{tag}.group_score"] == 100 * (text & image)[rows].mean()
    assert got[f"collapsed_tag.{tag}.n"] == rows.sum()
  assert got["num_main_preds.2.text_score"] == 100 * text[np.arange(60) % 2 == 1].mean()
  # A tie is wrong in every direction.
  tie = [np.ones((2, 2), np.float32)]
  assert group_metrics.group_figures(groups.WINOGROUND, suite.groups[:1], tie)["text_score"] == 0


def _whatsup_controlled(path, objects=("mug|plate", "cup|box", "pen|book")):
  """controlled_images_dataset.json as the What'sUp authors publish it: 4 positions per object
  pair, image names <obj1>_<position>_..._<obj2>.jpeg, the right caption first."""
  records = []
  for pair in objects:
    a, b = pair.split("|")
    for position, phrase in (("left", "left_of"), ("right", "right_of"), ("on", "on"),
                             ("under", "under")):
      records.append({"image_path": f"data/controlled_images/{a}_{phrase}_{b}.jpeg",
                      "caption_options": [f"A {a} {position} {b}", f"A {a} x {b}",
                                          f"A {a} y {b}", f"A {a} z {b}"]})
  write_json(str(path), records)
  return records


def test_whatsup_accuracy_pairs_and_sets_match_the_official_evaluator(tmp_path):
  records = _whatsup_controlled(tmp_path / "controlled_images_dataset.json")
  suite = groups.load_whatsup(str(tmp_path / "controlled_images_dataset.json"), "/w")
  assert suite.groups[0].images == ("/w/controlled_images/mug_left_of_plate.jpeg",)
  assert suite.groups[0].tags == (("set", "mug|plate"), ("position", "left"))
  for seed in range(5):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(len(records), 4)).astype(np.float32)
    scores[:, 0] += 0.7  # mostly right, so pairs and sets are sometimes right too
    got = group_metrics.group_figures(groups.WHATSUP, suite.groups, [s[None] for s in scores])
    # The official Controlled_Images.evaluate_scores (subset A), spelled out.
    correct = np.argmax(scores, axis=-1) == 0
    table = {}
    for d, ok in zip(records, correct):
      name = d["image_path"].split("/")[-1]
      table.setdefault((name.split("_")[0], name.split("_")[-1][:-5]), {})[name.split("_")[1]] = ok
    pairs = sum((t["left"] and t["right"]) + (t["on"] and t["under"]) for t in table.values())
    sets = sum(sum(t.values()) == 4 for t in table.values())
    assert got["accuracy"] == pytest.approx(100 * correct.mean())
    assert got["pair_accuracy"] == pytest.approx(pairs * 100 / (len(records) / 2))
    assert got["set_accuracy"] == pytest.approx(sets * 100 / (len(records) / 4))
    assert got["position.on.accuracy"] == pytest.approx(100 * correct[2::4].mean())
  # A tie at the top: the official argmax takes the right caption, hpjax calls it wrong.
  tie = [np.array([[1.0, 1.0, 0.0, 0.0]], np.float32)]
  assert group_metrics.group_figures(groups.WHATSUP, suite.groups[:1], tie)["accuracy"] == 0


def test_whatsup_qa_files_and_their_images(tmp_path):
  write_json(str(tmp_path / "coco_qa_two_obj.json"), [[139, "A left of B", "A right of B"]])
  write_json(str(tmp_path / "vg_qa_one_obj.json"), [[7, "a dog on the top", "a dog on the bottom"]])
  coco = groups.load_whatsup(str(tmp_path / "coco_qa_two_obj.json"), "/w")
  assert coco.groups[0].images == ("/w/val2017/000000000139.jpg",)
  assert coco.groups[0].captions == ("A left of B", "A right of B")
  assert groups.load_whatsup(str(tmp_path / "vg_qa_one_obj.json")).groups[0].images == (
      "vg_images/7.jpg",)
  write_json(str(tmp_path / "other.json"), [[7, "x", "y"]])
  with pytest.raises(suites.SuiteFormatError, match=r"other.json \[index 0\]: a list record"):
    groups.load_whatsup(str(tmp_path / "other.json"))


def test_valse_reads_the_valid_subset_of_the_real_file_and_scores_acc_r():
  path = DATA / "valse" / "coreference-hard.json"
  raw = json.loads(path.read_text())
  suite = groups.load_valse(str(path), "/valse")
  valid = {k: v for k, v in raw.items() if v["mturk"]["caption"] >= 2}
  assert len(suite.groups) == len(valid) == 104  # of the file's 141 samples
  first_key = next(iter(valid))
  assert suite.groups[0].index == first_key
  assert suite.groups[0].images == ("/valse/" + valid[first_key]["image_file"],)
  assert suite.groups[0].captions == (valid[first_key]["caption"], valid[first_key]["foil"])
  scores = np.random.default_rng(1).integers(0, 4, (104, 2)).astype(np.float32)
  got = group_metrics.group_figures(groups.VALSE, suite.groups, [s[None] for s in scores])
  # lxmert_valse_eval.py's pairwise accuracy: the caption strictly above the foil.
  assert got["acc_r"] == pytest.approx(100 * np.mean(scores[:, 0] > scores[:, 1]))


def test_cola_multi_object_on_the_real_file_matches_cola_multi_obj_acc():
  suite = benchmarks.load("cola", str(DATA / "cola"), image_dir="/gqa")["cola.multi_object"]
  raw = json.loads((DATA / "cola" / "COLA_multiobjects_matching_benchmark.json").read_text())
  assert len(suite.groups) == len(raw) == 210
  assert suite.groups[0].images[0] == "/gqa/" + raw[0][0].rsplit("/", 1)[1]
  assert suite.groups[0].captions == (raw[0][1], raw[0][3])
  rng = np.random.default_rng(2)
  matrices = [rng.integers(0, 3, (2, 2)).astype(np.float32) for _ in raw]
  got = group_metrics.group_figures(groups.COLA_MULTI, suite.groups, matrices)
  official = [p[0, 0] > p[1, 0] and p[1, 1] > p[0, 1] for p in matrices]  # ColaMultiObjAcc
  assert got["accuracy"] == pytest.approx(100 * np.mean(official))


def _imagecode_tree(root, sets):
  """valid_data.json and image-sets/<set>/imgN.jpg as ImageCoDe publishes them."""
  data = {}
  for k, (name, (frames, targets)) in enumerate(sets.items()):
    folder = os.path.join(root, "image-sets", name)
    os.makedirs(folder, exist_ok=True)
    for n in frames:
      write_random_image(os.path.join(folder, f"img{n}.jpg"), seed=100 * k + n)
    data[name] = {str(t): f"description {t} of {name} " for t in targets}
  write_json(os.path.join(root, "valid_data.json"), data)
  return data


def test_imagecode_orders_images_by_number_and_scores_ragged_sets(tmp_path):
  sets = {"video-a_1": (range(0, 20, 2), (3, 7)), "open-images-b": (range(10), (0,)),
          "video-c_2": ((2, 10, 1), (2,))}  # ragged: 3 images, numbers out of text order
  _imagecode_tree(str(tmp_path), sets)
  suite = benchmarks.load("imagecode", str(tmp_path),
                          image_dir=str(tmp_path / "image-sets"))["imagecode.valid"]
  assert [len(g.images) for g in suite.groups] == [10, 10, 10, 3]
  assert [os.path.basename(p) for p in suite.groups[3].images] == [
      "img1.jpg", "img2.jpg", "img10.jpg"]
  assert suite.groups[0].matches == ((3, 0),) and suite.groups[0].captions[0].endswith("video-a_1")
  rng = np.random.default_rng(3)
  matrices = [rng.normal(size=(len(g.images), 1)).astype(np.float32) for g in suite.groups]
  got = group_metrics.group_figures(groups.IMAGECODE, suite.groups, matrices)
  # zero_shot.py: the best-ranked image is the target.
  hits = [int(np.argsort(-m[:, 0])[0]) == g.matches[0][0] for g, m in zip(suite.groups, matrices)]
  assert got["accuracy"] == pytest.approx(100 * np.mean(hits))
  assert got["accuracy_static"] == 100 * hits[2]
  assert got["accuracy_video"] == pytest.approx(100 * np.mean([hits[0], hits[1], hits[3]]))


def test_imagecode_on_the_real_validation_file(tmp_path):
  """McGill-NLP/imagecode's data/valid_data.json, whole; every set's folder holds ImageCoDe's
  10 frames img0.jpg ... img9.jpg (empty files: the loader lists them, it does not decode)."""
  raw = json.loads((DATA / "imagecode" / "valid_data.json").read_text())
  for name in raw:
    os.makedirs(tmp_path / name)
    for n in range(10):
      (tmp_path / name / f"img{n}.jpg").write_bytes(b"")
  suite = benchmarks.load("imagecode", str(DATA / "imagecode"),
                          image_dir=str(tmp_path))["imagecode.valid"]
  described = [(name, key, text) for name, texts in raw.items() for key, text in texts.items()]
  assert len(suite.groups) == len(described) == 2302  # descriptions of the file's 1039 sets
  for group, (name, key, text) in zip(suite.groups, described):  # every index within its set
    assert group.index == f"{name}/{key}" and group.captions == (text.strip(),)
    assert group.matches == ((int(key), 0),)
    assert group.images == tuple(str(tmp_path / name / f"img{n}.jpg") for n in range(10))
  static = sum(name.startswith("open-images") for name, _, _ in described)
  assert sum(dict(g.tags)["source"] == "static" for g in suite.groups) == static


def test_imagecode_index_past_the_set_is_an_error_naming_file_and_record(tmp_path):
  _imagecode_tree(str(tmp_path), {"video-c_2": ((2, 10, 1), (5,))})
  with pytest.raises(suites.SuiteFormatError,
                     match=r"valid_data.json \[index video-c_2/5\]: match \(image 5, caption 0\)"):
    groups.load_imagecode(str(tmp_path / "valid_data.json"), str(tmp_path / "image-sets"))
  with pytest.raises(ValueError, match="valid_data.json: ImageCoDe needs its image-sets folder"):
    groups.load_imagecode(str(tmp_path / "valid_data.json"))


def test_winoground_record_missing_a_field_names_file_and_record(tmp_path):
  path = tmp_path / "examples.jsonl"
  path.write_text(json.dumps({"id": 4, "image_0": "a", "image_1": "b", "caption_0": "x"}) + "\n")
  with pytest.raises(suites.SuiteFormatError, match=r"examples.jsonl \[index 4\]: missing field "
                                                    "'caption_1'"):
    groups.load_winoground(str(path))


# ---------------------------------------------------------------------------------------------
# The group scorer against a per-record OpenCLIP loop.

def _winoground_with_images(root, num=6):
  _winoground_file(os.path.join(root, "examples.jsonl"), num)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  for k in range(num):
    for i in (0, 1):
      write_random_image(os.path.join(root, "images", f"ex_{k}_img_{i}.png"), seed=10 * k + i)


def _config(root, **extra):
  config = eval_hp.get_config()
  config.extra.winoground_root = root
  config.extra.winoground_image_dir = os.path.join(root, "images")
  config.extra.imagecode_root = root
  config.extra.imagecode_image_dir = os.path.join(root, "image-sets")
  for key, value in extra.items():
    config[key] = value
  return config


@pytest.fixture(scope="module")
def group_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("groups"))
  _winoground_with_images(root)
  _imagecode_tree(root, {"video-a_1": ((0, 3, 5), (0, 2)), "open-images-b": ((1, 4), (1,))})
  return root


def test_group_scorer_matches_openclip_per_record_on_1_and_8_devices(tiny_pair, group_root,
                                                                    tmp_path):
  config, model, params, torch_model = tiny_pair
  loaded = benchmarks.load_config(_config(group_root))
  assert sorted(loaded) == ["imagecode.valid", "winoground"]
  records = [r for s in loaded.values() for r in s.records]
  expected = per_record_scores(records, None, config.vision.image_size,
                               *torch_encoders(torch_model))
  results = {}
  for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
    evaluator = hard_positive.HardPositiveEvaluator(
        model, loaded, batch_size=4, text_batch_size=8, num_workers=2, devices=devices,
        matmul_precision="highest")
    results[name] = evaluator.run(params)
    results[name + "_scores"] = {n: s.scores for n, s in evaluator.last_scores.items()}
    stats = evaluator.last_stats
  figures = {n: {k: v for k, v in results[n].items() if not k.startswith("eval/")}
             for n in ("one", "eight")}  # timings aside
  assert len(jax.devices()) == 8 and figures["one"] == figures["eight"]
  for name in loaded:
    np.testing.assert_allclose(results["eight_scores"][name], results["one_scores"][name],
                               atol=1e-6)
  start = 0
  for name, suite in loaded.items():
    got = results["eight_scores"][name]
    np.testing.assert_allclose(got, expected[start:start + len(got), :got.shape[1]], atol=1e-4)
    start += len(got)
  # Every distinct image decoded and encoded once: 12 Winoground + 5 ImageCoDe files, though
  # ImageCoDe's first set is scored against two descriptions.
  assert stats["distinct_images"] == stats["images_decoded"] == 17
  assert len(records) == 12 + 3 * 2 + 2
  # The figures follow from the per-record scores by the official definitions.
  wino = loaded["winoground"]
  matrices, scored = group_scorer.group_matrices(wino, results["eight_scores"]["winoground"],
                                                 np.ones(len(wino.records), bool))
  text = [s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0] for s in matrices]
  assert scored.all()
  assert results["eight"]["winoground/text_score"] == pytest.approx(100 * np.mean(text))
  assert results["eight"]["imagecode.valid/n"] == 3
  # The reports take group suites: an ImageCoDe image record has no caption of its own.
  written = evaluator.write_reports(str(tmp_path), label="tiny")
  with open(os.path.join(tmp_path, "scores", "tiny", "imagecode.valid.jsonl")) as f:
    assert len(f.readlines()) == 8
  assert os.path.getsize(written["gallery.html"]) > 0


def test_a_group_with_a_missing_image_is_an_error_or_a_counted_skip(tiny_pair, group_root,
                                                                    tmp_path):
  _, model, params, _ = tiny_pair
  root = str(tmp_path)
  _winoground_with_images(root, 4)
  missing = os.path.join(root, "images", "ex_2_img_1.png")
  os.remove(missing)
  loaded = benchmarks.load("winoground", root, image_dir=os.path.join(root, "images"))
  kw = dict(batch_size=4, num_workers=2)
  with pytest.raises(scorer_lib.ImageError, match="1 missing image") as error:
    hard_positive.HardPositiveEvaluator(model, loaded, **kw).run(params)
  assert missing in str(error.value)
  figures = hard_positive.HardPositiveEvaluator(model, loaded, skip_missing_images=True,
                                                **kw).run(params)
  assert figures["winoground/skipped_groups"] == 1 and figures["winoground/n"] == 3
  assert figures["winoground/skipped_records"] == 1  # the image record itself


def test_eval_config_names_every_group_benchmark_field():
  config = eval_hp.get_config("extra.valse_root=/v,extra.imagecode_image_dir=/i")
  for name in ("winoground", "whatsup", "valse", "cola", "imagecode", "bivlc"):
    benchmark = benchmarks.BENCHMARKS[name]
    for field in (benchmark.root_field, benchmark.files_field, benchmark.image_field):
      assert field.startswith("extra.") and field.split(".")[1] in config.extra
    assert "@" in benchmark.follows or "huggingface.co" in benchmark.follows
  assert config.extra.valse_root == "/v"


def test_valse_pieces_combine_into_their_mean(tmp_path):
  for piece in ("existence", "plurals"):
    write_json(str(tmp_path / f"{piece}.json"), {
        f"{piece}_{k}": {"image_file": f"{piece}{k}.jpg", "caption": f"c {piece} {k}",
                         "foil": f"f {piece} {k}", "mturk": {"foil": 0, "caption": 2 + k % 2,
                                                             "other": 0}}
        for k in range(3)})
  loaded = benchmarks.load("valse", str(tmp_path))
  assert sorted(loaded) == ["valse.existence", "valse.plurals"]
  figures = {"valse.existence": {"acc_r": 50.0, "n": 2.0, "skipped_groups": 1.0},
             "valse.plurals": {"acc_r": 100.0, "n": 3.0, "skipped_groups": 0.0}}
  combined = benchmarks.combined_figures(figures, loaded)["valse"]
  assert combined == {"acc_r": 75.0, "n": 5.0, "skipped_groups": 1.0}


def _bivlc_parquet(path, num=9):
  """A BiVLC test split as the Hugging Face dataset stores it: images embedded as {bytes, path}
  structs (here PNGs of random pixels; rows 0 and 3 share their COCO image, as BiVLC's rows
  built on one COCO image do)."""

  def png(seed):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}

  rows = {"image": [png(k % 3) for k in range(num)],
          "caption": [f"a caption {k}" for k in range(num)],
          "negative_caption": [f"a negative caption {k}" for k in range(num)],
          "negative_image": [png(100 + k) for k in range(num)],
          "type": [("replace", "swap", "add")[k % 3] for k in range(num)],
          "subtype": ["obj"] * num}
  pq.write_table(pa.table(rows), str(path))
  return rows


def test_bivlc_parquet_images_are_written_once_and_t2i_matches_evaluate_bivlc(tmp_path):
  rows = _bivlc_parquet(tmp_path / "test.parquet")
  suite = benchmarks.load("bivlc", str(tmp_path), image_dir=str(tmp_path / "img"))["bivlc.test"]
  assert len(suite.groups) == 9 and len(os.listdir(tmp_path / "img")) == 3 + 9
  assert suite.groups[0].images[0] == suite.groups[3].images[0]  # one COCO image, one file
  with open(suite.groups[4].images[1], "rb") as f:
    assert f.read() == rows["negative_image"][4]["bytes"]
  assert suite.groups[2].captions == ("a caption 2", "a negative caption 2")
  assert suite.groups[2].tags == (("type", "add"), ("subtype", "obj"))
  rng = np.random.default_rng(4)
  matrices = [rng.integers(0, 3, (2, 2)).astype(np.float32) for _ in range(9)]
  got = group_metrics.group_figures(groups.BIVLC, suite.groups, matrices)
  # evaluate_BiVLC with s[i][j] = score(image i, caption j); image 0 / caption 0 the positives.
  t2i = np.array([s[0][0] > s[1][0] and s[1][1] > s[0][1] for s in matrices])
  i2t = np.array([s[0][0] > s[0][1] and s[1][1] > s[1][0] for s in matrices])
  assert got["t2i"] == pytest.approx(100 * t2i.mean())
  assert got["group_score"] == pytest.approx(100 * (t2i & i2t).mean())
  assert got["tneg_2i"] == pytest.approx(100 * np.mean([s[1][1] > s[0][1] for s in matrices]))
  assert got["type.swap.t2i"] == pytest.approx(100 * t2i[1::3].mean())


def test_bivlc_file_without_its_columns_is_an_error_naming_it(tmp_path):
  pq.write_table(pa.table({"caption": ["x"]}), str(tmp_path / "bad.parquet"))
  with pytest.raises(suites.SuiteFormatError, match=r"bad.parquet: missing columns \['image'"):
    groups.load_bivlc(str(tmp_path / "bad.parquet"))


def test_the_evaluate_program_reports_group_suites_beside_the_others(group_root, tmp_path):
  config = _config(group_root, model="hpjax-tiny", checkpoints="random", batch_size=4,
                   num_workers=2)
  figures = runner.run(config, str(tmp_path))["random-init"]
  assert figures["winoground/n"] == 6 and figures["imagecode.valid/n"] == 3
  assert 0 <= figures["winoground/group_score"] <= figures["winoground/text_score"]
  with open(tmp_path / "results.json") as f:
    assert "winoground/collapsed_tag.Both.group_score" in f.read()


def test_an_imagecode_set_folder_that_is_missing_is_named(tiny_pair, tmp_path):
  _, model, params, _ = tiny_pair
  _imagecode_tree(str(tmp_path), {"video-a_1": ((0, 3, 5), (1,)), "video-b_2": ((0, 1), (0,))})
  absent = tmp_path / "image-sets" / "video-b_2"
  for name in os.listdir(absent):
    os.remove(absent / name)
  os.rmdir(absent)
  loaded = benchmarks.load("imagecode", str(tmp_path), image_dir=str(tmp_path / "image-sets"))
  assert loaded["imagecode.valid"].groups[1].images == (str(absent),)
  with pytest.raises(scorer_lib.ImageError, match="1 missing image") as error:
    hard_positive.HardPositiveEvaluator(model, loaded, batch_size=4, num_workers=2).run(params)
  assert str(absent) in str(error.value)
  figures = hard_positive.HardPositiveEvaluator(model, loaded, batch_size=4, num_workers=2,
                                                skip_missing_images=True).run(params)
  assert figures["imagecode.valid/skipped_groups"] == 1 and figures["imagecode.valid/n"] == 1
