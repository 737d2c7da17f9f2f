"""Generation speed: the rules in captions per second, on one core and on two; the LLM
samplers (JAX on keras-hub against transformers' PyTorch generate) in tokens and captions per
second on the same random-weight model and batch sizes.

  python tools/bench_generate.py --captions=PATH/valid_neg_clip.tsv
  python tools/bench_generate.py --llm_size=tiny --llm_batch_sizes=8,32

Three figures, medians of --repeats, the tagger's warm-up excluded: the tagger alone (its share
of the cost), every rule family on one core, and the same on two worker processes that each
take half the captions (as two `process_index`es of `python -m hpjax.generate` would); then one
whole `hpjax.generate` run end to end (reading, checking, shards, outputs; start-up included).
LLM: a Llama of --llm_size with random weights and no end token (every row makes
--llm_new_tokens), prompts of --llm_prompt_tokens; the first call of each shape (compilation,
warm-up) excluded; captions/s counts the four templates' prompts per caption.
"""

import functools
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO]  # `configs` and `hpjax` from this checkout

from configs import generate as generate_config
from hpjax import errors
from hpjax.generate import rules, sources, tagger as tagger_lib

_CAPTIONS = flags.DEFINE_string("captions", None, "captions file (COCO .json, .jsonl, .tsv, .txt)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats (the median is reported)")
_LLM_SIZE = flags.DEFINE_enum("llm_size", None, ["tiny", "small", "1b", "3b"],
                              "Llama configuration of the LLM samplers' benchmark")
_LLM_BATCH_SIZES = flags.DEFINE_list("llm_batch_sizes", ["8", "32"], "prompts per sampler call")
_LLM_PROMPT = flags.DEFINE_integer("llm_prompt_tokens", 120, "prompt length (a filled template)")
_LLM_NEW = flags.DEFINE_integer("llm_new_tokens", 32, "new tokens per prompt")
_LLM_DTYPE = flags.DEFINE_string("llm_dtype", "float32", "weights' dtype in both samplers")
_PROJECT = 591_753  # the study's COCO training captions
_TEMPLATES = 4
# (hidden, intermediate, layers, heads, kv heads, vocab): tiny and small for CPUs; 1b and 3b are
# Llama 3.2 1B and 3B's shapes.
_LLAMA = {"tiny": (64, 128, 2, 4, 2, 1000), "small": (256, 768, 4, 8, 4, 32000),
          "1b": (2048, 8192, 16, 32, 8, 128256), "3b": (3072, 8192, 28, 24, 8, 128256)}

_GENERATOR = None


def _generator():
  return rules.RuleGenerator(tagger_lib.LexiconTagger(), list(rules.FAMILIES),
                             {rules.HARD_NEGATIVE: 1, rules.HARD_POSITIVE: 1})


def _init_worker():
  global _GENERATOR
  _GENERATOR = _generator()


def _generate(texts):
  return len(_GENERATOR.generate(texts, [random.Random(i) for i in range(len(texts))]))


def _median_rate(count, timed) -> float:
  return count / _median_time(timed)


def _llm_model(folder: str) -> str:
  import torch
  import transformers
  hidden, intermediate, layers, heads, kv, vocab = _LLAMA[_LLM_SIZE.value]
  config = transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
      max_position_embeddings=1024, bos_token_id=1, eos_token_id=None, pad_token_id=0)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(config).to(getattr(torch, _LLM_DTYPE.value)).save_pretrained(
      folder)
  return folder


def _median_time(timed) -> float:
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    timed()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_llm() -> None:
  from hpjax.generate import llm_keras, llm_torch
  import jax
  with tempfile.TemporaryDirectory() as folder:
    model = _llm_model(folder)
    with open(os.path.join(model, "config.json")) as f:
      vocab = json.load(f)["vocab_size"]
    rows = []
    for batch_size in map(int, _LLM_BATCH_SIZES.value):
      c = generate_config.get_config().generate.llm
      c.update(dict(model=model, batch_size=batch_size, max_new_tokens=_LLM_NEW.value,
                    prompt_bucket=_LLM_PROMPT.value, dtype=_LLM_DTYPE.value))
      rng = random.Random(batch_size)
      prompts = [[1] + [rng.randrange(2, vocab) for _ in range(_LLM_PROMPT.value - 1)]
                 for _ in range(batch_size)]
      for name, make in (("JAX keras-hub", llm_keras.KerasHubSampler),
                         ("PyTorch transformers", llm_torch.TransformersSampler)):
        sampler = make(c)
        made = sum(map(len, sampler.sample(prompts)))  # compiles / warms up
        seconds = _median_time(functools.partial(sampler.sample, prompts))
        rows.append((name, batch_size, made / seconds, batch_size / seconds / _TEMPLATES))
        del sampler
  print(f"\nLLM samplers: Llama {_LLM_SIZE.value} (random weights, {_LLM_DTYPE.value}), "
        f"{_LLM_PROMPT.value}-token prompts, {_LLM_NEW.value} new tokens, JAX on "
        f"{jax.devices()[0].platform} x{len(jax.devices())}\n")
  print("| sampler | batch | generated tokens/s | captions/s (4 prompts each) | vs PyTorch | "
        f"{_PROJECT:,} captions at this rate |\n|---|---:|---:|---:|---:|---:|")
  torch_rate = {b: r for n, b, r, _ in rows if n.startswith("PyTorch")}
  for name, batch_size, tokens, captions in rows:
    print(f"| {name} | {batch_size} | {tokens:,.0f} | {captions:,.1f} | "
          f"{tokens / torch_rate[batch_size]:.2f} | {_PROJECT / captions / 3600:,.1f} h |")


def main(argv):
  del argv
  if _LLM_SIZE.value:
    bench_llm()
  if _CAPTIONS.value:
    bench_rules()


def bench_rules() -> None:
  texts = [c.text for c in sources.read(_CAPTIONS.value) if not sources.check(c, 100)]
  tagger = tagger_lib.LexiconTagger()
  generator = _generator()
  generator.generate(texts, [random.Random(i) for i in range(len(texts))])  # warm caches
  rates = {"tagger alone, 1 core": _median_rate(len(texts), lambda: [tagger.tag(t) for t in texts]),
           "all 7 families, 1 core": _median_rate(len(texts), lambda: generator.generate(
               texts, [random.Random(i) for i in range(len(texts))]))}
  halves = [texts[:len(texts) // 2], texts[len(texts) // 2:]]
  with multiprocessing.get_context("fork").Pool(2, initializer=_init_worker) as pool:
    pool.map(_generate, halves)  # warm-up
    rates["all 7 families, 2 processes"] = _median_rate(len(texts),
                                                        lambda: pool.map(_generate, halves))
  with tempfile.TemporaryDirectory() as workdir:
    config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                          "generate.py")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hpjax.generate", f"--workdir={workdir}/run",
                    f"--config={config}:input={_CAPTIONS.value}"], check=True,
                   capture_output=True)
    rates["python -m hpjax.generate end to end, 1 process"] = len(texts) / (
        time.perf_counter() - start)
  print(f"{len(texts)} captions of {_CAPTIONS.value}, {os.cpu_count()} CPUs visible\n")
  print("| what | captions/s | vs 1 core |\n|---|---:|---:|")
  one = rates["all 7 families, 1 core"]
  for name, rate in rates.items():
    print(f"| {name} | {rate:,.0f} | {rate / one:.2f} |")


if __name__ == "__main__":
  app.run(errors.reported(main))
