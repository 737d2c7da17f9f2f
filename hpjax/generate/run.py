"""The generate program: captions in, training records with hard texts out, resumable.

  python -m hpjax.generate --config=configs/generate.py:input=captions_train2017.json,image_root=/data/coco/train2017 --workdir=/data/coco_rules

Every caption is checked first (an empty, non-UTF-8 or overlong caption stops the run naming
its file and line, or is a counted skip with `input.skip_bad`), so nothing is written for an
input that would fail half-way. Then this process generates its shards (shards.py: shard s is
process s % process_count's), skipping the ones already committed: kill it at any moment and
rerun, and it ends as an uninterrupted run would. The process that finds every shard committed
writes the outputs the trainer reads as they are:
  train.jsonl                       {image, caption, hard_negatives, hard_positives} a line
                                    (hard_texts.jsonl, without images, for an input that has none)
  train.array_record-00000-of-000NN with `output.formats` naming array_record: one file per
                                    shard, images embedded (hpjax.data.train_builders)
  summary.json, samples.html        counts per family, rule and reason; random samples
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time

from absl import logging
import ml_collections

from hpjax.data import records as records_lib
from hpjax.data import train_builders
from hpjax.generate import llm, phrases, prompts, report, rules, shards, sources
from hpjax.generate import tagger as tagger_lib

OUTPUT_FORMATS = ("jsonl", "array_record")


class Progress:
  """Logs captions done, rate and ETA at most every `every_s` seconds."""

  def __init__(self, total: int, every_s: float):
    self._total, self._every, self._done = total, every_s, 0
    self._start = self._last = time.monotonic()

  def add(self, count: int) -> None:
    self._done += count
    now = time.monotonic()
    if now - self._last >= self._every or self._done == self._total:
      self._last = now
      rate = self._done / max(now - self._start, 1e-9)
      logging.info("%d/%d captions of this process (%.0f%%), %.0f captions/s, ETA %.0f s",
                   self._done, self._total, 100 * self._done / max(self._total, 1), rate,
                   (self._total - self._done) / max(rate, 1e-9))


def _input_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _settings(config: ml_collections.ConfigDict) -> dict:
  """What the output depends on (the manifest's fingerprint); not the process layout."""
  g = config.generate
  return {"input_sha256": _input_digest(config.input.path), "input_format": config.input.format,
          "image_root": config.input.image_root, "max_words": config.input.max_words,
          "skip_bad": config.input.skip_bad, "families": list(g.families),
          "hard_negatives": g.hard_negatives, "hard_positives": g.hard_positives,
          "seed": g.seed, "tagger": g.tagger, "tables": phrases.table_digest(),
          **({} if g.backend == "rules" else {"backend": g.backend, "llm": _llm_settings(g.llm)})}


def _llm_settings(llm_config: ml_collections.ConfigDict) -> dict:
  """The LLM's settings and its folder's config, weights and templates by digest."""
  settings = {k: v for k, v in llm_config.to_dict().items() if k != "model"}
  settings["templates"] = {t: hashlib.sha256(prompts.load(t).encode()).hexdigest()
                           for t in llm_config.templates}
  settings["model_files"] = {
      name: _input_digest(os.path.join(llm_config.model, name))
      for name in sorted(os.listdir(llm_config.model)) if name.endswith((".json", ".safetensors"))}
  return settings


def _check_config(config: ml_collections.ConfigDict) -> None:
  if not config.input.path:
    raise ValueError("input.path is empty; expected a captions file (COCO .json, .jsonl, "
                     "NegCLIP .tsv or .txt)")
  if not 0 <= config.process_index < config.process_count:
    raise ValueError(f"process_index {config.process_index} is not in [0, process_count="
                     f"{config.process_count})")
  unknown = set(config.output.formats) - set(OUTPUT_FORMATS)
  if unknown or not config.output.formats:
    raise ValueError(f"output.formats is {tuple(config.output.formats)}; expected some of "
                     f"{OUTPUT_FORMATS}")
  if config.output.shard_size < 1 or config.generate.batch_size < 1:
    raise ValueError("output.shard_size and generate.batch_size must be positive")


def _checked(captions: list[sources.Caption], max_words: int, skip_bad: bool) -> dict[int, str]:
  """{caption index: skip reason}; a bad caption is an error unless skip_bad."""
  skips = {}
  for i, caption in enumerate(captions):
    problem = sources.check(caption, max_words)
    if problem is None:
      continue
    if not skip_bad:
      raise ValueError(f"{caption.where}: {problem.split(': ', 1)[1]} (input.skip_bad=True "
                       "skips and counts such captions)")
    skips[i] = problem.split(":", 1)[0]
  return skips


def _records(generator: rules.Generator, captions, indices, skips, seed, batch_size):
  out = []
  for at in range(0, len(indices), batch_size):
    batch = [i for i in indices[at:at + batch_size] if i not in skips]
    outcomes = dict(zip(batch, generator.generate(
        [captions[i].text for i in batch], [random.Random(f"{seed}:{i}") for i in batch])))
    for i in indices[at:at + batch_size]:
      c = captions[i]
      record = {"index": i, "where": c.where, "image": c.image, "skipped": skips.get(i),
                "caption": c.text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                "hard_texts": [], "rejections": {}}
      if i in outcomes:
        record["hard_texts"] = [
            {"kind": h.kind, "family": h.family, "rule": h.rule, "text": h.text,
             "span": list(h.span)} for h in outcomes[i].hard_texts]
        record["rejections"] = outcomes[i].rejections
      out.append(record)
  return out


def _generator(g: ml_collections.ConfigDict) -> rules.Generator:
  """The rules alone, or the rules' hard negatives with an LLM's hard positives."""
  if g.backend not in llm.BACKENDS:
    raise ValueError(f"generate.backend is {g.backend!r}; expected one of {llm.BACKENDS}")
  families = [f for f in g.families if g.backend == "rules" or
              rules.FAMILIES.get(f, (rules.HARD_NEGATIVE,))[0] == rules.HARD_NEGATIVE]
  negatives = rules.RuleGenerator(tagger_lib.make_tagger(g.tagger), families,
                                  {rules.HARD_NEGATIVE: g.hard_negatives,
                                   rules.HARD_POSITIVE: g.hard_positives})
  if g.backend == "rules":
    return negatives
  if not g.llm.model:
    raise ValueError(f"generate.llm.model is empty; generate.backend={g.backend} needs a "
                     "Hugging Face model folder")
  templates = llm.load_templates(g.llm.templates)
  prompter = llm.Prompter(g.llm.model, g.llm.chat_template)
  positives = llm.LLMGenerator(llm.make_sampler(g.backend, g.llm), prompter, templates,
                               g.hard_positives, llm.too_long_for(g.llm.text_context), g.backend)
  return llm.Combined(negatives, positives)


def training_record(record: dict) -> dict:
  """A shard record as the trainer's schema (hpjax.data.records) has it."""
  texts = {kind: [h["text"] for h in record["hard_texts"] if h["kind"] == kind]
           for kind in (rules.HARD_NEGATIVE, rules.HARD_POSITIVE)}
  return records_lib.validate_record(
      {"image": os.path.abspath(record["image"]) if record["image"] else "",
       "caption": record["caption"], "hard_negatives": texts[rules.HARD_NEGATIVE],
       "hard_positives": texts[rules.HARD_POSITIVE]}, record["where"])


def _finish(config, workdir: str, manifest: dict, with_images: bool, example: dict | None) -> None:
  """Writes the outputs of the module docstring from the committed shards, one shard in memory
  at a time (idempotent: a rerun writes the same bytes)."""
  count, total = manifest["num_shards"], manifest["num_captions"]
  chosen = set(random.Random(config.generate.seed).sample(range(total),
                                                          min(config.output.samples, total)))
  samples = []
  outside = [0]  # train.jsonl's images outside the workdir (absolute paths)
  jsonl = None
  if "jsonl" in config.output.formats:
    jsonl = "train.jsonl" if with_images else "hard_texts.jsonl"

  def records(out):
    for shard in range(count):
      found = shards.read(workdir, shard)
      used = [training_record(r) for r in found if not r["skipped"]]
      path = os.path.join(workdir, f"train.array_record-{shard:05d}-of-{count:05d}")
      if "array_record" in config.output.formats and not os.path.exists(path):
        train_builders.write_array_record(used, path, skip_bad_images=config.input.skip_bad)
      for r in used if out else ():
        row = (records_lib.relative_to(workdir, r) if with_images
               else {k: v for k, v in r.items() if k != "image"})
        outside[0] += with_images and os.path.isabs(row["image"])
        out.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
      samples.extend(r for r in found if r["index"] in chosen)
      yield from found

  with contextlib.ExitStack() as stack:
    out = stack.enter_context(shards.atomic_file(os.path.join(workdir, jsonl))) if jsonl else None
    summary = report.summarize(records(out))
  if example:
    summary["llm_prompt_example"] = example  # what the model read, for review
    logging.info("the model read, for %r:\n%s", example["caption"], example["prompt"])
  report.write_summary(os.path.join(workdir, "summary.json"), summary)
  report.write_samples(os.path.join(workdir, "samples.html"), samples, total)
  for line in report.lines(summary):
    logging.info("%s", line)
  if outside[0]:
    logging.info("%s names %d images outside %s by absolute path: train on it with "
                 "data.allow_paths_outside_root=True, or on the array_record output (images "
                 "embedded)", jsonl, outside[0], workdir)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  _check_config(config)
  captions = sources.read(config.input.path, config.input.format, config.input.image_root,
                          config.input.allow_paths_outside_root)
  if not captions:
    raise ValueError(f"{config.input.path}: no captions")
  skips = _checked(captions, config.input.max_words, config.input.skip_bad)
  with_images = all(c.image for i, c in enumerate(captions) if i not in skips)
  if "array_record" in config.output.formats and not with_images:
    raise ValueError(f"{config.input.path}: captions without images cannot make array_record "
                     "training files; give images (image<TAB>caption) or output.formats=jsonl")
  g = config.generate
  generator = _generator(g)
  manifest = shards.open_run(workdir, _settings(config), len(captions), config.output.shard_size)
  size = manifest["shard_size"]
  todo = [s for s in range(config.process_index, manifest["num_shards"], config.process_count)
          if not shards.is_done(workdir, s)]
  progress = Progress(sum(len(range(s * size, min((s + 1) * size, len(captions)))) for s in todo),
                      config.progress_every_s)
  logging.info("%s: %d captions in %d shards; process %d of %d has %d shard(s) to do",
               workdir, len(captions), manifest["num_shards"], config.process_index,
               config.process_count, len(todo))
  for shard in todo:
    indices = list(range(shard * size, min((shard + 1) * size, len(captions))))
    shards.commit(workdir, shard, _records(generator, captions, indices, skips, g.seed,
                                           g.batch_size))
    progress.add(len(indices))
  missing = [s for s in range(manifest["num_shards"]) if not shards.is_done(workdir, s)]
  if missing:
    logging.info("%d shard(s) belong to other processes and are not done yet (e.g. %d): the "
                 "process that finishes last writes the outputs", len(missing), missing[0])
    return
  first = next((c.text for i, c in enumerate(captions) if i not in skips), None)
  _finish(config, workdir, manifest, with_images, generator.positives.example(first)
          if isinstance(generator, llm.Combined) and first is not None else None)
