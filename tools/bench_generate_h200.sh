#!/usr/bin/env bash
# The LLM samplers on one GPU (prepared for an H200): JAX (keras-hub) against PyTorch
# (transformers) on Llama 3.2 1B and 3B shapes with random weights, bfloat16, batch sizes up to
# 256, 120-token prompts (a filled template) and 32 new tokens; the tables go to stdout.
# Needs the package with its torch and llm extras and keras-hub (README: LLM hard positives).
set -euo pipefail
cd "$(dirname "$0")/.."
for size in 1b 3b; do
  python tools/bench_generate.py --llm_size="$size" --llm_dtype=bfloat16 \
    --llm_batch_sizes=32,128,256 --llm_prompt_tokens=128 --llm_new_tokens=32 --repeats=3
done
