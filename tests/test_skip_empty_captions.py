"""An empty caption in a suite is an error by default; `skip_empty_captions` leaves such records
out, counted per suite (in the figures' `skipped_records`, as skipped images are) and logged."""

import json
import logging
import os

import pytest

from configs import eval_hp
from helpers import write_fixture_suites, write_json
from hpjax.data import suites
from hpjax.evaluate import benchmarks, hard_positive


def _blank(path, indices, field, text=""):
  with open(path) as f:
    records = json.load(f)
  for i in indices:
    records[i][field] = text
  write_json(path, records)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  """The fixture suites with empty captions: REPLACE attributes c at 2 and 5, SWAP c_n (both
  files) at 0, REPLACE relations none; one SugarCrepe file with an empty negative."""
  root = str(tmp_path_factory.mktemp("suites"))
  write_fixture_suites(root)
  _blank(os.path.join(root, "data", "vl_checklist_attributes.json"), [2, 5], "true_caption")
  for folder in ("data", "swapped_data"):
    _blank(os.path.join(root, folder, "visual_genome_attribution.json"), [0], "false_caption",
           "   ")
  sugar = os.path.join(root, "sugarcrepe")
  for name in suites.SUGARCREPE_FILES:
    write_json(os.path.join(sugar, f"{name}.json"), {
        str(i): {"filename": "0.jpg", "caption": f"a cat {i}",
                 "negative_caption": "" if (name, i) == ("swap_obj", 1) else f"a dog {i}"}
        for i in range(3)})
  return root, sugar


def _config(roots, **extra):
  root, sugar = roots
  args = ",".join(f"{k}={v}" for k, v in extra.items())
  return eval_hp.get_config(f"suite_root={root},extra.sugarcrepe_root={sugar}"
                            + ("," + args if args else ""))


def test_an_empty_caption_is_refused_by_default_naming_the_file_and_record(roots):
  with pytest.raises(suites.SuiteFormatError,
                     match=r"vl_checklist_attributes.json \[index 2\]: caption 0 \(c\) is empty "
                           r".*skip_empty_captions"):
    benchmarks.load_config(_config(roots))
  # The trainer's evaluation loads with the default: refused too.
  with pytest.raises(suites.SuiteFormatError, match="is empty"):
    benchmarks.load_hard_positive(roots[0], None)


def test_skipped_records_are_counted_per_suite_and_logged(roots, caplog):
  with caplog.at_level(logging.WARNING):
    loaded = benchmarks.load_config(_config(roots, skip_empty_captions=True))
  counts = {name: s.skipped_empty_captions for name, s in loaded.items() if
            s.skipped_empty_captions}
  assert counts == {"replace_attributes": 2, "swap": 1, "sugarcrepe.swap_obj": 1}
  assert len(loaded["replace_attributes"]) == 8 and len(loaded["replace_relations"]) == 10
  assert [r.index for r in loaded["sugarcrepe.swap_obj"].records] == [0, 2]
  assert all(t.strip() for s in loaded.values() for r in s.records for t in r.captions)
  logged = [r.getMessage() for r in caplog.records if "empty caption" in r.getMessage()]
  assert any("vl_checklist_attributes.json: 2 record(s)" in m and "index 2, 5" in m
             for m in logged), logged
  assert any("swap_obj.json: 1 record(s)" in m for m in logged), logged


def test_the_count_is_reported_with_the_skipped_images(roots, tiny_pair):
  _, model, params, _ = tiny_pair
  loaded = benchmarks.load_hard_positive(roots[0], skip_empty_captions=True)
  evaluator = hard_positive.HardPositiveEvaluator(
      model, loaded, os.path.join(roots[0], "images"), batch_size=8)
  figures = evaluator.run(params)
  assert figures["replace_attributes/skipped_records"] == 2
  assert figures["replace_attributes/n"] == 8
  assert figures["swap/skipped_records"] == 1 and figures["swap/n"] == 9
  assert figures["replace_relations/skipped_records"] == 0
