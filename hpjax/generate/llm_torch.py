"""The PyTorch sampler: any Hugging Face causal LM through transformers' `generate` (the
study's way; the optional torch extra), padded on the left as decoder-only models need."""

from __future__ import annotations

import ml_collections
import numpy as np
import torch
import transformers

from hpjax.generate import llm_batches


class TransformersSampler:
  """Greedy (temperature 0) or top-p sampling seeded per batch (llm_batches.batch_seed), on the
  GPU when there is one."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, config.dtype) if config.dtype else None
    self._model = transformers.AutoModelForCausalLM.from_pretrained(
        config.model, dtype=dtype).to(self._device).eval()
    self.batch_size, self._config = config.batch_size, config
    self._stops, self._pad = llm_batches.stop_ids(config.model), llm_batches.pad_id(config.model)

  @torch.inference_mode()
  def sample(self, prompts):
    batch = llm_batches.full_batch(prompts, self.batch_size)
    length = llm_batches.padded_length(batch, self._config.prompt_bucket)
    ids = np.full((len(batch), length), self._pad, np.int64)
    mask = np.zeros(ids.shape, np.int64)
    for row, prompt in enumerate(batch):
      ids[row, length - len(prompt):] = prompt
      mask[row, length - len(prompt):] = 1
    sampled = self._config.temperature > 0
    if sampled:
      torch.manual_seed(llm_batches.batch_seed(self._config.seed, batch))
    out = self._model.generate(
        input_ids=torch.from_numpy(ids).to(self._device),
        attention_mask=torch.from_numpy(mask).to(self._device),
        max_new_tokens=self._config.max_new_tokens, do_sample=sampled,
        temperature=self._config.temperature if sampled else None,
        top_p=self._config.top_p if sampled else None, top_k=None,
        eos_token_id=self._stops or None, pad_token_id=self._pad)
    tokens = out[:, length:].cpu().numpy()
    return [llm_batches.cut(tokens[row], self._stops, self._config.max_new_tokens)
            for row in range(len(prompts))]
