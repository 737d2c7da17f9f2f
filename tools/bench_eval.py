"""The hpjax scorer against the authors' evaluation loop on the first N records of each REPLACE file.

  .venv/bin/python tools/bench_eval.py [--root ../shared/data/hard_positives] [--num_records 2000]
      [--model ViT-B-32-quickgelu] [--image_root /tmp/hp_stand_in] [--repeats 1]

Same machine, same random weights (an OpenCLIP model mapped into Flax), same stand-in images
(one generated PNG per image, hpjax.evaluate.stand_in_images). The reference is the loop of the
authors' run_eval.py: PyTorch OpenCLIP, batches of 16 records, every record's image and both of
its captions encoded, the data/ pass and the swapped_data/ pass run separately. hpjax scores all
records of both files in one Scorer call (dedup, length buckets, jitted sharded batches), timed
cold (compiles included) and warm. Prints wall and CPU seconds (CPU is the steadier figure on a
shared machine), images/s, captions/s, the max |score difference| and whether the metrics agree.

A SigLIP model (`--model ViT-B-16-SigLIP`) needs its SentencePiece file (`--tokenizer`); without
one, a small one is trained on the records' captions (hpjax.data.world_tokenizer): the ids then
differ from c4_en's, but both sides get the same ids, and the towers' cost does not depend on
them (every text is encoded at the full context length). The reference then uses OpenCLIP's
SigLIP eval transform (squash resize, bicubic, mean = std = 0.5).
"""

import argparse
import os
import statistics
import time

import jax
import numpy as np
import open_clip
import torch

from hpjax import checkpoints
from hpjax import tokenizer as tokenizer_lib
from hpjax.data import world_tokenizer
from hpjax.evaluate import authors_loop
from hpjax.evaluate import benchmarks
from hpjax.evaluate import metrics
from hpjax.evaluate import scorer as scorer_lib
from hpjax.evaluate import stand_in_images
from hpjax.models import CLIP, get_model_config

DEFAULT_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "hard_positives")


def timed(fn):
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - wall, time.process_time() - cpu


def _tokenizers(args, config, records):
  """(hpjax's tokenizer, the reference's: open_clip's for CLIP, the same ids for SigLIP)."""
  if config.text.hf_tokenizer_name is None:
    return tokenizer_lib.get_tokenizer(args.model), open_clip.get_tokenizer(args.model)
  path = args.tokenizer
  if not path:
    path = world_tokenizer.train_sentencepiece(
        [t for r in records for t in r.captions],
        os.path.join(args.image_root, world_tokenizer.FILE), config.text.vocab_size)
  tokenizer = tokenizer_lib.get_tokenizer(args.model, tokenizer_dir=path)
  return tokenizer, lambda texts: torch.from_numpy(tokenizer(texts)).long()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default=DEFAULT_ROOT)
  parser.add_argument("--num_records", type=int, default=2000, help="first N of each file")
  parser.add_argument("--model", default="ViT-B-32-quickgelu")
  parser.add_argument("--image_root", default="/tmp/hp_stand_in_images")
  parser.add_argument("--image_batch_size", type=int, default=64)
  parser.add_argument("--text_batch_size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side (median)")
  parser.add_argument("--tokenizer", default="", help="SentencePiece model of a SigLIP config "
                      "(default: one trained on the records' captions, beside --image_root)")
  args = parser.parse_args()

  loaded = benchmarks.load_hard_positive(args.root, ["replace"])
  per_file = [list(suite.records[:args.num_records]) for suite in loaded.values()]
  records = [r for file_records in per_file for r in file_records]
  num_images = stand_in_images.write_stand_in_images(records, args.image_root)
  config = get_model_config(args.model)
  torch.manual_seed(0)
  torch_model = open_clip.create_model(args.model).eval()
  tokenizer, torch_tokenizer = _tokenizers(args, config, records)
  siglip = config.vision.timm_model_name is not None
  preprocess = open_clip.image_transform(
      config.vision.image_size, is_train=False,
      **(dict(mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", resize_mode="squash")
         if siglip else {}))
  params = checkpoints.openclip_to_params(checkpoints.files.normalize_keys(
      {k: v.numpy() for k, v in torch_model.state_dict().items()}), config)
  print(f"{args.model}, {len(records)} records ({args.num_records} per file), {num_images} "
        f"distinct images, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"torch threads {torch.get_num_threads()}")

  ref_runs = [timed(lambda: authors_loop.reference_scores(
                  torch_model, preprocess, torch_tokenizer, records, args.image_root))
              for _ in range(args.repeats)]
  expected = ref_runs[0][0]
  scorer = scorer_lib.Scorer(CLIP(config), tokenizer,
                             image_root=args.image_root, image_batch_size=args.image_batch_size,
                             text_batch_size=args.text_batch_size)
  cold = timed(lambda: scorer.score(params, records))
  warm_runs = [timed(lambda: scorer.score(params, records)) for _ in range(args.repeats)]
  result = cold[0]
  diff = float(np.nanmax(np.abs(result.scores - expected)))
  agree = all(
      metrics.hard_positive_metrics(*result.scores[lo:lo + n].T)
      == metrics.hard_positive_metrics(*expected[lo:lo + n].T)
      for lo, n in ((0, len(per_file[0])), (len(per_file[0]), len(per_file[1]))))

  def med(runs, i):
    return statistics.median(run[i] for run in runs)

  ref_wall, ref_cpu = med(ref_runs, 1), med(ref_runs, 2)
  ref_images, ref_captions = 2 * len(records), 4 * len(records)
  stats = result.stats
  print(f"reference (PyTorch loop): wall {ref_wall:.1f} s, CPU {ref_cpu:.1f} s; "
        f"{len(records) / ref_wall:.2f} records/s, {ref_images / ref_wall:.1f} images/s, {ref_captions / ref_wall:.1f} captions/s "
        f"({ref_images} images, {ref_captions} captions encoded)")
  for name, runs in (("hpjax cold", [cold]), ("hpjax warm", warm_runs)):
    wall, cpu = med(runs, 1), med(runs, 2)
    print(f"{name}: wall {wall:.1f} s, CPU {cpu:.1f} s; {len(records) / wall:.2f} records/s, "
          f"{stats['distinct_images'] / wall:.1f} images/s, {stats['distinct_captions'] / wall:.1f} captions/s "
          f"({stats['distinct_images']:.0f} images, {stats['distinct_token_rows']:.0f} token rows "
          f"encoded); speed-up wall {ref_wall / wall:.2f}x, CPU {ref_cpu / cpu:.2f}x")
  print(f"max |score difference| {diff:.2e}; metrics per file identical: {agree}")


if __name__ == "__main__":
  main()
