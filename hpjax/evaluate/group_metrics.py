"""The official figures of the image-group benchmarks, from per-group score matrices.

Two primitives cover them all (matrix[i, j] = cos(image i, caption j); `match` marks the pairs
that belong together):
  text-correct   every image with a match gives each matching caption a higher score than each
                 other caption (Winoground's text score, BiVLC/COLA's I2T, What'sUp's and
                 VALSE's accuracies);
  image-correct  every caption with a match gives each matching image a higher score than each
                 other image (Winoground's image score, COLA multi-object, ImageCoDe).
Every comparison is strict, as in the rest of hpjax: a tie is wrong. Where an official
evaluator takes an argmax (What'sUp, ImageCoDe) a tie at the top would count for the first
option there and against the model here. Figures are percentages.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hpjax.data import groups as groups_lib
from hpjax.evaluate import group_scorer


def _pct(mask) -> float:
  mask = np.asarray(mask, bool)
  return float(100.0 * mask.mean()) if mask.size else float("nan")


def _beats(scores: np.ndarray, match: np.ndarray) -> bool:
  """Each row with a match and a non-match: its lowest match above its highest non-match."""
  rows = match.any(1) & ~match.all(1)
  if not rows.any():
    raise ValueError("no row with both a matching and a non-matching entry")
  return all(scores[r][match[r]].min() > scores[r][~match[r]].max()
             for r in np.flatnonzero(rows))


def text_correct(scores: np.ndarray, match: np.ndarray) -> bool:
  return _beats(np.asarray(scores, np.float32), np.asarray(match, bool))


def image_correct(scores: np.ndarray, match: np.ndarray) -> bool:
  return _beats(np.asarray(scores, np.float32).T, np.asarray(match, bool).T)


def _by_tag(groups, name: str, correct: dict[str, np.ndarray]) -> dict[str, float]:
  """Each figure of `correct` per value of tag `name`, with its count."""
  out = {}
  values = np.array([g.tag(name) for g in groups], object)
  for value in sorted(set(values.tolist()), key=str):
    rows = values == value
    for figure, mask in correct.items():
      out[f"{name}.{value}.{figure}"] = _pct(mask[rows])
    out[f"{name}.{value}.n"] = float(rows.sum())
  return out


def _whatsup_pairs_and_sets(groups, correct: np.ndarray) -> dict[str, float]:
  """What'sUp's controlled-set figures: a pair (opposite positions of one object pair) is right
  when both its images are, a set when all its images are (the official pair and set
  accuracies); over the pairs and sets whose images were all scored."""
  by_set: dict[str, dict[str, bool]] = {}
  for group, ok in zip(groups, correct):
    by_set.setdefault(group.tag("set"), {})[group.tag("position")] = bool(ok)
  pairs = [all(positions[p] for p in pair) for positions in by_set.values()
           for pair in groups_lib.WHATSUP_POSITION_PAIRS if all(p in positions for p in pair)]
  sets = [all(positions.values()) for positions in by_set.values()]
  return {"pair_accuracy": _pct(pairs), "set_accuracy": _pct(sets), "pairs": float(len(pairs)),
          "sets": float(len(sets))}


def group_figures(kind: str, groups: Sequence[groups_lib.ImageGroup],
                  matrices: Sequence[np.ndarray]) -> dict[str, float]:
  """The figures of scored groups of one `kind` (hpjax.data.groups.GROUP_KINDS)."""
  masks = group_scorer.match_masks(groups)
  n = {"n": float(len(groups))}
  if kind == groups_lib.IMAGECODE:
    correct = np.array([image_correct(s, m) for s, m in zip(matrices, masks)], bool)
    source = np.array([g.tag("source") for g in groups], object)
    return {"accuracy": _pct(correct), "accuracy_video": _pct(correct[source == "video"]),
            "accuracy_static": _pct(correct[source == "static"]), **n}
  text = np.array([text_correct(s, m) for s, m in zip(matrices, masks)], bool)
  if kind == groups_lib.VALSE:
    return {"acc_r": _pct(text), **n}
  if kind == groups_lib.WHATSUP:
    out = {"accuracy": _pct(text), **n}
    if groups and all(g.tag("set") is not None for g in groups):
      out.update(_whatsup_pairs_and_sets(groups, text))
      out.update(_by_tag(groups, "position", {"accuracy": text}))
    return out
  image = np.array([image_correct(s, m) for s, m in zip(matrices, masks)], bool)
  scores = {"text_score": text, "image_score": image, "group_score": text & image}
  out = {name: _pct(mask) for name, mask in scores.items()}
  if kind == groups_lib.COLA_MULTI:
    return {"accuracy": out["image_score"], **out, **n}
  if kind == groups_lib.WINOGROUND:
    out.update(n)
    for tag in ("collapsed_tag", "num_main_preds"):
      out.update(_by_tag(groups, tag, scores))
    return out
  if kind == groups_lib.BIVLC:
    # main_evaluation_BiVLC.py's names: I2T = the text score, T2I = the image score; each
    # direction also per base (the positive or the negative image / caption).
    above = lambda a, b: np.array([m[a] > m[b] for m in matrices], bool)
    bivlc = {"i2t": text, "t2i": image, "group_score": text & image,
             "ipos_2t": above((0, 0), (0, 1)), "ineg_2t": above((1, 1), (1, 0)),
             "tpos_2i": above((0, 0), (1, 0)), "tneg_2i": above((1, 1), (0, 1))}
    out = {name: _pct(mask) for name, mask in bivlc.items()}
    out.update(n)
    out.update(_by_tag(groups, "type", bivlc))
    return out
  raise ValueError(f"no metrics for group kind {kind!r}")


def suite_figures(suite: groups_lib.GroupSuite, scores: np.ndarray,
                  valid: np.ndarray) -> dict[str, float]:
  """A group suite's figures from its per-record rows (see group_scorer.group_matrices); groups
  with a skipped image are left out and counted (`skipped_groups`)."""
  matrices, scored = group_scorer.group_matrices(suite, scores, valid)
  keep = np.flatnonzero(scored)
  out = group_figures(suite.kind, [suite.groups[g] for g in keep], [matrices[g] for g in keep])
  out["skipped_groups"] = float((~scored).sum())
  return out
