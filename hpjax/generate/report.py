"""What a run made and threw away: summary.json, and samples.html for a human to review.

The summary counts hard texts per kind, family and rule; per family, the captions it fitted
nowhere and why; captions skipped per reason; captions with no hard negative or no hard
positive. The page shows random records (seeded) with each hard text's changed span marked.
"""

from __future__ import annotations

import collections
import html
import json
from typing import Iterable

from hpjax.generate import shards


def summarize(records: Iterable[dict]) -> dict:
  made = collections.defaultdict(collections.Counter)
  rules = collections.defaultdict(collections.Counter)
  rejected = collections.defaultdict(collections.Counter)
  skipped, without = collections.Counter(), collections.Counter()
  captions = 0
  for record in records:
    captions += 1
    if record["skipped"]:
      skipped[record["skipped"]] += 1
      continue
    kinds = collections.Counter(h["kind"] for h in record["hard_texts"])
    for kind in ("hard_negative", "hard_positive"):
      without[kind] += not kinds[kind]
    for h in record["hard_texts"]:
      made[h["kind"]][h["family"]] += 1
      rules[h["family"]][h["rule"]] += 1
    for family, reason in record["rejections"].items():
      rejected[family][reason] += 1
  return {"captions": captions, "used": captions - sum(skipped.values()),
          "skipped": dict(skipped), "hard_texts": {k: dict(v) for k, v in made.items()},
          "rules": {k: dict(v) for k, v in rules.items()},
          "rejections": {k: dict(v) for k, v in rejected.items()},
          "captions_without": {f"{k}s": n for k, n in without.items()}}


def lines(summary: dict) -> list[str]:
  """The summary as log lines."""
  out = [f"{summary['used']} of {summary['captions']} captions used; skipped: "
         f"{summary['skipped'] or 'none'}; captions without: {summary['captions_without']}"]
  for kind, families in sorted(summary["hard_texts"].items()):
    out.append(f"{kind}s: " + ", ".join(f"{f} {n}" for f, n in sorted(families.items())))
  for family, reasons in sorted(summary["rejections"].items()):
    out.append(f"{family} fitted nowhere: " + ", ".join(
        f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])))
  return out


def _marked(text: str, start: int, end: int) -> str:
  return (html.escape(text[:start]) + "<mark>" + html.escape(text[start:end]) + "</mark>"
          + html.escape(text[end:]))


def write_samples(path: str, records: list[dict], total: int) -> None:
  """`records`: the random sample of the run's `total` records."""
  parts = ["<!doctype html><meta charset='utf-8'><title>hpjax: generated hard texts</title>",
           "<style>body{font-family:sans-serif} td{padding:4px 8px;vertical-align:top}"
           " .hard_negative{color:#a00} .hard_positive{color:#060} mark{background:#ffe08a}"
           " .why{color:#777;font-size:small}</style>",
           f"<h1>{len(records)} random captions of {total}</h1><table>"]
  for r in records:
    rows = [f"<div>{html.escape(r['caption'])}</div>"]
    if r["skipped"]:
      rows.append(f"<div class='why'>skipped: {html.escape(r['skipped'])}</div>")
    for h in r["hard_texts"]:
      rows.append(f"<div class='{h['kind']}'>{h['kind']} ({html.escape(h['rule'])}): "
                  f"{html.escape(h['text'])}<br><span class='why'>changed: "
                  f"{_marked(r['caption'], *h['span'])}</span></div>")
    if r["rejections"]:
      rows.append("<div class='why'>no output: " + html.escape(
          ", ".join(f"{f} ({why})" for f, why in sorted(r["rejections"].items()))) + "</div>")
    parts.append(f"<tr><td>{html.escape(r['where'])}</td><td>{''.join(rows)}</td></tr>")
  parts.append("</table>")
  shards.write_atomically(path, "\n".join(parts).encode("utf-8"))


def write_summary(path: str, summary: dict) -> None:
  shards.write_atomically(path, json.dumps(summary, indent=1, sort_keys=True).encode("utf-8"))
