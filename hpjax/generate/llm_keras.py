"""The JAX sampler: a Hugging Face model folder loaded by keras-hub (KERAS_BACKEND=jax), its
compiled generate function fed fixed-shape batches, sharded over the devices
(keras.distribution.DataParallel; several hosts each run their own process slice).

keras-hub pads on the right: each row's prompt comes first and the positions after it, masked
out, are where it writes. Its Llama converter drops `rms_norm_eps`, so it is passed here.
"""

from __future__ import annotations

import os
import sys

import jax
import ml_collections
import numpy as np

from hpjax.generate import llm_batches


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
    overrides = ({"layer_norm_epsilon": hf["rms_norm_eps"]}
                 if hf.get("model_type") == "llama" and "rms_norm_eps" in hf else {})
    if config.dtype:
      overrides["dtype"] = config.dtype
    backbone = keras_hub.models.Backbone.from_preset(config.model, **overrides)
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
