"""Zero-shot classification and retrieval scoring: hpjax against CLIP_benchmark's loops.

  .venv/bin/python tools/bench_spectrum.py [--model hpjax-tiny] [--num_images 5000]
      [--num_captions 25000] [--num_retrieval_images 5000] [--workdir /tmp/bench_spectrum]

Same machine, same random weights (an OpenCLIP model mapped into Flax), the same generated
images. Shapes: the shipped ImageNet class set (1,000 classes x 80 templates = 80,000 prompts),
`--num_images` labelled images; retrieval over `--num_captions` captions x
`--num_retrieval_images` images (COCO 5k's 25,000 x 5,000 by default); and the recall step
alone on random features of that shape. The reference is CLIP_benchmark's procedure written
out with PyTorch OpenCLIP: `open_clip.build_zero_shot_classifier` (10 classes a batch),
images encoded in batches of 64 and classified by top-k of the logits; retrieval features in
batches of 64, then recall by `topk` over batches of queries against a positive-pair mask.
hpjax is timed cold (compiles included) and warm. Prints wall and CPU seconds, items/s,
speed-ups, the max |difference| of classifier rows and scores, and whether the figures agree.
"""

import argparse
import os
import statistics
import time

import jax
import numpy as np
import open_clip
import torch
from PIL import Image

from hpjax import checkpoints
from hpjax import tokenizer as tokenizer_lib
from hpjax.data import captions as captions_lib
from hpjax.data import classification
from hpjax.evaluate import retrieval
from hpjax.evaluate import zeroshot
from hpjax.models import CLIP, get_model_config
from hpjax.models import config as config_lib

BATCH = 64  # CLIP_benchmark's default batch size


def timed(fn, repeats=1):
  """(result of the first run, median wall s, median CPU s) over `repeats` runs."""
  runs = []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    runs.append((out, time.perf_counter() - wall, time.process_time() - cpu))
  return (runs[0][0], statistics.median(r[1] for r in runs),
          statistics.median(r[2] for r in runs))


def write_images(folder, count, seed=0):
  """`count` random 96x80 PNGs (reused when present)."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    paths.append(os.path.join(folder, f"{i}.png"))
    pixels = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
    if not os.path.exists(paths[-1]):
      Image.fromarray(pixels).save(paths[-1])
  return paths


def reference_image_features(model, preprocess, paths):
  feats = []
  with torch.no_grad():
    for start in range(0, len(paths), BATCH):
      batch = torch.stack([preprocess(Image.open(p).convert("RGB"))
                           for p in paths[start:start + BATCH]])
      feats.append(model.encode_image(batch, normalize=True))
  return torch.cat(feats)


def reference_text_features(model, tokenizer, texts):
  with torch.no_grad():
    return torch.cat([model.encode_text(tokenizer(texts[s:s + BATCH]), normalize=True)
                      for s in range(0, len(texts), BATCH)])


def reference_topk_hits(scores, positive, k):
  """Per query (row), whether a positive is among its top k (batches of queries)."""
  hits = []
  for start in range(0, len(scores), BATCH):
    top = scores[start:start + BATCH].topk(k, dim=1).indices
    hits.append(positive[start:start + BATCH].gather(1, top).any(1))
  return torch.cat(hits)


def reference_recall(scores, caption_image):
  """CLIP_benchmark's retrieval recall (%) from (captions, images) scores."""
  positive = torch.zeros(scores.shape, dtype=torch.bool)
  positive[torch.arange(len(caption_image)), torch.as_tensor(caption_image)] = True
  out = {}
  for k in retrieval.KS:
    out[f"image_to_text_R@{k}"] = 100 * reference_topk_hits(
        scores.T, positive.T, k).float().mean().item()
    out[f"text_to_image_R@{k}"] = 100 * reference_topk_hits(
        scores, positive, k).float().mean().item()
  return out


def reference_classify(model, preprocess, weights, paths, labels):
  feats = reference_image_features(model, preprocess, paths)
  logits = feats @ weights
  top = logits.topk(5, dim=1).indices.numpy()
  return {"top1": 100 * float(np.mean(top[:, 0] == labels)),
          "top5": 100 * float(np.mean((top == labels[:, None]).any(1)))}


def report(name, n, unit, ref, ours_cold, ours_warm):
  print(f"{name}: reference wall {ref[1]:.2f} s CPU {ref[2]:.2f} s ({n / ref[1]:.0f} {unit}/s); "
        f"hpjax cold {ours_cold[1]:.2f} s, warm wall {ours_warm[1]:.2f} s CPU {ours_warm[2]:.2f} s "
        f"({n / ours_warm[1]:.0f} {unit}/s); speed-up warm wall {ref[1] / ours_warm[1]:.2f}x, "
        f"CPU {ref[2] / ours_warm[2]:.2f}x")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="hpjax-tiny")
  parser.add_argument("--num_images", type=int, default=5000)
  parser.add_argument("--num_captions", type=int, default=25000)
  parser.add_argument("--num_retrieval_images", type=int, default=5000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--workdir", default="/tmp/bench_spectrum")
  args = parser.parse_args()

  config = get_model_config(args.model)
  if args.model in config_lib.list_models() and args.model not in open_clip.list_models():
    open_clip.add_model_config(str(config_lib.CONFIG_DIR / f"{args.model}.json"))
  torch.manual_seed(0)
  torch_model = open_clip.create_model(args.model).eval()
  params = checkpoints.openclip_to_params(checkpoints.files.normalize_keys(
      {k: v.numpy() for k, v in torch_model.state_dict().items()}), config)
  preprocess = open_clip.image_transform(config.vision.image_size, is_train=False)
  torch_tokenizer = open_clip.get_tokenizer("ViT-B-32")
  kw = dict(tokenizer=tokenizer_lib.get_tokenizer(), image_batch_size=BATCH * 2,
            text_batch_size=1024)
  print(f"{args.model}, {jax.device_count()} {jax.devices()[0].platform} device(s), torch "
        f"threads {torch.get_num_threads()}")

  # -- zero-shot ---------------------------------------------------------------------------------
  class_set = classification.load_class_set("imagenet1k")
  paths = write_images(os.path.join(args.workdir, "classification"), args.num_images)
  labels = np.arange(args.num_images) % len(class_set.names)
  images = classification.LabelledImages(tuple(paths), labels, "bench")
  evaluator = zeroshot.ZeroShotEvaluator(CLIP(config), class_set, images, "in", **kw)
  prompts = len(class_set.names) * len(class_set.templates)
  ref_weights = timed(lambda: open_clip.build_zero_shot_classifier(
      torch_model, torch_tokenizer, class_set.names, class_set.templates), 1)
  cold = timed(lambda: evaluator.classifier(params))
  warm = timed(lambda: evaluator.classifier(params), args.repeats)
  report(f"classifier ({len(class_set.names)} classes x {len(class_set.templates)} templates)",
         prompts, "prompts", ref_weights, cold, warm)
  print(f"  max |classifier difference| {np.abs(warm[0] - ref_weights[0].numpy().T).max():.2e}")
  ref = timed(lambda: reference_classify(torch_model, preprocess, ref_weights[0], paths, labels))
  cold = timed(lambda: evaluator.run(params))
  warm = timed(lambda: evaluator.run(params), args.repeats)
  report(f"zero-shot end to end (classifier + {args.num_images} images)", args.num_images,
         "images", (None, ref[1] + ref_weights[1], ref[2] + ref_weights[2]), cold, warm)
  print(f"  top-1 reference {ref[0]['top1']:.2f} / hpjax {warm[0]['in/top1']:.2f}; top-5 "
        f"{ref[0]['top5']:.2f} / {warm[0]['in/top5']:.2f}")

  # -- retrieval ---------------------------------------------------------------------------------
  image_paths = write_images(os.path.join(args.workdir, "retrieval"), args.num_retrieval_images,
                             seed=1)
  caption_image = np.arange(args.num_captions) % args.num_retrieval_images
  rng = np.random.default_rng(2)
  words = ["dog", "cat", "red", "ball", "man", "riding", "wave", "on", "top", "of", "a", "the",
           "table", "with", "plate", "food", "street", "sign", "near", "building"]
  texts = [" ".join(rng.choice(words, rng.integers(4, 16))) + f" {j}"
           for j in range(args.num_captions)]
  data = captions_lib.CaptionSet(tuple(image_paths), tuple(texts), caption_image, "bench")
  evaluator = retrieval.RetrievalEvaluator(CLIP(config), data, "coco", **kw)

  def reference_retrieval():
    scores = (reference_text_features(torch_model, torch_tokenizer, texts)
              @ reference_image_features(torch_model, preprocess, image_paths).T)
    return scores, reference_recall(scores, caption_image)

  ref = timed(reference_retrieval)
  cold = timed(lambda: evaluator.run(params))
  warm = timed(lambda: evaluator.run(params), args.repeats)
  report(f"retrieval end to end ({args.num_captions} captions x {args.num_retrieval_images} "
         "images)", args.num_captions, "captions", ref, cold, warm)
  ours_scores = evaluator.scores(params)
  agree = all(abs(warm[0][f"coco/{k}"] - v) < 1e-3 for k, v in ref[0][1].items())
  print(f"  max |score difference| {np.abs(ours_scores - ref[0][0].numpy()).max():.2e}; "
        f"recall figures agree (to torch's float32 mean): {agree}")

  # -- the recall step alone, full shape -------------------------------------------------------
  full = np.random.default_rng(3).normal(size=(25000, 5000)).astype(np.float32)
  owner = np.arange(25000) % 5000
  ref = timed(lambda: reference_recall(torch.from_numpy(full), owner), args.repeats)
  ours = timed(lambda: retrieval.recall_metrics(full, owner), args.repeats)
  report("recall step (25000 x 5000 random scores)", 25000, "captions", ref, ours, ours)
  agree = all(abs(ours[0][k] - v) < 1e-3 for k, v in ref[0].items())
  print(f"  figures agree (to torch's float32 mean): {agree}")


if __name__ == "__main__":
  main()
