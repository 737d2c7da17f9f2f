"""`HardPositiveEvaluator`: every suite's metrics for a set of params, as flat named figures.

All suites are scored in one pass of the scorer, so an image or caption shared between suites
(REPLACE's two files share Visual Genome images; c_n sits in both data/ and swapped_data/) is
encoded once. Names follow the paper: `replace_attributes/augmented`, `replace/brittleness`
(the unweighted mean of the two REPLACE files), `swap/original`, ...; the benchmark catalog
(hpjax.evaluate.benchmarks) loads the suites and combines files as each official report does.

A suite with no scored record (an empty file, or every image missing under a wrong image root
with skip_missing_images) is an error naming it, unless `allow_empty_suites=True`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from hpjax import tokenizer as tokenizer_lib
from hpjax.data import groups as groups_lib
from hpjax.data import suites as suites_lib
from hpjax.evaluate import benchmarks
from hpjax.evaluate import group_metrics
from hpjax.evaluate import metrics as metrics_lib
from hpjax.evaluate import reports
from hpjax.evaluate import scorer as scorer_lib

class EmptySuiteError(ValueError):
  """A suite would be reported with no scored record."""


@dataclasses.dataclass
class SuiteScores:
  """Per-record scores of one suite (rows aligned with `suite.records`)."""
  suite: suites_lib.Suite
  scores: np.ndarray
  valid: np.ndarray
  text_sims: np.ndarray | None


def metric_name(suite_name: str) -> str:
  """The paper's name of a suite passed under its authors' file name (REPLACE, SWAP)."""
  return suites_lib.PAPER_NAMES.get(suite_name, suite_name)


class HardPositiveEvaluator:
  """Scores suites with a `Scorer` and turns the scores into the paper's figures.

  Args:
    model: an `hpjax.models.CLIP`.
    suites: name -> `Suite` (a plain list of (c, c_n, c_p) records is taken as a
      hard-positive suite; loader names are reported under the paper's names), or the path of
      a folder in the authors' layout (data/ + swapped_data/), whose REPLACE/SWAP files are read.
    image_root: relative record image paths are resolved against it.
    tokenizer: default `hpjax.tokenizer.get_tokenizer(model.config)`.
    batch_size: global image batch; `text_batch_size` defaults to 4x it.
    allow_empty_suites: report a suite with no scored record (NaN figures, N = 0) instead of
      stopping with an error naming it.
    scorer: a ready scorer instead of one built from `model` (e.g. a `plugin.PluginScorer`
      for a model that is not a dual encoder; `model` is then None).
    **scorer_kwargs: buckets, num_workers, prefetch, skip_missing_images, devices, transform,
      matmul_precision, score_dtype.
  """

  def __init__(self, model, suites: Mapping[str, suites_lib.Suite | Sequence] | str,
               image_root: str | None = None, *, tokenizer=None, batch_size: int = 128,
               text_batch_size: int | None = None, allow_empty_suites: bool = False,
               scorer=None, **scorer_kwargs):
    if isinstance(suites, str):
      suites = benchmarks.load_hard_positive(suites, names=None)
    self.suites: dict[str, suites_lib.Suite] = {}
    for name, suite in suites.items():
      benchmarks.add_suites(self.suites, {metric_name(name): _as_suite(name, suite)})
    if not self.suites:
      raise ValueError("HardPositiveEvaluator needs at least one suite")
    self.allow_empty_suites = allow_empty_suites
    self._check_not_empty({n: f"{s.path or 'its file'} has no records"
                           for n, s in self.suites.items() if not s.records})
    self.image_root = image_root
    if scorer is None:
      tokenizer = tokenizer or tokenizer_lib.get_tokenizer(model.config)
      scorer = scorer_lib.Scorer(model, tokenizer, image_root=image_root,
                                 image_batch_size=batch_size,
                                 text_batch_size=text_batch_size or 4 * batch_size,
                                 **scorer_kwargs)
    self.scorer = scorer
    self.last_metrics: dict[str, float] = {}
    self.last_scores: dict[str, SuiteScores] = {}
    self.last_stats: dict[str, float] = {}

  @property
  def records(self) -> list[suites_lib.EvalRecord]:
    """Every suite's records, in suite order (the rows of a `ScoreResult` for `figures`)."""
    return [r for s in self.suites.values() for r in s.records]

  @property
  def wants_text_sims(self) -> bool:
    return any(s.kind == suites_lib.SUGARCREPE_PP for s in self.suites.values())

  def run(self, params) -> dict[str, float]:
    """Flat figures for `params`; per-record scores stay in `self.last_scores`."""
    self.check_scorable()
    return self.figures(self.scorer.score(params, self.records, text_sims=self.wants_text_sims))

  def check_scorable(self) -> None:
    """Stops before any work when nothing would be scored: no records at all, or (when missing
    images may be skipped) a suite none of whose images exists under the image root."""
    if not self.records:  # every suite empty, and allowed: nothing to score
      raise EmptySuiteError(f"no records in any suite ({sorted(self.suites)}): nothing to "
                            "evaluate")
    if self.scorer.skip_missing_images:  # a wrong image root, found before any work
      self._check_not_empty({
          n: f"none of its {len(s)} images is under image root {self.image_root!r} (first: "
             f"{s.records[0].image!r})"
          for n, s in self.suites.items()
          if s.records and not any(os.path.isfile(self.scorer.image_path(r.image))
                                   for r in s.records)})

  def figures(self, result: scorer_lib.ScoreResult) -> dict[str, float]:
    """Flat figures of a `ScoreResult` over `self.records` (e.g. one model of
    `scorer.score_models`); per-record scores stay in `self.last_scores`."""
    self.last_stats = dict(result.stats)
    out: dict[str, float] = {}
    start = 0
    per_suite = {}
    for name, suite in self.suites.items():
      rows = slice(start, start + len(suite))
      start += len(suite)
      scores = SuiteScores(suite, result.scores[rows], result.valid[rows],
                           None if result.text_sims is None else result.text_sims[rows])
      self.last_scores[name] = scores
      per_suite[name] = _valid_metrics(scores)
      per_suite[name]["skipped_records"] = float((~scores.valid).sum()
                                                 + suite.skipped_empty_captions)
      if any(r.crop is not None for r in suite.records):
        per_suite[name]["padded_boxes"] = float(result.padded[rows].sum())
    self._check_not_empty({
        n: f"all {len(s.suite)} records were skipped: their images are missing or unreadable "
           f"(image root {self.image_root!r}; first {s.suite.records[0].image!r})"
        for n, s in self.last_scores.items() if len(s.suite) and not s.valid.any()})
    combined = benchmarks.combined_figures(per_suite, self.suites)
    if set(combined) & set(per_suite):
      raise benchmarks.DuplicateSuiteError(
          f"suites named like combined figures: {sorted(set(combined) & set(per_suite))}")
    per_suite.update(combined)
    for name, figures in per_suite.items():
      out.update({f"{name}/{key}": value for key, value in figures.items()})
    for key in ("seconds", "images_per_s", "captions_per_s"):
      out[f"eval/{key}"] = float(result.stats[key])
    self.last_metrics = out
    return out

  def _check_not_empty(self, why: Mapping[str, str]) -> None:
    if why and not self.allow_empty_suites:
      raise EmptySuiteError(
          "no scored record in " + "; ".join(f"suite {n}: {w}" for n, w in why.items())
          + ". Fix the paths, or pass allow_empty_suites=True to report such suites (N = 0).")

  def last_result(self, label: str, model_name: str, checkpoint: str | None = None,
                  checkpoint_digest: str | None = None) -> reports.ModelResult:
    """The last `run` as a report entry."""
    if not self.last_metrics:
      raise RuntimeError("run(params) before asking for its result")
    digest = checkpoint_digest or reports.checkpoint_digest(checkpoint)
    return reports.ModelResult(label, model_name, checkpoint, digest, dict(self.last_metrics),
                               dict(self.last_stats), dict(self.last_scores))

  def write_reports(self, directory: str, label: str = "model", model_name: str = "",
                    checkpoint: str | None = None, gallery_size: int = 12) -> dict[str, str]:
    """Every report file of the last `run` (see hpjax.evaluate.reports) into `directory`."""
    model_name = model_name or self.scorer.model.config.name
    result = self.last_result(label, model_name, checkpoint,
                              None if checkpoint else "in-memory params")
    return reports.write_reports(directory, [result], self.image_root, gallery_size)


def _as_suite(name: str, suite) -> suites_lib.Suite:
  if isinstance(suite, suites_lib.Suite):
    return suite
  return suites_lib.Suite(name, suites_lib.HARD_POSITIVE, tuple(suite))


def _valid_metrics(scores: SuiteScores) -> dict[str, float]:
  """Metrics over the records whose image was scored (skipped ones are counted separately)."""
  if isinstance(scores.suite, groups_lib.GroupSuite):  # per group, not per image record
    return group_metrics.suite_figures(scores.suite, scores.scores, scores.valid)
  keep = np.flatnonzero(scores.valid)
  suite = dataclasses.replace(scores.suite, records=tuple(scores.suite.records[i] for i in keep))
  sims = None if scores.text_sims is None else scores.text_sims[keep]
  return metrics_lib.suite_metrics(suite, scores.scores[keep], sims)
