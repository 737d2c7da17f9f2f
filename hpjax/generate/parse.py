"""An LLM's answer to a prompt template, checked before it becomes a hard positive.

An answer is the first non-blank line the model wrote (a base model goes on past it with the
next example), without a "Rewritten:"/"Caption:" label or surrounding quotes. It is rejected,
with the reason counted in the run's summary, when it is
  empty             nothing but blanks or labels
  declined          the template's NONE
  unchanged         the caption's words, case and punctuation aside
  copies original   the caption verbatim with more around it (the prompt echoed back)
  not a caption     a chatty preamble ("Sure! Here is ...") or several sentences
  changes too much  swap_and: not the caption's own words; a replace template: the words
                    between the first and the last changed one span more than MAX_SPAN_WORDS
  too long          longer than the text tower's context
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

EMPTY, DECLINED, UNCHANGED, COPY, CHATTY, TOO_MUCH, TOO_LONG = (
    "empty", "declined", "unchanged", "copies original", "not a caption", "changes too much",
    "too long")
REASONS = (EMPTY, DECLINED, UNCHANGED, COPY, CHATTY, TOO_MUCH, TOO_LONG)
MAX_SPAN_WORDS = 4  # "on top of" -> "above", "is riding" -> "rides": a phrase, not a rewrite
SWAP_TEMPLATES = frozenset({"swap_and"})  # same words, new order; the others replace a span
_LABEL = re.compile(r"(?i)^\s*(?:rewritten(?: caption)?|caption|answer|output)\s*:\s*")
_PREAMBLE = re.compile(r"(?i)^(?:sure|certainly|of course|okay|ok|here|i |i'|the rewritten|"
                       r"this caption|as an ai)\b|^[^:]{0,60}:\s")
_QUOTES = "\"'`“”‘’"
_WORD = re.compile(r"[\w'-]+")
_SENTENCE_END = re.compile(r"[.!?]\s+[A-Z]")


@dataclasses.dataclass(frozen=True)
class Accepted:
  text: str
  span: tuple[int, int]  # characters of the original caption that changed


def answer_line(raw: str) -> str:
  """The answer in what the model wrote: its first non-blank line, unlabelled and unquoted."""
  line = next((l for l in raw.splitlines() if l.strip()), "")
  line = _LABEL.sub("", line).strip()
  if len(line) >= 2 and line[0] in _QUOTES and line[-1] in _QUOTES:
    line = line[1:-1].strip()
  return line


def _words(text: str) -> list[re.Match]:
  return list(_WORD.finditer(text))


def _changed_span(original: list[re.Match], answer: list[re.Match]) -> tuple[int, int, int, int]:
  """(first, end) word indices of the original and of the answer that differ, ignoring case."""
  a = [m.group().lower() for m in original]
  b = [m.group().lower() for m in answer]
  head = 0
  while head < min(len(a), len(b)) and a[head] == b[head]:
    head += 1
  tail = 0
  while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
    tail += 1
  return head, len(a) - tail, head, len(b) - tail


def parse(original: str, raw: str, template: str,
          too_long: Callable[[str], bool]) -> Accepted | str:
  """The accepted hard positive, or the reason (one of REASONS) for none."""
  text = answer_line(raw)
  if not text:
    return EMPTY
  if text.strip(".").strip().upper() == "NONE":
    return DECLINED
  caption_words, words = _words(original), _words(text)
  if [w.group().lower() for w in words] == [w.group().lower() for w in caption_words]:
    return UNCHANGED
  if original.strip() in text:
    return COPY
  if _PREAMBLE.search(text) or _SENTENCE_END.search(text):
    return CHATTY
  start, end, new_start, new_end = _changed_span(caption_words, words)
  if template in SWAP_TEMPLATES:
    if sorted(w.group().lower() for w in words) != sorted(w.group().lower() for w in caption_words):
      return TOO_MUCH
  elif max(end - start, new_end - new_start) > MAX_SPAN_WORDS:
    return TOO_MUCH
  if too_long(text):
    return TOO_LONG
  span = (caption_words[start].start(), caption_words[end - 1].end()) if end > start else (
      (caption_words[start].start(),) * 2 if start < len(caption_words) else (len(original),) * 2)
  return Accepted(text, span)
