"""One accelerator benchmark: hpjax's training step against OpenCLIP's, and the scorer against the
authors' loop, on the same device; a JSON and a markdown table out.

  python tools/bench_accelerator.py --root=../shared/data/hard_positives --out=/tmp/accel.json
  python tools/bench_accelerator.py --reduced --root=... --out=...   # CPU: a small size

1. hpjax's trainer step (`hpjax.train.benchmark_step`): --model at --batch in bfloat16, one
   hard negative and one hard positive per example, texts packed; median step time, images/s,
   and model FLOPs utilisation: XLA's FLOP count of the compiled step over the step time and the
   device's peak bf16 rate (PEAK_BF16_TFLOPS by device kind, or --peak_tflops).
2. The same step in OpenCLIP (`hpjax.train.openclip_step`) with PyTorch AMP bf16, on the same
   device (CUDA when torch sees one) and the same token ids.
3. The scorer against the authors' loop (`hpjax.evaluate.authors_loop`) on the REPLACE records
   under --root (all of them, or the first --records per file), stand-in images at the records'
   full sizes (`hpjax.evaluate.stand_in_images`), one random OpenCLIP model on both sides.
--reduced runs hpjax-tiny at batch 16, 2 steps and 32 records per file, so the test suite keeps
the tool working on a CPU.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]  # `configs` and `hpjax` from this checkout

from configs import common
from hpjax import checkpoints, errors
from hpjax import tokenizer as tokenizer_lib
from hpjax.evaluate import authors_loop, benchmarks, metrics, stand_in_images
from hpjax.evaluate import scorer as scorer_lib
from hpjax.models import CLIP, get_model_config
from hpjax.train import benchmark_step, openclip_step

# Dense bf16 peak of one chip (vendor figures), matched against jax's device_kind.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0,
                    "TPU v5 lite": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0}

_REDUCED = flags.DEFINE_bool("reduced", False, "hpjax-tiny, batch 16, 2 steps, 32 records")
_MODEL = flags.DEFINE_string("model", "ViT-B-32-quickgelu", "model config name")
_BATCH = flags.DEFINE_integer("batch", 256, "training batch")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps per side (after --warmup)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps first")
_RECORDS = flags.DEFINE_integer("records", 0, "REPLACE records per file (0: all)")
_ROOT = flags.DEFINE_string("root", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                 "data", "hard_positives"),
                            "the authors' layout (data/replace_*.json)")
_IMAGES = flags.DEFINE_string("image_root", "/tmp/hp_stand_in_images", "stand-in images here")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "the device's peak bf16 TFLOP/s (0: by kind)")
_OUT = flags.DEFINE_string("out", "bench_accelerator.json", "the JSON (the table: same name .md)")


def _sizes() -> dict:
  if _REDUCED.value:
    return {"model": "hpjax-tiny", "batch": 16, "steps": 2, "warmup": 1, "records": 32}
  return {"model": _MODEL.value, "batch": _BATCH.value, "steps": _STEPS.value,
          "warmup": _WARMUP.value, "records": _RECORDS.value}


def _median_seconds(step, steps: int, warmup: int) -> float:
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _peak_flops(kind: str) -> float | None:
  if _PEAK.value:
    return _PEAK.value * 1e12
  return next((v * 1e12 for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)


def _training(sizes: dict, kind: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  batch = benchmark_step.stand_in_batch(sizes["model"], sizes["batch"], 1, 1)
  hpjax_step = benchmark_step.make(sizes["model"], batch, common.get_config(None).optim,
                                   dtype="bfloat16")
  flops = hpjax_step.flops()
  hpjax_s = _median_seconds(hpjax_step.run, sizes["steps"], sizes["warmup"])
  hpjax_step = None  # (the device memory goes back before the torch side)

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  model = openclip_step.openclip_model(sizes["model"]).to(device)
  tokens = lambda key: torch.from_numpy(batch[key].reshape(-1, batch[key].shape[-1])).long().to(
      device)
  images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()).to(device)
  torch_step = openclip_step.make_step(model, images, tokens("caption"), tokens("hard_negatives"),
                                       tokens("hard_positives"), amp_dtype=torch.bfloat16)
  sync = torch.cuda.synchronize if device == "cuda" else lambda: None
  torch_s = _median_seconds(lambda: (torch_step(), sync()), sizes["steps"], sizes["warmup"])
  peak = _peak_flops(kind)
  return {"batch": sizes["batch"], "hpjax_step_s": hpjax_s, "openclip_step_s": torch_s,
          "hpjax_images_per_s": sizes["batch"] / hpjax_s,
          "openclip_images_per_s": sizes["batch"] / torch_s, "step_flops": flops,
          "hpjax_mfu": flops / hpjax_s / peak if peak else None, "peak_flops": peak,
          "torch_device": device, "speed_up": torch_s / hpjax_s}


def _scoring(sizes: dict) -> dict:
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  loaded = benchmarks.load_hard_positive(_ROOT.value, ["replace"])
  per_file = [list(s.records[:sizes["records"] or None]) for s in loaded.values()]
  records = [r for file_records in per_file for r in file_records]
  stand_in_images.write_stand_in_images(records, _IMAGES.value)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  torch_model = openclip_step.openclip_model(sizes["model"]).eval()
  config = get_model_config(sizes["model"])
  params = checkpoints.openclip_to_params(checkpoints.files.normalize_keys(
      {k: v.numpy() for k, v in torch_model.state_dict().items()}), config)
  preprocess = open_clip.image_transform(config.vision.image_size, is_train=False)
  tokenizer = tokenizer_lib.get_tokenizer(sizes["model"])
  torch_tokenizer = lambda texts: torch.from_numpy(tokenizer(texts)).long()
  torch_model = torch_model.to(device)
  start = time.perf_counter()
  expected = authors_loop.reference_scores(torch_model, preprocess, torch_tokenizer, records,
                                           _IMAGES.value, device)
  reference_s = time.perf_counter() - start
  scorer = scorer_lib.Scorer(CLIP(config), tokenizer, image_root=_IMAGES.value)
  start = time.perf_counter()
  result = scorer.score(params, records)
  cold_s = time.perf_counter() - start
  start = time.perf_counter()
  scorer.score(params, records)
  warm_s = time.perf_counter() - start
  offsets = np.cumsum([0] + [len(f) for f in per_file])
  agree = all(metrics.hard_positive_metrics(*result.scores[lo:hi].T)
              == metrics.hard_positive_metrics(*expected[lo:hi].T)
              for lo, hi in zip(offsets[:-1], offsets[1:]))
  return {"records": len(records), "authors_loop_s": reference_s, "scorer_cold_s": cold_s,
          "scorer_warm_s": warm_s, "speed_up_warm": reference_s / warm_s,
          "max_abs_score_difference": float(np.nanmax(np.abs(result.scores - expected))),
          "metrics_identical": agree}


def _markdown(result: dict) -> str:
  t, s = result["training"], result["scoring"]
  mfu = f"{100 * t['hpjax_mfu']:.1f}%" if t["hpjax_mfu"] is not None else "n/a (no peak known)"
  return "\n".join([
      f"{result['model']} on {result['device']} ({result['devices']} device(s)); "
      f"OpenCLIP on {t['torch_device']}{' (reduced size)' if result['reduced'] else ''}",
      "", "| | hpjax | OpenCLIP / authors' loop | ratio |", "|---|---|---|---|",
      f"| train step, batch {t['batch']}, bf16 (s) | {t['hpjax_step_s']:.4f} | "
      f"{t['openclip_step_s']:.4f} | {t['speed_up']:.2f}x |",
      f"| images/s | {t['hpjax_images_per_s']:.1f} | {t['openclip_images_per_s']:.1f} | |",
      f"| MFU | {mfu} | | |",
      f"| REPLACE scoring, {s['records']} records (s, warm) | {s['scorer_warm_s']:.2f} "
      f"(cold {s['scorer_cold_s']:.2f}) | {s['authors_loop_s']:.2f} | {s['speed_up_warm']:.2f}x |",
      f"| max abs score difference; metrics identical | {s['max_abs_score_difference']:.1e}; "
      f"{s['metrics_identical']} | | |", ""])


def main(argv):
  del argv
  if os.path.exists(_OUT.value) and not os.path.isfile(_OUT.value):
    raise ValueError(f"--out={_OUT.value}: not a file path")
  sizes = _sizes()
  kind = jax.devices()[0].device_kind
  result = {"model": sizes["model"], "device": kind, "devices": jax.device_count(),
            "reduced": _REDUCED.value, "training": _training(sizes, kind),
            "scoring": _scoring(sizes)}
  table = _markdown(result)
  for path, text in ((_OUT.value, json.dumps(result, indent=1)),
                     (os.path.splitext(_OUT.value)[0] + ".md", table)):
    with open(path + ".partial", "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(path + ".partial", path)
  print(table)


if __name__ == "__main__":
  app.run(errors.reported(main))
