"""Training-step throughput: hpjax against an equivalent OpenCLIP PyTorch step, and vs devices.

Both sides: the same architecture (random init), batch, text columns per example (caption,
hard negatives, hard positives), the same contrastive loss and AdamW (0.9, 0.98, 1e-6, wd 0.2).
Each side runs in its own resident worker process (so peak RSS is that side's alone); after
setup and `--warmup` untimed steps, the workers take turns, one step each per round, for
`--steps` rounds. Interleaving makes the machine's noise (this VM's neighbours, turbo) fall on
every side alike, so the per-round ratios are paired; medians are quoted.

  .venv/bin/python tools/bench_train.py --model=ViT-B-32-quickgelu --batch=8
  .venv/bin/python tools/bench_train.py --devices_only --model=hpjax-tiny --batch=64
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "ViT-B-32-quickgelu", "model config name")
_BATCH = flags.DEFINE_integer("batch", 8, "global batch (examples)")
_NEG = flags.DEFINE_integer("hard_negatives", 1, "hard negatives per example")
_POS = flags.DEFINE_integer("hard_positives", 1, "hard positives per example")
_STEPS = flags.DEFINE_integer("steps", 10, "timed rounds (one step of every side per round)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps first")
_SIDE = flags.DEFINE_enum("side", "", ["", "hpjax", "torch"], "internal: run one side")
_TEXT_LEN = flags.DEFINE_integer("text_len", 77, "internal: hpjax text length")
_DEVICES = flags.DEFINE_string("devices", "1,2,4,8", "simulated device counts to time")
_DEVICES_ONLY = flags.DEFINE_bool("devices_only", False, "only the device-count sweep")


def _captions(n, offset=0):
  return [f"a photo of {i + offset} red blocks next to a small blue ball" for i in range(n)]


def _median(times):
  times = sorted(times)
  return times[len(times) // 2]


def _hpjax_side():
  import jax  # pylint: disable=g-import-not-at-top (after XLA_FLAGS are set)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from hpjax import factory, sharding  # pylint: disable=g-import-not-at-top
  from hpjax.tokenizer import get_tokenizer  # pylint: disable=g-import-not-at-top
  from hpjax.train import optim, step as step_lib  # pylint: disable=g-import-not-at-top

  b, k_n, k_p, length = _BATCH.value, _NEG.value, _POS.value, _TEXT_LEN.value
  model, params = factory.create_model(_MODEL.value)
  size = model.config.vision.image_size
  tok = get_tokenizer()
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(b, size, size, 3)).astype(np.float32),
           "caption": tok(_captions(b))[:, :length],
           "hard_negatives": tok(_captions(b * k_n, 1000)).reshape(b, k_n, 77)[..., :length],
           "hard_positives": tok(_captions(b * k_p, 2000)).reshape(b, k_p, 77)[..., :length],
           "hard_negative_mask": np.ones((b, k_n), bool),
           "hard_positive_mask": np.ones((b, k_p), bool)}
  mesh = sharding.make_mesh()
  tx, schedule = optim.make_optimizer(common.get_config(None).optim, 1000)
  state_shapes = jax.eval_shape(lambda p: step_lib.init_state(p, tx), params)
  shardings = sharding.param_sharding(mesh, state_shapes)
  state = jax.jit(lambda p: step_lib.init_state(p, tx), out_shardings=shardings)(params)
  del params
  train_step = step_lib.jit_train_step(model, tx, schedule, shardings, sharding.replicated(mesh))
  on_mesh = sharding.put_batch(batch, mesh)
  holder = {"state": state}

  def step():
    holder["state"], metrics = train_step(holder["state"], on_mesh)
    return float(metrics["loss"])  # waits for the step

  return step, {"side": "hpjax", "devices": jax.device_count(), "text_len": length}


def _torch_side():
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  b, k_n, k_p = _BATCH.value, _NEG.value, _POS.value
  torch.manual_seed(0)
  model = open_clip.create_model(_MODEL.value)
  model.train()
  size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else \
      model.visual.image_size
  tok = open_clip.get_tokenizer(_MODEL.value)
  images = torch.randn(b, 3, size, size)
  texts = torch.cat([tok(_captions(b)), tok(_captions(b * k_p, 2000)),
                     tok(_captions(b * k_n, 1000))])
  decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
  no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
  owner_hp = torch.arange(b).repeat_interleave(k_p)

  def step():
    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(texts), dim=-1)
    scale = model.logit_scale.clamp(max=4.6052).exp()
    logits = scale * img @ txt.T  # (B, B + B*K_p + B*K_n)
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[torch.arange(b), torch.arange(b)] = True
    positive[owner_hp, b + torch.arange(b * k_p)] = True
    i2t = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, -1e9), 1))
    rows = logits[:, :b * (1 + k_p)].T
    labels = torch.cat([torch.arange(b), owner_hp])
    loss = 0.5 * (i2t.mean() + F.cross_entropy(rows, labels))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0, 4.6052)
    return float(loss.detach())

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

  def __init__(self, name: str, side: str, devices: int = 1, text_len: int = 77):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": repo,
           "XLA_FLAGS": (f"{os.environ.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={devices}")}
    args = [sys.executable, os.path.abspath(__file__), f"--side={side}", f"--model={_MODEL.value}",
            f"--batch={_BATCH.value}", f"--hard_negatives={_NEG.value}",
            f"--hard_positives={_POS.value}", f"--warmup={_WARMUP.value}",
            f"--text_len={text_len}"]
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


def _interleave(workers, rounds: int):
  for _ in range(rounds):
    for worker in workers:
      worker.step()
  for worker in workers:
    worker.close()


def main(argv):
  del argv
  if _SIDE.value:
    _serve(_SIDE.value)
    return
  texts = 1 + _NEG.value + _POS.value
  print(f"model {_MODEL.value}, batch {_BATCH.value}, {texts} texts per example, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"{_STEPS.value} interleaved rounds", flush=True)
  if not _DEVICES_ONLY.value:
    workers = [_Worker("OpenCLIP (PyTorch)", "torch"),
               _Worker("hpjax (text at 77)", "hpjax", text_len=77),
               _Worker("hpjax (text at 16)", "hpjax", text_len=16)]
    _interleave(workers, _STEPS.value)
    reference = workers[0].times
    print("| implementation | median step (s) | examples/s | speed vs OpenCLIP (median of "
          "per-round ratios) | peak RSS (MB) | setup + first step (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for w in workers:
      ratio = _median([r / t for r, t in zip(reference, w.times)])
      print(f"| {w.name} | {_median(w.times):.3f} | {_BATCH.value / _median(w.times):.1f} | "
            f"{ratio:.2f}x | {w.info['peak_rss_mb']:.0f} | {w.info['first_step_s']:.1f} |",
            flush=True)
  counts = [int(d) for d in _DEVICES.value.split(",") if d]
  if counts:
    workers = [_Worker(f"{n}", "hpjax", devices=n) for n in counts]
    _interleave(workers, _STEPS.value)
    print("| simulated devices | median step (s) | examples/s |")
    print("| --- | --- | --- |")
    for w in workers:
      print(f"| {w.name} | {_median(w.times):.3f} | {_BATCH.value / _median(w.times):.1f} |",
            flush=True)


if __name__ == "__main__":
  app.run(main)
