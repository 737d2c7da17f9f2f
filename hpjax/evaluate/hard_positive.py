"""`HardPositiveEvaluator`: every suite's metrics for a set of params, as flat named figures.

All suites are scored in one pass of the scorer, so an image or caption shared between suites
(REPLACE's two files share Visual Genome images; c_n sits in both data/ and swapped_data/) is
encoded once. Names follow the paper: `replace_attributes/augmented`, `replace/brittleness`
(the unweighted mean of the two REPLACE files), `swap/original`, ...
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

from hpjax import tokenizer as tokenizer_lib
from hpjax.data import suites as suites_lib
from hpjax.evaluate import metrics as metrics_lib
from hpjax.evaluate import reports
from hpjax.evaluate import scorer as scorer_lib

# The paper's names for the authors' files.
SUITE_ALIASES = {
    "vl_checklist_attributes": "replace_attributes",
    "vl_checklist_relations": "replace_relations",
    "visual_genome_attribution": "swap",
}
# Suites reported as the unweighted mean of their members, when all members are evaluated.
SUITE_MEANS = {"replace": ("replace_attributes", "replace_relations")}
# Benchmarks whose files (`<family>.<file>`) are also reported as their unweighted mean.
FAMILY_MEANS = ("sugarcrepe", "sugarcrepe_pp")


@dataclasses.dataclass
class SuiteScores:
  """Per-record scores of one suite (rows aligned with `suite.records`)."""
  suite: suites_lib.Suite
  scores: np.ndarray
  valid: np.ndarray
  text_sims: np.ndarray | None


def metric_name(suite_name: str) -> str:
  return SUITE_ALIASES.get(suite_name, suite_name)


def load_suites(root: str, names: Sequence[str] | None = ("replace", "swap"),
                image_dir: str | None = None,
                swap_image_dir: str | None = None) -> dict[str, suites_lib.Suite]:
  """REPLACE ('replace' = both files, or 'replace_attributes' / 'replace_relations') and
  SWAP ('swap') from the authors' layout under `root`, keyed by their paper names.

  `names=None` loads whichever of the three suites `root/data/` holds (at least one).
  """
  by_name = {"replace_attributes": ("vl_checklist_attributes", image_dir),
             "replace_relations": ("vl_checklist_relations", image_dir),
             "swap": (suites_lib.SWAP_NAME, swap_image_dir or image_dir)}
  if names is None:
    names = [n for n, (file, _) in by_name.items()
             if os.path.isfile(os.path.join(root, "data", f"{file}.json"))]
    if not names:
      raise FileNotFoundError(f"no REPLACE/SWAP suite files under {root}/data/ (expected "
                              f"{[f + '.json' for f, _ in by_name.values()]})")
  wanted = []
  for name in names:
    if name == "replace":
      wanted += list(SUITE_MEANS["replace"])
    elif name in by_name:
      wanted.append(name)
    else:
      raise ValueError(f"unknown suite {name!r}; expected 'replace', 'swap' or one of "
                       f"{sorted(by_name)}")
  return {name: suites_lib.load_hard_positive_suite(root, *by_name[name])
          for name in dict.fromkeys(wanted)}


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
    scorer: a ready scorer instead of one built from `model` (e.g. a `plugin.PluginScorer`
      for a model that is not a dual encoder; `model` is then None).
    **scorer_kwargs: buckets, num_workers, prefetch, skip_missing_images, devices, transform,
      matmul_precision, score_dtype.
  """

  def __init__(self, model, suites: Mapping[str, suites_lib.Suite | Sequence] | str,
               image_root: str | None = None, *, tokenizer=None, batch_size: int = 128,
               text_batch_size: int | None = None, scorer=None, **scorer_kwargs):
    if isinstance(suites, str):
      suites = load_suites(suites, names=None)
    self.suites = {metric_name(name): _as_suite(name, s) for name, s in suites.items()}
    if not self.suites:
      raise ValueError("HardPositiveEvaluator needs at least one suite")
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
    return self.figures(self.scorer.score(params, self.records, text_sims=self.wants_text_sims))

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
      per_suite[name]["skipped_records"] = float((~scores.valid).sum())
    means = dict(SUITE_MEANS)
    means.update({family: [n for n in per_suite if n.startswith(family + ".")]
                  for family in FAMILY_MEANS})
    for mean_name, members in means.items():
      if members and all(m in per_suite for m in members):
        per_suite[mean_name] = metrics_lib.mean_of([per_suite[m] for m in members])
    for name, figures in per_suite.items():
      out.update({f"{name}/{key}": value for key, value in figures.items()})
    for key in ("seconds", "images_per_s", "captions_per_s"):
      out[f"eval/{key}"] = float(result.stats[key])
    self.last_metrics = out
    return out

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
  keep = np.flatnonzero(scores.valid)
  suite = dataclasses.replace(scores.suite, records=tuple(scores.suite.records[i] for i in keep))
  sims = None if scores.text_sims is None else scores.text_sims[keep]
  return metrics_lib.suite_metrics(suite, scores.scores[keep], sims)
