"""`run(config, workdir)`: evaluate several models, of any architectures, on the chosen suites.

Read top to bottom: suites -> the models (registry names resolved against `weights_dir`,
`architecture=path` entries, or `model` + `checkpoints`; each model's config parsed once) ->
every checkpoint checked (exists, readable, keys fit) from its header before anything is scored
-> decode passes: models sharing a preprocessing (image size and transform) are built (each
checkpoint read once, here) and scored together, each distinct image decoded once per pass ->
each model's figures and reports written as it finishes -> the plot and the gallery.
Fields: see configs/eval_hp.py.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping

from absl import logging
import jax
import jax.numpy as jnp

from hpjax import checkpoints as checkpoints_lib
from hpjax import config_fields
from hpjax import factory
from hpjax import sharding
from hpjax import preprocess
from hpjax import tokenizer as tokenizer_lib
from hpjax import zoo
from hpjax.data import captions as captions_lib
from hpjax.data import classification
from hpjax.data import suites as suites_lib
from hpjax.evaluate import benchmarks
from hpjax.evaluate import hard_positive
from hpjax.evaluate import plugin as plugin_lib
from hpjax.evaluate import reports
from hpjax.evaluate import retrieval
from hpjax.evaluate import scorer as scorer_lib
from hpjax.evaluate import zeroshot
from hpjax.models import config as config_lib


RANDOM_INIT = "random"
# The config's values checked before any work (`check_values`), as the trainer checks its own.
_POSITIVE = ("batch_size", "text_batch_size", "num_workers", "models_per_pass")
_NON_NEGATIVE = ("gallery_size", "seed", "lora_rank")
_CHOICES = {"dtype": ("float32", "bfloat16", "float16"),
            "matmul_precision": ("default", "high", "highest")}


def check_values(config) -> None:
  """Raises one ValueError naming every field whose value the evaluation cannot use (a
  text_batch_size of -1 would score nothing and report 0.0)."""
  values = {f: config_fields.get(config, f) for f in (*_POSITIVE, *_NON_NEGATIVE, *_CHOICES)}
  problems = config_fields.value_problems(values, _POSITIVE, _NON_NEGATIVE, _CHOICES)
  if problems:
    raise ValueError("config: " + "; ".join(problems))


@dataclasses.dataclass
class ModelSpec:
  """One model of a run: what to build, from which file, scored how."""
  label: str
  architecture: str | None  # an hpjax config name or JSON path; None for a plug-in
  checkpoint: str | None  # None: random init
  parity: str
  settings: zoo.Settings
  entry: zoo.Entry | None = None  # the registry row, if named by one
  plugin: Callable | None = None
  # The architecture as this parity mode builds it (`_as_scored`); None for a plug-in.
  model_config: config_lib.CLIPConfig | None = None
  lora: dict = dataclasses.field(default_factory=dict)  # lora_rank, lora_alpha of a LoRA file
  # The 'architecture:tag' row a fetched checkpoint came from: `build` loads it by that name,
  # so its converted params are cached (hpjax.checkpoints.converted) and read once.
  fetched_as: str | None = None

  @property
  def preprocess_key(self) -> tuple:
    """Models with equal keys share a decode pass (a plug-in decodes on its own)."""
    if self.plugin is not None:
      return ("plugin", self.label)
    transform = preprocess.model_transform(self.model_config)
    if transform == preprocess.eval_transform(transform.image_size):
      return ("eval", transform.image_size)
    return ("eval", transform.image_size, transform.resize_mode, transform.mean, transform.std)


def _unique(labels: list[str]) -> list[str]:
  out = []
  for base in labels:
    label, k = base, 2
    while label in out:
      label, k = f"{base}#{k}", k + 1
    out.append(label)
  return out


def _labels(checkpoints: list[str]) -> list[str]:
  """Short distinct display names: the checkpoint's base name, or 'random-init'."""
  return _unique(["random-init" if c == RANDOM_INIT else os.path.basename(os.path.normpath(c))
                  for c in checkpoints])


def _own_settings(model_config: config_lib.CLIPConfig, dtype: str) -> zoo.Settings:
  """as_trained for a model the registry does not know: its config's activation and tokenizer."""
  return zoo.Settings("quick_gelu" if model_config.quick_gelu else "gelu", dtype, "float32",
                      "clip")


def model_specs(config, plugins: Mapping[str, Callable] | None = None) -> list[ModelSpec]:
  """The run's models from `config.models` (or `model` + `checkpoints`) and `plugins`.

  Registry names take `config.parity` (default 'paper': the study's rows are scored as the
  authors scored them); `architecture=path` entries and `model` + `checkpoints` are a user's
  own models and are scored as trained.
  """
  plugins = dict(plugins or {})
  parity = config.parity or zoo.PAPER
  if parity not in zoo.PARITY_MODES:
    raise ValueError(f"config.parity {parity!r}: expected one of {zoo.PARITY_MODES}")
  items = config_fields.split_list(config.models)
  raw = []  # (label, architecture, checkpoint, entry, the row a fetched checkpoint came from)
  if items:
    if config.checkpoints not in ("", RANDOM_INIT):
      raise ValueError("give either config.models or config.model + config.checkpoints, not both")
    for item in items:
      if "=" in item:
        architecture, path = item.split("=", 1)
        label = "random-init" if path == RANDOM_INIT else os.path.basename(os.path.normpath(path))
        raw.append((f"{architecture}:{label}" if path == RANDOM_INIT else label, architecture,
                    None if path == RANDOM_INIT else path, None, None))
        continue
      if item.rsplit(":", 1)[0] in config_lib.list_models():  # 'ViT-B-32:laion2b_s34b_b79k'
        raw.append((item, item.rsplit(":", 1)[0], zoo.fetch_weights(item), None, item))
        continue
      entry = zoo.get(item)
      if entry.format == zoo.ITM:
        if item not in plugins:
          raise ValueError(f"{item} is not a dual encoder: it is scored through a plug-in "
                           f"callable, runner.run(config, workdir, plugins={{{item!r}: fn}}) "
                           "(see README, 'Models that are not dual encoders')")
        continue  # added with the plug-ins below, at its place in the study's order
      if not config.weights_dir and not zoo.has_public_weights(entry):
        raise ValueError(f"{item}: not published on a hub, so it needs config.weights_dir (the "
                         f"folder holding {entry.files[0]}); or give architecture=path")
      if config.weights_dir:
        raw.append((item, entry.architecture, zoo.weights_path(entry, config.weights_dir), entry,
                    None))
      else:  # fetched once into the Hugging Face cache
        raw.append((item, entry.architecture, zoo.fetch_weights(item), entry, entry.openclip_tag))
  else:
    checkpoints = config_fields.split_list(config.checkpoints)
    if not checkpoints:
      raise ValueError("config.checkpoints is empty: give paths and/or 'random'")
    for ckpt, label in zip(checkpoints, _labels(checkpoints)):
      raw.append((label, config.model, None if ckpt == RANDOM_INIT else ckpt, None, None))
  specs = []
  for label, (_, architecture, ckpt, entry, fetched_as) in zip(_unique([r[0] for r in raw]),
                                                              raw):
    model_config = config_lib.get_model_config(architecture)
    lora = {}
    if entry is None:
      mode, settings = zoo.AS_TRAINED, _own_settings(model_config, config.dtype)
      if config.lora_rank:
        lora = {"lora_rank": config.lora_rank, "lora_alpha": config.lora_alpha}
    else:
      mode, settings = parity, entry.settings(parity)
      if parity == zoo.AS_TRAINED:
        settings = dataclasses.replace(settings, dtype=config.dtype)
      if entry.format == zoo.LORA:  # LoRA files (TSVLC / DAC) are merged at import
        lora = {"lora_rank": zoo.LORA_RANK, "lora_alpha": 1.0}
    specs.append(ModelSpec(label, architecture, ckpt, mode, settings, entry,
                           model_config=_as_scored(model_config, settings, mode), lora=lora,
                           fetched_as=fetched_as))
  for name, fn in plugins.items():
    entry = zoo.BY_NAME.get(name)
    settings = zoo.Settings("n/a", "n/a", "float32", "n/a")
    specs.append(ModelSpec(name, None, None, zoo.AS_TRAINED, settings, entry, plugin=fn))
  return specs


def _as_scored(model_config: config_lib.CLIPConfig, settings: zoo.Settings, parity: str
               ) -> config_lib.CLIPConfig:
  """The architecture with the activation its parity mode asks for."""
  config = dataclasses.replace(model_config, quick_gelu=settings.activation == "quick_gelu")
  if parity == zoo.PAPER and config.text.embed_cls:  # OpenCLIP 2.19-2.22's CoCa text path
    config = dataclasses.replace(config, text=dataclasses.replace(config.text, coca_legacy=True))
  return config


def build(spec: ModelSpec, seed: int = 0):
  """(model, params) of a dual-encoder spec, in its mode's activation and compute dtype."""
  return factory.create_model(spec.model_config, pretrained=spec.fetched_as or spec.checkpoint,
                              dtype=jnp.dtype(spec.settings.dtype), rng=jax.random.key(seed),
                              **spec.lora)


def _tokenizer(spec: ModelSpec, config, tokenizer_dir: str | None):
  """CLIP BPE ids (77, as OpenAI's clip.tokenize) for a registry row scored as the paper did,
  else the model's own tokenizer: the one its config names, from `tokenizer_dir` where that is
  an HF tokenizer (a user's SigLIP model too; a CLIP model beside it ignores the field)."""
  if spec.settings.tokenizer == "clip" and spec.parity != zoo.AS_TRAINED:
    return tokenizer_lib.get_tokenizer(None)
  return tokenizer_lib.get_tokenizer(
      config, tokenizer_dir=tokenizer_dir if config.text.hf_tokenizer_name else None)


def check_checkpoints(specs: list[ModelSpec]) -> dict[str, list[str]]:
  """Checks every checkpoint (exists, readable, keys fit) before anything is scored, from its
  header alone (`checkpoints.check_params`: no tensor is read, so `build` reads each file once);
  one error lists every model that failed. Returns label -> the keys of parts hpjax does not
  build (CoCa's `text_decoder.*`), for the log and results.json."""
  problems, ignored = [], {}
  for spec in specs:
    if spec.plugin is not None or spec.checkpoint is None:
      continue
    try:
      ignored[spec.label] = checkpoints_lib.check_params(spec.checkpoint, spec.model_config,
                                                         **spec.lora)
    except Exception as e:  # pylint: disable=broad-except  (reported below, with the model)
      problems.append(f"{spec.label} ({spec.checkpoint}): {type(e).__name__}: {e}")
  if problems:
    raise ValueError(f"{len(problems)} of {len(specs)} checkpoints cannot be used; nothing was "
                     "scored:\n  " + "\n  ".join(problems))
  return ignored


def _scorer(spec: ModelSpec, model, config):
  """A scorer for a built model: its own preprocessing, tokenizer and score dtype."""
  if spec.plugin is not None:
    if isinstance(spec.plugin, plugin_lib.PluginScorer):
      return spec.plugin
    size = spec.entry.image_size if spec.entry else 224
    return plugin_lib.PluginScorer(spec.plugin, image_root=config.image_root or None,
                                   image_size=size, batch_size=config.batch_size,
                                   num_workers=config.num_workers,
                                   skip_missing_images=config.skip_missing_images)
  return scorer_lib.Scorer(
      model, _tokenizer(spec, model.config, config.tokenizer_dir or None),
      image_root=config.image_root or None, image_batch_size=config.batch_size,
      text_batch_size=config.text_batch_size, num_workers=config.num_workers,
      skip_missing_images=config.skip_missing_images, matmul_precision=config.matmul_precision,
      score_dtype=spec.settings.score_dtype, buckets=scorer_lib.exact_buckets(model.config))


def decode_passes(specs: list[ModelSpec], models_per_pass: int) -> list[list[ModelSpec]]:
  """Specs grouped by preprocessing (first-seen order), at most `models_per_pass` per pass."""
  groups: dict[tuple, list[ModelSpec]] = {}
  for spec in specs:
    groups.setdefault(spec.preprocess_key, []).append(spec)
  size = max(1, models_per_pass)
  return [g[s:s + size] for g in groups.values() for s in range(0, len(g), size)]


def spectrum_evaluators(fields, model=None, tokenizer=None, tfds_data_dir: str | None = None,
                        **scorer_kwargs) -> list:
  """The zero-shot and retrieval evaluators that `fields.zeroshot` / `fields.retrieval`
  (configs/common.py:spectrum_fields) ask for, their data read here, once. With a `model`
  they share one scorer of it; without, each run is given a model's scorer."""
  scorer = scorer_lib.scorer_for(model, tokenizer, **scorer_kwargs)
  evaluators = []
  if fields.zeroshot.images:
    class_set = classification.load_class_set(fields.zeroshot.classes)
    images = classification.load_labelled_images(
        fields.zeroshot.images, len(class_set.names), fields.zeroshot.image_root or None,
        fields.zeroshot.skip_empty_classes, tfds_data_dir)
    evaluators.append(zeroshot.ZeroShotEvaluator(None, class_set, images, fields.zeroshot.name,
                                                 scorer=scorer))
  if fields.retrieval.annotations:
    data = captions_lib.load_caption_set(
        fields.retrieval.annotations, fields.retrieval.image_root or None,
        fields.retrieval.split, tfds_data_dir)
    evaluators.append(retrieval.RetrievalEvaluator(None, data, fields.retrieval.name,
                                                   scorer=scorer))
  return evaluators


def compositional_headlines(figures: Mapping[str, float]) -> list[str]:
  """The compositional suites' official figures, by name (REPLACE's mean, not its files)."""
  members = set(suites_lib.HARD_POSITIVE_SUITES["replace"]) if "replace/n" in figures else set()
  return sorted(k for k in figures if k.count("/") == 1 and k.split("/")[0] not in members
                and k.split("/")[1] == benchmarks.headline(k.split("/")[0]))


def run(config, workdir: str, plugins: Mapping[str, Callable] | None = None
        ) -> dict[str, dict[str, float]]:
  """Evaluates every model of the config (see `model_specs`; `plugins` maps a name to a
  `(images, captions) -> scores` callable or a `PluginScorer`); returns label -> figures and
  writes the reports into `workdir`, each model's as soon as it is scored."""
  check_values(config)
  dist = config.distributed
  sharding.initialize_distributed(dist.coordinator_address or None, dist.num_processes or None,
                                  dist.process_id if dist.coordinator_address else None)
  wants_spectrum = bool(config.zeroshot.images or config.retrieval.annotations)
  suites = benchmarks.load_config(config, required=not wants_spectrum)
  if suites:
    logging.info("suites: %s", {name: len(s) for name, s in suites.items()})
  else:
    logging.info("no compositional suite named: zero-shot / retrieval figures only")
  specs = model_specs(config, plugins)
  if not suites and any(s.plugin for s in specs):
    raise ValueError(f"plug-in models {[s.label for s in specs if s.plugin]} score compositional "
                     "suites only, and the config names none (suite_root or an extra.* field)")
  if config.baseline and config.baseline not in [s.label for s in specs]:
    raise ValueError(f"config.baseline {config.baseline!r} is not a model of the run; models: "
                     f"{[s.label for s in specs]}")
  ignored = check_checkpoints(specs)
  spectrum = spectrum_evaluators(config, tfds_data_dir=config.get("tfds_data_dir") or None)
  writer = jax.process_index() == 0
  if writer:
    for path in reports.remove_partial(workdir):
      logging.info("removed %s, the progress of an evaluation that was stopped", path)
  order = {spec.label: i for i, spec in enumerate(specs)}
  results, passes = [], []
  for group in decode_passes(specs, config.models_per_pass):
    built = [(spec, *((None, None) if spec.plugin else build(spec, config.seed)))
             for spec in group]
    scorers = [(_scorer(spec, model, config), params) for spec, model, params in built]
    entries = _score_suites(suites, scorers, group, config) if suites else [
        reports.ModelResult(spec.label, spec.architecture, spec.checkpoint,
                            reports.checkpoint_digest(spec.checkpoint), {}, {}, {})
        for spec in group]
    # The suites' decode pass (none without suites); zero-shot and retrieval decode their own.
    passes.append({"models": [s.label for s in group], "preprocess": list(group[0].preprocess_key)})
    if suites:
      passes[-1]["images_decoded"] = entries[0].stats["images_decoded"]
    # Zero-shot and retrieval need a model's own encoders (not a plug-in's scores).
    for extra in spectrum if group[0].plugin is None else []:
      for entry, more in zip(entries, extra.run_models(scorers)):
        entry.metrics.update(more)
    for spec, entry in zip(group, entries):
      logging.info("%s (%s): %s", spec.label, spec.parity,
                   {k: round(v, 2) for k, v in entry.metrics.items() if _is_headline(k)})
      entry.parity, entry.settings = spec.parity, dataclasses.asdict(spec.settings)
      entry.registry = spec.entry.name if spec.entry else None
      entry.ignored_keys = ignored.get(spec.label, [])
      results.append(entry)
      results.sort(key=lambda r: order[r.label])  # as the user listed them
      if writer:
        reports.write_model_reports(workdir, results, [entry], passes, partial=True)
    del built, scorers
  if writer:
    written = reports.write_reports(workdir, results, config.image_root or None,
                                    config.gallery_size, passes)
    if spectrum:
      compositional = compositional_headlines(results[0].metrics)
      written.update(reports.write_spectrum(workdir, results, compositional,
                                            config.baseline or None))
    logging.info("reports: %s", sorted(written.values()))
  return {r.label: r.metrics for r in results}


def _is_headline(key: str) -> bool:
  """A figure the log names per model: a suite's official one, zero-shot top-1, retrieval R@1."""
  prefix, figure = key.split("/")[0], key.split("/")[-1]
  return figure in (benchmarks.headline(prefix), reports.ZEROSHOT_FIGURE,
                    *reports.RETRIEVAL_FIGURES)


def _score_suites(suites, scorers, group: list[ModelSpec], config) -> list[reports.ModelResult]:
  """The compositional suites scored by every model of a decode pass, one report entry each."""
  evaluator = hard_positive.HardPositiveEvaluator(
      None, suites, config.image_root or None, scorer=scorers[0][0],
      allow_empty_suites=config.allow_empty_suites)
  evaluator.check_scorable()
  if group[0].plugin is not None:
    scored = [scorers[0][0].score(None, evaluator.records, evaluator.wants_text_sims)]
  else:
    scored = scorer_lib.score_models(scorers, evaluator.records, evaluator.wants_text_sims)
  entries = []
  for spec, result in zip(group, scored):
    evaluator.figures(result)
    entries.append(evaluator.last_result(spec.label, spec.architecture or "plug-in",
                                         spec.checkpoint, "plug-in" if spec.plugin else None))
  return entries
