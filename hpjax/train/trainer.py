"""The training program: `run(config, workdir)`, read top to bottom in big_vision's sections.

mesh and config checks -> same run? -> input -> model + optimizer -> sharding -> checkpoint
(resume) -> evaluators -> loop -> final evaluation, reports and export. See configs/common.py
for every field.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import signal

import grain
import jax
from absl import logging
from jax.experimental import multihost_utils

from hpjax import config_fields
from hpjax import factory
from hpjax import sharding
from hpjax import tokenizer as tokenizer_lib
from hpjax.checkpoints import files as checkpoint_files
from hpjax.data import synthetic
from hpjax.data import training as data_lib
from hpjax.data import world_tokenizer
from hpjax.evaluate import benchmarks
from hpjax.evaluate import hard_positive as hard_positive_lib
from hpjax.evaluate import runner
from hpjax.models.config import get_model_config
from hpjax.train import checkpointing, optim, pretrain, retrieval, run_config, text_packing
from hpjax.train import hf_export
from hpjax.train import lora as lora_lib
from hpjax.train import param_groups
from hpjax.train import step as step_lib
from hpjax.train import summary
from hpjax.train.metrics_log import MetricsLog

# The figures' prefixes of the synthetic world's probes: its zero-shot classes (world_objects/top1)
# and its 5-captions retrieval split (world_5cap/image_to_text_R@1).
WORLD_ZEROSHOT, WORLD_RETRIEVAL = "world_objects", "world_5cap"


class NonFiniteLossError(FloatingPointError):
  """The loss, gradient or update became NaN/inf; nothing from that step on is saved."""


def _synthetic_world(config, workdir: str, resuming: bool) -> synthetic.WorldPaths:
  """The world of data.synthetic, written to (or found cached in) WORKDIR/world.

  When resuming, the world is only reused, never written anew under the checkpoints (unless
  resume_overrides allows data.synthetic to change).
  """
  world_dir = os.path.join(workdir, "world")
  rebuild = not resuming or run_config.allowed(config, "data.synthetic")
  try:
    # One writer; the other hosts then find it cached (a second call re-hashes every file).
    world = (synthetic.write_world(world_dir, **config.data.synthetic, rebuild=rebuild)
             if jax.process_index() == 0 else None)
    multihost_utils.sync_global_devices("synthetic world written")
    if world is None:
      world = synthetic.write_world(world_dir, **config.data.synthetic, rebuild=rebuild)
  except ValueError as e:
    if rebuild:
      raise
    raise ValueError(f"{e}: this workdir's checkpoints were trained on the world there; "
                     "restore it, or allow a new one with "
                     "--config.resume_overrides=data.synthetic") from e
  return world


def _training_data(config, world: synthetic.WorldPaths | None):
  """(train source, held-out records, REPLACE/SWAP root or '', image root or ''): those of the
  synthetic `world` when data.source is 'synthetic', else the config's."""
  data = config.data
  eval_root, image_root = config.eval.replace_swap_root, config.eval.image_root
  source_path = data.source
  if world is not None:
    source_path = (world.pretrain_jsonl if data.synthetic_corpus == "pretrain" else
                   world.train_jsonl)
    eval_root, image_root = world.eval_root, world.image_root
  source = data_lib.open_source(config_fields.split_list(source_path), data.tfds_data_dir or None,
                                data.allow_paths_outside_root)
  if data.val_source:
    held_out = data_lib.open_source(config_fields.split_list(data.val_source),
                                    data.tfds_data_dir or None, data.allow_paths_outside_root)
    val = [held_out[i] for i in range(len(held_out))]
  else:
    if len(source) <= data.val_size:
      raise ValueError(f"{source_path}: {len(source)} records cannot spare val_size="
                       f"{data.val_size} for the held-out retrieval split")
    val = [source[i] for i in range(len(source) - data.val_size, len(source))]
    source = grain.MapDataset.source(source)[:len(source) - data.val_size]
  return source, val, eval_root, image_root


def model_config(name: str, loss_kind: str):
  """The architecture of model `name`; with the sigmoid loss, SigLIP's init t = ln 10, b = -10
  (as OpenCLIP's trainer sets them for --siglip; pretrained weights replace both)."""
  cfg = get_model_config(name)
  if loss_kind != "sigmoid":
    return cfg
  return dataclasses.replace(cfg, init_logit_scale=math.log(10.0), init_logit_bias=-10.0)


def _tokenizer(config, model_cfg, workdir: str, resuming: bool,
               world: synthetic.WorldPaths | None):
  """The tokenizer of model.tokenizer (a local file or folder, for configs that name one). A
  SentencePiece model (SigLIP's) on the synthetic world without one gets a small model trained on
  the world's texts, WORKDIR/spiece.model (kept for resumes)."""
  path, text = config.model.tokenizer, model_cfg.text
  if not path and world is not None and text.hf_tokenizer_name and \
      text.hf_model_name is None:
    path = os.path.join(workdir, world_tokenizer.FILE)
    train = lambda: world_tokenizer.train_sentencepiece(
        world_tokenizer.jsonl_texts(world.train_jsonl), path, text.vocab_size)
    if jax.process_index() == 0 and not (resuming and os.path.exists(path)):
      train()
    multihost_utils.sync_global_devices("world tokenizer written")
    if not os.path.exists(path):  # a host that does not share process 0's workdir
      train()
  tokenizer = tokenizer_lib.get_tokenizer(model_cfg, tokenizer_dir=path or None,
                                          field="model.tokenizer")
  vocab = text.hf.vocab_size if text.hf else text.vocab_size
  if tokenizer.vocab_size > vocab:  # (an id past the embedding would be a NaN feature)
    raise ValueError(f"model.name={config.model.name!r}: its {type(tokenizer).__name__}"
                     f"{' ' + path if path else ''} has {tokenizer.vocab_size} ids, more than "
                     "the text tower's "
                     f"vocab_size {vocab}; give model.tokenizer the tokenizer of this model")
  return tokenizer


def _hard_positive_evaluator(config, model, tokenizer, eval_root: str, image_root: str):
  if not config.eval.hard_positive:
    return None
  if not eval_root:
    raise ValueError("eval.hard_positive needs eval.replace_swap_root (the suites' folder with "
                     "data/ and swapped_data/) unless data.source is 'synthetic'")
  suites = benchmarks.load_hard_positive(eval_root, None,
                                         tfds_data_dir=config.data.tfds_data_dir or None)
  return hard_positive_lib.HardPositiveEvaluator(
      model, suites, image_root=image_root or None, tokenizer=tokenizer,
      batch_size=config.eval.batch_size)


def with_world_probes(config, world: synthetic.WorldPaths | None):
  """config.eval, with the synthetic world's zero-shot probe and 5-captions retrieval split in
  the zero-shot / retrieval fields the user left empty (eval.world_probes): the world's run
  shows what finetuning costs as well as what it gains. A user's own set wins, per group."""
  fields = copy.deepcopy(config.eval)
  if world is None or not fields.world_probes:
    return fields
  if not fields.zeroshot.images:
    fields.zeroshot.update(images=world.zeroshot_images, classes=world.zeroshot_classes,
                           image_root=world.image_root, name=WORLD_ZEROSHOT,
                           skip_empty_classes=False)
  if not fields.retrieval.annotations:
    fields.retrieval.update(annotations=world.retrieval_annotations, image_root=world.image_root,
                            split="test", name=WORLD_RETRIEVAL)
  return fields


def combined_figure(metrics: dict, combination: str) -> float:
  """The mean of the '+'-separated figures of `combination` (keep-best's named combination)."""
  names = config_fields.split_list(combination)
  missing = [n for n in names if n not in metrics]
  if missing:
    raise KeyError(f"checkpoint.best_metric {combination!r}: {missing} are not among the "
                   f"evaluation's figures ({sorted(metrics)[:20]}...)")
  return float(sum(metrics[n] for n in names) / len(names))


def _headline(metrics: dict) -> str:
  """The paper's Table 1 figures and the retrieval R@1, for the log (metrics.jsonl has all)."""
  parts = []
  for suite in ("replace", "swap"):
    figures = [f"{name} {metrics[f'{suite}/{name}']:.1f}"
               for name in ("original", "augmented", "brittleness") if f"{suite}/{name}" in metrics]
    if figures:
      parts.append(f"{suite.upper()} " + ", ".join(figures))
  if retrieval.MEAN_RECALL_AT_1 in metrics:
    parts.append(f"retrieval R@1 {metrics[retrieval.MEAN_RECALL_AT_1]:.1f}")
  return " | ".join(parts)


def _closing_table(config, workdir: str, reports_dir: str, kept_step: int) -> dict[str, str]:
  """Writes and logs the table of the model before finetuning and the kept one (summary);
  returns the files written."""
  start = (summary.PRETRAINED if config.model.pretrained or pretrain.applies(config)
           else "random init")
  table, files = summary.write_table(workdir, reports_dir, config.model.name, kept_step, start)
  if table:
    logging.info("before and after finetuning (kept step %d):\n%s", kept_step, table)
  return files


def ensure_pretrained(config, directory: str, world: synthetic.WorldPaths) -> str | None:
  """The pretraining stage's params file in `directory` (`pretrain.stage_dir`), trained there
  first if missing; None when the stage stopped early (preemption: its checkpoints resume it
  next time)."""
  params = pretrain.params_if_complete(directory)
  if params:
    logging.info("pretraining: reusing %s", params)
    return params
  stage, stage_workdir = pretrain.prepare(config, directory, world)
  logging.info("pretraining: %d captions-only steps in %s", stage.total_steps, stage_workdir)
  run(stage, stage_workdir)
  return pretrain.finish(config, directory, world)


def _optimizer(config, params):
  """(tx, schedule, LoRA adapters or None) as config.lora, config.locking and the optimizer's
  layer decay say (run_config.check_values has refused what cannot be combined)."""
  lora = lora_lib.options(config)
  if lora:
    adapters = lora_lib.init_adapters(params, lora_lib.plan(params, *lora),
                                      jax.random.key(config.seed + 1))
    return *optim.make_optimizer(config.optim, config.total_steps), adapters
  table_options = param_groups.options(config)
  table = table_options and param_groups.build_table(params, **table_options)
  return *optim.make_optimizer(config.optim, config.total_steps, table), None


def _write_adapters(path: str, params, adapters, model_cfg) -> None:
  """The base weights and unmerged adapters in TSVLC's layout, written aside and renamed."""
  checkpoint_files.write_state_dict(lora_lib.tsvlc_state_dict(params, adapters, model_cfg), path)


class _Preemption:
  """Remembers a SIGTERM so the loop can save and stop at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint and stopping at the next step")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def run(config, workdir: str) -> dict:
  """Trains as `config` says; returns the final evaluation metrics."""
  # -- mesh --------------------------------------------------------------------------------------
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
  dist = config.distributed
  sharding.initialize_distributed(dist.coordinator_address or None, dist.num_processes or None,
                                  dist.process_id if dist.coordinator_address else None)
  run_config.check_values(config, len(jax.devices()), jax.process_count())
  for export in (config.export_openclip, config.lora.export_adapters):
    if export:  # before any work: never replaces a file (the starting one included)
      checkpoint_files.check_destination(export, checkpoint_files.STATE_DICT_SUFFIXES)
  if config.export_hf:  # the same, and an architecture the HF writer can express
    hf_export.check(config.export_hf, model_config(config.model.name, config.loss.kind))
  mesh = sharding.make_mesh(config.mesh.model_parallel,
                            jax.devices()[:config.mesh.num_devices or None])
  os.makedirs(workdir, exist_ok=True)

  # -- the same run? (before any data is built or read) ------------------------------------------
  checkpoint_dir = config.checkpoint.directory or workdir
  ckpt = checkpointing.Checkpointer(
      checkpoint_dir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
      async_save=config.checkpoint.async_save, best_metric=config.checkpoint.best_metric or None,
      best_mode=config.checkpoint.best_mode)
  try:
    return _train(config, workdir, mesh, checkpoint_dir, ckpt)
  finally:
    ckpt.close()  # (its run lock too, however the run ends)


def _train(config, workdir: str, mesh, checkpoint_dir: str,
           ckpt: checkpointing.Checkpointer) -> dict:
  """The run once its checkpoint folder is held: input, model, loop, the kept model's reports."""
  resuming = bool(ckpt.steps())
  run_config.check_same_run(config, workdir, has_checkpoints=resuming)

  # -- input -------------------------------------------------------------------------------------
  world = (_synthetic_world(config, workdir, resuming) if config.data.source == "synthetic"
           else None)
  source, val_records, eval_root, image_root = _training_data(config, world)
  pretrained = config.model.pretrained or None
  if pretrain.applies(config):  # a resume restores its own params: the stage is not needed
    stage_dir = pretrain.stage_dir(config, workdir, world)
    pretrained = (ensure_pretrained(config, stage_dir, world) if not resuming else
                  pretrain.params_if_complete(stage_dir))
    if pretrained is None and not resuming:
      logging.warning("stopped during pretraining; rerun to resume it, then finetune")
      return {}
  model, params = factory.create_model(
      model_config(config.model.name, config.loss.kind),
      pretrained=pretrained, dtype=run_config.DTYPES[config.model.dtype],
      remat=config.model.remat, rng=jax.random.key(config.seed))
  tokenizer = _tokenizer(config, model.config, workdir, resuming, world)
  transform = data_lib.ExampleTransform(
      tokenizer=tokenizer,
      image_size=model.config.vision.image_size,
      num_hard_negatives=config.data.num_hard_negatives,
      num_hard_positives=config.data.num_hard_positives, hn_frac=config.data.hn_frac,
      hp_frac=config.data.hp_frac, seed=config.seed, crop_scale=config.data.crop_scale,
      skip_bad_images=config.data.skip_bad_images,
      num_negative_images=config.data.num_negative_images)
  dataset = data_lib.make_dataset(
      source, global_batch_size=config.batch_size, seed=config.seed, transform=transform,
      process_index=jax.process_index(), process_count=jax.process_count(),
      worker_count=config.data.worker_count)
  iterator = iter(dataset)

  # -- model + optimizer, sharded ----------------------------------------------------------------
  tx, schedule, adapters = _optimizer(config, params)
  init = lambda p, a: step_lib.init_state(p, tx, a, ema=config.ema.decay > 0)
  state_shapes = jax.eval_shape(init, params, adapters)
  state_shardings = sharding.param_sharding(mesh, state_shapes)
  state = jax.jit(init, out_shardings=state_shardings)(params, adapters)
  del params, adapters
  # The weights evaluated, kept as best and exported: LoRA's merged, the EMA's when asked.
  weights = lambda s: step_lib.model_params(s, config.lora.alpha,
                                            use_ema=config.ema.decay > 0 and config.ema.use)
  # Packed texts: one group per data shard of this host, and per micro-batch when accumulating.
  groups = mesh.shape[sharding.DATA] // jax.process_count() * config.accum_freq
  train_step = step_lib.jit_train_step(
      model, tx, schedule, state_shardings, sharding.replicated(mesh),
      positives=config.loss.positives, local_weight=config.loss.local_weight,
      kind=config.loss.kind, hard_negative_weight=config.loss.hard_negative_weight,
      lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout, seed=config.seed,
      ema_decay=config.ema.decay, ema_warmup=config.ema.warmup,
      micro_batches=config.accum_freq, data_shards=mesh.shape[sharding.DATA])

  # -- checkpoint: resume from the newest intact save ---------------------------------------------
  state, iterator = ckpt.restore(state, iterator, model_name=config.model.name)
  first_step = int(state.step)

  # -- evaluators --------------------------------------------------------------------------------
  evaluators = [retrieval.RetrievalEvaluator(model, val_records, mesh, tokenizer=tokenizer,
                                             batch_size=config.eval.batch_size)]
  hard_positive = _hard_positive_evaluator(config, model, tokenizer, eval_root, image_root)
  if hard_positive is not None:
    evaluators.append(hard_positive)
  evaluators += runner.spectrum_evaluators(  # zero-shot, standard-protocol retrieval
      with_world_probes(config, world), model, tokenizer, config.data.tfds_data_dir or None,
      # (REPLACE/SWAP's scorer when there is one: its encoders are compiled once for both)
      scorer=hard_positive.scorer if hard_positive else None,
      image_batch_size=config.eval.batch_size, devices=list(mesh.devices.flat))

  def evaluate(step: int) -> dict:
    metrics = {}
    for evaluator in evaluators:
      metrics.update(evaluator.run(weights(state)))
    if "+" in config.checkpoint.best_metric:
      metrics[config.checkpoint.best_metric] = combined_figure(metrics,
                                                               config.checkpoint.best_metric)
    log.write(step, metrics)
    logging.info("step %d evaluation: %s (all figures in metrics.jsonl)", step, _headline(metrics))
    return metrics

  # -- loop --------------------------------------------------------------------------------------
  log = MetricsLog(workdir, config.total_steps)
  preemption = _Preemption()
  pending = None  # the previous step's metrics, checked one step late to keep the device busy

  def check(step_metrics, step):
    if not bool(step_metrics["finite"]):
      raise NonFiniteLossError(
          f"step {step}: the loss ({float(step_metrics['loss'])}), its gradient (norm "
          f"{float(step_metrics['grad_norm'])}) or the update is not finite; stopped without "
          f"saving (the last checkpoint in {ckpt.last.directory} is from before this step)")

  eval_metrics = {}
  try:
    if first_step == 0 and config.eval.every_steps:
      evaluate(0)
    for step in range(first_step + 1, config.total_steps + 1):
      batch = next(iterator)
      if model.config.text.causal_eot_pooled:
        batch = text_packing.pack_batch(batch, groups, model.config.text.context_length)
      state, metrics = train_step(state, sharding.put_batch(batch, mesh))
      if pending is not None:
        check(*pending)
      pending = (metrics, step)
      if step % config.log_every_steps == 0 or step == config.total_steps:
        values = jax.device_get(metrics)
        check(values, step)
        speed = log.progress(step, float(values["loss"]), config.batch_size)
        log.write(step, {**{k: v for k, v in values.items() if k != "finite"}, **speed})
      # Every host must take the same branch (a save is collective), so hosts agree on SIGTERM.
      stop = sharding.host_max(int(preemption.requested)) > 0
      final = step == config.total_steps or stop
      evaluating = config.eval.every_steps and (step % config.eval.every_steps == 0 or final)
      saving = final or step % config.checkpoint.every_steps == 0
      if saving or evaluating:
        check(metrics, step)  # nothing non-finite is evaluated, kept as best or saved
      if saving:
        ckpt.maybe_save(step, state, iterator, force=final)
      if evaluating:
        eval_metrics = evaluate(step)
        if config.checkpoint.best_metric:
          ckpt.save_best(step, state, iterator, eval_metrics)
      if stop:
        logging.warning("stopped at step %d for preemption; rerun to resume", step)
        return eval_metrics
    # -- the end: the kept model (keep-best, as the paper picks its epoch), reports, export ------
    reporting = hard_positive is not None and config.eval.reports
    # The closing table (summary): the step-0 evaluation beside the kept model's, on every suite.
    tabling = config.eval.reports and config.eval.every_steps > 0 and len(evaluators) > 1
    kept_step, kept_state, kept_dir = config.total_steps, state, "checkpoints"
    exporting = config.export_openclip or config.export_hf or config.lora.export_adapters
    best = ckpt.best_step() if reporting or exporting or tabling else None
    if best is not None and best != config.total_steps:
      kept_step, kept_dir = best, "best"
      if reporting or exporting:  # (the closing table needs only the kept step's number)
        kept_state = ckpt.best_state(best, state)
    kept_params = weights(kept_state)
    if kept_dir == "best":
      logging.info("keeping step %d, the best by %s", kept_step, config.checkpoint.best_metric)
    reports_dir, written = os.path.join(workdir, "reports"), {}
    if reporting:  # (every host evaluates: the scorer is collective)
      if kept_step != config.total_steps:  # the kept model's per-record scores, for the reports
        hard_positive.run(kept_params)
      elif not hard_positive.last_metrics:  # none ran (eval.every_steps=0, or resumed finished)
        eval_metrics = evaluate(config.total_steps)
      ckpt.wait()  # the reports name (and hash) the kept checkpoint
      if jax.process_index() == 0:
        written = hard_positive.write_reports(
            reports_dir, label=f"{config.model.name} finetuned",
            checkpoint=os.path.join(checkpoint_dir, kept_dir, str(kept_step)))
        logging.info("final (step %d): %s", kept_step, _headline(hard_positive.last_metrics))
    if config.export_openclip and jax.process_index() == 0:
      factory.export_openclip(jax.device_get(kept_params), model.config, config.export_openclip)
      logging.info("exported OpenCLIP weights (step %d) to %s", kept_step, config.export_openclip)
    if config.export_hf and jax.process_index() == 0:
      hf_export.write(jax.device_get(kept_params), model.config, config.export_hf, tokenizer)
      logging.info("exported a Hugging Face folder (step %d) to %s", kept_step, config.export_hf)
    if config.lora.export_adapters and jax.process_index() == 0:
      _write_adapters(config.lora.export_adapters, kept_state.params,
                      kept_state.ema if config.ema.decay > 0 and config.ema.use
                      else kept_state.adapters, model.config)
      logging.info("exported the LoRA adapters (step %d) to %s", kept_step,
                   config.lora.export_adapters)
    if tabling and jax.process_index() == 0:
      written.update(_closing_table(config, workdir, reports_dir, kept_step))
    if "tradeoff.png" in written:  # the run's last lines: where its plot and reports are
      logging.info("trade-off plot: %s", written["tradeoff.png"])
    if written:
      logging.info("reports: %s", ", ".join(sorted(written.values())))
  finally:
    preemption.restore()
    log.close()

  return eval_metrics

