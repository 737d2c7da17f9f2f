"""Optimizer-state bytes of full finetuning, locked towers and LoRA, from shapes alone.

  .venv/bin/python tools/optimizer_state_bytes.py [--model ViT-B-32-quickgelu] [--rank 4]

Builds each optimizer exactly as the trainer does (hpjax/train/optim.py with the lock table, or
over LoRA adapters on TSVLC's placement) and sizes its state with jax.eval_shape: no weights are
allocated, so any model size runs on a laptop. Prints a markdown table.
"""

import argparse
import os
import sys

import jax
import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]  # `configs` and `hpjax` from this checkout

from configs import common
from hpjax.models.clip import CLIP, param_shapes
from hpjax.models.config import get_model_config
from hpjax.train import lora, optim, param_groups


def state_bytes(tx, tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(tx.init, tree)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="ViT-B-32-quickgelu")
  parser.add_argument("--rank", type=int, default=4)
  args = parser.parse_args()
  params = param_shapes(CLIP(get_model_config(args.model)))
  config = common.get_config(None)
  tx, _ = optim.make_optimizer(config.optim, 100)
  rows = [("full finetuning", state_bytes(tx, params))]
  for label, kwargs in (("image tower locked", {"lock_image": True}),
                        ("image locked but last 2 groups, text locked",
                         {"lock_image": True, "lock_image_unlocked_groups": 2,
                          "lock_text": True})):
    table = param_groups.build_table(params, **kwargs)
    rows.append((label, state_bytes(optim.make_optimizer(config.optim, 100, table)[0], params)))
  lora_config = ml_collections.ConfigDict(config)
  lora_config.lora.image_rank = lora_config.lora.text_rank = args.rank
  layers = lora.plan(params, *lora.options(lora_config))
  adapters = jax.eval_shape(lambda: lora.init_adapters(params, layers, jax.random.key(0)))
  rows.append((f"LoRA r={args.rank}, both towers (TSVLC placement)", state_bytes(tx, adapters)))
  print(f"| {args.model} optimizer state | MiB | vs full |\n|---|---|---|")
  for label, size in rows:
    print(f"| {label} | {size / 2**20:.1f} | {size / rows[0][1]:.3f} |")


if __name__ == "__main__":
  main()
