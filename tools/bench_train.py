"""Training-step throughput: hpjax against an equivalent OpenCLIP PyTorch step, and vs devices.

Both sides: the same architecture (random init), batch, text columns per example (caption,
hard negatives, hard positives), the same loss (`--loss`: the contrastive one, or SigLIP's
sigmoid loss over the hard texts, with SigLIP's init t = ln 10, b = -10) and AdamW (0.9, 0.98,
1e-6, wd 0.2).
Texts (`--texts=coco`, the default): the real COCO captions and first hard negatives of NegCLIP's
valid_neg_clip.tsv in a random order, and per caption one hard positive of the same length (the
two words around its first "and" swapped, else one word of a small synonym table replaced);
images are random pixels (the COCO images are not on this machine; the step does not care).
`--texts=template` is the old 14-token template caption (every text in the 16-token bucket).
A text tower that is not causal and EOT-pooled (SigLIP's) encodes every text at its full context
length whatever its ids, so both sides get the same random ids (`--sides=torch,77`).
Each side runs in its own resident worker process (so peak RSS is that side's alone); after
setup and `--warmup` untimed steps, the workers take turns, one step each per round, for
`--steps` rounds. Interleaving makes the machine's noise (this VM's neighbours, turbo) fall on
every side alike, so the per-round ratios are paired; medians are quoted.

  .venv/bin/python tools/bench_train.py --model=ViT-B-32-quickgelu --batch=16
  .venv/bin/python tools/bench_train.py --batch=64 --steps=3 --warmup=1 --steps_per_visit=2 --devices=
  .venv/bin/python tools/bench_train.py --text_layouts --batch=64
  .venv/bin/python tools/bench_train.py --devices_only --model=hpjax-tiny --batch=64
  .venv/bin/python tools/bench_train.py --model=ViT-B-16-SigLIP --loss=sigmoid --sides=torch,77
"""

from __future__ import annotations

import ast
import csv
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

_MODEL = flags.DEFINE_string("model", "ViT-B-32-quickgelu", "model config name")
_LOSS = flags.DEFINE_enum("loss", "contrastive", ["contrastive", "sigmoid"], "the loss (loss.kind)")
_BATCH = flags.DEFINE_integer("batch", 8, "global batch (examples)")
_NEG = flags.DEFINE_integer("hard_negatives", 1, "hard negatives per example")
_POS = flags.DEFINE_integer("hard_positives", 1, "hard positives per example")
_STEPS = flags.DEFINE_integer("steps", 10, "timed rounds (one step of every side per round)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps first")
_TEXTS = flags.DEFINE_enum("texts", "coco", ["coco", "template"], "the batch's texts")
_TSV = flags.DEFINE_string("tsv", "/work/shared/data/hard_positives/temp_data/valid_neg_clip.tsv",
                           "NegCLIP's TSV (title, neg_caption columns) for --texts=coco")
_SIDES = flags.DEFINE_list("sides", "torch,packed,longest", "rows to time: torch (OpenCLIP), "
                           "packed (hpjax's trainer), longest (the old longest-text bucket), 77")
_TEXT_LAYOUTS = flags.DEFINE_bool("text_layouts", False, "only the text tower (fwd + bwd) under "
                                  "each candidate layout, in one process")
_LAYOUT_TOKENS = flags.DEFINE_bool("layout_tokens", False, "only the text tokens each candidate "
                                   "layout encodes, over 100 random COCO batches per batch size")
_SIDE = flags.DEFINE_enum("side", "", ["", "hpjax", "torch"], "internal: run one side")
_LAYOUT = flags.DEFINE_string("layout", "packed", "internal: hpjax text layout")
_DEVICES = flags.DEFINE_string("devices", "1,2,4,8", "simulated device counts to time")
_DEVICES_ONLY = flags.DEFINE_bool("devices_only", False, "only the device-count sweep")
_VISIT = flags.DEFINE_integer("steps_per_visit", 0, "0: every side a resident worker, one step "
                              "each per round. N > 0: one side in memory at a time (batch 64 of "
                              "ViT-B-32 does not fit twice in 24 GB): each round starts every "
                              "side's worker afresh, times N steps, stops it")


SYNONYMS = {"man": "guy", "woman": "lady", "people": "persons", "large": "big", "small": "little",
            "sitting": "seated", "near": "beside", "street": "road", "picture": "photo",
            "person": "individual", "a": "one"}


def hard_positive(caption: str) -> str:
  """The caption's two words around its first 'and' swapped, else one synonym replaced."""
  words = caption.split()
  lower = [w.lower() for w in words]
  if "and" in lower[1:-1]:
    i = lower.index("and", 1)
    words[i - 1], words[i + 1] = words[i + 1], words[i - 1]
    return " ".join(words)
  for i, w in enumerate(lower):
    if w in SYNONYMS:
      words[i] = SYNONYMS[w]
      return " ".join(words)
  return caption


def _texts(b: int, k_n: int, k_p: int):
  """(captions, hard negatives, hard positives): b, b * k_n and b * k_p strings."""
  if _TEXTS.value == "template":
    caption = lambda n, offset: [f"a photo of {i + offset} red blocks next to a small blue ball"
                                 for i in range(n)]
    return caption(b, 0), caption(b * k_n, 1000), caption(b * k_p, 2000)
  if (k_n, k_p) != (1, 1):
    raise ValueError("--texts=coco has one hard negative and one hard positive per caption")
  with open(_TSV.value, newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  picked = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:b]]
  caps = [r["title"] for r in picked]
  return caps, [ast.literal_eval(r["neg_caption"])[0] for r in picked], \
      [hard_positive(c) for c in caps]


def _median(times):
  times = sorted(times)
  return times[len(times) // 2]


def _hpjax_side():
  import jax  # pylint: disable=g-import-not-at-top (after XLA_FLAGS are set)
  from configs import common  # pylint: disable=g-import-not-at-top
  from hpjax import factory, sharding  # pylint: disable=g-import-not-at-top
  from hpjax.train import optim, trainer, step as step_lib  # pylint: disable=g-import-not-at-top

  model, params = factory.create_model(trainer.model_config(_MODEL.value, _LOSS.value))
  mesh = sharding.make_mesh()
  batch, info = _hpjax_batch(model, mesh, _LAYOUT.value)
  tx, schedule = optim.make_optimizer(common.get_config(None).optim, 1000)
  state_shapes = jax.eval_shape(lambda p: step_lib.init_state(p, tx), params)
  shardings = sharding.param_sharding(mesh, state_shapes)
  state = jax.jit(lambda p: step_lib.init_state(p, tx), out_shardings=shardings)(params)
  del params
  train_step = step_lib.jit_train_step(model, tx, schedule, shardings, sharding.replicated(mesh),
                                       kind=_LOSS.value)
  on_mesh = sharding.put_batch(batch, mesh)
  holder = {"state": state}

  def step():
    holder["state"], metrics = train_step(holder["state"], on_mesh)
    return float(metrics["loss"])  # waits for the step

  return step, {"side": "hpjax", "devices": jax.device_count(), **info}


def _random_ids(text_cfg) -> list[np.ndarray]:
  """Captions, hard negatives, hard positives as random ids at the full context length."""
  b, k_n, k_p = _BATCH.value, _NEG.value, _POS.value
  rng = np.random.default_rng(0)
  return [rng.integers(1, text_cfg.vocab_size, (n, text_cfg.context_length)).astype(np.int32)
          for n in (b, b * k_n, b * k_p)]


def _hpjax_batch(model, mesh, layout: str):
  """The host batch under `layout` (packed: the trainer's; longest: every text cut to the bucket
  of the batch's longest text, the trainer before packing; 77: no cut) and its text tokens."""
  from hpjax import sharding, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from hpjax.train import text_packing  # pylint: disable=g-import-not-at-top
  b, k_n, k_p = _BATCH.value, _NEG.value, _POS.value
  size = model.config.vision.image_size
  text_cfg = model.config.text
  if text_cfg.causal_eot_pooled:
    tok = tokenizer_lib.get_tokenizer()
    caps, negs, poss = (tok(t) for t in _texts(b, k_n, k_p))
  else:
    if layout != "77":
      raise ValueError(f"{_MODEL.value}'s text tower takes every text at its full context "
                       "length: time it with --sides=torch,77")
    caps, negs, poss = _random_ids(text_cfg)
  length = caps.shape[1]
  batch = {"image": np.random.default_rng(0).normal(size=(b, size, size, 3)).astype(np.float32),
           "caption": caps, "hard_negatives": negs.reshape(b, k_n, length),
           "hard_positives": poss.reshape(b, k_p, length),
           "hard_negative_mask": np.ones((b, k_n), bool),
           "hard_positive_mask": np.ones((b, k_p), bool)}
  if not text_cfg.causal_eot_pooled:
    return batch, {"layout": layout, "text_tokens_needed": int(length * b * (1 + k_n + k_p)),
                   "text_tokens_encoded": int(length * b * (1 + k_n + k_p))}
  lengths = np.concatenate([tokenizer_lib.token_lengths(batch[k]).ravel()
                            for k in ("caption", "hard_negatives", "hard_positives")])
  if layout == "packed":
    batch = text_packing.pack_batch(batch, mesh.shape[sharding.DATA], 77)
    cost = batch["text"]["tokens"].size
  elif layout in ("longest", "77"):
    cut = tokenizer_lib.bucket_length(int(lengths.max())) if layout == "longest" else 77
    batch = {k: v[..., :cut] if k in ("caption", "hard_negatives", "hard_positives") else v
             for k, v in batch.items()}
    cost = cut * len(lengths)
  else:
    raise ValueError(f"unknown layout {layout!r} (use packed, longest or 77)")
  return batch, {"layout": layout, "text_tokens_needed": int(lengths.sum()),
                 "longest_text": int(lengths.max()), "text_tokens_encoded": int(cost)}


def _torch_side():
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from hpjax.models import get_model_config  # pylint: disable=g-import-not-at-top
  from hpjax.train import openclip_step  # pylint: disable=g-import-not-at-top

  b, k_n, k_p = _BATCH.value, _NEG.value, _POS.value
  torch.manual_seed(0)
  model = openclip_step.openclip_model(_MODEL.value, sigmoid=_LOSS.value == "sigmoid")
  size = get_model_config(_MODEL.value).vision.image_size
  images = torch.randn(b, 3, size, size)
  text_cfg = get_model_config(_MODEL.value).text
  if text_cfg.causal_eot_pooled:
    tok = open_clip.get_tokenizer(_MODEL.value)
    caps, negs, poss = (tok(t) for t in _texts(b, k_n, k_p))
  else:
    caps, negs, poss = (torch.from_numpy(t) for t in _random_ids(text_cfg))
  step = openclip_step.make_step(model, images, caps, negs, poss, sigmoid=_LOSS.value == "sigmoid")
  return step, {"side": "torch", "threads": torch.get_num_threads()}


def _serve(side: str):
  """Worker: set up, warm up, then time one step per 'step' line on stdin until 'quit'."""
  start = time.perf_counter()
  step, info = _hpjax_side() if side == "hpjax" else _torch_side()
  step()  # hpjax compiles here
  info["first_step_s"] = time.perf_counter() - start
  for _ in range(_WARMUP.value):
    step()
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    if line.strip() != "step":
      break
    start = time.perf_counter()
    loss = step()
    print(json.dumps({"step_s": time.perf_counter() - start, "loss": loss}), flush=True)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps({"peak_rss_mb": rss}), flush=True)


class _Worker:
  """One side in its own process, started and warmed up before any timing begins."""

  def __init__(self, name: str, side: str, devices: int = 1, layout: str = "packed"):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": repo,
           "XLA_FLAGS": (f"{os.environ.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={devices}")}
    args = [sys.executable, os.path.abspath(__file__), f"--side={side}", f"--model={_MODEL.value}",
            f"--batch={_BATCH.value}", f"--hard_negatives={_NEG.value}",
            f"--hard_positives={_POS.value}", f"--warmup={_WARMUP.value}", f"--loss={_LOSS.value}",
            f"--layout={layout}", f"--texts={_TEXTS.value}", f"--tsv={_TSV.value}"]
    self.name, self.times = name, []
    self._proc = subprocess.Popen(args, env=env, cwd=repo, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
    self.info = self._read()

  def _read(self) -> dict:
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.name} worker exited with {self._proc.wait()} (its stderr is above)")
    return json.loads(line)

  def step(self):
    self._proc.stdin.write("step\n")
    self._proc.stdin.flush()
    self.times.append(self._read()["step_s"])

  def close(self):
    self._proc.stdin.write("quit\n")
    self._proc.stdin.flush()
    self.info.update(self._read())
    self._proc.wait()


ROWS = {"torch": "OpenCLIP (PyTorch)", "packed": "hpjax (packed rows)",
        "longest": "hpjax (longest-text bucket, before packing)",
        "77": "hpjax (text at its full context length)"}


def _text_layouts():
  """Text tower fwd + bwd of the batch's texts under the candidate layouts, round by round."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hpjax import factory, sharding  # pylint: disable=g-import-not-at-top
  from hpjax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from hpjax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  model, params = factory.create_model(_MODEL.value)
  mesh = sharding.make_mesh()
  packed = _hpjax_batch(model, mesh, "packed")[0]["text"]
  tokens = step_lib.stacked_texts(_hpjax_batch(model, mesh, "77")[0], np).reshape(-1, 77)
  lengths = tokenizer_lib.token_lengths(tokens)
  longest = tokenizer_lib.bucket_length(int(lengths.max()))
  # per-row buckets with capacities that fit this batch exactly (that candidate's best case)
  buckets = [tokens[(lengths <= hi) & (lengths > lo)][:, :hi]
             for lo, hi in ((0, 16), (16, 32), (32, 77))]
  buckets = [t for t in buckets if len(t)]

  def cost(encode):
    return jax.jit(jax.grad(lambda p, x: jnp.sum(encode(p, x) ** 2)))

  text = lambda p, t: model.apply({"params": p}, t, method="encode_text")
  cases = {
      f"longest-text bucket ({longest} tokens x {len(tokens)} rows)":
          (cost(text), tokens[:, :longest]),
      "per-row buckets 16/32/77 (" + " + ".join(f"{t.shape[1]} x {len(t)}" for t in buckets) + ")":
          (cost(lambda p, ts: jnp.concatenate([text(p, t) for t in ts])), buckets),
      f"packed rows (77 x {len(packed['tokens'])})":
          (cost(lambda p, t: model.apply({"params": p}, **t, method="encode_text_packed")),
           packed)}
  times = {name: [] for name in cases}
  for name, (fn, x) in cases.items():
    jax.block_until_ready(fn(params, x))  # compile
  for _ in range(_STEPS.value):
    for name, (fn, x) in cases.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(params, x))
      times[name].append(time.perf_counter() - start)
  print(f"{int(lengths.sum())} text tokens in {len(tokens)} texts; load average "
        f"{os.getloadavg()[0]:.1f}")
  print("| text layout | median fwd + bwd (s) | time vs longest-text bucket (median of per-round "
        "ratios) |")
  print("| --- | --- | --- |")
  first = times[next(iter(times))]
  for name, t in times.items():
    print(f"| {name} | {_median(t):.3f} | {_median([a / b for a, b in zip(t, first)]):.2f} |")


def _layout_tokens():
  """Tokens encoded per batch (medians of 100 random batches) under each candidate layout."""
  from hpjax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from hpjax.train import text_packing  # pylint: disable=g-import-not-at-top
  tok = tokenizer_lib.get_tokenizer()
  every_row = _texts(10 ** 9, 1, 1)  # (more than the TSV has: all of its rows)
  lengths = np.stack([tokenizer_lib.token_lengths(tok(t)) for t in every_row], 1)
  rng = np.random.default_rng(1)
  print("| batch (texts) | tokens needed | longest-text bucket | per-text buckets 16/32/77, "
        "exact capacities | packed rows (ladder steps seen) |")
  print("| --- | --- | --- | --- | --- |")
  for b in (16, 64, 256):
    cost = {"longest": [], "per_text": [], "packed": [], "needed": []}
    steps = set()
    for _ in range(100):
      picked = lengths[rng.choice(len(lengths), b, replace=False)].ravel()
      cost["needed"].append(picked.sum())
      cost["longest"].append(tokenizer_lib.bucket_length(picked.max()) * len(picked))
      cost["per_text"].append(sum(tokenizer_lib.bucket_length(n) for n in picked))
      rows = text_packing.ladder(text_packing.first_fit_decreasing(picked, 77)[0].max() + 1)
      steps.add(rows)
      cost["packed"].append(rows * 77)
    med = {k: float(np.median(v)) for k, v in cost.items()}
    show = lambda k: f"{med[k]:.0f} ({med[k] / med['needed']:.2f}x)"
    print(f"| {b} ({3 * b}) | {med['needed']:.0f} | {show('longest')} | {show('per_text')} | "
          f"{show('packed')} ({', '.join(map(str, sorted(steps)))}) |")


def _interleave(workers, rounds: int):
  for _ in range(rounds):
    for worker in workers:
      worker.step()
  for worker in workers:
    worker.close()


class _Visits:
  """A side whose worker runs only during its turn: started, timed for `steps` steps, stopped.
  Per round it reports the median of its visit, so per-round ratios stay paired in time; the
  setup figure and peak RSS are the worst visit's."""

  def __init__(self, name: str, side: str, layout: str, steps: int):
    self.name, self._args, self._steps = name, (name, side, 1, layout), steps
    self.times, self.info = [], {}

  def step(self):
    worker = _Worker(*self._args)
    for _ in range(self._steps):
      worker.step()
    worker.close()
    self.times.append(_median(worker.times))
    for key, value in worker.info.items():
      worst = isinstance(value, float) and key in ("first_step_s", "peak_rss_mb")
      self.info[key] = max(value, self.info.get(key, value)) if worst else value

  def close(self):
    pass


def main(argv):
  del argv
  if _SIDE.value:
    _serve(_SIDE.value)
    return
  texts = 1 + _NEG.value + _POS.value
  print(f"model {_MODEL.value}, {_LOSS.value} loss, batch {_BATCH.value}, {texts} texts per "
        "example, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"{_STEPS.value} interleaved rounds", flush=True)
  if _TEXT_LAYOUTS.value:
    _text_layouts()
    return
  if _LAYOUT_TOKENS.value:
    _layout_tokens()
    return
  if not _DEVICES_ONLY.value:
    from hpjax.models import get_model_config  # pylint: disable=g-import-not-at-top
    context = get_model_config(_MODEL.value).text.context_length
    side = lambda name: "torch" if name == "torch" else "hpjax"
    if _VISIT.value:
      workers = [_Visits(ROWS[name], side(name), name, _VISIT.value) for name in _SIDES.value]
    else:
      workers = [_Worker(ROWS[name], side(name), layout=name) for name in _SIDES.value]
    _interleave(workers, _STEPS.value)
    reference = workers[0].times
    print(f"load average after the rounds {os.getloadavg()[0]:.1f}; ratios against "
          f"{workers[0].name}")
    print("| implementation | text tokens encoded (needed) | median step (s) | examples/s | "
          "speed ratio (median of per-round ratios) | peak RSS (MB) | setup + first step (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for w in workers:
      ratio = _median([r / t for r, t in zip(reference, w.times)])
      tokens = (f"{w.info['text_tokens_encoded']} ({w.info['text_tokens_needed']})"
                if "text_tokens_encoded" in w.info else f"{context} per text")
      print(f"| {w.name} | {tokens} | {_median(w.times):.3f} | "
            f"{_BATCH.value / _median(w.times):.1f} | {ratio:.2f}x | "
            f"{w.info['peak_rss_mb']:.0f} | {w.info['first_step_s']:.1f} |", flush=True)
  counts = [int(d) for d in _DEVICES.value.split(",") if d]
  if counts:
    workers = [_Worker(f"{n}", "hpjax", devices=n, layout="packed") for n in counts]
    _interleave(workers, _STEPS.value)
    print("| simulated devices | median step (s) | examples/s |")
    print("| --- | --- | --- |")
    for w in workers:
      print(f"| {w.name} | {_median(w.times):.3f} | {_BATCH.value / _median(w.times):.1f} |",
            flush=True)


if __name__ == "__main__":
  app.run(main)
