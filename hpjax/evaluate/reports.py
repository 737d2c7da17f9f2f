"""Report files of an evaluation across models: the figures, a table, per-record scores, a plot
of the ordering categories and an HTML gallery of the worst examples.

`write_reports(directory, results, image_root)` writes:
  results.json       every figure, N, model, parity mode and settings, checkpoint digest,
                     timings, per model; the decode passes and their images decoded
  results.md         a table like the paper's Table 1 (REPLACE / SWAP; the study's rows in the
                     study's order, the paper's figures beside ours), plus every suite's figures
  scores/<model>/<suite>.jsonl   per record: captions, roles, scores (and the ordering category)
  ordering.png       the five ordering categories (%) per hard-positive suite and model
  gallery.html       per model and suite, the records where c_n beats a true caption by most
A multi-model run writes results.partial.json / .md and scores.partial/ as each model finishes
(`write_model_reports(partial=True)`) and the files above once all are scored.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import os
import re
import shutil
import time
from typing import Sequence

from absl import logging
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (after the backend)
import numpy as np

from hpjax import preprocess
from hpjax import zoo
from hpjax.data import suites as suites_lib
from hpjax.evaluate import metrics as metrics_lib

# The study whose figures (zoo.PAPER_FIGURES) results.md puts beside ours.
PAPER = ("Kamath, Hsieh, Chang, Krishna, \"The Hard Positive Truth about Vision-Language "
         "Compositionality\", ECCV 2024, arXiv:2409.17958")
# The paper's Table 1 columns: (metric prefix, figure, header).
TABLE1_COLUMNS = (
    ("replace", "original", "REPLACE orig"), ("replace", "augmented", "REPLACE aug"),
    ("replace", "brittleness", "REPLACE brittle"), ("swap", "original", "SWAP orig"),
    ("swap", "augmented", "SWAP aug"), ("swap", "brittleness", "SWAP brittle"),
)
_CATEGORY_COLORS = ("#2a9d8f", "#e76f51", "#f4a261", "#6c757d", "#b8b8b8")


@dataclasses.dataclass
class ModelResult:
  """One evaluated model: its figures and the per-record scores behind them.

  `suite_scores` maps suite name -> an object with `suite`, `scores` (records x captions) and
  `valid` (see hard_positive.SuiteScores).
  """
  label: str
  model: str
  checkpoint: str | None
  checkpoint_digest: str
  metrics: dict[str, float]
  stats: dict[str, float]
  suite_scores: dict
  parity: str = "as_trained"  # the parity mode of the row (hpjax.zoo)
  settings: dict = dataclasses.field(default_factory=dict)  # activation, dtypes, tokenizer
  registry: str | None = None  # the hpjax.zoo name, for the study's order and paper figures
  ignored_keys: list[str] = dataclasses.field(default_factory=list)  # e.g. CoCa's decoder


def checkpoint_digest(path: str | None) -> str:
  """sha256 of a checkpoint file, or of a directory's files (names and bytes, sorted)."""
  if not path:
    return "random-init"
  digest = hashlib.sha256()
  files = [path] if os.path.isfile(path) else sorted(
      os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
  if not files:
    raise FileNotFoundError(f"checkpoint not found (or an empty directory): {path}")
  for name in files:
    digest.update(os.path.relpath(name, path).encode())
    with open(name, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return "sha256:" + digest.hexdigest()


def slug(label: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def _fmt(value) -> str:
  return "-" if value is None or not np.isfinite(value) else f"{value:.1f}"


def table1_order(results: Sequence[ModelResult]) -> list[ModelResult]:
  """The study's rows in the study's order (hpjax.zoo), then every other model as given."""
  rank = {id(r): (zoo.ORDER.get(r.registry, len(zoo.ORDER)), i) for i, r in enumerate(results)}
  return sorted(results, key=lambda r: rank[id(r)])


def _cell(result: ModelResult, key: str) -> str:
  """Our figure, with the paper's published one beside it where zoo.PAPER_FIGURES has it."""
  ours = _fmt(result.metrics.get(key))
  paper = zoo.PAPER_FIGURES.get(result.registry or "", {}).get(key)
  return ours if paper is None else f"{ours} (paper {paper:.1f})"


def markdown_table(results: Sequence[ModelResult]) -> str:
  """Table 1 (REPLACE as the mean of its files; the study's order; the paper's figures in
  brackets) and then every suite's figures with N."""
  results = table1_order(results)
  lines = []
  if any(f"{p}/{f}" in r.metrics for r in results for p, f, _ in TABLE1_COLUMNS):
    lines += ["| model | mode | " + " | ".join(h for *_, h in TABLE1_COLUMNS) + " |",
              "| --- | --- |" + " --- |" * len(TABLE1_COLUMNS)]
    for r in results:
      cells = [_cell(r, f"{p}/{f}") for p, f, _ in TABLE1_COLUMNS]
      lines.append(f"| {r.label} | {r.parity} | " + " | ".join(cells) + " |")
    if any(r.registry in zoo.PAPER_FIGURES for r in results):
      lines += ["", f"Paper figures: {PAPER}; taken from summaries of it (secondary, may be off "
                "by rounding). Mode: hpjax.zoo parity mode (paper = as the authors' code scored "
                "it)."]
    lines.append("")
  lines += ["| model | suite | N | figures |", "| --- | --- | --- | --- |"]
  for r in results:
    suites = sorted({k.split("/")[0] for k in r.metrics if not k.startswith("eval/")})
    for suite in suites:
      figures = {k[len(suite) + 1:]: v for k, v in r.metrics.items()
                 if k.startswith(suite + "/") and "/" not in k[len(suite) + 1:]}
      n = figures.pop("n", float("nan"))
      text = ", ".join(f"{k} {_fmt(v)}" for k, v in figures.items())
      lines.append(f"| {r.label} | {suite} | {int(n) if np.isfinite(n) else '-'} | {text} |")
  return "\n".join(lines) + "\n"


def _finite_or_none(figures: dict) -> dict:
  """NaN / infinite figures (e.g. an accuracy over no record) as None: strict JSON `null`."""
  return {k: float(v) if np.isfinite(v) else None for k, v in figures.items()}


def write_results_json(path: str, results: Sequence[ModelResult],
                       decode_passes: Sequence[dict] = ()) -> None:
  payload = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": [
      {"label": r.label, "model": r.model, "registry": r.registry, "parity": r.parity,
       "settings": r.settings, "checkpoint": r.checkpoint, "ignored_keys": list(r.ignored_keys),
       "checkpoint_digest": r.checkpoint_digest, "metrics": _finite_or_none(r.metrics),
       "paper_figures": zoo.PAPER_FIGURES.get(r.registry or "", {}), "timings": _finite_or_none(r.stats)}
      for r in table1_order(results)], "decode_passes": list(decode_passes)}
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, allow_nan=False)


def _category(record, row) -> str | None:
  if record.roles[:3] != (suites_lib.C, suites_lib.C_N, suites_lib.C_P):
    return None
  masks = metrics_lib.order_masks(row[0:1], row[1:2], row[2:3])
  return next(name for name, mask in masks.items() if mask[0])


def write_per_example(path: str, suite_scores) -> None:
  """One JSON line per record: where it came from, its captions, roles and fp32 scores."""
  with open(path, "w") as f:
    for record, row, valid in zip(suite_scores.suite.records, suite_scores.scores,
                                  suite_scores.valid):
      n = len(record.captions)
      line = {"source": record.source, "index": record.index, "image": record.image,
              "crop": record.crop, "valid": bool(valid), "roles": record.roles,
              "captions": record.captions,
              "scores": [float(s) if valid and np.isfinite(s) else None for s in row[:n]]}
      if valid and suite_scores.suite.kind == suites_lib.HARD_POSITIVE:
        line["category"] = _category(record, row)
      f.write(json.dumps(line, allow_nan=False) + "\n")


def plot_ordering(path: str, results: Sequence[ModelResult]) -> bool:
  """Stacked bars of the ordering categories per hard-positive suite and model."""
  suites = sorted({k.split("/")[0] for r in results for k in r.metrics if k.endswith("/pct/ties")})
  if not suites:
    return False
  fig, axes = plt.subplots(len(suites), 1, figsize=(8, 0.6 + 0.45 * len(results) * len(suites)
                                                     + 0.6 * len(suites)), squeeze=False)
  for ax, suite in zip(axes[:, 0], suites):
    left = np.zeros(len(results))
    for category, color in zip(metrics_lib.ORDER_CATEGORIES, _CATEGORY_COLORS):
      values = np.array([r.metrics.get(f"{suite}/pct/{category}", np.nan) for r in results])
      ax.barh([r.label for r in results], values, left=left, color=color, label=category)
      left += np.nan_to_num(values)
    ax.set_title(suite)
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
  axes[-1, 0].set_xlabel("% of triples")
  handles, names = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, names, loc="upper center", ncol=3, fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def worst_rows(suite_scores, count: int) -> np.ndarray:
  """Valid records where the best c_n beats the weakest true caption (c or c_p) by most."""
  margins = np.full(len(suite_scores.suite.records), -np.inf)
  for i, (record, row) in enumerate(zip(suite_scores.suite.records, suite_scores.scores)):
    if not suite_scores.valid[i]:
      continue
    roles = np.array(record.roles)
    if (roles == suites_lib.C_N).all() or (roles != suites_lib.C_N).all():
      continue  # an image of a group with no caption of its own, or none against it
    row = row[:len(roles)]
    margins[i] = row[roles == suites_lib.C_N].max() - row[roles != suites_lib.C_N].min()
  order = np.argsort(-margins, kind="stable")
  return order[np.isfinite(margins[order])][:count]


def _thumbnail(path: str, crop) -> str:
  image = preprocess.load_image(path, crop_box=crop)
  image.thumbnail((160, 160))
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=85)
  return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_gallery(path: str, results: Sequence[ModelResult], image_root: str | None,
                  count: int = 12) -> None:
  """A self-contained HTML page: thumbnails inline, the captions and their scores."""
  parts = ["<!doctype html><meta charset='utf-8'><title>hpjax: worst examples</title>",
           "<style>body{font-family:sans-serif}td{padding:4px 8px;vertical-align:top}"
           ".c_n{color:#b00}.c,.c_p{color:#070}</style>",
           "<h1>Worst examples: c<sub>n</sub> beats a true caption by the largest margin</h1>"]
  for r in results:
    for name, scores in r.suite_scores.items():
      parts.append(f"<h2>{html.escape(r.label)}: {html.escape(name)}</h2><table>")
      for i in worst_rows(scores, count):
        record = scores.suite.records[i]
        full = os.path.join(image_root, record.image) if image_root else record.image
        rows = "".join(
            f"<div class='{role}'>{role}: {s:.4f} &nbsp;{html.escape(text)!s}</div>"
            for role, text, s in zip(record.roles, record.captions, scores.scores[i]))
        parts.append(f"<tr><td><img src='{_thumbnail(full, record.crop)}'></td><td>"
                     f"{html.escape(record.where)}<br>{rows}</td></tr>")
      parts.append("</table>")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(parts))


PARTIAL = ".partial"  # results.partial.json, .md and scores.partial/: a run in progress


def write_model_reports(directory: str, results: Sequence[ModelResult],
                        new: Sequence[ModelResult] = (),
                        decode_passes: Sequence[dict] = (), partial: bool = False
                        ) -> dict[str, str]:
  """results.json and results.md over `results`, and the per-record scores of `new` (default
  all). With `partial`, what a multi-model run writes as each model finishes, under names of
  their own (results.partial.json, ..., scores.partial/): a later failure keeps them, and an
  earlier evaluation's reports in the folder stay whole and agree with its gallery and plot.
  Files are replaced whole (written aside, then renamed)."""
  os.makedirs(directory, exist_ok=True)
  tag = PARTIAL if partial else ""
  written = {"results.json": os.path.join(directory, f"results{tag}.json"),
             "results.md": os.path.join(directory, f"results{tag}.md")}
  write_results_json(written["results.json"] + ".tmp", results, decode_passes)
  os.replace(written["results.json"] + ".tmp", written["results.json"])
  with open(written["results.md"] + ".tmp", "w") as f:
    f.write(markdown_table(results))
  os.replace(written["results.md"] + ".tmp", written["results.md"])
  for r in new or results:
    for name, scores in r.suite_scores.items():
      path = os.path.join(directory, f"scores{tag}", slug(r.label), f"{slug(name)}.jsonl")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      write_per_example(path, scores)
      written[f"scores/{slug(r.label)}/{slug(name)}"] = path
  return written


def remove_partial(directory: str) -> list[str]:
  """Removes the progress files of a run in `directory` (`write_model_reports(partial=True)`):
  once its whole reports are written, or when a new run starts after one was stopped."""
  removed = []
  for name in (f"results{PARTIAL}.json", f"results{PARTIAL}.md", f"scores{PARTIAL}"):
    path = os.path.join(directory, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
    else:
      continue
    removed.append(path)
  return removed


def remove_stale(path: str, why: str) -> None:
  """A report that does not apply to this run: an earlier run's copy is removed, not left to
  disagree with the files beside it; the log says why it is missing."""
  if os.path.exists(path):
    os.remove(path)
    logging.info("removed %s of an earlier run", path)
  logging.info("no %s: %s", os.path.basename(path), why)


def write_reports(directory: str, results: Sequence[ModelResult], image_root: str | None,
                  gallery_size: int = 12, decode_passes: Sequence[dict] = ()) -> dict[str, str]:
  """Every report file (see the module docstring); returns name -> path of what was written.
  The gallery comes first (it reads the images, the step most likely to fail), the progress
  files of `write_model_reports(partial=True)` go last. A run without compositional suites
  (zero-shot / retrieval only) has no gallery and no ordering plot."""
  os.makedirs(directory, exist_ok=True)
  gallery = os.path.join(directory, "gallery.html")
  ordered = table1_order(results)
  has_records = any(r.suite_scores for r in results)
  if has_records:
    write_gallery(gallery + ".tmp", ordered, image_root, gallery_size)
  written = write_model_reports(directory, results, decode_passes=decode_passes)
  if has_records:
    os.replace(gallery + ".tmp", gallery)
    written["gallery.html"] = gallery
  else:
    remove_stale(gallery, "no compositional suite was scored")
  if plot_ordering(os.path.join(directory, "ordering.png"), ordered):
    written["ordering.png"] = os.path.join(directory, "ordering.png")
  else:
    remove_stale(os.path.join(directory, "ordering.png"), "no hard-positive suite was scored")
  remove_partial(directory)
  return written


# -- what a finetune costs: compositional gains beside zero-shot and retrieval ------------------

ZEROSHOT_FIGURE = "top1"  # zero-shot columns: <name>/top1
RETRIEVAL_FIGURES = ("image_to_text_R@1", "text_to_image_R@1")  # retrieval columns


def spectrum_columns(results: Sequence[ModelResult], compositional: Sequence[str]
                     ) -> tuple[list[str], list[str], list[str]]:
  """(compositional, zero-shot, retrieval) figure names present in any result, in order."""
  present = [k for r in results for k in r.metrics]
  pick = lambda figures: list(dict.fromkeys(k for k in present if k.split("/")[-1] in figures))
  return ([k for k in compositional if any(k in r.metrics for r in results)],
          pick((ZEROSHOT_FIGURE,)), pick(RETRIEVAL_FIGURES))


def compositional_score(result: ModelResult, compositional: Sequence[str]) -> float:
  """The unweighted mean of the compositional headline figures (NaN without one)."""
  values = [result.metrics[k] for k in compositional if k in result.metrics]
  return float(np.mean(values)) if values else float("nan")


def spectrum_table(results: Sequence[ModelResult], compositional: Sequence[str],
                   baseline: str | None = None) -> str:
  """One row per model: the compositional headline figures and their mean, zero-shot top-1
  and retrieval R@1 columns, each with its difference to the `baseline` row in brackets."""
  comp, zs, ret = spectrum_columns(results, compositional)
  by_label = {r.label: r for r in results}
  if baseline and baseline not in by_label:
    raise ValueError(f"baseline {baseline!r} is not a model of the run; models: "
                     f"{sorted(by_label)}")
  base = by_label.get(baseline) if baseline else None
  value = lambda r, k: (compositional_score(r, comp) if k == "compositional"
                        else r.metrics.get(k, float("nan")))
  keys = comp + (["compositional"] if comp else []) + zs + ret
  lines = ["| model | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
  for r in table1_order(results):
    cells = []
    for k in keys:
      cell = _fmt(value(r, k))
      if base is not None and r is not base and np.isfinite(value(r, k)):
        cell += f" ({value(r, k) - value(base, k):+.1f})"
      cells.append(cell)
    lines.append(f"| {r.label}{' (baseline)' if r is base else ''} | " + " | ".join(cells) + " |")
  lines += ["", ("compositional: the mean of the compositional columns; " if comp else "")
            + "brackets: the difference to the baseline row (percentage points)."]
  return "\n".join(lines) + "\n"


def plot_tradeoff(path: str, results: Sequence[ModelResult], compositional: Sequence[str],
                  zeroshot_key: str) -> bool:
  """Per model, the compositional score against zero-shot top-1; the study's rows (registry
  models) as filled markers, the others hollow. False when no model has both figures."""
  comp = spectrum_columns(results, compositional)[0]
  points = [(r, r.metrics.get(zeroshot_key, np.nan), compositional_score(r, comp))
            for r in results]
  points = [p for p in points if np.isfinite(p[1]) and np.isfinite(p[2])]
  if not points:
    return False
  fig, ax = plt.subplots(figsize=(6.5, 5))
  for r, x, y in points:
    study = r.registry is not None
    ax.scatter([x], [y], s=50, marker="o", facecolors="#2a9d8f" if study else "none",
               edgecolors="#2a9d8f" if study else "#e76f51")
    ax.annotate(r.label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
  save_tradeoff(path, fig, ax, zeroshot_key, comp,
                "what a finetune costs (filled: the study's rows)")
  return True


def save_tradeoff(path: str, fig, ax, zeroshot_key: str, compositional: Sequence[str],
                  title: str) -> None:
  """Labels a compositional-vs-zero-shot plot's axes and writes it (aside, then renamed)."""
  ax.set_xlabel(f"zero-shot {zeroshot_key} (%)")
  ax.set_ylabel("compositional score (%): mean of " + ", ".join(compositional))
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=110)
  plt.close(fig)
  os.replace(path + ".tmp.png", path)


def write_spectrum(directory: str, results: Sequence[ModelResult], compositional: Sequence[str],
                   baseline: str | None = None) -> dict[str, str]:
  """spectrum.md (the table) and tradeoff.png (the plot, on the first zero-shot set)."""
  written = {"spectrum.md": os.path.join(directory, "spectrum.md")}
  with open(written["spectrum.md"] + ".tmp", "w") as f:
    f.write(spectrum_table(results, compositional, baseline))
  os.replace(written["spectrum.md"] + ".tmp", written["spectrum.md"])
  zs = spectrum_columns(results, compositional)[1]
  plot = os.path.join(directory, "tradeoff.png")
  if zs and plot_tradeoff(plot, results, compositional, zs[0]):
    written["tradeoff.png"] = plot
  else:
    remove_stale(plot, "no model has both a compositional score and a zero-shot top-1")
  return written
