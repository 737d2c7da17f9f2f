"""The training run's config: its values checked before any work, and the run's identity kept.

`check_values` stops a run at once on a value it cannot use (naming the field and what is
allowed). `check_same_run` saves the config in WORKDIR/run_config.json and, when the workdir
already holds checkpoints, compares: a checkpoint is only meaningful with the model, data,
batch size, seed and host count that wrote it, so a resume that changes one of those stops with
the fields named, unless `resume_overrides` ('+'-separated field names or prefixes, e.g.
`batch_size+data.hn_frac`, `hosts` for the host count) allows that change explicitly.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from absl import logging

from hpjax import config_fields
from hpjax import sharding
from hpjax.models.clip import CLIP, param_shapes
from hpjax.models.config import get_model_config
from hpjax.train import lora as lora_lib
from hpjax.train import losses
from hpjax.train import param_groups

FILE = "run_config.json"
HOSTS = "hosts"  # the process count, saved beside the config's fields.
# What a checkpoint means: a change continues the weights on another model, other data or
# another batch order. (data.worker_count does not change the batches: tested.)
# LoRA, locking and the EMA shape the train state itself.
SAME_RUN = ("model.name", "model.pretrained", "pretrain", "data", "batch_size", "seed", HOSTS,
            "lora", "locking", "ema")
FREE = ("data.worker_count", "pretrain.cache_dir", "data.allow_paths_outside_root",
        "lora.export_adapters", "ema.use")
_PER_LAUNCH = ("resume_overrides", "distributed")  # (process_id differs from host to host)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # model.dtype: the compute dtype

_POSITIVE = ("batch_size", "accum_freq", "total_steps", "log_every_steps",
             "checkpoint.every_steps", "checkpoint.keep", "eval.batch_size", "mesh.model_parallel",
             "pretrain.batch_size")
_NON_NEGATIVE = ("eval.every_steps", "optim.warmup_steps", "data.num_hard_negatives",
                 "data.num_hard_positives", "data.num_negative_images", "data.worker_count",
                 "data.val_size", "mesh.num_devices", "pretrain.steps", "pretrain.warmup_steps",
                 "locking.lock_image_unlocked_groups", "locking.lock_text_unlocked_layers",
                 "lora.image_rank", "lora.text_rank", "ema.warmup")
_FRACTIONS = ("data.hn_frac", "data.hp_frac")
_CHOICES = {"model.dtype": tuple(DTYPES), "loss.kind": losses.KINDS,
            "loss.positives": losses.POSITIVE_MODES,
            "checkpoint.best_mode": ("max", "min"),
            "data.synthetic_corpus": ("finetune", "pretrain")}


def flatten(config) -> dict:
  """ConfigDict -> {'a.b': value}, values as JSON gives them back (tuples become lists)."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}.")
      else:
        out[prefix + key] = value

  walk(config, "")
  return json.loads(json.dumps(out))


def check_values(config, num_devices: int, process_count: int) -> None:
  """Raises one ValueError naming every field whose value the run cannot use."""
  values = flatten(config)
  problems = config_fields.value_problems(values, _POSITIVE, _NON_NEGATIVE, _CHOICES)
  for field in _FRACTIONS:
    if not 0.0 <= values[field] <= 1.0:
      problems.append(f"{field}={values[field]!r} must be a fraction in [0, 1]")
  low, high = values["data.crop_scale"]
  if not 0.0 < low <= high <= 1.0:
    problems.append(f"data.crop_scale={values['data.crop_scale']!r} must be (low, high) with "
                    "0 < low <= high <= 1")
  for field in ("optim.lr", "pretrain.lr"):
    if not values[field] >= 0:
      problems.append(f"{field}={values[field]!r} must be >= 0")
  if values["pretrain.steps"] and values["data.source"] != "synthetic":
    problems.append(f"pretrain.steps={values['pretrain.steps']!r}: the pretraining stage is the "
                    "synthetic world's; with data.source set, finetune model.pretrained (0 steps)")
  if values["data.num_negative_images"] and values["data.source"].startswith("tfds:"):
    problems.append(f"data.num_negative_images={values['data.num_negative_images']}: a TFDS "
                    "training set holds texts only; build a JSONL or array_record with "
                    "negative_images")
  problems += _loss_problems(values)
  problems += _toolkit_value_problems(values)
  try:
    model_cfg = get_model_config(values["model.name"])
  except ValueError as e:
    problems.append(f"model.name: {e}")
  if not problems:
    problems += _toolkit_model_problems(config, param_shapes(CLIP(model_cfg)))
  if not values["data.val_source"] and values["data.val_size"] < 1:
    problems.append("data.val_size must be >= 1 without data.val_source (the retrieval split)")
  if not problems:
    devices = min(num_devices, values["mesh.num_devices"] or num_devices)
    data_parallel, rest = divmod(devices, values["mesh.model_parallel"])
    if rest:
      problems.append(f"mesh.model_parallel={values['mesh.model_parallel']} must divide the "
                      f"{devices} devices")
    for field in ("batch_size", "pretrain.batch_size")[:1 + bool(values["pretrain.steps"])]:
      if not rest and values[field] % data_parallel:
        problems.append(f"{field}={values[field]} must be a multiple of the "
                        f"{data_parallel} data-parallel devices")
      if values[field] % process_count:
        problems.append(f"{field}={values[field]} must be a multiple of the "
                        f"{process_count} hosts")
    per_device = values["batch_size"] // data_parallel
    if not rest and per_device and per_device % values["accum_freq"]:
      problems.append(f"accum_freq={values['accum_freq']} must divide the per-device batch of "
                      f"{per_device} (batch_size={values['batch_size']} over {data_parallel} "
                      "data-parallel devices)")
  if problems:
    raise ValueError("config: " + "; ".join(problems))


def _loss_problems(values: dict) -> list[str]:
  """Each loss kind's options are refused under the other kind, not silently ignored."""
  if not values["loss.hard_negative_weight"] >= 0:
    return [f"loss.hard_negative_weight={values['loss.hard_negative_weight']!r} must be >= 0"]
  if values["loss.kind"] == "sigmoid":
    return [f"{field}={values[field]!r} is an option of loss.kind='contrastive' (the sigmoid loss "
            f"has one term per image and text); leave it at {default!r}"
            for field, default in (("loss.positives", "multi"), ("loss.local_weight", 0.0))
            if values[field] != default]
  if values["loss.hard_negative_weight"] != 1.0:
    return [f"loss.hard_negative_weight={values['loss.hard_negative_weight']!r} is an option of "
            "loss.kind='sigmoid'; leave it at 1.0 or set loss.kind=sigmoid"]
  return []


def _toolkit_value_problems(values: dict) -> list[str]:
  """Layer decay, EMA, locking and LoRA values, and the combinations that make no sense."""
  problems = [f"{f}={values[f]!r} must be in (0, 1]" for f in
              ("optim.image_layer_decay", "optim.text_layer_decay") if not 0 < values[f] <= 1]
  if not 0 <= values["ema.decay"] < 1:
    problems.append(f"ema.decay={values['ema.decay']!r} must be in [0, 1) (0 = no EMA)")
  if not values["lora.alpha"] > 0:
    problems.append(f"lora.alpha={values['lora.alpha']!r} must be > 0")
  if not 0 <= values["lora.dropout"] < 1:
    problems.append(f"lora.dropout={values['lora.dropout']!r} must be in [0, 1) (0 = none)")
  for lock, count in (("locking.lock_image", "locking.lock_image_unlocked_groups"),
                      ("locking.lock_text", "locking.lock_text_unlocked_layers")):
    if values[count] and not values[lock]:
      problems.append(f"{count}={values[count]} applies to a locked tower: set {lock}=True")
  lora = values["lora.image_rank"] or values["lora.text_rank"]
  problems += [f"{f} needs LoRA training (lora.image_rank or text_rank > 0)"
               for f in ("lora.export_adapters", "lora.dropout") if values[f] and not lora]
  others = [f for f in ("locking.lock_image", "locking.lock_text") if values[f]] + [
      f for f in ("optim.image_layer_decay", "optim.text_layer_decay") if values[f] != 1.0]
  if lora and others:
    problems.append(f"LoRA training freezes the base weights: {', '.join(others)} cannot be "
                    "combined with it")
  return problems


def _toolkit_model_problems(config, shapes) -> list[str]:
  """What the model's own layers refuse: LoRA targets and ranks, unlocked-group counts."""
  try:
    lora = lora_lib.options(config)
    if lora:
      lora_lib.plan(shapes, *lora)
    table_options = param_groups.options(config)
    if table_options:
      param_groups.build_table(shapes, **table_options)
  except ValueError as e:
    return [str(e)]
  return []


def _matches(field: str, names) -> bool:
  return any(field == n or field.startswith(n + ".") for n in names)


def _overrides(config) -> list[str]:
  return config_fields.split_list(config.resume_overrides)


def allowed(config, group: str) -> bool:
  """Whether `resume_overrides` lets a resume change `group` or a field in it."""
  return any(_matches(group, [n]) or _matches(n, [group]) for n in _overrides(config))


def _read(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: unreadable ({e}); it records the run these checkpoints belong "
                     "to: restore it, or move it away to accept the current config") from e


def _write(path: str, values: dict) -> None:
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(values, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def check_same_run(config, workdir: str, *, has_checkpoints: bool) -> None:
  """Compares the config with WORKDIR/run_config.json when checkpoints exist, then saves it.

  Raises ValueError naming the changed fields that `config.resume_overrides` does not allow.
  """
  path = os.path.join(workdir, FILE)
  current = {**flatten(config), HOSTS: jax.process_count()}
  overrides = _overrides(config)
  unknown = [n for n in overrides if not any(_matches(f, [n]) for f in current)]
  if unknown:
    raise ValueError(f"resume_overrides: {unknown} name no config field (give fields such as "
                     f"batch_size or data.hn_frac, a prefix such as data, or {HOSTS})")
  saved = _read(path) if has_checkpoints else None
  problem = ""
  if has_checkpoints and saved is None:
    logging.warning("%s is missing: cannot check that the checkpoints there belong to this run "
                    "(saving this run's config now)", path)
  elif saved is not None:
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k)
                     and not _matches(k, _PER_LAUNCH))
    guarded = [k for k in changed if _matches(k, SAME_RUN) and not _matches(k, FREE)]
    refused = [k for k in guarded if not _matches(k, overrides)]
    if refused:
      problem = (f"{path}: this workdir's checkpoints were trained with other values of "
                 + ", ".join(f"{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in refused)
                 + "; use a new workdir, or allow the change with "
                 f"--config.resume_overrides={'+'.join(refused)}")
    elif changed:
      logging.warning("resuming with changed fields: %s%s", ", ".join(
          f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in changed),
          " (allowed by resume_overrides)" if guarded else "")
  # Every host stops when one does (a host going on alone would wait forever in a collective).
  if sharding.host_max(int(bool(problem))):
    raise ValueError(problem or "another host found this run's config changed (see its log)")
  if jax.process_index() == 0:
    _write(path, current)
