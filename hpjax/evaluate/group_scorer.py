"""Per-group score matrices from the scorer's per-record rows.

An image-group suite reaches the scorer as one record per image (hpjax.data.groups), so it is
scored in the same pass as every other suite and each distinct image and caption is encoded
once. This module turns those rows back into one (images x captions) matrix per group; a group
one of whose images was skipped (missing or unreadable, when the user asked for skipping) is
left out and counted.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hpjax.data import groups as groups_lib


def group_matrices(suite: groups_lib.GroupSuite, scores: np.ndarray, valid: np.ndarray
                   ) -> tuple[list[np.ndarray], np.ndarray]:
  """(matrix per group, whether each group was scored): rows of `scores` align with
  `suite.records`; matrix[i, j] = cos(image i, caption j) of that group."""
  if len(scores) != len(suite.records):
    raise ValueError(f"suite {suite.name}: {len(scores)} score rows for {len(suite.records)} "
                     "image records")
  matrices, scored, start = [], np.zeros(len(suite.groups), bool), 0
  for g, group in enumerate(suite.groups):
    rows = slice(start, start + len(group.images))
    start = rows.stop
    matrices.append(np.asarray(scores[rows, :len(group.captions)], np.float32))
    scored[g] = bool(np.all(valid[rows]))
  return matrices, scored


def score_groups(scorer, params, suite: groups_lib.GroupSuite
                 ) -> tuple[list[np.ndarray], np.ndarray, dict[str, float]]:
  """Scores one group suite with a `hpjax.evaluate.scorer.Scorer`: (matrices, scored, stats)."""
  result = scorer.score(params, suite.records)
  matrices, scored = group_matrices(suite, result.scores, result.valid)
  return matrices, scored, result.stats


def match_masks(groups: Sequence[groups_lib.ImageGroup]) -> list[np.ndarray]:
  """Per group, the boolean (images x captions) matrix of its matching pairs."""
  masks = []
  for group in groups:
    mask = np.zeros((len(group.images), len(group.captions)), bool)
    for i, j in group.matches:
      mask[i, j] = True
    masks.append(mask)
  return masks
