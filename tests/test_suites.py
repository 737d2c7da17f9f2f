"""Suite loaders on small fixtures of every format, and on the real REPLACE files when present."""

import collections
import os

import pytest

from helpers import write_json
from hpjax.data import suites
from hpjax.evaluate import benchmarks

def _replace_pair(root, name="vl_checklist_attributes"):
  data = [
      {"image_id": "1", "true_caption": "white dog", "false_caption": "black dog",
       "image_path": "data/VG_100K/1.jpg"},
      {"image_id": "2", "true_caption": " man  ON horse", "false_caption": " man  ON horse",
       "image_path": "data/VG_100K/2.jpg"},
  ]
  swapped = [dict(data[0], true_caption="ivory dog"), dict(data[1], true_caption="man atop horse")]
  write_json(os.path.join(root, "data", f"{name}.json"), data)
  write_json(os.path.join(root, "swapped_data", f"{name}.json"), swapped)
  return data, swapped


def test_replace_pairs_by_index_and_keeps_odd_records_verbatim(tmp_path):
  _replace_pair(str(tmp_path))
  suite = suites.load_hard_positive_suite(str(tmp_path), "vl_checklist_attributes",
                                          image_dir="/imgs")
  assert suite.kind == suites.HARD_POSITIVE and len(suite) == 2
  first, odd = suite.records
  assert first.captions == ("white dog", "black dog", "ivory dog")
  assert first.roles == ("c", "c_n", "c_p") and first.crop is None
  assert first.image == "/imgs/data/VG_100K/1.jpg"
  # c == c_n and the double/leading spaces survive: the tokenizer, not the loader, cleans text.
  assert odd.caption("c") == odd.caption("c_n") == " man  ON horse"
  assert (odd.source, odd.index) == ("vl_checklist_attributes.json", 1)


@pytest.mark.parametrize("field,value", [("image_id", "9"), ("false_caption", "red dog"),
                                         ("image_path", "data/x.jpg")])
def test_replace_mismatch_names_both_files_and_index(tmp_path, field, value):
  data, swapped = _replace_pair(str(tmp_path))
  swapped[1][field] = value
  write_json(os.path.join(tmp_path, "swapped_data", "vl_checklist_attributes.json"), swapped)
  with pytest.raises(suites.SuiteFormatError, match=rf"index 1: {field}"):
    suites.load_hard_positive_suite(str(tmp_path), "vl_checklist_attributes")


def test_replace_length_mismatch_and_missing_field(tmp_path):
  data, swapped = _replace_pair(str(tmp_path))
  write_json(os.path.join(tmp_path, "swapped_data", "vl_checklist_attributes.json"), swapped[:1])
  with pytest.raises(suites.SuiteFormatError, match="has 2 records but .* has 1"):
    suites.load_hard_positive_suite(str(tmp_path), "vl_checklist_attributes")
  del data[1]["true_caption"]
  write_json(os.path.join(tmp_path, "swapped_data", "vl_checklist_attributes.json"), swapped)
  write_json(os.path.join(tmp_path, "data", "vl_checklist_attributes.json"), data)
  with pytest.raises(suites.SuiteFormatError,
                     match=r"data/vl_checklist_attributes.json \[index 1\]: missing field "
                           "'true_caption'"):
    suites.load_hard_positive_suite(str(tmp_path), "vl_checklist_attributes")


def _aro_attribution_records():
  return [
      {"image_path": "2.jpg", "bbox_x": 10, "bbox_y": 5, "bbox_w": 30, "bbox_h": 20,
       "true_caption": "the black cat and the carpeted floor",
       "false_caption": "the carpeted cat and the black floor", "attributes": ["black", "carpeted"]},
      {"image_path": "3.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 8, "bbox_h": 8,
       "true_caption": "the red car and the green tree",
       "false_caption": "the green car and the red tree", "attributes": ["red", "green"]},
  ]


def test_swap_crops_and_checks_box_pairing(tmp_path):
  data = _aro_attribution_records()
  swapped = [dict(data[0], true_caption="the carpeted floor and the black cat"),
             dict(data[1], true_caption="the green tree and the red car")]
  write_json(os.path.join(tmp_path, "data", "visual_genome_attribution.json"), data)
  write_json(os.path.join(tmp_path, "swapped_data", "visual_genome_attribution.json"), swapped)
  suite = suites.load_hard_positive_suite(str(tmp_path), suites.SWAP_NAME)
  assert suite.records[0].crop == (10.0, 5.0, 30.0, 20.0)
  assert suite.records[0].caption("c_p") == "the carpeted floor and the black cat"
  swapped[1]["bbox_w"] = 9
  write_json(os.path.join(tmp_path, "swapped_data", "visual_genome_attribution.json"), swapped)
  with pytest.raises(suites.SuiteFormatError, match="index 1: bbox_w 8 vs 9"):
    suites.load_hard_positive_suite(str(tmp_path), suites.SWAP_NAME)


def test_empty_crop_box_is_an_error(tmp_path):
  data = _aro_attribution_records()
  data[1]["bbox_h"] = 0
  write_json(os.path.join(tmp_path, "vga.json"), data)
  with pytest.raises(suites.SuiteFormatError, match=r"vga.json \[index 1\]: crop box"):
    suites.load_aro(os.path.join(tmp_path, "vga.json"))


def test_sugarcrepe_keeps_non_contiguous_keys(tmp_path):
  for name in suites.SUGARCREPE_FILES:
    write_json(os.path.join(tmp_path, f"{name}.json"), {
        "0": {"filename": "000000085329.jpg", "caption": "a cat", "negative_caption": "a dog"},
        "7": {"filename": "000000000139.jpg", "caption": "a man", "negative_caption": "a woman"},
    })
  loaded = benchmarks.load("sugarcrepe", str(tmp_path), image_dir="val2017")
  assert sorted(loaded) == sorted(f"sugarcrepe.{n}" for n in suites.SUGARCREPE_FILES)
  recs = loaded["sugarcrepe.swap_att"].records
  assert [r.index for r in recs] == [0, 7]
  assert recs[1].image == "val2017/000000000139.jpg" and recs[1].roles == ("c", "c_n")
  write_json(os.path.join(tmp_path, "add_att.json"), {"3": {"filename": "x.jpg", "caption": "a"}})
  with pytest.raises(suites.SuiteFormatError,
                     match=r"add_att.json \[index 3\]: missing field 'negative_caption'"):
    benchmarks.load("sugarcrepe", str(tmp_path))


def test_sugarcrepe_pp_roles(tmp_path):
  for name in suites.SUGARCREPE_PP_FILES:
    write_json(os.path.join(tmp_path, f"{name}.json"), [
        {"filename": "1.jpg", "caption": "a cat on a mat", "caption2": "on a mat sits a cat",
         "negative_caption": "a mat on a cat"}])
  rec = benchmarks.load("sugarcrepe_pp", str(tmp_path))["sugarcrepe_pp.swap_obj"].records[0]
  assert rec.roles == ("c", "c_p", "c_n") and rec.caption("c_p") == "on a mat sits a cat"


def test_aro_groups(tmp_path):
  write_json(os.path.join(tmp_path, "vga.json"), _aro_attribution_records())
  vga = suites.load_aro(os.path.join(tmp_path, "vga.json"), image_dir="images")
  assert vga.kind == suites.ARO_ATTRIBUTION
  assert [r.group for r in vga.records] == ["black_carpeted", "red_green"]
  assert vga.records[0].image == "images/2.jpg" and vga.records[0].crop == (10, 5, 30, 20)
  relation = [dict(_aro_attribution_records()[0], relation_name="on")]
  del relation[0]["attributes"]
  write_json(os.path.join(tmp_path, "vgr.json"), relation)
  vgr = suites.load_aro(os.path.join(tmp_path, "vgr.json"))
  assert vgr.kind == suites.ARO_RELATION and vgr.records[0].group == "on"


def test_vl_checklist(tmp_path):
  path = os.path.join(tmp_path, "color.json")
  write_json(path, [["vg/1.jpg", {"POS": ["a red ball"], "NEG": ["a blue ball", "a green ball"]}]])
  rec = suites.load_vl_checklist(path).records[0]
  assert rec.roles == ("c", "c_n", "c_n") and rec.captions[2] == "a green ball"
  write_json(path, [["vg/1.jpg", {"POS": ["a red ball"]}]])
  with pytest.raises(suites.SuiteFormatError, match=r"color.json \[index 0\]: missing field 'NEG'"):
    suites.load_vl_checklist(path)


@pytest.mark.parametrize("loader, record, where", [
    ("sugarcrepe", {"filename": "1.jpg", "caption": "a cat", "negative_caption": "  "},
     r"add_att.json \[index 0\]: caption 1 \(c_n\) is empty"),
    ("vl_checklist", ["1.jpg", {"POS": [""], "NEG": ["a dog"]}],
     r"color.json \[index 0\]: caption 0 \(c\) is empty"),
])
def test_an_empty_caption_is_an_error_naming_the_record(tmp_path, loader, record, where):
  """An empty option would be scored as a caption; every loader builds its Suite, which checks."""
  if loader == "sugarcrepe":
    for name in suites.SUGARCREPE_FILES:
      write_json(os.path.join(tmp_path, f"{name}.json"), [record])
    load = lambda: benchmarks.load("sugarcrepe", str(tmp_path))
  else:
    write_json(os.path.join(tmp_path, "color.json"), [record])
    load = lambda: suites.load_vl_checklist(os.path.join(tmp_path, "color.json"))
  with pytest.raises(suites.SuiteFormatError, match=where):
    load()


def test_missing_file_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="data/vl_checklist_attributes.json"):
    benchmarks.load_hard_positive(str(tmp_path), ["replace"])


@pytest.fixture(scope="module")
def real_replace(hard_positives):
  return {name: suites.load_hard_positive_suite(hard_positives, name)
          for name in suites.REPLACE_NAMES}


def test_real_replace_matches_the_measured_facts(real_replace):
  """The facts of ../shared/data/hard_positives/README.md, recomputed from the loaded records."""
  attrs = real_replace["vl_checklist_attributes"].records
  rels = real_replace["vl_checklist_relations"].records
  assert (len(attrs), len(rels)) == (10_575, 16_868)
  assert len({r.image for r in attrs}) == 4_947 and len({r.image for r in rels}) == 6_776
  assert len({r.image for r in attrs + rels}) == 8_041
  assert len({c for r in attrs + rels for c in r.captions}) == 50_891
  assert len(attrs) - len({(r.image, r.captions) for r in attrs}) == 186
  assert len(rels) - len({(r.image, r.captions) for r in rels}) == 1_403
  assert max(collections.Counter(r.image for r in attrs + rels).values()) == 26
  assert sum(r.caption("c") == r.caption("c_n") for r in rels) == 15
  assert [r.index for r in attrs if r.caption("c_p") == r.caption("c_n")] == [10157]
  assert attrs[0].captions == ("walking elephant", "jumping elephant", "strolling elephant")
