"""The image-group scorer against ImageCoDe's own zero-shot loop, on ImageCoDe-shaped stand-ins.

  .venv/bin/python tools/bench_groups.py [--sets 20] [--descriptions 3] [--model ViT-B-32-quickgelu]
      [--root /tmp/imagecode_standin]

Writes `--sets` image sets of 10 random images each with `--descriptions` descriptions per set
in ImageCoDe's published layout (valid_data.json + image-sets/<set>/imgN.jpg). The reference is
the loop of ImageCoDe's baselines/clip/zero_shot.py: per description, every image of its set
decoded and encoded again, then the text, with PyTorch OpenCLIP. hpjax loads the same files
with the catalog and scores them in one pass (each image decoded and encoded once), timed cold
(compiles included) and warm. Same random weights on both sides. Prints wall and CPU seconds,
images encoded, the max |score difference| and both accuracies.
"""

import argparse
import json
import os
import time

import jax
import numpy as np
import open_clip
import torch
from PIL import Image

from hpjax import checkpoints
from hpjax.evaluate import benchmarks
from hpjax.evaluate import hard_positive
from hpjax.models import CLIP, get_model_config


def write_standins(root: str, sets: int, descriptions: int) -> None:
  rng = np.random.default_rng(0)
  data = {}
  for s in range(sets):
    name = f"video-standin_{s}" if s % 2 else f"open-images-standin_{s}"
    folder = os.path.join(root, "image-sets", name)
    os.makedirs(folder, exist_ok=True)
    for n in range(10):
      pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(folder, f"img{3 * n}.jpg"))
    data[name] = {str(int(t)): f"description {t} of set {s}, with a few more words"
                  for t in rng.choice(10, descriptions, replace=False)}
  with open(os.path.join(root, "valid_data.json"), "w") as f:
    json.dump(data, f)


def timed(fn):
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - wall, time.process_time() - cpu


def reference(model, preprocess, tokenizer, suite):
  """zero_shot.py's loop: (per description, its set's 10 scores), images encoded per description."""
  out = []
  with torch.no_grad():
    for group in suite.groups:
      images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in group.images])
      image_feats = model.encode_image(images, normalize=True)
      text_feats = model.encode_text(tokenizer(list(group.captions)), normalize=True)
      out.append((image_feats @ text_feats.T).numpy())
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sets", type=int, default=20)
  parser.add_argument("--descriptions", type=int, default=3)
  parser.add_argument("--model", default="ViT-B-32-quickgelu")
  parser.add_argument("--root", default="/tmp/imagecode_standin")
  parser.add_argument("--batch_size", type=int, default=32)
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.root, "valid_data.json")):
    write_standins(args.root, args.sets, args.descriptions)
  suites = benchmarks.load("imagecode", args.root,
                           image_dir=os.path.join(args.root, "image-sets"))
  suite = suites["imagecode.valid"]
  torch.manual_seed(0)
  torch.set_num_threads(2)
  torch_model, _, preprocess = open_clip.create_model_and_transforms(args.model)
  torch_model.eval()
  config = get_model_config(args.model)
  params = checkpoints.openclip_to_params(
      {k: v.numpy() for k, v in torch_model.state_dict().items()}, config)
  ref, ref_wall, ref_cpu = timed(lambda: reference(
      torch_model, preprocess, open_clip.get_tokenizer(args.model), suite))
  evaluator = hard_positive.HardPositiveEvaluator(
      CLIP(config), suites, batch_size=args.batch_size, devices=jax.devices()[:1])
  figures, cold_wall, cold_cpu = timed(lambda: evaluator.run(params))
  figures, warm_wall, warm_cpu = timed(lambda: evaluator.run(params))
  scores = evaluator.last_scores["imagecode.valid"].scores
  ours = [scores[s:s + 10] for s in range(0, len(scores), 10)]
  diff = max(float(np.abs(a[:, :1] - b).max()) for a, b in zip(ours, ref))
  hits = [int(np.argmax(m[:, 0])) == g.matches[0][0] for m, g in zip(ref, suite.groups)]
  print(f"{len(suite.groups)} descriptions, {evaluator.last_stats['distinct_images']:.0f} "
        f"distinct images; reference encodes {sum(len(g.images) for g in suite.groups)}")
  print(f"reference (zero_shot.py loop): wall {ref_wall:.1f} s, CPU {ref_cpu:.1f} s")
  print(f"hpjax cold: wall {cold_wall:.1f} s, CPU {cold_cpu:.1f} s")
  print(f"hpjax warm: wall {warm_wall:.1f} s, CPU {warm_cpu:.1f} s "
        f"({ref_wall / warm_wall:.2f}x wall, {ref_cpu / warm_cpu:.2f}x CPU)")
  print(f"max |score difference| {diff:.2e}; accuracy hpjax {figures['imagecode.valid/accuracy']:.2f}"
        f", reference (argmax) {100 * np.mean(hits):.2f}")


if __name__ == "__main__":
  main()
