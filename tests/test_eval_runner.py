"""The evaluator and the eval runner end to end on a tiny fixture: suites, images, two models."""

import dataclasses
import json
import os

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from configs import eval_hp
from helpers import (COLORS, OBJECTS, flax_encoders, hard_positive_figures, per_record_scores,
                     run_main_on_processes, write_fixture_suites, write_json)
from hpjax.data import suites
from hpjax.evaluate import benchmarks
from hpjax.evaluate import hard_positive
from hpjax.evaluate import metrics
from hpjax.evaluate import runner
from hpjax.evaluate import stand_in_images
from openclip_reference import openclip_model

@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("suites"))
  write_fixture_suites(root)
  return root


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
  """Two random tiny models saved as OpenCLIP state dicts (PyTorch init is quick on CPU)."""
  folder = tmp_path_factory.mktemp("ckpts")
  paths = []
  for seed in (0, 1):
    paths.append(str(folder / f"tiny_seed{seed}.pt"))
    torch.save(openclip_model("hpjax-tiny", seed).state_dict(), paths[-1])
  return paths


def test_evaluator_from_a_folder_as_the_trainer_calls_it(fixture_root, tiny_pair):
  config, model, params, _ = tiny_pair
  evaluator = hard_positive.HardPositiveEvaluator(
      model, fixture_root, image_root=os.path.join(fixture_root, "images"), batch_size=8)
  figures = evaluator.run(params)
  assert set(evaluator.suites) == {"replace_attributes", "replace_relations", "swap"}
  encoders = flax_encoders(model, params)
  for name in ("replace_attributes", "replace_relations", "swap"):
    # The scores and figures again, record by record here, with the roles read from the records.
    suite = evaluator.suites[name]
    want = per_record_scores(suite.records, os.path.join(fixture_root, "images"),
                             config.vision.image_size, *encoders)
    np.testing.assert_allclose(evaluator.last_scores[name].scores, want, atol=1e-5, err_msg=name)
    for figure, value in hard_positive_figures(want, suite.records[0].roles).items():
      assert figures[f"{name}/{figure}"] == pytest.approx(value), (name, figure)
    assert figures[f"{name}/n"] == 10 and figures[f"{name}/skipped_records"] == 0
  assert figures["replace/original"] == pytest.approx(
      (figures["replace_attributes/original"] + figures["replace_relations/original"]) / 2)
  assert figures["replace/n"] == 20 and np.isfinite(figures["eval/images_per_s"])


def test_evaluator_counts_skipped_records(fixture_root, tiny_pair, tmp_path):
  images = os.path.join(tmp_path, "images")
  loaded = benchmarks.load_hard_positive(fixture_root)
  stand_in_images.write_stand_in_images([r for s in loaded.values() for r in s.records], images)
  os.remove(os.path.join(images, "aro/0.jpg"))  # 4 of the 10 SWAP records
  _, model, params, _ = tiny_pair
  evaluator = hard_positive.HardPositiveEvaluator(model, loaded, images, batch_size=8,
                                                  skip_missing_images=True)
  figures = evaluator.run(params)
  assert figures["swap/skipped_records"] == 4 and figures["swap/n"] == 6
  assert figures["replace/skipped_records"] == 0


def test_runner_writes_every_report_for_two_checkpoints(fixture_root, tiny_checkpoints, tmp_path):
  labels = [os.path.basename(p) for p in tiny_checkpoints]
  config = eval_hp.get_config(
      f"model=hpjax-tiny,suite_root={fixture_root},image_root={fixture_root}/images,"
      f"checkpoints={'+'.join(tiny_checkpoints)},batch_size=8,gallery_size=3")
  workdir = str(tmp_path / "work")
  out = runner.run(config, workdir)
  assert list(out) == labels
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)["models"]
  digests = [m["checkpoint_digest"] for m in results]
  assert all(d.startswith("sha256:") for d in digests) and digests[0] != digests[1]
  for m in results:
    assert all(np.isfinite(m["metrics"][f"{s}/{k}"]) for s in ("replace", "swap")
               for k in ("original", "augmented", "brittleness", "hard_positive"))
    assert m["timings"]["distinct_images"] == 4 + 10  # every SWAP record has its own box
  # Different weights, different scores: each checkpoint was really loaded.
  assert out[labels[0]] != out[labels[1]]
  table = open(os.path.join(workdir, "results.md")).read()
  assert all(f"| {label} |" in table for label in labels)
  for label in labels:
    for suite in ("replace_attributes", "replace_relations", "swap"):
      with open(os.path.join(workdir, "scores", label, f"{suite}.jsonl")) as f:
        lines = [json.loads(line) for line in f]
      assert len(lines) == 10 and all(len(x["scores"]) == 3 for x in lines)
      counts = {c: sum(x["category"] == c for x in lines) for c in metrics.ORDER_CATEGORIES}
      assert [counts[c] for c in metrics.ORDER_CATEGORIES] == [
          out[label][f"{suite}/count/{c}"] for c in metrics.ORDER_CATEGORIES]
  with Image.open(os.path.join(workdir, "ordering.png")) as png:
    assert png.size[0] > 100
  gallery = open(os.path.join(workdir, "gallery.html")).read()
  assert gallery.count("<img src='data:image/jpeg;base64,") == 2 * 3 * 3


def test_evaluator_on_other_benchmarks(tmp_path, tiny_pair):
  """SugarCrepe files and their mean, SugarCrepe++ ITT/TOT from text cosines, ARO macro."""
  for name in ("add_att", "swap_obj"):
    write_json(os.path.join(tmp_path, "sc", f"{name}.json"), {
        str(k): {"filename": f"{k % 3}.jpg", "caption": f"a {COLORS[k % 6]} {OBJECTS[k % 5]}",
                 "negative_caption": f"a {COLORS[(k + 1) % 6]} {OBJECTS[k % 5]}"}
        for k in (0, 2, 5, 9)})
  write_json(os.path.join(tmp_path, "pp", "swap_att.json"), [
      {"filename": f"{k % 3}.jpg", "caption": f"a {COLORS[k]} dog", "caption2": f"a dog that is "
       f"{COLORS[k]}", "negative_caption": f"a {COLORS[k + 1]} cat"} for k in range(4)])
  write_json(os.path.join(tmp_path, "vgr.json"), [
      {"image_path": f"{k % 3}.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 32, "bbox_h": 32,
       "relation_name": ("under", "on", "on")[k % 3], "true_caption": f"the {OBJECTS[k % 5]} is "
       "on the table", "false_caption": f"the table is on the {OBJECTS[k % 5]}"} for k in range(6)])
  loaded = benchmarks.load("sugarcrepe", os.path.join(tmp_path, "sc"),
                           ("add_att.json", "swap_obj.json"))
  loaded.update(benchmarks.load("sugarcrepe_pp", files=[os.path.join(tmp_path, "pp",
                                                                     "swap_att.json")]))
  loaded.update(benchmarks.load("aro", files=[os.path.join(tmp_path, "vgr.json")]))
  for corpus in ("vaw", "vg"):  # two action.json files, SWiG-like 3 POS + 3 NEG records
    write_json(os.path.join(tmp_path, "vlc", "Attribute", corpus, "action.json"), [
        [f"{k % 3}.jpg", {"POS": [f"a {COLORS[(k + j) % 6]} {OBJECTS[j]}" for j in range(3)],
                          "NEG": [f"a {COLORS[(k + j) % 6]} {OBJECTS[j + 1]}" for j in range(3)]}]
        for k in range(4 if corpus == "vg" else 3)])
  loaded.update(benchmarks.load("vl_checklist", os.path.join(tmp_path, "vlc")))
  aro = loaded["aro.vgr"]
  images = os.path.join(tmp_path, "images")
  stand_in_images.write_stand_in_images([r for s in loaded.values() for r in s.records], images)
  config, model, params, _ = tiny_pair
  evaluator = hard_positive.HardPositiveEvaluator(model, loaded, images, batch_size=8)
  figures = evaluator.run(params)
  # Every figure again, from scores computed record by record here (c, c_n[, c_p] by role).
  encoders = flax_encoders(model, params)
  want = {name: per_record_scores(suite.records, images, config.vision.image_size, *encoders)
          for name, suite in loaded.items()}
  for name, scores in want.items():
    np.testing.assert_allclose(evaluator.last_scores[name].scores[:, :scores.shape[1]], scores,
                               atol=1e-5, err_msg=name)
  for name in ("sugarcrepe.add_att", "sugarcrepe.swap_obj"):  # roles (c, c_n)
    assert figures[f"{name}/accuracy"] == 100 * np.mean(want[name][:, 0] > want[name][:, 1])
  assert figures["sugarcrepe/accuracy"] == pytest.approx(
      (figures["sugarcrepe.add_att/accuracy"] + figures["sugarcrepe.swap_obj/accuracy"]) / 2)
  assert figures["sugarcrepe.add_att/n"] == 4
  pp = want["sugarcrepe_pp.swap_att"]  # roles (c, c_p, c_n)
  assert figures["sugarcrepe_pp.swap_att/itt"] == 100 * np.mean((pp[:, 0] > pp[:, 2]) &
                                                                (pp[:, 1] > pp[:, 2]))
  texts = [r.captions for r in loaded["sugarcrepe_pp.swap_att"].records]
  feats = np.stack([encoders[1](open_clip.tokenize(list(t))) for t in texts])
  cos = lambda a, b: np.sum(feats[:, a] * feats[:, b], axis=-1)
  assert figures["sugarcrepe_pp.swap_att/tot"] == 100 * np.mean((cos(0, 1) > cos(0, 2)) &
                                                                (cos(0, 1) > cos(1, 2)))
  # ARO: the mean of per-relation accuracies (2 "under", 4 "on"), which here differs from the
  # accuracy over records.
  correct = want[aro.name][:, 0] > want[aro.name][:, 1]
  relations = np.array([r.group for r in aro.records])
  macro = 100 * np.mean([correct[relations == g].mean() for g in ("on", "under")])
  assert macro != 100 * correct.mean()
  assert figures["aro.vgr/macro_accuracy"] == pytest.approx(macro)
  assert figures["aro.vgr/accuracy"] == pytest.approx(100 * correct.mean())
  assert figures["aro.vgr/groups"] == 2
  official = {}
  for corpus in ("vaw", "vg"):
    scores = evaluator.last_scores[f"vl_checklist.Attribute.{corpus}.action"].scores
    official[corpus] = 100 * np.mean(scores[:, 0] > scores[:, 3])  # texts_pos[0] vs texts_neg[0]
    assert figures[f"vl_checklist.Attribute.{corpus}.action/accuracy"] == pytest.approx(
        official[corpus])
    assert figures[f"vl_checklist.Attribute.{corpus}.action/all_pairs_accuracy"] == pytest.approx(
        100 * np.mean(scores[:, :3].min(1) > scores[:, 3:].max(1)))
  assert figures["vl_checklist.type.Attribute.action/accuracy"] == pytest.approx(
      (official["vaw"] + official["vg"]) / 2)
  assert figures["vl_checklist.type.Attribute.action/n"] == 7


@pytest.mark.slow
def test_runner_on_two_processes_matches_one_process(fixture_root, tiny_checkpoints, tmp_path):
  """2 processes x 2 devices vs 1 process x 8 devices: each host decodes its slice of every
  global batch; process 0 writes the reports."""
  args = (f"model=hpjax-tiny,suite_root={fixture_root},image_root={fixture_root}/images,"
          f"checkpoints={tiny_checkpoints[0]},batch_size=8")
  label = os.path.basename(tiny_checkpoints[0])
  one = runner.run(eval_hp.get_config(args), str(tmp_path / "one"))[label]
  logs = run_main_on_processes(f"configs/eval_hp.py:{args}", tmp_path / "two")
  assert "process 0 of 2; 2 local of 4 devices" in logs[0]
  with open(tmp_path / "two" / "results.json") as f:
    two = json.load(f)["models"][0]["metrics"]
  figures = [k for k in one if not k.startswith("eval/")]
  assert {k: two[k] for k in figures} == {k: one[k] for k in figures}
  for suite in ("replace_attributes", "replace_relations", "swap"):
    rows = [[json.loads(line)["scores"] for line in open(tmp_path / run / "scores" / label /
                                                         f"{suite}.jsonl")]
            for run in ("one", "two")]
    np.testing.assert_allclose(rows[1], rows[0], atol=1e-5)


def test_config_picks_suites_and_extra_benchmarks(fixture_root, tmp_path):
  vga = os.path.join(tmp_path, "vga.json")
  write_json(vga, [{"image_path": "1.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 4, "bbox_h": 4,
                "true_caption": "a", "false_caption": "b", "attributes": ["x", "y"]}])
  vlc = os.path.join(tmp_path, "color.json")
  write_json(vlc, [["1.jpg", {"POS": ["a red ball"], "NEG": ["a blue ball"]}]])
  config = eval_hp.get_config(f"suite_root={fixture_root},suites=replace_relations+swap,"
                              f"extra.aro_files={vga},extra.vl_checklist_files={vlc},"
                              "extra.aro_image_dir=/aro")
  loaded = benchmarks.load_config(config)
  assert sorted(loaded) == ["aro.vga", "replace_relations", "swap", "vl_checklist.color"]
  assert loaded["aro.vga"].records[0].image == "/aro/1.jpg"
  with pytest.raises(ValueError, match="unknown suite 'replace_all'"):
    benchmarks.load_config(eval_hp.get_config(f"suite_root={fixture_root},suites=replace_all"))
  with pytest.raises(KeyError, match="no field 'suite_dir'"):
    eval_hp.get_config("suite_dir=/x")


def _strict_json(path):
  def refuse(constant):
    raise ValueError(f"{path}: bare {constant} is not JSON")
  with open(path) as f:
    return json.loads(f.read(), parse_constant=refuse)


def test_a_suite_that_scores_nothing_is_an_error_unless_allowed(fixture_root, tiny_pair,
                                                                 tmp_path):
  """With skip_missing_images, a wrong image root (found before scoring) or unreadable images
  skip every record: an error naming the suite and why; with allow_empty_suites the figures
  are null in strict JSON, not NaN."""
  _, model, params, _ = tiny_pair
  loaded = benchmarks.load_hard_positive(fixture_root, ["swap"])
  wrong = str(tmp_path / "no_images_here")
  evaluator = hard_positive.HardPositiveEvaluator(model, loaded, wrong, batch_size=8,
                                                  skip_missing_images=True)
  with pytest.raises(hard_positive.EmptySuiteError,
                     match=r"suite swap: none of its 10 images is under image root .*no_images"):
    evaluator.run(params)
  unreadable = tmp_path / "unreadable"
  for record in loaded["swap"].records:
    (unreadable / record.image).parent.mkdir(parents=True, exist_ok=True)
    (unreadable / record.image).write_text("not an image")
  evaluator = hard_positive.HardPositiveEvaluator(model, loaded, str(unreadable), batch_size=8,
                                                  skip_missing_images=True)
  with pytest.raises(hard_positive.EmptySuiteError,
                     match=r"suite swap: all 10 records were skipped.*unreadable"):
    evaluator.run(params)
  empty = suites.Suite("vl_checklist.x", suites.VL_CHECKLIST, (), "/data/x.json")
  with pytest.raises(hard_positive.EmptySuiteError, match=r"vl_checklist.x: /data/x.json has no"):
    hard_positive.HardPositiveEvaluator(model, {**loaded, empty.name: empty}, wrong)
  evaluator.allow_empty_suites = True  # as if constructed with it (keeps the compiled encoders)
  figures = evaluator.run(params)
  assert figures["swap/n"] == 0 and figures["swap/skipped_records"] == 10
  evaluator.write_reports(str(tmp_path / "reports"))
  metrics_json = _strict_json(tmp_path / "reports" / "results.json")["models"][0]["metrics"]
  assert metrics_json["swap/augmented"] is None and metrics_json["swap/n"] == 0
  for line in open(tmp_path / "reports" / "scores" / "model" / "swap.jsonl"):
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c))["scores"] == [None] * 3


def test_crop_boxes_past_the_image_are_padded_and_counted(fixture_root, tiny_pair, tmp_path):
  """SWAP boxes that overrun the image are scored on PIL's black-padded crop, as the authors'
  code does, and counted in the figures and in results.json."""
  _, model, params, _ = tiny_pair
  swap = benchmarks.load_hard_positive(fixture_root, ["swap"])["swap"]
  records = list(swap.records)
  for i in (1, 2, 4):  # stand-in images are at most 112 px a side; 1 and 4 share an image
    records[i] = dataclasses.replace(records[i], crop=(50.0, 60.0, 100.0, 90.0))
  # The same record on PIL's padded crop saved as an image of its own, scored uncropped.
  precropped = str(tmp_path / "precropped.png")
  with Image.open(os.path.join(fixture_root, "images", records[4].image)) as image:
    image.convert("RGB").crop((50, 60, 150, 150)).save(precropped)
  loaded = {"swap": dataclasses.replace(swap, records=tuple(records)),
            "precropped": suites.Suite("precropped", suites.HARD_POSITIVE, (
                dataclasses.replace(records[4], image=precropped, crop=None),))}
  evaluator = hard_positive.HardPositiveEvaluator(
      model, loaded, os.path.join(fixture_root, "images"), batch_size=8)
  figures = evaluator.run(params)
  assert figures["swap/padded_boxes"] == 3 and figures["swap/n"] == 10
  assert "precropped/padded_boxes" not in figures  # a suite without crops has no such figure
  assert evaluator.last_stats["padded_boxes"] == 2  # distinct (image, box) pairs
  np.testing.assert_array_equal(evaluator.last_scores["swap"].scores[4],
                                evaluator.last_scores["precropped"].scores[0])
  evaluator.write_reports(str(tmp_path / "reports"))
  assert _strict_json(tmp_path / "reports" / "results.json")["models"][0]["metrics"][
      "swap/padded_boxes"] == 3


@pytest.mark.parametrize("field, value, message", [
    ("text_batch_size", -1, "text_batch_size=-1 must be a positive integer"),
    ("batch_size", 0, "batch_size=0 must be a positive integer"),
    ("num_workers", 0, "num_workers=0 must be a positive integer"),
    ("models_per_pass", 0, "models_per_pass=0 must be a positive integer"),
    ("gallery_size", -1, "gallery_size=-1 must be an integer >= 0"),
    ("matmul_precision", "fast", "matmul_precision='fast' must be one of"),
    ("dtype", "float64", "dtype='float64' must be one of"),
])
def test_evaluation_config_values_are_checked_before_any_work(tmp_path, field, value, message):
  """Before the suites are read (suite_root does not even exist) and nothing is written."""
  config = eval_hp.get_config(f"suite_root={tmp_path}/absent,{field}={value}")
  with pytest.raises(ValueError, match=f"^config: .*{message}"):
    runner.run(config, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")
  runner.check_values(eval_hp.get_config(f"{field}={eval_hp.get_config()[field]}"))
