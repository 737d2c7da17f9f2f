"""Shared training config; the recipe files (hnhp, hn, hp, coco_control) set only what differs.

Config argument: `configs/hnhp.py:hn_frac=0.25,batch_size=64` sets `data.hn_frac` and
`batch_size` (a short name is looked up in SHORTCUTS, a dotted name is used as given); values
are Python literals, anything else is a string. `--config.x=y` flags override afterwards.

Without `data.source` (or with `data.source='synthetic'`) a run trains the tiny model from
scratch on the synthetic world (hpjax.data.synthetic) and finishes in minutes on a CPU; with
`data.source` set to a training JSONL or array_record files it follows the paper's recipe:
ViT-B-32-quickgelu from the OpenCLIP checkpoint in `model.pretrained`, NegCLIP's optimizer.
"""

import ast

import ml_collections

SHORTCUTS = {
    "hn_frac": "data.hn_frac", "hp_frac": "data.hp_frac", "source": "data.source",
    "num_hard_negatives": "data.num_hard_negatives", "num_hard_positives": "data.num_hard_positives",
    "model": "model.name", "pretrained": "model.pretrained", "lr": "optim.lr",
    "positives": "loss.positives", "local_weight": "loss.local_weight",
}


def parse_arg(arg: str | None) -> dict:
  """'a=1,b.c=x' -> {'a': 1, 'b.c': 'x'}."""
  out = {}
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config argument {item!r} is not key=value")
    key, value = item.split("=", 1)
    try:
      out[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key.strip()] = value
  return out


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  *parents, leaf = SHORTCUTS.get(dotted, dotted).split(".")
  node = config
  for name in parents:
    node = node[name]
  if leaf not in node:
    raise KeyError(f"config has no field {dotted!r}")
  node[leaf] = value


def get_config(arg: str | None, **recipe) -> ml_collections.ConfigDict:
  """The default config with `recipe` overrides, then the command-line argument's."""
  c = ml_collections.ConfigDict()
  c.program = "train"
  c.seed = 0
  c.batch_size = 64
  c.total_steps = 300
  c.log_every_steps = 20
  c.compilation_cache_dir = ""  # jax's persistent compilation cache (reused by restarts).

  c.model = ml_collections.ConfigDict()
  c.model.name = "hpjax-tiny"
  c.model.pretrained = ""  # OpenCLIP/HF file or hpjax params dir; "" = random init.
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators (params stay fp32).
  c.model.remat = False

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # or a training .jsonl, or comma-separated .array_record files.
  c.data.val_source = ""  # held-out records for retrieval; "" = the last val_size of source.
  c.data.val_size = 200
  c.data.num_hard_negatives = 1
  c.data.num_hard_positives = 1
  c.data.hn_frac = 1.0
  c.data.hp_frac = 1.0
  c.data.crop_scale = (0.9, 1.0)
  c.data.worker_count = 0
  c.data.skip_bad_images = False
  c.data.synthetic = ml_collections.ConfigDict(
      {"num_train": 3000, "num_eval": 300, "image_size": 64, "seed": 0})

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 30
  c.optim.end_factor = 0.0
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
  c.optim.weight_decay = 0.2
  c.optim.grad_clip_norm = 0.0

  c.loss = ml_collections.ConfigDict({"positives": "multi", "local_weight": 0.0})

  c.mesh = ml_collections.ConfigDict({"model_parallel": 1, "num_devices": 0})  # 0: all devices
  c.distributed = ml_collections.ConfigDict(
      {"coordinator_address": "", "num_processes": 0, "process_id": 0})

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.directory = ""  # "" = the workdir; may be gs://bucket/run (orbax, etils.epath).
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True
  c.checkpoint.best_metric = ""  # e.g. "replace/augmented" or "retrieval/mean_recall@1".
  c.checkpoint.best_mode = "max"

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 100
  c.eval.batch_size = 128
  c.eval.hard_positive = True  # REPLACE/SWAP scores with hpjax.evaluate's HardPositiveEvaluator.
  c.eval.replace_swap_root = ""  # authors' layout (data/, swapped_data/); synthetic: its own.
  c.eval.image_root = ""
  c.eval.reports = True

  c.export_openclip = ""  # a path: write the final params as an OpenCLIP state dict there.

  for key, value in {**recipe, **parse_arg(arg)}.items():
    _set(c, key, value)
  if c.data.source != "synthetic":
    paper_recipe(c, explicit=set(recipe) | set(parse_arg(arg)))
  return c


def paper_recipe(c: ml_collections.ConfigDict, explicit: set) -> None:
  """NegCLIP's finetune of OpenAI ViT-B/32 (paper.md), for fields not set explicitly."""
  defaults = {"model.name": "ViT-B-32-quickgelu", "model.dtype": "bfloat16", "batch_size": 256,
              "optim.lr": 1e-6, "optim.warmup_steps": 50, "total_steps": 5 * 591753 // 256,
              "checkpoint.every_steps": 1000, "eval.every_steps": 2311, "log_every_steps": 50,
              "checkpoint.best_metric": "retrieval/mean_recall@1", "data.val_size": 5000}
  explicit = {SHORTCUTS.get(k, k) for k in explicit}
  for key, value in defaults.items():
    if key not in explicit:
      _set(c, key, value)
