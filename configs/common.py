"""Shared training config; the recipe files (hnhp, hn, hp, coco_control) set only what differs.

Config argument: `configs/hnhp.py:hn_frac=0.25,batch_size=64` sets `data.hn_frac` and
`batch_size` (a short name is looked up in SHORTCUTS, a dotted name is used as given); values
are Python literals, anything else is a string; lists inside a value use '+' (as in
configs/eval_hp.py): `source=/d/a.array_record+/d/b.array_record`. `--config.x=y` flags override
afterwards. An unknown field is an error naming it; values are checked when the run starts
(hpjax/train/run_config.py), and a resume must keep the run's model, data, batch size, seed and
host count unless `resume_overrides` names the change.

Without `data.source` (or with `data.source='synthetic'`) a run follows the paper's protocol on
the synthetic world (hpjax.data.synthetic) in minutes on a CPU: the tiny model pretrained on its
captions alone (the `pretrain` stage, cached and shared by every variant), then finetuned with
a low learning rate, warm-up and keep-best by retrieval; with
`data.source` set to a training JSONL or array_record files it follows the paper's recipe:
ViT-B-32-quickgelu from the OpenCLIP checkpoint in `model.pretrained`, NegCLIP's optimizer.
"""

import ast

import ml_collections

from hpjax import config_fields
from hpjax.train import retrieval

SHORTCUTS = {
    "hn_frac": "data.hn_frac", "hp_frac": "data.hp_frac", "source": "data.source",
    "num_hard_negatives": "data.num_hard_negatives", "num_hard_positives": "data.num_hard_positives",
    "model": "model.name", "pretrained": "model.pretrained", "lr": "optim.lr",
    "positives": "loss.positives", "local_weight": "loss.local_weight", "loss": "loss.kind",
    "hn_weight": "loss.hard_negative_weight", "tokenizer": "model.tokenizer",
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


def spectrum_fields() -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """The zero-shot and retrieval fields (hpjax.evaluate.runner.spectrum_evaluators) of the
  evaluate program and of training's eval group."""
  zeroshot = ml_collections.ConfigDict()
  # A class-per-folder tree, a .jsonl/.csv of (image, label), or tfds:NAME[:SPLIT].
  zeroshot.images = ""
  zeroshot.classes = "imagenet1k"  # the shipped class set, or a class-set JSON file.
  zeroshot.name = "imagenet1k"  # the figures' prefix: imagenet1k/top1, ...
  zeroshot.image_root = ""  # relative paths of a .jsonl/.csv list.
  zeroshot.skip_empty_classes = False  # True: an image-less class folder is counted, not an error
  retrieval_fields = ml_collections.ConfigDict()
  # Karpathy's dataset_*.json, CLIP_benchmark's annotation file, or tfds:coco_captions/2014.
  retrieval_fields.annotations = ""
  retrieval_fields.image_root = ""
  retrieval_fields.split = "test"  # the Karpathy split scored.
  retrieval_fields.name = "coco5k"  # the figures' prefix: coco5k/image_to_text_R@1, ...
  return zeroshot, retrieval_fields


def set_field(config: ml_collections.ConfigDict, dotted: str, value, shortcuts=None) -> None:
  """Sets a field by dotted name (or a short name of `shortcuts`, default SHORTCUTS)."""
  name = (SHORTCUTS if shortcuts is None else shortcuts).get(dotted, dotted)
  error = config_fields.field_error(config, name)
  if error:
    raise KeyError(error)
  *parents, leaf = name.split(".")
  node = config
  for part in parents:
    node = node[part]
  if isinstance(node[leaf], str) and not isinstance(value, str):
    value = str(value)  # a path such as 123 parses as a number: string fields keep strings.
  try:
    node[leaf] = value
  except TypeError as e:
    raise ValueError(f"config field {name!r}: {value!r} is not of type "
                     f"{type(node[leaf]).__name__}") from e


def get_config(arg: str | None, **recipe) -> ml_collections.ConfigDict:
  """The default config with `recipe` overrides, then the command-line argument's."""
  c = ml_collections.ConfigDict()
  c.program = "train"
  c.seed = 0
  c.batch_size = 64
  # Micro-batches per step (OpenCLIP's --accum-freq): the batch is encoded a micro-batch at a
  # time and the loss still sees every in-batch negative (hpjax/train/accumulation.py). It must
  # divide the per-device batch.
  c.accum_freq = 1
  c.total_steps = 300  # the finetune (synthetic default: about two epochs of the world)
  c.log_every_steps = 20
  c.compilation_cache_dir = ""  # jax's persistent compilation cache (reused by restarts).

  c.model = ml_collections.ConfigDict()
  c.model.name = "hpjax-tiny"
  c.model.pretrained = ""  # OpenCLIP/HF file, hpjax params dir or a name (openai, hf-hub:org/repo,
  # gs://...; hpjax.list_pretrained()), fetched once into the Hugging Face cache; "" = random init.
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators (params stay fp32).
  c.model.remat = False
  c.model.tokenizer = ""  # a local tokenizer file or folder, for models whose text_cfg names one.

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # or a training .jsonl, '+'-separated .array_record files, or
  # a prepared TFDS dataset tfds:<name>[:<split>] (hpjax.data.tfds_builders).
  c.data.tfds_data_dir = ""  # TFDS data_dir (may be gs://); "" = TFDS's default.
  c.data.val_source = ""  # held-out records for retrieval; "" = the last val_size of source.
  c.data.val_size = 200
  c.data.num_hard_negatives = 1
  c.data.num_hard_positives = 1
  c.data.hn_frac = 1.0
  c.data.hp_frac = 1.0
  # Negative images per example (the records' `negative_images`, NegCLIP's neg_image rows): extra
  # text->image negatives; 0 reads none.
  c.data.num_negative_images = 0
  c.data.crop_scale = (0.9, 1.0)
  c.data.worker_count = 0
  c.data.skip_bad_images = False
  c.data.allow_paths_outside_root = False  # True: a JSONL may name absolute or '../' image paths
  # The synthetic world's corpus: "finetune" (COCO-style captions with hard texts, train.jsonl)
  # or "pretrain" (its web captions, pretrain.jsonl: what the pretraining stage trains on).
  c.data.synthetic_corpus = "finetune"
  c.data.synthetic = ml_collections.ConfigDict(
      {"num_train": 10000, "num_eval": 300, "image_size": 64, "seed": 0,
       "caption_words": "plain", "web_captions": 3, "num_probe": 240, "num_retrieval": 200,
       "hard_texts": "rules"})  # hpjax.data.synthetic.write_world

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 5e-4  # finetuning: half the pretraining stage's
  c.optim.warmup_steps = 10
  c.optim.end_factor = 0.0
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
  c.optim.weight_decay = 0.2
  c.optim.grad_clip_norm = 0.0
  # Layer-wise learning-rate decay (OpenCLIP's groups, hpjax/train/param_groups.py): group g of
  # a tower's n trains at lr * decay ** (n - 1 - g); 1.0 = none.
  c.optim.image_layer_decay = 1.0
  c.optim.text_layer_decay = 1.0

  # Locked towers, as OpenCLIP's --lock-image* / --lock-text* flags: locked parameters get no
  # update and no optimizer state; the last N layer groups of a locked tower stay trainable.
  # (Not named `lock`: that is ConfigDict's own method, which `--config.lock.x` flags would hit.)
  c.locking = ml_collections.ConfigDict(
      {"lock_image": False, "lock_image_unlocked_groups": 0, "lock_text": False,
       "lock_text_unlocked_layers": 0, "lock_text_freeze_layer_norm": True})

  # LoRA training (hpjax/train/lora.py): rank-r adapters on the named modules of each tower
  # ('+'-joined from lora.TARGETS; rank 0 = tower not adapted), the base weights frozen.
  # dropout: PEFT's lora_dropout, on the adapters' inputs in training only (0 = none, merged).
  # export_adapters: a path for the base weights with unmerged adapters in TSVLC's layout.
  c.lora = ml_collections.ConfigDict(
      {"image_rank": 0, "text_rank": 0, "alpha": 1.0, "dropout": 0.0,
       "image_targets": "in_proj+out_proj+c_fc+c_proj+conv1",
       "text_targets": "in_proj+out_proj+c_fc+c_proj", "export_adapters": ""})

  # EMA of the trained weights (hpjax/train/ema.py): decay; warmup w > 0 uses
  # min(decay, (1 + t) / (w + t)) at step t. use: evaluate, keep-best and export the EMA.
  c.ema = ml_collections.ConfigDict({"decay": 0.0, "warmup": 0, "use": True})

  # kind: "contrastive" (paper.md; positives, local_weight) or "sigmoid" (SigLIP's, over the
  # same hard texts; hard_negative_weight on each image's own hard negatives).
  c.loss = ml_collections.ConfigDict({"kind": "contrastive", "positives": "multi",
                                      "local_weight": 0.0, "hard_negative_weight": 1.0})

  # The synthetic world's pretraining stage (hpjax/train/pretrain.py): captions only, cached in
  # cache_dir ("" = WORKDIR/pretrain) by its config and the world's digest; every variant
  # finetunes that model. Runs when steps > 0 and model.pretrained is "".
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.steps = 2000  # about 4 epochs of the web corpus (3 captions per image)
  c.pretrain.batch_size = 64
  c.pretrain.lr = 1e-3
  c.pretrain.warmup_steps = 50
  c.pretrain.seed = 0  # one pretrained model for every finetuning seed
  c.pretrain.cache_dir = ""

  c.mesh = ml_collections.ConfigDict({"model_parallel": 1, "num_devices": 0})  # 0: all devices
  c.distributed = ml_collections.ConfigDict(
      {"coordinator_address": "", "num_processes": 0, "process_id": 0})

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.directory = ""  # "" = the workdir; may be gs://bucket/run (orbax, etils.epath).
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True
  c.checkpoint.best_metric = retrieval.MEAN_RECALL_AT_1  # keep-best, as the paper; "" = none
  c.checkpoint.best_mode = "max"

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 100
  c.eval.batch_size = 128
  c.eval.hard_positive = True  # REPLACE/SWAP scores with hpjax.evaluate's HardPositiveEvaluator.
  c.eval.replace_swap_root = ""  # authors' layout (data/, swapped_data/); synthetic: its own.
  c.eval.image_root = ""
  c.eval.reports = True
  # Zero-shot classification and standard-protocol retrieval at every evaluation (off while
  # eval.zeroshot.images / eval.retrieval.annotations are empty); keep-best may pick by one of
  # their figures or by a '+'-combination (the mean), e.g. imagenet1k/top1+replace/augmented.
  c.eval.zeroshot, c.eval.retrieval = spectrum_fields()
  # The synthetic world: its zero-shot probe (world_objects/...) and 5-captions retrieval split
  # (world_5cap/...) fill eval.zeroshot / eval.retrieval where those are empty, and the run ends
  # with the pretrained and finetuned model side by side (reports/spectrum.md, tradeoff.png).
  c.eval.world_probes = True

  c.export_openclip = ""  # a path: write the final params as an OpenCLIP state dict there.
  c.export_hf = ""  # a folder: the same as a Hugging Face CLIPModel (SigLIP: SiglipModel).
  # A resume must be the same run (WORKDIR/run_config.json): '+'-separated fields (or prefixes,
  # or 'hosts') whose change a resume accepts, e.g. 'batch_size+data.hn_frac'.
  c.resume_overrides = ""

  for key, value in {**recipe, **parse_arg(arg)}.items():
    set_field(c, key, value)
  if c.data.source != "synthetic":
    paper_recipe(c, explicit=set(recipe) | set(parse_arg(arg)))
  return c


def paper_recipe(c: ml_collections.ConfigDict, explicit: set) -> None:
  """NegCLIP's finetune of OpenAI ViT-B/32 (paper.md), for fields not set explicitly."""
  defaults = {"model.name": "ViT-B-32-quickgelu", "model.dtype": "bfloat16", "batch_size": 256,
              "optim.lr": 1e-6, "optim.warmup_steps": 50, "total_steps": 5 * 591753 // 256,
              "checkpoint.every_steps": 1000, "eval.every_steps": 2311, "log_every_steps": 50,
              "checkpoint.best_metric": retrieval.MEAN_RECALL_AT_1, "data.val_size": 5000,
              "pretrain.steps": 0}
  explicit = {SHORTCUTS.get(k, k) for k in explicit}
  for key, value in defaults.items():
    if key not in explicit:
      set_field(c, key, value)
