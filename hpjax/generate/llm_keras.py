"""The JAX sampler: a Hugging Face model folder loaded by keras-hub (KERAS_BACKEND=jax), its
compiled generate function fed fixed-shape batches, sharded over the devices
(keras.distribution.DataParallel; several hosts each run their own process slice).

keras-hub pads on the right: each row's prompt comes first and the positions after it, masked
out, are where it writes. What its converters drop is set back after loading, and what its models
cannot express is refused before (llm_keras_config).
"""

from __future__ import annotations

import os
import sys

import jax
import ml_collections
import numpy as np

from hpjax.generate import llm_batches, llm_keras_config


def _keras():
  """keras on JAX: the backend is fixed at keras' first import, so check it was (or set it)."""
  if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"
  import keras
  if keras.backend.backend() != "jax":
    raise ValueError(f"generate.backend=keras_hub needs keras on JAX; keras was imported with "
                     f"the {keras.backend.backend()!r} backend: set KERAS_BACKEND=jax")
  try:
    import keras_hub
  except ImportError as e:
    raise ValueError("generate.backend=keras_hub needs keras-hub: pip install --no-deps "
                     "keras-hub==0.32.0 and the package's llm extra") from e
  return keras, keras_hub


def _set_back_dropped_fields(backbone, hf: dict) -> None:
  """The config fields keras-hub's converters drop, set on the loaded layers (read at call time,
  so before the generate function is traced)."""
  if "rms_norm_eps" in hf:  # Hugging Face uses it in every RMS norm of the decoder
    for layer in backbone._flatten_layers(include_self=False):
      if hasattr(layer, "epsilon"):
        layer.epsilon = hf["rms_norm_eps"]
  if hf.get("model_type") == "gemma3_text":
    for block in backbone.transformer_layers:
      block.attention.query_head_dim_normalize = llm_keras_config.gemma3_scales_by_head_dim(hf)


class KerasHubSampler:
  """Greedy (temperature 0) or top-p sampling with keras-hub's samplers, seeded per batch
  (llm_batches.batch_seed)."""

  def __init__(self, config: ml_collections.ConfigDict):
    keras, keras_hub = _keras()
    from keras_hub.src.utils import preset_utils
    devices = jax.local_devices()  # each host samples its own shards (run.py)
    if config.batch_size % len(devices):
      raise ValueError(f"generate.llm.batch_size {config.batch_size} is not a multiple of the "
                       f"{len(devices)} devices it is sharded over")
    if len(devices) > 1:
      keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    hf = llm_batches.model_config(config.model)
    llm_keras_config.check(config.model, hf)
    backbone = keras_hub.models.Backbone.from_preset(
        config.model, **({"dtype": config.dtype} if config.dtype else {}))
    _set_back_dropped_fields(backbone, hf)
    task = preset_utils.find_subclass(config.model, keras_hub.models.CausalLM, type(backbone))
    self._model = task(backbone=backbone, preprocessor=None)
    self._model.compile(sampler=keras_hub.samplers.GreedySampler() if config.temperature == 0
                        else keras_hub.samplers.TopPSampler(
                            p=config.top_p, temperature=config.temperature, seed=config.seed))
    self._generate = self._model.make_generate_function()  # Gemma 3 needs it without preprocessor
    self.batch_size, self._config = config.batch_size, config
    self._stops = llm_batches.stop_ids(config.model)

  def sample(self, prompts):
    batch = llm_batches.full_batch(prompts, self.batch_size)
    new = self._config.max_new_tokens
    length = llm_batches.padded_length(batch, self._config.prompt_bucket)
    ids = np.zeros((len(batch), length + new), np.int32)
    mask = np.zeros(ids.shape, bool)
    for row, prompt in enumerate(batch):
      ids[row, :len(prompt)] = prompt
      mask[row, :len(prompt)] = True
    seed = llm_batches.batch_seed(self._config.seed, batch)
    for state in self._model.sampler.variables:  # seed generators' states (none when greedy)
      state.assign(np.array([seed, 0], state.dtype))
    out = self._generate({"token_ids": ids, "padding_mask": mask},
                         stop_token_ids=tuple(self._stops) or None)
    tokens = np.asarray(out["token_ids"])
    return [llm_batches.cut(tokens[row, len(p):], self._stops, new)
            for row, p in enumerate(prompts)]
