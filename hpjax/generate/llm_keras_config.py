"""What keras-hub 0.32 makes of a Hugging Face model folder's config.json, checked before its
weights load (no keras import here).

Its converters drop some fields, which the JAX sampler sets back after loading
(`llm_keras.KerasHubSampler`): every RMS norm's `rms_norm_eps` (its Llama converter drops it,
its Qwen3 attention's query/key norms and its Gemma 3 decoder blocks keep 1e-6/1e-5), and Gemma
3's `query_pre_attn_scalar` when it is the hidden size per head (Gemma 3 27B: its blocks always
scale by head_dim). What its models cannot express at all is refused here, naming the field, so a
folder is never sampled by a different model than its weights were trained in.
"""

from __future__ import annotations

import os

GEMMA3_LOCAL_THETA, GEMMA3_GLOBAL_THETA = 10_000.0, 1_000_000.0  # hard-wired in keras-hub
GEMMA3_GLOBAL_EVERY = 6  # keras-hub: five sliding-window layers, then one global, repeated
PLAIN_ROPE = (None, "default")
LINEAR_ROPE = (None, "default", "linear")  # keras-hub's Gemma 3 takes a linear scaling factor


def gemma3_scales_by_head_dim(hf: dict) -> bool:
  """Whether Gemma 3's queries are scaled by head_dim**-0.5 (else by (hidden/heads)**-0.5)."""
  return hf.get("query_pre_attn_scalar", hf["head_dim"]) == hf["head_dim"]


def _rope(params: dict | None, theta_default: float) -> tuple[float, str | None]:
  params = params or {}
  return params.get("rope_theta", theta_default), params.get("rope_type")


def _gemma3_problems(hf: dict):
  per_head = hf["hidden_size"] // hf["num_attention_heads"]
  if hf.get("query_pre_attn_scalar", hf["head_dim"]) not in (hf["head_dim"], per_head):
    yield ("query_pre_attn_scalar", hf["query_pre_attn_scalar"],
           f"head_dim ({hf['head_dim']}) or hidden_size/num_attention_heads ({per_head})")
  if not hf.get("tie_word_embeddings", True):
    yield "tie_word_embeddings", False, "an output layer tied to the input embedding"
  if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
    yield "hidden_activation", hf["hidden_activation"], "gelu_pytorch_tanh"
  if hf.get("use_bidirectional_attention"):
    yield "use_bidirectional_attention", True, "a causal model"
  expected = ["sliding_attention" if i % GEMMA3_GLOBAL_EVERY < GEMMA3_GLOBAL_EVERY - 1
              else "full_attention" for i in range(hf["num_hidden_layers"])]
  types = hf.get("layer_types")
  if types and "sliding_attention" in types and types != expected:
    yield ("layer_types", types,
           f"a global layer every {GEMMA3_GLOBAL_EVERY}th, sliding-window layers between")
  params = hf.get("rope_parameters") or {}
  local = _rope(params.get("sliding_attention"), hf.get("rope_local_base_freq",
                                                       GEMMA3_LOCAL_THETA))
  full = _rope(params.get("full_attention") or hf.get("rope_scaling"),
               hf.get("rope_theta", GEMMA3_GLOBAL_THETA))
  if local[0] != GEMMA3_LOCAL_THETA or local[1] not in LINEAR_ROPE:
    yield "rope_parameters.sliding_attention", params.get("sliding_attention"), (
        f"rope_theta {GEMMA3_LOCAL_THETA:g}, default or linear")
  if full[0] != GEMMA3_GLOBAL_THETA or full[1] not in LINEAR_ROPE:
    yield "rope_parameters.full_attention", params.get("full_attention"), (
        f"rope_theta {GEMMA3_GLOBAL_THETA:g}, default or linear")


def _qwen3_problems(hf: dict):
  if hf.get("attention_bias"):
    yield "attention_bias", True, "no attention biases"
  if hf.get("use_sliding_window"):
    yield "use_sliding_window", True, "full attention in every layer"
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if rope.get("rope_type", rope.get("type")) not in PLAIN_ROPE:
    yield "rope_parameters", rope, "plain RoPE (rope_type default, no scaling)"


PROBLEMS = {"gemma3_text": _gemma3_problems, "qwen3": _qwen3_problems}


def check(model_dir: str, hf: dict) -> None:
  """Refuses a config that keras-hub 0.32 would load into a different model than its own."""
  if hf.get("model_type") == "gemma3":
    raise ValueError(f"generate.llm.model: {os.path.join(model_dir, 'config.json')} is a Gemma 3 "
                     "image-text model (model_type gemma3); generate.backend=keras_hub takes "
                     "the text-only causal LM (gemma3_text, Gemma3ForCausalLM), "
                     "generate.backend=transformers takes either")
  for field, value, expected in PROBLEMS.get(hf.get("model_type"), lambda _: ())(hf):
    raise ValueError(f"generate.llm.model: {os.path.join(model_dir, 'config.json')} has "
                     f"{field}={value!r}, which keras-hub 0.32's {hf['model_type']} model cannot "
                     f"express (it assumes {expected}); run this folder with "
                     "generate.backend=transformers")
