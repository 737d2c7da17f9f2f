"""Plain helpers shared by the test modules (`from helpers import ...`); fixtures are in conftest.

One copy of each: JSON fixture files, the small training fixture and its config argument,
checkpoint reading, tree comparison, multi-process launches of `python -m hpjax.main`, and an
independent per-record scorer that the evaluator's figures are checked against.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np
import open_clip
import orbax.checkpoint as ocp
import sentencepiece
import torch
from PIL import Image

from hpjax import checkpoints
from hpjax.models import CLIP, get_model_config
from openclip_reference import openclip_model, state_dict_numpy

REPO = pathlib.Path(__file__).resolve().parents[1]
# Compiled programs cached on disk, so the trainer runs after the first one skip most of the
# CPU's compile time.
COMPILATION_CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "hpjax_test_compilation_cache")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220),
           "yellow": (230, 220, 20)}


# The same random weights in OpenCLIP and in the Flax CLIP.
ModelPair = collections.namedtuple("ModelPair", "config model params torch_model")


def paired_models(name: str, seed: int = 0) -> ModelPair:
  """open_clip.create_model(name) with random weights (1-D tensors perturbed, eval mode) and
  the Flax CLIP holding the converted weights."""
  torch_model = openclip_model(name, seed)
  config = get_model_config(name)
  params = checkpoints.openclip_to_params(state_dict_numpy(torch_model), config)
  return ModelPair(config, CLIP(config), params, torch_model)


def write_json(path, obj) -> None:
  """Writes `obj` as JSON to `path`, creating its folder."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def write_train_fixture(folder, num: int = 40, seed: int = 0) -> str:
  """A tiny learnable world, as train.jsonl + PNGs: one coloured block on the left or right of a
  grey image, with hard negatives (other colour or side) and a hard positive (reworded)."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  names = list(COLOURS)
  lines = []
  for i in range(num):
    colour, other = rng.choice(names, 2, replace=False)
    side = ["left", "right"][i % 2]
    pixels = np.full((64, 64, 3), 128, np.uint8)
    pixels[16:48, (4 if side == "left" else 36):(28 if side == "left" else 60)] = COLOURS[colour]
    Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
    other_side = "right" if side == "left" else "left"
    lines.append(json.dumps({
        "image": f"{i}.png", "caption": f"a {colour} block on the {side}",
        "hard_negatives": [f"a {other} block on the {side}", f"a {colour} block on the {other_side}"],
        "hard_positives": [f"on the {side} there is a {colour} block"]}))
  path = os.path.join(folder, "train.jsonl")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def train_args(source: str, **overrides) -> str:
  """The config argument (`configs/hnhp.py:<this>`) of a small, fast float32 hpjax-tiny run on
  `source` (on 'synthetic', from random init: no pretraining stage unless `pretrain.steps` is
  given); `overrides` replace or add dotted fields."""
  args = {"source": source, "compilation_cache_dir": COMPILATION_CACHE, "model": "hpjax-tiny",
          "model.dtype": "float32", "batch_size": 8, "lr": 1e-3, "optim.warmup_steps": 2,
          "total_steps": 6, "log_every_steps": 1, "data.val_size": 8, "eval.every_steps": 0,
          "eval.hard_positive": False, "checkpoint.every_steps": 2, "checkpoint.best_metric": "",
          "checkpoint.async_save": False, "pretrain.steps": 0, **overrides}
  return ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in args.items())


def final_params(workdir, folder: str = "checkpoints") -> tuple[int, dict]:
  """(latest step, its params as numpy) of a trainer's workdir (its `folder` of saves: "best"
  for the kept-best one), whatever topology wrote them."""
  step, state = final_state(workdir, folder)
  return step, state["params"]


def final_state(workdir, folder: str = "checkpoints") -> tuple[int, dict]:
  """(latest step, its whole train state as a dict of numpy trees), as `final_params`."""
  manager = ocp.CheckpointManager(os.path.join(workdir, folder))
  step = manager.latest_step()
  path = os.path.join(workdir, folder, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return step, checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def assert_same_tree(got, want, rtol: float = 0.0, atol: float = 0.0) -> None:
  """Same keys (paths) and, leaf by leaf, the same shapes and values: bit-identical (and the same
  dtype) unless a tolerance is given. Failures name the leaf."""
  got_leaves = dict(jax.tree_util.tree_leaves_with_path(got))
  want_leaves = dict(jax.tree_util.tree_leaves_with_path(want))
  assert sorted(map(str, got_leaves)) == sorted(map(str, want_leaves))
  for path, value in want_leaves.items():
    name = jax.tree_util.keystr(path)
    assert np.shape(got_leaves[path]) == np.shape(value), name  # (no broadcasting of () to (1,))
    if rtol == atol == 0.0:
      assert np.asarray(got_leaves[path]).dtype == np.asarray(value).dtype, name
      np.testing.assert_array_equal(got_leaves[path], value, err_msg=name)
    else:
      np.testing.assert_allclose(got_leaves[path], value, rtol=rtol, atol=atol, err_msg=name)


def traced_operations(fn, *args) -> set[tuple[str, str]]:
  """(primitive name, dtype of its first operand) of every equation `fn(*args)` traces to,
  nested jaxprs (jit, remat, scan bodies) included: shows which mechanism a flag switched on."""
  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      dtype = getattr(eqn.invars[0].aval, "dtype", None) if eqn.invars else None
      yield eqn.primitive.name, str(dtype)
      for sub in jax_core.jaxprs_in_params(eqn.params):
        yield from walk(sub)
  return set(walk(jax.make_jaxpr(fn)(*args).jaxpr))


@jax.custom_vjp
def nan_backward(x):
  """The identity whose gradient is NaN: a finite loss with a NaN gradient, on demand."""
  return x


nan_backward.defvjp(lambda x: (x, None), lambda _, g: (g * jnp.nan,))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_main_on_processes(config_arg: str, workdir, num_processes: int = 2,
                          devices_per_process: int = 2, timeout: int = 600) -> list[str]:
  """`python -m hpjax.main --config=<config_arg>` as `num_processes` processes of
  `devices_per_process` CPU devices each (gloo collectives, loopback coordinator); asserts each
  exits 0 and returns their stderr."""
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
         "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  command = [sys.executable, "-m", "hpjax.main", f"--config={config_arg}", f"--workdir={workdir}",
             f"--config.distributed.coordinator_address=127.0.0.1:{free_port()}",
             f"--config.distributed.num_processes={num_processes}"]
  processes = [subprocess.Popen(command + [f"--config.distributed.process_id={i}"], cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for i in range(num_processes)]
  logs = [p.communicate(timeout=timeout)[1] for p in processes]
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log[-3000:]
  return logs


def assert_two_processes_match_one(config_arg: str, one, two, steps: int) -> dict:
  """Trains `configs/hnhp.py:<config_arg>` as 2 processes x 2 CPU devices in `two` and asserts
  it ends at `steps` with the params that one process with 4 devices wrote in `one`; returns
  those params."""
  logs = run_main_on_processes(f"configs/hnhp.py:{config_arg}", two)
  assert "process 0 of 2; 2 local of 4 devices" in logs[0]
  step_one, params_one = final_params(one)
  step_two, params_two = final_params(two)
  assert step_one == step_two == steps
  # The hosts' rows sit in another order in the global batch, so sums run in another order;
  # Adam's first steps move every weight by about +-lr whatever its gradient's size, so an entry
  # whose gradient is ~0 can differ by a few 1e-6 (lr is 1e-3).
  assert_same_tree(params_two, params_one, rtol=1e-4, atol=2e-5)
  return params_one


def per_record_scores(records, image_root, image_size: int, encode_image, encode_text,
                      transform=None, tokenizer=None) -> np.ndarray:
  """(num_records, max_captions) cosines, one record at a time as the straightforward loop
  would, without the scorer or hpjax's preprocessing: PIL crop, open_clip's eval transform and
  tokenizer (77 tokens) unless others are given. `encode_image` (1, 3, H, W) torch tensor ->
  (1, D) and `encode_text` (N, L) int64 torch tensor -> (N, D) return normalised features as
  numpy arrays."""
  transform = transform or open_clip.image_transform(image_size, is_train=False)
  tokenizer = tokenizer or open_clip.get_tokenizer("ViT-B-32")
  out = np.full((len(records), max(len(r.captions) for r in records)), np.nan, np.float32)
  for i, r in enumerate(records):
    with Image.open(os.path.join(image_root or "", r.image)) as image:
      image = image.convert("RGB")
      if r.crop is not None:
        x, y, w, h = r.crop
        image = image.crop((x, y, x + w, y + h))
      pixels = transform(image)[None]
    out[i, :len(r.captions)] = (encode_image(pixels) @ encode_text(tokenizer(list(r.captions))).T)[0]
  return out


def hard_positive_figures(scores: np.ndarray, roles) -> dict[str, float]:
  """The paper's four figures from (records, captions) scores, spelled out independently of
  hpjax.evaluate.metrics (strict comparisons: a tie is wrong)."""
  c, n, p = (scores[:, roles.index(role)] for role in ("c", "c_n", "c_p"))
  return {"original": 100 * np.mean(c > n), "augmented": 100 * np.mean((c > n) & (p > n)),
          "brittleness": 100 * np.mean(((c > n) & (n > p)) | ((p > n) & (n > c))),
          "hard_positive": 100 * np.mean(p > n)}


def torch_encoders(torch_model):
  """(encode_image, encode_text) of an OpenCLIP model, for per_record_scores."""
  def encode_image(pixels):
    with torch.no_grad():
      return torch_model.encode_image(pixels, normalize=True).numpy()

  def encode_text(tokens):
    with torch.no_grad():
      return torch_model.encode_text(tokens, normalize=True).numpy()
  return encode_image, encode_text


def flax_encoders(model, params):
  """(encode_image, encode_text) of the Flax CLIP (fp32, highest matmul precision), for
  per_record_scores."""
  image_fn = jax.jit(lambda p, x: model.apply({"params": p}, x, normalize=True,
                                              method="encode_image"))
  text_fn = jax.jit(lambda p, t: model.apply({"params": p}, t, normalize=True,
                                             method="encode_text"))

  def encode_image(pixels):
    with jax.default_matmul_precision("highest"):
      return np.asarray(image_fn(params, pixels.permute(0, 2, 3, 1).numpy()))

  def encode_text(tokens):
    with jax.default_matmul_precision("highest"):
      return np.asarray(text_fn(params, tokens.numpy().astype(np.int32)))
  return encode_image, encode_text


def write_random_image(path, seed, size=(40, 30)) -> None:
  """A random RGB image file of `size` (width, height), drawn by `seed`."""
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, size[::-1] + (3,), dtype=np.uint8)).save(path)


def example_transform(**kw):
  """The training ExampleTransform of the data tests: 32 px, 2 HN and 1 HP slots, all kept."""
  from hpjax.data import training  # pylint: disable=g-import-not-at-top
  from hpjax.tokenizer import get_tokenizer  # pylint: disable=g-import-not-at-top
  args = dict(tokenizer=get_tokenizer(), image_size=32, num_hard_negatives=2,
              num_hard_positives=1, hn_frac=1.0, hp_frac=1.0, seed=0)
  return training.ExampleTransform(**{**args, **kw})


def training_batches(source, n, **kw) -> list:
  """The first `n` batches of the training pipeline over `source` (batch 4, seed 1)."""
  from hpjax.data import training  # pylint: disable=g-import-not-at-top
  kw = {"global_batch_size": 4, "seed": 1, "transform": example_transform(), **kw}
  it = iter(training.make_dataset(source, **kw))
  return [next(it) for _ in range(n)]


# Words of the evaluation fixtures (REPLACE-like colour synonyms).
COLORS = ["white", "black", "red", "green", "blue", "brown"]
SYNONYMS = {"white": "ivory", "black": "ebony", "red": "crimson", "green": "emerald",
            "blue": "azure", "brown": "chestnut"}
OBJECTS = ["dog", "cat", "car", "tree", "ball"]


def write_fixture_suites(root, num=10):
  """REPLACE (both files) and SWAP in the authors' layout, with stand-in images shared across
  records; returns the loaded suites."""
  from hpjax.data import suites  # pylint: disable=g-import-not-at-top
  from hpjax.evaluate import benchmarks, stand_in_images  # pylint: disable=g-import-not-at-top
  for name in suites.REPLACE_NAMES:
    data, swapped = [], []
    for i in range(num):
      color, other, obj = COLORS[i % 6], COLORS[(i + 1) % 6], OBJECTS[i % 5]
      base = {"image_id": str(i % 4), "image_path": f"data/VG_100K/{i % 4}.jpg",
              "false_caption": f"{other} {obj}"}
      data.append(dict(base, true_caption=f"{color} {obj}"))
      swapped.append(dict(base, true_caption=f"{SYNONYMS[color]} {obj}"))
    write_json(os.path.join(root, "data", f"{name}.json"), data)
    write_json(os.path.join(root, "swapped_data", f"{name}.json"), swapped)
  data, swapped = [], []
  for i in range(num):
    a, b, x, y = COLORS[i % 6], COLORS[(i + 2) % 6], OBJECTS[i % 5], OBJECTS[(i + 1) % 5]
    base = {"image_path": f"aro/{i % 3}.jpg", "bbox_x": i % 5, "bbox_y": 2, "bbox_w": 40,
            "bbox_h": 30 + i, "false_caption": f"the {b} {x} and the {a} {y}",
            "attributes": [a, b]}
    data.append(dict(base, true_caption=f"the {a} {x} and the {b} {y}"))
    swapped.append(dict(base, true_caption=f"the {b} {y} and the {a} {x}"))
  write_json(os.path.join(root, "data", "visual_genome_attribution.json"), data)
  write_json(os.path.join(root, "swapped_data", "visual_genome_attribution.json"), swapped)
  loaded = benchmarks.load_hard_positive(root)
  stand_in_images.write_stand_in_images(
      [r for s in loaded.values() for r in s.records], os.path.join(root, "images"))
  return loaded


# SentencePiece models with the layouts of SigLIP's c4_en (unigram, NFKC, a dummy prefix; pad 0,
# EOS 1, unk 2, no BOS) and SigLIP 2's Gemma (BPE with byte fallback, no normalisation, no dummy
# prefix; pad 0, EOS 1, BOS 2, unk 3), in the file names of their HF repositories.
_SPM_COMMON = dict(pad_id=0, eos_id=1, pad_piece="<pad>", minloglevel=2)
SENTENCEPIECE_LAYOUTS = {
    "t5": ("spiece.model", dict(model_type="unigram", vocab_size=300, unk_id=2, bos_id=-1,
                                eos_piece="</s>", **_SPM_COMMON)),
    "gemma": ("tokenizer.model", dict(
        model_type="bpe", vocab_size=600, byte_fallback=True, bos_id=2, unk_id=3,
        eos_piece="<eos>", bos_piece="<bos>", add_dummy_prefix=False,
        normalization_rule_name="identity", **_SPM_COMMON)),
}


def train_sentencepiece(folder, layout: str) -> pathlib.Path:
  """Trains a small SentencePiece model of `layout` on random words (seconds); returns its file
  in `folder` (created)."""
  rng = random.Random(0)
  words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123") for _ in range(rng.randint(1, 7)))
           for _ in range(300)]
  lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  name, options = SENTENCEPIECE_LAYOUTS[layout]
  sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines),
                                           model_prefix=str(folder / layout), **options)
  shutil.move(folder / f"{layout}.model", folder / name)
  (folder / f"{layout}.vocab").unlink()
  return folder / name


def other_value(value):
  """A value of the same type that differs from `value` (None where there is none), to change
  one config field at a time."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value + 1
  if isinstance(value, str):
    return value + "x"
  if isinstance(value, (list, tuple)) and value and other_value(value[-1]) is not None:
    return type(value)([*value[:-1], other_value(value[-1])])
  return None


def with_field(config, dotted: str, value):
  """A copy of the ConfigDict `config` with one dotted field set."""
  import copy  # pylint: disable=g-import-not-at-top
  from hpjax import config_fields  # pylint: disable=g-import-not-at-top
  config = copy.deepcopy(config)
  *parents, leaf = dotted.split(".")
  node = config_fields.get(config, ".".join(parents)) if parents else config
  with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
    node[leaf] = value
  return config
