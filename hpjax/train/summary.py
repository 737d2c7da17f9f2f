"""The run's closing table: the model before finetuning (the step-0 evaluation) beside the kept
finetuned model on every suite's headline figure, so what the finetune gained and what it cost
sit side by side.

Both rows are read back from metrics.jsonl: the table holds exactly the logged figures, and a
resumed run has its pretrained row without evaluating that model again.
"""

from __future__ import annotations

import os

from absl import logging

from hpjax.evaluate import reports
from hpjax.evaluate import runner
from hpjax.train import metrics_log

PRETRAINED, FINETUNED = "pretrained", "finetuned"


def evaluation(rows: list[dict], step: int) -> dict[str, float] | None:
  """The figures of the newest of the evaluation `rows` (`metrics_log.evaluations`) logged at
  `step`, or None."""
  found = [r for r in rows if r.get("step") == step]
  return {k: v for k, v in found[-1].items() if k != "step"} if found else None


def write_table(workdir: str, directory: str, model_name: str, kept_step: int,
                start_label: str = PRETRAINED) -> tuple[str, dict[str, str]]:
  """spectrum.md and tradeoff.png (`reports.write_spectrum`) in `directory` over the step-0 row
  (`start_label`) and the kept step's (FINETUNED), the latter with its differences to the
  former; returns (the table, name -> path written). A row missing from metrics.jsonl is said
  in the log and left out; ("", {}) when both are, or when the log cannot be read (the run's
  checkpoints and other reports stand: its end is not failed for its summary)."""
  try:
    rows = metrics_log.evaluations(workdir)
  except ValueError as e:  # e.g. a line torn by a crash
    logging.warning("no closing table: %s", e)
    return "", {}
  results = []
  for label, step in ((start_label, 0), (FINETUNED, kept_step)):
    figures = evaluation(rows, step)
    if figures is None:
      logging.warning("%s holds no evaluation of step %d: the closing table has no %r row",
                      os.path.join(workdir, metrics_log.FILE), step, label)
      continue
    # (No checkpoint file is read: the row's figures are the logged ones.)
    results.append(reports.ModelResult(label, model_name, None, f"{metrics_log.FILE} step {step}",
                                       figures, {}, {}))
  if not results:
    return "", {}
  compositional = runner.compositional_headlines(results[-1].metrics)
  baseline = start_label if len(results) == 2 else None
  os.makedirs(directory, exist_ok=True)
  written = reports.write_spectrum(directory, results, compositional, baseline)
  with open(written["spectrum.md"], encoding="utf-8") as f:
    return f.read(), written
