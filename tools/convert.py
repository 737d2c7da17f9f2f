"""Checkpoint conversion from the shell, without the config syntax of `python -m hpjax.main`.

  .venv/bin/python tools/convert.py --src ViT-B-32.safetensors --model ViT-B-32 --dst /tmp/params
  .venv/bin/python tools/convert.py --src laion2b_s34b_b79k --model ViT-B-32 --dst /tmp/params
  .venv/bin/python tools/convert.py --src /tmp/run/checkpoints --model ViT-B-32 \
      --direction to_openclip --dst /tmp/finetuned.safetensors
  .venv/bin/python tools/convert.py --src /tmp/run/checkpoints --model ViT-B-32 \
      --direction to_hf --dst /tmp/finetuned_hf

Same program as configs/convert.py (hpjax.checkpoints.convert.run); the summary is printed and
written to WORKDIR/convert_summary.json (WORKDIR defaults to the dst's folder).
"""

import argparse
import json
import os

from absl import flags, logging
import ml_collections

from hpjax import errors
from hpjax.checkpoints import convert


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--src", required=True,
                      help="checkpoint file, orbax directory, or a pretrained name (a tag of "
                      "--model such as openai, hf-hub:org/repo, org/repo, gs:// or https:// URL)")
  parser.add_argument("--model", required=True, help="shipped model name or JSON config path")
  parser.add_argument("--dst", required=True, help="output directory (to_hpjax, to_hf) or file")
  parser.add_argument("--direction", choices=convert.DIRECTIONS, default="to_hpjax")
  parser.add_argument("--workdir", help="where the summary goes (default: the dst's folder)")
  parser.add_argument("--lora_rank", type=int, default=0,
                      help="a file with LoRA adapters (TSVLC / DAC: 4): merged at this rank")
  parser.add_argument("--lora_alpha", type=float, default=1.0, help="LoRA scale numerator")
  parser.add_argument("--traceback", action="store_true", help="an error's full traceback")
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)
  config = ml_collections.ConfigDict(
      {"src": args.src, "dst": args.dst, "model": args.model, "direction": args.direction,
       "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha})
  workdir = args.workdir or os.path.dirname(os.path.abspath(args.dst))
  run = errors.reported(lambda argv: print(json.dumps(convert.run(config, workdir), indent=2)))
  flags.FLAGS["traceback"].value = args.traceback
  run([])


if __name__ == "__main__":
  main()
