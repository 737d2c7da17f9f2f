"""First vs cached load of pretrained weights by name: time and peak memory.

  .venv/bin/python tools/bench_pretrained.py --models ViT-B-32,ViT-L-14 --repeats 3

For each model, open_clip's random-initialised weights are written as a PyTorch state dict
(`.bin`, the format of most OpenCLIP hub files) and served on 127.0.0.1; each load runs in a
fresh process (so its peak resident memory is its own) in an empty Hugging Face cache (HF_HOME):
  local:  create_model(name, pretrained=FILE): the reference, a local file read and converted;
  first:  create_model(name, pretrained=URL): fetched, checked, read, converted, cached;
  cached: the same call again: the converted params read from the cache, no PyTorch file read.
Prints one JSON line per model (medians over the repeats; the first load in a new cache each
time).
"""

import argparse
import functools
import http.server
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    del args


def _write_weights(name: str, path: pathlib.Path) -> None:
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  model = open_clip.create_model(name)
  torch.save(model.state_dict(), path)


def _load_once(name: str, pretrained: str) -> None:
  """The measured step (in its own process): one create_model, params on the host."""
  import jax  # pylint: disable=g-import-not-at-top
  from hpjax import factory  # pylint: disable=g-import-not-at-top  (imports are not timed)
  start = time.perf_counter()
  _, params = factory.create_model(name, pretrained=pretrained)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  print(json.dumps({"seconds": seconds, "peak_rss_gib": round(peak / 2**20, 2)}))


def _child(name: str, pretrained: str, hf_home: str) -> dict:
  env = dict(os.environ, HF_HOME=hf_home, JAX_PLATFORMS="cpu", HF_HUB_DISABLE_PROGRESS_BARS="1")
  out = subprocess.run([sys.executable, __file__, "--child", name, pretrained], env=env,
                       check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="ViT-B-32,ViT-L-14")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--child", nargs=2, metavar=("NAME", "PRETRAINED"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _load_once(*args.child)
    return 0
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
      for name in args.models.split(","):
        weights = root / f"{name}.bin"
        _write_weights(name, weights)
        url = f"http://127.0.0.1:{server.server_address[1]}/{weights.name}"
        runs = {"local": [], "first": [], "cached": []}
        for repeat in range(args.repeats):
          hf_home = str(root / f"hf_{name}_{repeat}")
          runs["local"].append(_child(name, str(weights), hf_home))
          runs["first"].append(_child(name, url, hf_home))
          runs["cached"].append(_child(name, url, hf_home))
        summary = {"model": name, "file_gib": round(weights.stat().st_size / 2**30, 2)}
        for phase, results in runs.items():
          summary[f"{phase}_s"] = round(statistics.median(r["seconds"] for r in results), 2)
          summary[f"{phase}_peak_rss_gib"] = max(r["peak_rss_gib"] for r in results)
        summary["cached_vs_local"] = round(summary["local_s"] / summary["cached_s"], 2)
        print(json.dumps(summary), flush=True)
        weights.unlink()
    finally:
      server.shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main())
