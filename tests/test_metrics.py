"""The paper's metrics on hand-made score triples whose answers are worked out by hand."""

import numpy as np
import pytest

from hpjax.data import suites
from hpjax.evaluate import metrics

# (s(c), s(c_n), s(c_p)) and the ordering category each one belongs to.
TRIPLES = [
    ((0.5, 0.3, 0.4), "c_and_cp_above_cn"),
    ((0.6, 0.1, 0.7), "c_and_cp_above_cn"),
    ((0.5, 0.3, 0.2), "c_above_cn_above_cp"),
    ((0.2, 0.3, 0.4), "cp_above_cn_above_c"),
    ((0.1, 0.3, 0.2), "cn_above_c_and_cp"),
    ((0.3, 0.3, 0.4), "ties"),  # c == c_n although c_p > c_n.
    ((0.5, 0.3, 0.3), "ties"),  # c_p == c_n although c > c_n.
    ((0.5, 0.5, 0.5), "ties"),
    ((0.5, 0.3, 0.5), "c_and_cp_above_cn"),  # s(c) == s(c_p): equal positives are no tie.
    ((0.2, 0.3, 0.2), "cn_above_c_and_cp"),  # s(c) == s(c_p) below c_n.
]


def _columns():
  s = np.array([t for t, _ in TRIPLES], np.float32)
  return s[:, 0], s[:, 1], s[:, 2]


def test_categories_partition_and_match_by_hand():
  masks = metrics.order_masks(*_columns())
  assert list(masks) == list(metrics.ORDER_CATEGORIES)
  stacked = np.stack([masks[k] for k in metrics.ORDER_CATEGORIES])
  assert (stacked.sum(axis=0) == 1).all()  # every triple in exactly one category
  for i, (_, category) in enumerate(TRIPLES):
    assert masks[category][i], (i, category)


def test_hard_positive_metrics_by_hand():
  m = metrics.hard_positive_metrics(*_columns())
  # c > c_n strictly in rows 0, 1, 2, 6, 8 -> 5/10; both beat c_n in rows 0, 1, 8 -> 3/10;
  # brittle rows 2, 3 -> 2/10; c_p > c_n in rows 0, 1, 3, 5, 8 -> 5/10. Ties count as wrong.
  assert m["original"] == 50.0 and m["augmented"] == 30.0
  assert m["brittleness"] == 20.0 and m["hard_positive"] == 50.0 and m["n"] == 10
  assert [m[f"count/{k}"] for k in metrics.ORDER_CATEGORIES] == [3, 1, 1, 2, 3]
  assert m["pct/ties"] == 30.0
  assert sum(m[f"pct/{k}"] for k in metrics.ORDER_CATEGORIES) == pytest.approx(100.0)


def test_replace_is_the_unweighted_mean_of_its_files():
  small = metrics.hard_positive_metrics([0.9], [0.1], [0.8])  # n=1, all correct
  big = metrics.hard_positive_metrics([0.1] * 3, [0.9] * 3, [0.2] * 3)  # n=3, all wrong
  both = metrics.mean_of([small, big])
  assert both["original"] == 50.0  # the pooled accuracy would be 25
  assert both["n"] == 4 and both["count/cn_above_c_and_cp"] == 3


def _record(roles, group=None):
  return suites.EvalRecord(image="x.jpg", captions=tuple(f"t{i}" for i in range(len(roles))),
                           roles=roles, source="f.json", index=0, group=group)


def test_suite_metrics_reads_columns_by_role():
  # SugarCrepe++ order is (c, c_p, c_n): the columns must be found by role, not position.
  recs = (_record(("c", "c_p", "c_n")), _record(("c", "c_p", "c_n")))
  scores = np.array([[0.5, 0.4, 0.3], [0.5, 0.2, 0.3]], np.float32)
  sims = np.zeros((2, 3, 3), np.float32)
  sims[0] = [[1, .9, .5], [.9, 1, .6], [.5, .6, 1]]  # cos(c, c_p) beats both negatives' cosines
  sims[1] = [[1, .5, .5], [.5, 1, .4], [.5, .4, 1]]  # a tie with cos(c, c_n): wrong
  m = metrics.suite_metrics(suites.Suite("pp", suites.SUGARCREPE_PP, recs), scores, sims)
  assert m["itt"] == 50.0 and m["tot"] == 50.0


def test_pair_with_several_negatives_needs_every_one_beaten():
  recs = (_record(("c", "c_n", "c_n")), _record(("c", "c_n", "c_n")), _record(("c", "c_n")))
  scores = np.array([[0.5, 0.4, 0.5], [0.5, 0.4, 0.1], [0.2, 0.1, np.nan]], np.float32)
  m = metrics.suite_metrics(suites.Suite("pairs", suites.PAIR, recs), scores)
  assert m["accuracy"] == pytest.approx(200 / 3)


def test_aro_macro_accuracy_as_the_official_code():
  # Relation: 'on' 1 of 2 correct, 'above' 1 of 1, 'near' (a symmetric relation) 0 of 1.
  groups = ["on", "on", "above", "near"]
  recs = tuple(_record(("c", "c_n"), g) for g in groups)
  scores = np.array([[0.5, 0.1], [0.1, 0.5], [0.5, 0.1], [0.1, 0.5]], np.float32)
  m = metrics.suite_metrics(suites.Suite("vgr", suites.ARO_RELATION, recs), scores)
  assert m["macro_accuracy"] == 75.0 and m["accuracy"] == 50.0 and m["groups"] == 2
  # Attribution: a pair with 25 records (all correct) counts, one with 24 (all wrong) does not.
  recs = tuple(_record(("c", "c_n"), "red_green") for _ in range(25)) + tuple(
      _record(("c", "c_n"), "big_small") for _ in range(24))
  scores = np.array([[0.5, 0.1]] * 25 + [[0.1, 0.1]] * 24, np.float32)
  m = metrics.suite_metrics(suites.Suite("vga", suites.ARO_ATTRIBUTION, recs), scores)
  assert m["macro_accuracy"] == 100.0 and m["accuracy"] == pytest.approx(100 * 25 / 49)


def test_row_count_mismatch_is_an_error():
  recs = (_record(("c", "c_n", "c_p")),)
  with pytest.raises(ValueError, match="2 score rows for 1 records"):
    metrics.suite_metrics(suites.Suite("r", suites.HARD_POSITIVE, recs), np.zeros((2, 3)))


def test_a_suite_with_every_record_skipped_gives_nan_figures_not_an_error():
  empty = suites.Suite("r", suites.HARD_POSITIVE, ())
  m = metrics.suite_metrics(empty, np.zeros((0, 3), np.float32))
  assert m["n"] == 0 and np.isnan(m["augmented"]) and m["count/ties"] == 0
  full = metrics.hard_positive_metrics([0.9], [0.1], [0.8])
  assert metrics.mean_of([full, m])["n"] == 1
