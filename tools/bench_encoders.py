"""The Flax encoders against open_clip's on the same CPU: images/s and captions/s, side by side.

  .venv/bin/python tools/bench_encoders.py [--model ViT-B-32-quickgelu] [--image_batch 8]
      [--text_batch 32] [--repeats 7]

Same random weights in both (the open_clip model mapped into Flax), fp32, default matmul
precision on both sides. Text is timed at the full 77 tokens and, for hpjax, also at a 16-token
bucket (captions of the hard-positive suites are short; pooling at EOT under the causal mask
makes the shorter encoding exact). After one warm-up (compilation) call of every case, the cases
take turns, one call each per round; medians of wall and CPU seconds per batch, and speed ratios
as the median of per-round ratios (paired, so the machine's drift cancels).
"""

import argparse
import statistics
import time

import jax
import numpy as np
import open_clip
import torch

from hpjax.checkpoints import openclip_to_params
from hpjax.models import CLIP, get_model_config


def interleaved_times(cases, rounds):
  """Warms every case up, then times one call of each per round, so the machine's drift falls on
  every case alike. Returns per-case lists of wall and CPU seconds."""
  for fn, _ in cases.values():
    fn()  # Warm-up: compilation for jax, allocator warm-up for torch.
  walls = {name: [] for name in cases}
  cpus = {name: [] for name in cases}
  for _ in range(rounds):
    for name, (fn, _) in cases.items():
      wall, cpu = time.perf_counter(), time.process_time()
      fn()
      walls[name].append(time.perf_counter() - wall)
      cpus[name].append(time.process_time() - cpu)
  return walls, cpus


def paired_ratio(reference, other):
  """Median over rounds of reference / other time: how many times faster `other` ran."""
  return statistics.median(r / o for r, o in zip(reference, other))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="ViT-B-32-quickgelu")
  parser.add_argument("--image_batch", type=int, default=8)
  parser.add_argument("--text_batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
  args = parser.parse_args()

  torch_model = open_clip.create_model(args.model).eval()
  config = get_model_config(args.model)
  params = openclip_to_params({k: v.numpy() for k, v in torch_model.state_dict().items()}, config)
  params = jax.device_put(params)
  model = CLIP(config)
  rng = np.random.default_rng(0)
  size = config.vision.image_size
  images = rng.standard_normal((args.image_batch, 3, size, size)).astype(np.float32)
  tokens = open_clip.tokenize(["a photo of a red cube left of a blue sphere"] * args.text_batch)
  tokens_np = tokens.numpy().astype(np.int32)

  encode_image = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))
  encode_text = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))
  images_nhwc = jax.device_put(images.transpose(0, 2, 3, 1))
  cases = {
      "image open_clip": (lambda: torch_model.encode_image(torch.from_numpy(images)),
                          args.image_batch),
      "image hpjax": (lambda: encode_image(params, images_nhwc).block_until_ready(),
                      args.image_batch),
      "text@77 open_clip": (lambda: torch_model.encode_text(tokens), args.text_batch),
      "text@77 hpjax": (lambda: encode_text(params, tokens_np).block_until_ready(),
                        args.text_batch),
      "text@16 hpjax": (lambda: encode_text(params, tokens_np[:, :16]).block_until_ready(),
                        args.text_batch),
  }
  print(f"{args.model}, fp32, {jax.device_count()} jax device(s), torch threads "
        f"{torch.get_num_threads()}, medians of {args.repeats} interleaved rounds", flush=True)
  with torch.no_grad():
    walls, cpus = interleaved_times(cases, args.repeats)
  for name, (_, count) in cases.items():
    wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
    print(f"{name:18s} {count / wall:9.1f} items/s wall   {count / cpu:9.1f} items/s CPU   "
          f"({wall:.3f} s wall, {cpu:.3f} s CPU per batch)", flush=True)
  print(f"hpjax/open_clip speed (median of per-round ratios, wall): image "
        f"{paired_ratio(walls['image open_clip'], walls['image hpjax']):.2f}x, text@77 "
        f"{paired_ratio(walls['text@77 open_clip'], walls['text@77 hpjax']):.2f}x, "
        f"text@16 vs open_clip@77 "
        f"{paired_ratio(walls['text@77 open_clip'], walls['text@16 hpjax']):.2f}x")


if __name__ == "__main__":
  main()
