"""The metrics of each suite kind, from per-record scores s = cos(image, caption) in fp32.

Every comparison is strict: a tie is never correct (the official ARO code's argmax over
[false, true] also calls a tie wrong). Accuracies are percentages (0-100), as the paper reports.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hpjax.data import suites as suites_lib

# The five ordering categories of the paper's Table 2; they partition the triples.
ORDER_CATEGORIES = (
    "c_and_cp_above_cn",  # (c, c_p) > c_n: correct under the augmented test.
    "c_above_cn_above_cp",  # c > c_n > c_p: brittle (rejects the hard positive).
    "cp_above_cn_above_c",  # c_p > c_n > c: brittle the other way.
    "cn_above_c_and_cp",  # c_n > (c, c_p).
    "ties",  # s(c_n) == s(c) or s(c_n) == s(c_p).
)

# Relations the official ARO notebook leaves out of the VG-Relation macro accuracy.
ARO_SYMMETRIC_RELATIONS = frozenset((
    "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing",
    "chewing", "cleaning", "climbing", "close to", "coming from", "coming out of", "contain",
    "crossing", "dragging", "draped over", "drinking", "drinking from", "driving",
    "driving down", "driving on", "eating from", "eating in", "enclosing", "exiting", "facing",
    "filled with", "floating in", "floating on", "flying", "flying above", "flying in",
    "flying over", "flying through", "full of", "going down", "going into", "going through",
    "grazing in", "growing in", "growing on", "guiding", "hanging from", "hanging in",
    "hanging off", "hanging over", "higher than", "holding onto", "hugging", "in between",
    "jumping off", "jumping on", "jumping over", "kept in", "larger than", "leading",
    "leaning over", "leaving", "licking", "longer than", "looking in", "looking into",
    "looking out", "looking over", "looking through", "lying next to", "lying on top of",
    "making", "mixed with", "mounted on", "moving", "on the back of", "on the edge of",
    "on the front of", "on the other side of", "opening", "painted on", "parked at",
    "parked beside", "parked by", "parked in", "parked in front of", "parked near",
    "parked next to", "perched on", "petting", "piled on", "playing", "playing in",
    "playing on", "playing with", "pouring", "reaching for", "reading", "reflected on",
    "riding on", "running in", "running on", "running through", "seen through",
    "sitting behind", "sitting beside", "sitting by", "sitting in front of", "sitting near",
    "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in",
    "sleeping on", "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on",
    "standing against", "standing around", "standing behind", "standing beside",
    "standing in front of", "standing near", "standing next to", "staring at", "stuck in",
    "surrounding", "swimming in", "swinging", "talking to", "topped with", "touching",
    "traveling down", "traveling on", "tying", "typing on", "underneath", "wading in",
    "waiting for", "walking across", "walking by", "walking down", "walking next to",
    "walking through", "working in", "working on", "worn on", "wrapped around", "wrapped in",
    "by", "of", "near", "next to", "with", "beside", "on the side of", "around"))
# The official VG-Attribution macro accuracy skips attribute pairs with fewer records.
ARO_MIN_ATTRIBUTE_COUNT = 25
# Figures that add up (rather than average) when files are combined.
_SUMMED = ("n", "skipped_records", "skipped_groups", "padded_boxes")


def _pct(mask: np.ndarray) -> float:
  return float(100.0 * np.mean(mask)) if mask.size else float("nan")


def order_masks(s_c, s_n, s_p) -> dict[str, np.ndarray]:
  """Boolean masks of the five ordering categories; strictness makes them a partition."""
  s_c, s_n, s_p = (np.asarray(x, np.float32) for x in (s_c, s_n, s_p))
  return {
      "c_and_cp_above_cn": (s_c > s_n) & (s_p > s_n),
      "c_above_cn_above_cp": (s_c > s_n) & (s_n > s_p),
      "cp_above_cn_above_c": (s_p > s_n) & (s_n > s_c),
      "cn_above_c_and_cp": (s_n > s_c) & (s_n > s_p),
      "ties": (s_n == s_c) | (s_n == s_p),
  }


def hard_positive_metrics(s_c, s_n, s_p) -> dict[str, float]:
  """The paper's figures for (c, c_n, c_p) triples: original, augmented, brittleness, ..."""
  s_c, s_n, s_p = (np.asarray(x, np.float32) for x in (s_c, s_n, s_p))
  masks = order_masks(s_c, s_n, s_p)
  out = {
      "original": _pct(s_c > s_n),
      "augmented": _pct(masks["c_and_cp_above_cn"]),
      "brittleness": _pct(masks["c_above_cn_above_cp"] | masks["cp_above_cn_above_c"]),
      "hard_positive": _pct(s_p > s_n),
      "n": float(s_c.size),
  }
  for name, mask in masks.items():
    out[f"count/{name}"] = float(mask.sum())
    out[f"pct/{name}"] = _pct(mask)
  return out


def mean_of(per_file: Sequence[dict[str, float]]) -> dict[str, float]:
  """REPLACE's headline: the unweighted mean of each file's figures; counts and N are summed."""
  keys = per_file[0].keys()
  return {k: float(sum(m[k] for m in per_file)) if k in _SUMMED or k.startswith("count/")
          else float(np.mean([m[k] for m in per_file])) for k in keys}


def _role_columns(records: Sequence[suites_lib.EvalRecord], role: str) -> np.ndarray:
  """Per record, the column of the first caption with `role`."""
  return np.array([r.roles.index(role) for r in records], np.int64)


def _column(scores: np.ndarray, records, role: str) -> np.ndarray:
  return scores[np.arange(len(records)), _role_columns(records, role)]


def pair_correct(scores: np.ndarray, records) -> np.ndarray:
  """Correct iff every c option scores strictly above every c_n option (one each: c > c_n)."""
  correct = np.empty(len(records), bool)
  for i, r in enumerate(records):
    roles = np.array(r.roles)
    row = scores[i, :len(r.roles)]
    correct[i] = row[roles == suites_lib.C].min() > row[roles == suites_lib.C_N].max()
  return correct


def _macro(correct: np.ndarray, groups: Sequence[str], keep) -> tuple[float, int]:
  """Mean over groups of the per-group accuracy (ARO's macro accuracy), and the group count."""
  groups = np.array(groups)
  accs = [correct[groups == g].mean() for g in np.unique(groups) if keep(g, (groups == g).sum())]
  return (float(100.0 * np.mean(accs)) if accs else float("nan")), len(accs)


def suite_metrics(suite: suites_lib.Suite, scores: np.ndarray,
                  text_sims: np.ndarray | None = None) -> dict[str, float]:
  """All figures of one suite.

  Args:
    suite: the suite (its kind picks the metrics; its records give each caption's role).
    scores: (num_records, max_captions) fp32 cosine scores, row i aligned with the captions of
      record i (extra columns unused).
    text_sims: (num_records, max_captions, max_captions) caption-caption cosines; only the
      SugarCrepe++ TOT accuracy needs them.
  """
  records, scores = suite.records, np.asarray(scores, np.float32)
  if scores.shape[0] != len(records):
    raise ValueError(f"suite {suite.name}: {scores.shape[0]} score rows for {len(records)} records")
  kind = suite.kind
  if kind == suites_lib.HARD_POSITIVE:
    return hard_positive_metrics(*(_column(scores, records, role)
                                   for role in (suites_lib.C, suites_lib.C_N, suites_lib.C_P)))
  if kind == suites_lib.PAIR:
    return {"accuracy": _pct(pair_correct(scores, records)), "n": float(len(records))}
  if kind == suites_lib.VL_CHECKLIST:
    # The official ITC evaluator (vl_checklist/evaluate.py) scores texts_pos[0] against
    # texts_neg[0] only; requiring every POS above every NEG is a stricter figure of our own.
    first = _column(scores, records, suites_lib.C) > _column(scores, records, suites_lib.C_N)
    return {"accuracy": _pct(first), "all_pairs_accuracy": _pct(pair_correct(scores, records)),
            "n": float(len(records))}
  if kind in (suites_lib.ARO_RELATION, suites_lib.ARO_ATTRIBUTION):
    correct = pair_correct(scores, records)
    if kind == suites_lib.ARO_RELATION:
      keep = lambda group, count: group not in ARO_SYMMETRIC_RELATIONS
    else:
      keep = lambda group, count: count >= ARO_MIN_ATTRIBUTE_COUNT
    macro, num_groups = _macro(correct, [r.group for r in records], keep)
    return {"macro_accuracy": macro, "accuracy": _pct(correct), "groups": float(num_groups),
            "n": float(len(records))}
  if kind == suites_lib.SUGARCREPE_PP:
    s_c, s_p, s_n = (_column(scores, records, role)
                     for role in (suites_lib.C, suites_lib.C_P, suites_lib.C_N))
    out = {"itt": _pct((s_c > s_n) & (s_p > s_n)), "n": float(len(records))}
    if text_sims is not None:
      rows = np.arange(len(records))
      c, p, n = (_role_columns(records, role)
                 for role in (suites_lib.C, suites_lib.C_P, suites_lib.C_N))
      t_cp, t_cn, t_pn = (text_sims[rows, a, b] for a, b in ((c, p), (c, n), (p, n)))
      out["tot"] = _pct((t_cp > t_cn) & (t_cp > t_pn))
    return out
  raise ValueError(f"suite {suite.name}: no metrics for kind {kind!r}")
