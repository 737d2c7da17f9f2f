"""The embedded default's pretraining stage: the captions-only CLIP every variant finetunes.

The paper finetunes a CLIP that already matches web captions. On the synthetic world that model
is trained here, once: the trainer itself runs on the world's captions alone (no hard texts; the
captions name objects in either order and in every synonym, as web captions do), and the final
params are exported as an OpenCLIP file. Every variant and seed then starts from that one file,
so they start from byte-identical params.

The stage lives in `<pretrain.cache_dir or WORKDIR/pretrain>/<key>/`, the key a digest of the
stage's config and of the world's digest (the world's manifest): a changed config or world is
another folder, a matching one is reused. `run/` is the stage's trainer workdir (an interrupted
pretrain resumes from its checkpoints); the stage is complete only once `pretrain.json`, written
last and atomically, names the params file and its sha256.

This module keeps the stage's config, cache key and bookkeeping (`prepare` before the trainer's
run, `finish` after it); the trainer runs the stage (`trainer.ensure_pretrained`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

from absl import logging
import jax
from jax.experimental import multihost_utils

from hpjax.data import synthetic
from hpjax.train import run_config

VERSION = 1
MANIFEST = "pretrain.json"
PARAMS = "params.safetensors"
_PARTIAL_PARAMS = "params.partial.safetensors"  # the trainer's export, renamed by `finish`
# What the pretrained params depend on (besides the world): the rest of the config (logging,
# checkpoint cadence, evaluation) leaves them unchanged.
KEY_FIELDS = ("model.name", "model.dtype", "data.synthetic", "data.val_size", "data.crop_scale",
              "optim", "loss")


def applies(config) -> bool:
  """Whether this run first needs the pretrained model (the synthetic world, no weights given)."""
  return bool(config.pretrain.steps) and not config.model.pretrained


def stage_config(config):
  """The trainer config of the pretraining run: captions only, the stage's own schedule."""
  stage = copy.deepcopy(config)
  p = config.pretrain
  stage.total_steps, stage.batch_size, stage.seed = p.steps, p.batch_size, p.seed
  stage.optim.lr, stage.optim.warmup_steps = p.lr, p.warmup_steps
  stage.data.synthetic_corpus = "pretrain"  # the world's web captions
  stage.data.hn_frac = stage.data.hp_frac = 0.0
  stage.data.num_hard_negatives = stage.data.num_hard_positives = 0
  stage.pretrain.steps = 0
  stage.accum_freq = 1  # (the finetune's accumulation need not divide the stage's batch)
  stage.model.pretrained = ""
  stage.eval.every_steps = p.steps  # the pretrained model's own figures, once, at the end
  stage.eval.reports = False
  stage.eval.world_probes = False  # (the finetune's step 0 evaluates the stage's model on them)
  stage.checkpoint.directory = stage.checkpoint.best_metric = stage.resume_overrides = ""
  stage.export_openclip = ""
  # The finetuning toolkit is the finetune's: the stage trains every weight, plainly.
  stage.locking.lock_image = stage.locking.lock_text = False
  stage.locking.lock_image_unlocked_groups = stage.locking.lock_text_unlocked_layers = 0
  stage.optim.image_layer_decay = stage.optim.text_layer_decay = 1.0
  stage.lora.image_rank = stage.lora.text_rank = 0
  stage.lora.export_adapters = ""
  stage.ema.decay = 0.0
  return stage


def key(config, world_digest: str) -> str:
  """A digest of the stage's config fields that shape its params, and of the world."""
  values = run_config.flatten(stage_config(config))
  fields = {k: v for k, v in values.items()
            if any(k == f or k.startswith(f + ".") for f in KEY_FIELDS)}
  fields.update(steps=config.pretrain.steps, batch_size=config.pretrain.batch_size,
                seed=config.pretrain.seed, version=VERSION, world=world_digest)
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def stage_dir(config, workdir: str, world: synthetic.WorldPaths) -> str:
  """`<pretrain.cache_dir or WORKDIR/pretrain>/<key>` for the synthetic `world`."""
  with open(world.manifest) as f:
    digest = json.load(f)["digest"]
  root = config.pretrain.cache_dir or os.path.join(workdir, "pretrain")
  return os.path.join(os.path.abspath(root), key(config, digest))


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def params_if_complete(directory: str) -> str | None:
  return os.path.join(directory, PARAMS) if complete(directory) else None


def complete(directory: str) -> bool:
  """Whether the stage in `directory` finished: its manifest names params of that sha256."""
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      manifest = json.load(f)
    return manifest["sha256"] == _sha256(os.path.join(directory, PARAMS))
  except (OSError, ValueError, KeyError, TypeError):
    return False


def _replace_link(link: str, target: str) -> None:
  if os.path.islink(link):
    os.remove(link)
  elif os.path.exists(link):
    raise FileExistsError(f"{link} exists and is not a link to the world; move it away")
  os.symlink(target, link)


def prepare(config, directory: str, world: synthetic.WorldPaths):
  """(trainer config, trainer workdir) of the stage in `directory` (from `stage_dir`): the
  workdir `run/` with `world` linked in (the trainer finds it cached), the export a partial file
  that only `finish` names complete."""
  stage = stage_config(config)
  stage.export_openclip = os.path.join(directory, _PARTIAL_PARAMS)
  run_dir = os.path.join(directory, "run")
  if jax.process_index() == 0:
    os.makedirs(run_dir, exist_ok=True)
    if os.path.exists(stage.export_openclip):  # a run stopped before `finish`: exported again
      os.remove(stage.export_openclip)
      logging.info("pretraining: removed %s, left by a stopped run", stage.export_openclip)
    _replace_link(os.path.join(run_dir, "world"), world.image_root)
  multihost_utils.sync_global_devices("pretraining folder ready")
  return stage, run_dir


def finish(config, directory: str, world: synthetic.WorldPaths) -> str | None:
  """After the stage's trainer run: its params file, renamed into place and then named by the
  manifest (written last, atomically); None when the run stopped early (preemption: its
  checkpoints resume it next time)."""
  partial, params = os.path.join(directory, _PARTIAL_PARAMS), os.path.join(directory, PARAMS)
  if not os.path.exists(partial):  # (the export is written by process 0 on a shared disk)
    return None
  if jax.process_index() == 0:
    os.replace(partial, params)
    manifest = {"version": VERSION, "params": PARAMS, "sha256": _sha256(params),
                "config": config.pretrain.to_dict(), "world": world.image_root}
    with open(os.path.join(directory, MANIFEST + ".partial"), "w") as f:
      json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(os.path.join(directory, MANIFEST + ".partial"), os.path.join(directory, MANIFEST))
  multihost_utils.sync_global_devices("pretraining written")
  return params
