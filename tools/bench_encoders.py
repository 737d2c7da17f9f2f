"""The Flax encoders against open_clip's on the same CPU: images/s and captions/s, side by side.

  .venv/bin/python tools/bench_encoders.py [--model ViT-B-32-quickgelu] [--image_batch 8]
      [--text_batch 32] [--repeats 3]

Same random weights in both (the open_clip model mapped into Flax), fp32, default matmul
precision on both sides. Text is timed at the full 77 tokens and, for hpjax, also at a 16-token
bucket (captions of the hard-positive suites are short; pooling at EOT under the causal mask
makes the shorter encoding exact). Reports medians of wall and CPU seconds per batch after one
warm-up (compilation) call; CPU seconds are the steadier figure on a shared machine.
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


def median_times(fn, repeats):
  fn()  # Warm-up: compilation for jax, allocator warm-up for torch.
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return statistics.median(walls), statistics.median(cpus)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="ViT-B-32-quickgelu")
  parser.add_argument("--image_batch", type=int, default=8)
  parser.add_argument("--text_batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
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
        f"{torch.get_num_threads()}, medians of {args.repeats}", flush=True)
  results = {}
  with torch.no_grad():
    for name, (fn, count) in cases.items():
      wall, cpu = median_times(fn, args.repeats)
      results[name] = wall
      print(f"{name:18s} {count / wall:9.1f} items/s wall   {count / cpu:9.1f} items/s CPU   "
            f"({wall:.3f} s wall, {cpu:.3f} s CPU per batch)", flush=True)
  print(f"hpjax/open_clip speed ratio (wall): image "
        f"{results['image open_clip'] / results['image hpjax']:.2f}x, text@77 "
        f"{results['text@77 open_clip'] / results['text@77 hpjax']:.2f}x, text@16 vs open_clip@77 "
        f"{results['text@77 open_clip'] / results['text@16 hpjax']:.2f}x")


if __name__ == "__main__":
  main()
