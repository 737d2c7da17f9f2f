"""The benchmark catalog: suites named by path, duplicates refused, one table for the config and
the evaluator, and VL-CheckList scored and combined as its official code does."""

import os

import numpy as np
import pytest

from configs import eval_hp
from helpers import write_json
from hpjax.data import suites
from hpjax.evaluate import benchmarks
from hpjax.evaluate import hard_positive
from hpjax.evaluate import metrics
from hpjax.models import CLIP, get_model_config

# A slice of the official VL-CheckList data/ tree: three files named action.json, SWiG files
# with 3 POS + 3 NEG, and an empty swig_place file as the real tree ships.
VLC_FILES = {
    "Attribute/vaw/action.json": 2, "Attribute/vg/action.json": 3,
    "Relation/vg/action.json": 1, "Relation/swig_action.json": 2,
    "Object/Size/swig_size/swig_agent/swig_agent_large.json": 2,
    "Object/Size/swig_size/swig_tool/swig_tool_large.json": 1,
    "Object/Size/vg_size/vg_obj_large.json": 1,
    "Object/Size/swig_size/swig_place/swig_place_large.json": 0,
}



def _vlc_tree(root, files=VLC_FILES):
  for rel, count in files.items():
    many = "swig" in rel
    write_json(os.path.join(root, rel), [
        [f"{rel}/{k}.jpg", {"POS": [f"pos {k} {j} {rel}" for j in range(3 if many else 1)],
                            "NEG": [f"neg {k} {j} {rel}" for j in range(3 if many else 1)]}]
        for k in range(count)])
  return root


def test_walking_the_vl_checklist_tree_keeps_every_file_apart(tmp_path):
  root = _vlc_tree(str(tmp_path / "vlc"))
  loaded = benchmarks.load("vl_checklist", root, image_dir="/vg")
  expected = {"vl_checklist." + os.path.splitext(rel)[0].replace("/", "."): n
              for rel, n in VLC_FILES.items() if n}
  assert {name: len(s) for name, s in loaded.items()} == expected  # the empty file left out
  suite = loaded["vl_checklist.Attribute.vg.action"]
  assert suite.kind == suites.VL_CHECKLIST
  assert suite.path == os.path.join(root, "Attribute/vg/action.json")
  assert suite.records[0].source == "Attribute/vg/action.json"
  assert suite.records[0].image == "/vg/Attribute/vg/action.json/0.jpg"


def test_explicit_files_are_named_below_their_common_folder(tmp_path):
  root = _vlc_tree(str(tmp_path / "vlc"))
  files = [os.path.join(root, rel) for rel in ("Attribute/vaw/action.json",
                                               "Attribute/vg/action.json")]
  assert sorted(benchmarks.load("vl_checklist", files=files)) == [
      "vl_checklist.vaw.action", "vl_checklist.vg.action"]
  # An empty file named explicitly is kept: the evaluator's empty-suite check names it.
  place = os.path.join(root, "Object/Size/swig_size/swig_place/swig_place_large.json")
  assert len(benchmarks.load("vl_checklist", files=[place])["vl_checklist.swig_place_large"]) == 0


def test_two_files_with_one_name_are_an_error_naming_both(tmp_path):
  a, b = str(tmp_path / "a" / "b.json"), str(tmp_path / "a.b.json")
  for path in (a, b):
    write_json(path, [["x.jpg", {"POS": ["p"], "NEG": ["n"]}]])
  with pytest.raises(benchmarks.DuplicateSuiteError, match=r"'vl_checklist\.a\.b'") as error:
    benchmarks.load("vl_checklist", str(tmp_path))
  assert a in str(error.value) and b in str(error.value)
  with pytest.raises(benchmarks.DuplicateSuiteError, match="a/b.json and .*a/b.json"):
    benchmarks.load("vl_checklist", files=[a, a])
  with pytest.raises(ValueError, match=r"not below the benchmark folder .*/a$"):
    benchmarks.load("vl_checklist", str(tmp_path / "a"), [b])
  # The evaluator's paper names must not merge a loader-named suite into another either.
  suite = benchmarks.load("vl_checklist", files=[a])["vl_checklist.b"]
  with pytest.raises(benchmarks.DuplicateSuiteError, match="'replace_attributes'"):
    hard_positive.HardPositiveEvaluator(CLIP(get_model_config("hpjax-tiny")), {
        "vl_checklist_attributes": suite, "replace_attributes": suite})


def test_config_walks_roots_and_both_entry_points_share_the_catalog(tmp_path):
  root = _vlc_tree(str(tmp_path / "vlc"))
  hp = str(tmp_path / "hp")
  for name in suites.REPLACE_NAMES:
    record = {"image_path": "1.jpg", "true_caption": "a", "false_caption": "b"}
    write_json(os.path.join(hp, "data", f"{name}.json"), [record])
    write_json(os.path.join(hp, "swapped_data", f"{name}.json"), [dict(record, true_caption="c")])
  aro = str(tmp_path / "aro")
  box = {"image_path": "1.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 4, "bbox_h": 4,
         "true_caption": "a", "false_caption": "b"}
  write_json(os.path.join(aro, "visual_genome_relation.json"), [dict(box, relation_name="on")])
  write_json(os.path.join(aro, "visual_genome_attribution.json"), [dict(box, attributes=["x", "y"])])
  config = eval_hp.get_config(f"suite_root={hp},suites=replace,extra.vl_checklist_root={root},"
                              f"extra.aro_root={aro},extra.aro_image_dir=/aro")
  loaded = benchmarks.load_config(config)
  assert sorted(loaded) == sorted(
      ["replace_attributes", "replace_relations", "aro.vg_relation", "aro.vg_attribution"]
      + list(benchmarks.load("vl_checklist", root)))
  assert loaded["aro.vg_relation"].kind == suites.ARO_RELATION
  assert loaded["aro.vg_attribution"].records[0].image == "/aro/1.jpg"
  assert benchmarks.load_hard_positive(hp, ["replace"]) == {
      k: loaded[k] for k in ("replace_attributes", "replace_relations")}
  with pytest.raises(ValueError, match="unknown suite 'replace_all'"):
    benchmarks.load_config(eval_hp.get_config(f"suite_root={hp},suites=replace_all"))


def _record(num_pos, num_neg):
  return suites.EvalRecord(image="x.jpg", captions=tuple(f"t{i}" for i in range(num_pos + num_neg)),
                           roles=("c",) * num_pos + ("c_n",) * num_neg, source="f.json", index=0)


def test_vl_checklist_accuracy_is_the_official_first_pos_against_first_neg():
  """SWiG-like records (3 POS + 3 NEG): the official ITC evaluator compares texts_pos[0] with
  texts_neg[0] only; every POS above every NEG is reported as `all_pairs_accuracy`."""
  recs = (_record(3, 3),) * 4
  scores = np.array([
      [0.5, 0.1, 0.2, 0.4, 0.3, 0.6],  # first POS beats first NEG; a later NEG beats all POS
      [0.5, 0.6, 0.7, 0.1, 0.2, 0.3],  # every POS above every NEG
      [0.2, 0.9, 0.9, 0.3, 0.1, 0.1],  # first POS below first NEG, though the others are above
      [0.4, 0.9, 0.9, 0.4, 0.1, 0.1],  # a tie between the first two: wrong
  ], np.float32)
  m = metrics.suite_metrics(suites.Suite("v", suites.VL_CHECKLIST, recs), scores)
  assert m["accuracy"] == 50.0 and m["all_pairs_accuracy"] == 25.0 and m["n"] == 4
  rng = np.random.default_rng(0)
  scores = rng.random((2000, 6)).astype(np.float32)
  m = metrics.suite_metrics(suites.Suite("v", suites.VL_CHECKLIST, (_record(3, 3),) * 2000),
                            scores)
  # On random scores the two differ as the issue measured (about 50% against 1/20 = 5%).
  assert m["accuracy"] == pytest.approx(100 * np.mean(scores[:, 0] > scores[:, 3]))
  assert m["all_pairs_accuracy"] == pytest.approx(
      100 * np.mean(scores[:, :3].min(1) > scores[:, 3:].max(1)))
  assert abs(m["accuracy"] - 50) < 5 and abs(m["all_pairs_accuracy"] - 5) < 2


@pytest.mark.parametrize("path,expected", [
    ("Attribute/vaw/action.json", ("Attribute/action", "vaw")),
    ("/data/vlc/Attribute/vg/color.json", ("Attribute/color", "vg")),
    ("Object/Location/hake_location/hake_obj_center.json", ("Object/Location/center", "hake")),
    ("Object/Size/swig_size/swig_tool/swig_tool_large.json", ("Object/Size/large", "swig")),
    ("Object/Size/vg_size/vg_subj_small.json", ("Object/Size/small", "vg")),
    ("Relation/hake_action.json", ("Relation/action", "hake")),
    ("Relation/vg/spatial.json", ("Relation/spatial", "vg")),
    ("mine/extra.json", None),
])
def test_vl_checklist_type_and_corpus_follow_the_official_configs(path, expected):
  assert benchmarks.vl_checklist_type(path) == expected


def test_vl_checklist_report_averages_files_per_corpus_then_corpora_per_type(tmp_path):
  names = {"vl_checklist.Object.Size.swig_size.swig_agent.swig_agent_large": 100.0,
           "vl_checklist.Object.Size.swig_size.swig_tool.swig_tool_large": 50.0,
           "vl_checklist.Object.Size.vg_size.vg_obj_large": 20.0,
           "vl_checklist.Attribute.vg.action": 40.0, "vl_checklist.Attribute.vaw.action": 80.0,
           "vl_checklist.mine": 0.0}
  paths = {n: os.path.join("/vlc", *n.split(".")[1:]) + ".json" for n in names}
  loaded = {n: suites.Suite(n, suites.VL_CHECKLIST, (), paths[n]) for n in names}
  figures = {n: {"accuracy": a, "all_pairs_accuracy": a / 2, "n": 10.0, "skipped_records": 1.0}
             for n, a in names.items()}
  out = benchmarks.combined_figures(figures, loaded)
  assert out["vl_checklist.corpus.Object.Size.large.swig"]["accuracy"] == 75.0
  assert out["vl_checklist.corpus.Object.Size.large.swig"]["n"] == 20.0
  # The type is the mean over corpora (75 and 20), not over the three files (56.7).
  assert out["vl_checklist.type.Object.Size.large"]["accuracy"] == 47.5
  assert out["vl_checklist.type.Object.Size.large"]["all_pairs_accuracy"] == 23.75
  assert out["vl_checklist.type.Attribute.action"]["accuracy"] == 60.0
  assert out["vl_checklist.type.Object"]["accuracy"] == 47.5
  assert out["vl_checklist.type.Attribute.action"]["skipped_records"] == 2.0
  assert not any("mine" in k for k in out)  # outside the official tree: per file only
  assert benchmarks.headline("vl_checklist.type.Object") == "accuracy"
  assert benchmarks.headline("aro.vg_relation") == "macro_accuracy"
  assert benchmarks.headline("replace") == "augmented"
