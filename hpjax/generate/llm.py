"""Hard positives by an LLM: the prompt templates (prompts.py) filled per caption, run through a
batched sampler, each answer parsed (parse.py) into a hard positive or a counted rejection.

Two samplers take the same token ids and give the new ones: `llm_keras.KerasHubSampler` (JAX,
keras-hub, the batch sharded over the devices) and `llm_torch.TransformersSampler` (PyTorch,
transformers' `generate`, the study's way), so one checks the other on the same model folder
(a Hugging Face `save_pretrained` folder with its `tokenizer.json`). Both get the same ids from
one `Prompter`: the filled template as one user turn of the folder's chat template (what an
instruction-tuned model expects; `generate.llm.chat_template`) or raw. Both see fixed shapes:
`batch_size` prompts (a short batch is filled with copies), each padded to a multiple of
`prompt_bucket` tokens (llm_batches), so a run compiles a handful of programs, not one per
batch.
"""

from __future__ import annotations

import os
import random
from typing import Protocol, Sequence

from absl import logging
import ml_collections
import tokenizers

from hpjax import tokenizer as text_tokenizer
from hpjax.generate import llm_batches, parse, prompts, rules

BACKENDS = ("rules", "keras_hub", "transformers")
CHAT_TEMPLATES = ("auto", "tokenizer", "none")  # if the folder has one; required; raw prompts


class Sampler(Protocol):
  batch_size: int

  def sample(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """Up to batch_size prompts' token ids in; per prompt its new ids, cut before a stop id."""


def load_tokenizer(model_dir: str) -> tokenizers.Tokenizer:
  llm_batches.model_config(model_dir)
  path = os.path.join(model_dir, "tokenizer.json")
  if not os.path.exists(path):
    raise ValueError(f"generate.llm.model: {model_dir!r} holds no tokenizer.json; save the "
                     "model's fast tokenizer there (tokenizer.save_pretrained)")
  return tokenizers.Tokenizer.from_file(path)


class Prompter:
  """Filled templates as the model's prompt ids, rendered through the folder's chat template by
  transformers (a user turn, then the opened assistant turn) or, with "none", encoded raw."""

  def __init__(self, model_dir: str, chat_template: str):
    if chat_template not in CHAT_TEMPLATES:
      raise ValueError(f"generate.llm.chat_template is {chat_template!r}; expected one of "
                       f"{CHAT_TEMPLATES}")
    self.tokenizer = load_tokenizer(model_dir)
    self._chat = None
    if chat_template != "none":
      import transformers  # pylint: disable=g-import-not-at-top (the rules backend needs none)
      self._chat = transformers.PreTrainedTokenizerFast.from_pretrained(model_dir)
      if self._chat.chat_template is None:
        if chat_template == "tokenizer":
          raise ValueError(f"generate.llm.chat_template=tokenizer: {model_dir!r} has no chat "
                           "template (tokenizer_config.json chat_template or chat_template.jinja)"
                           "; set it to auto or none for raw prompts")
        logging.info("%s has no chat template: the prompts go to the model raw", model_dir)
        self._chat = None

  def text(self, prompt: str) -> str:
    """What the model reads (special tokens spelled out), for a human to review."""
    if self._chat is None:
      return prompt
    return self._chat.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                          add_generation_prompt=True)

  def ids(self, prompts: Sequence[str]) -> list[list[int]]:
    if self._chat is None:
      return [e.ids for e in self.tokenizer.encode_batch(prompts)]
    # the rendered text spells out its own start token: none added
    return [e.ids for e in self.tokenizer.encode_batch([self.text(p) for p in prompts],
                                                       add_special_tokens=False)]


def make_sampler(backend: str, llm: ml_collections.ConfigDict) -> Sampler:
  """The sampler the config's backend names (importing only its library)."""
  if llm.batch_size < 1 or llm.max_new_tokens < 1 or llm.prompt_bucket < 1:
    raise ValueError("generate.llm.batch_size, max_new_tokens and prompt_bucket must be positive")
  if llm.temperature < 0 or not 0 < llm.top_p <= 1:
    raise ValueError(f"generate.llm.temperature {llm.temperature} / top_p {llm.top_p}: expected "
                     "temperature >= 0 (0 is greedy) and 0 < top_p <= 1")
  llm_batches.model_config(llm.model)
  if backend == "keras_hub":
    from hpjax.generate import llm_keras
    return llm_keras.KerasHubSampler(llm)
  if backend == "transformers":
    from hpjax.generate import llm_torch
    return llm_torch.TransformersSampler(llm)
  raise ValueError(f"generate.backend is {backend!r}; expected one of {BACKENDS}")


def load_templates(names_or_paths: Sequence[str]) -> dict[str, str]:
  """{name: template} (a file's name without .txt), checked before any model is loaded."""
  return {os.path.basename(t).removesuffix(".txt"): prompts.load(t) for t in names_or_paths}


def too_long_for(context_length: int):
  """Whether a text's CLIP BPE tokens (with start and end) exceed the text tower's context."""
  return lambda text: int(text_tokenizer.encode([text])[1][0]) + 2 > context_length


class LLMGenerator:
  """Hard positives from the templates; up to `per_caption` of them per caption, from distinct
  templates chosen with the caption's random.Random (as `rules.RuleGenerator` chooses)."""

  def __init__(self, sampler: Sampler, prompter: Prompter, templates: dict[str, str],
               per_caption: int, too_long, rule_prefix: str):
    self._sampler, self._prompter, self._too_long = sampler, prompter, too_long
    self._templates = templates
    self._per_caption, self._prefix = per_caption, rule_prefix

  def example(self, caption: str) -> dict:
    """The first template's prompt for `caption` as the model reads it (the run's summary)."""
    name = next(iter(self._templates))
    return {"caption": caption, "template": name,
            "prompt": self._prompter.text(prompts.fill(self._templates[name], caption))}

  def generate(self, captions: Sequence[str],
               rngs: Sequence[random.Random]) -> list[rules.Outcome]:
    jobs = [(i, name) for i in range(len(captions)) for name in self._templates]
    encoded = self._prompter.ids(
        [prompts.fill(self._templates[name], captions[i]) for i, name in jobs])
    size = self._sampler.batch_size
    answers = []
    for at in range(0, len(jobs), size):
      for new in self._sampler.sample(encoded[at:at + size]):
        answers.append(self._prompter.tokenizer.decode(new, skip_special_tokens=True))
    outcomes = [rules.Outcome() for _ in captions]
    made = [[] for _ in captions]
    for (i, name), answer in zip(jobs, answers):
      result = parse.parse(captions[i], answer, name, self._too_long)
      if isinstance(result, parse.Accepted):
        made[i].append(rules.HardText(rules.HARD_POSITIVE, name, f"{self._prefix}:{name}",
                                      result.text, result.span))
      else:
        outcomes[i].rejections[name] = result
    order = list(self._templates)
    for outcome, texts, rng in zip(outcomes, made, rngs):
      outcome.hard_texts = rules.choose(texts, self._per_caption, rng, order)
    return outcomes


class Combined:
  """Hard negatives by the rules, hard positives by the LLM: one Outcome per caption."""

  def __init__(self, negatives: rules.Generator, positives: LLMGenerator):
    self._negatives, self.positives = negatives, positives

  def generate(self, captions, rngs) -> list[rules.Outcome]:
    seeds = [rng.getrandbits(64) for rng in rngs]  # each side its own stream, resume-proof
    first = self._negatives.generate(captions, [random.Random(f"n{s}") for s in seeds])
    second = self.positives.generate(captions, [random.Random(f"p{s}") for s in seeds])
    return [rules.Outcome(a.hard_texts + b.hard_texts, {**a.rejections, **b.rejections})
            for a, b in zip(first, second)]
