"""LLM generators: the JAX sampler's greedy tokens equal a step-by-step PyTorch decode of the same
weights (as do transformers' own), the parser on messy answers, and a run through the resumable
generate machinery with the LLM making the hard positives."""

import json
import os
import random

import ml_collections
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from tokenizers import models as tok_models, pre_tokenizers

from configs import generate as generate_config
from hpjax.generate import llm, llm_keras_config, parse, prompts, rules, run as generate_run

WORDS = ("<pad> <s> </s> <unk> a an the man woman dog cat and on of top table holding next to "
         "sits sitting red small plate with near above beside caption rewritten : none").split()


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
  tok = tokenizers.Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(WORDS)},
                                                  unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                              bos_token="<s>", eos_token="</s>",
                                              unk_token="<unk>")


FAMILIES = {  # each with the traps of keras-hub's converter for it
    "llama": (transformers.LlamaConfig, {}),
    "qwen2": (transformers.Qwen2Config, {}),
    # head_dim apart from hidden/heads, tied embeddings, query/key norms that take rms_norm_eps
    "qwen3": (transformers.Qwen3Config, dict(head_dim=16, tie_word_embeddings=True)),
    # five sliding-window layers (a window shorter than the prompts) and a global one, queries
    # scaled by hidden/heads as Gemma 3 27B's are, every norm taking rms_norm_eps
    "gemma3": (transformers.Gemma3TextConfig, dict(
        num_hidden_layers=6, head_dim=16, query_pre_attn_scalar=8, sliding_window=4,
        tie_word_embeddings=True)),
}


def _config(family: str, **overrides) -> transformers.PretrainedConfig:
  """A tiny configuration with an rms_norm_eps far from keras' defaults."""
  config_class, extra = FAMILIES[family]
  return config_class(**{**dict(
      vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
      rms_norm_eps=1e-2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
      tie_word_embeddings=False), **extra, **overrides})


def _write_model(folder, family: str) -> str:
  """A random model, every tensor perturbed, and the tokenizer beside it."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(_config(family))
  with torch.no_grad():
    for name, p in model.named_parameters():  # Gemma's scaled, tied embedding kept from dominating
      p.add_(torch.randn_like(p) * (0.1 if family == "gemma3" and "embed" in name else 0.5))
  path = os.path.join(folder, family)
  model.save_pretrained(path)
  _tokenizer().save_pretrained(path)
  return path


@pytest.fixture(scope="module", params=list(FAMILIES))
def model_dir(request, tmp_path_factory):
  return _write_model(str(tmp_path_factory.mktemp("llm")), request.param)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def sampling_model_dir(request, tmp_path_factory):
  """Sampling is the same code whatever the family: two of them show it."""
  return _write_model(str(tmp_path_factory.mktemp("sampling")), request.param)


def _llm_config(model, **overrides) -> ml_collections.ConfigDict:
  c = generate_config.get_config().generate.llm
  c.model = model
  c.update(dict(batch_size=8, max_new_tokens=10, prompt_bucket=8, **overrides))
  return c


def _reference_greedy(model_dir, prompt, steps, stop=2) -> list[int]:
  """One token at a time, the whole unpadded sequence through the PyTorch model each step."""
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
  ids = list(prompt)
  with torch.no_grad():
    for _ in range(steps):
      token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
      if token == stop:
        break
      ids.append(token)
  return ids[len(prompt):]


PROMPTS = [[1, 4, 7, 11, 9], [1, 6, 8], [1, 5, 7, 12, 13, 4, 14, 15, 16, 10, 19, 20], [1, 9]]


def test_jax_greedy_tokens_equal_a_step_by_step_pytorch_decode(model_dir):
  from hpjax.generate import llm_keras, llm_torch
  want = [_reference_greedy(model_dir, p, 10) for p in PROMPTS]
  assert any(len(w) == 10 for w in want) and len({tuple(w) for w in want}) > 1
  jax_sampler = llm_keras.KerasHubSampler(_llm_config(model_dir))
  assert jax_sampler.sample(PROMPTS) == want
  assert jax_sampler.sample(PROMPTS[1:3]) == want[1:3]  # a short batch, filled and cut
  assert llm_torch.TransformersSampler(_llm_config(model_dir)).sample(PROMPTS) == want


def test_jax_first_step_logits_equal_pytorch(model_dir):
  from hpjax.generate import llm_keras
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
  model_jax = llm_keras.KerasHubSampler(_llm_config(model_dir))._model
  for prompt in PROMPTS:
    with torch.no_grad():
      want = model(torch.tensor([prompt])).logits[0].numpy()
    got = np.asarray(model_jax({"token_ids": np.array([prompt], np.int32),
                                "padding_mask": np.ones((1, len(prompt)), bool)}))[0]
    np.testing.assert_allclose(got, want, atol=3e-5, rtol=0)


@pytest.mark.parametrize("backend", ["keras_hub", "transformers"])
def test_seeded_sampling_repeats_whatever_ran_before_and_differs_from_greedy(sampling_model_dir,
                                                                          backend):
  model_dir = sampling_model_dir
  sampled = _llm_config(model_dir, temperature=1.5, top_p=0.95, seed=3)
  sampler = llm.make_sampler(backend, sampled)
  first = sampler.sample(PROMPTS)
  sampler.sample(PROMPTS[:2])
  assert sampler.sample(PROMPTS) == first
  assert llm.make_sampler(backend, sampled).sample(PROMPTS) == first
  sampled.seed = 4
  assert llm.make_sampler(backend, sampled).sample(PROMPTS) != first
  assert first != llm.make_sampler(backend, _llm_config(model_dir)).sample(PROMPTS)


@pytest.mark.parametrize("family,overrides,field", [
    ("gemma3", dict(query_pre_attn_scalar=12), "query_pre_attn_scalar=12"),
    ("gemma3", dict(tie_word_embeddings=False), "tie_word_embeddings=False"),
    ("gemma3", dict(layer_types=["full_attention"] + ["sliding_attention"] * 5),
     "layer_types="),
    ("gemma3", dict(rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 500000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
     "rope_parameters.full_attention="),
    ("qwen3", dict(attention_bias=True), "attention_bias=True"),
    ("qwen3", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6,
                                    "original_max_position_embeddings": 64}),
     "rope_parameters="),
])
def test_keras_hub_refuses_a_config_its_model_cannot_express(tmp_path, family, overrides, field):
  llm_keras_config.check(str(tmp_path), _config(family).to_dict())  # the tested ones load
  hf = _config(family, **overrides).to_dict()
  with pytest.raises(ValueError) as e:
    llm_keras_config.check(str(tmp_path), hf)
  message = str(e.value)
  assert message.startswith(f"generate.llm.model: {tmp_path / 'config.json'} has {field}")
  assert message.endswith("run this folder with generate.backend=transformers")
  assert "\n" not in message


def test_the_jax_sampler_refuses_before_loading_any_weights(tmp_path):
  _config("qwen3", attention_bias=True).save_pretrained(tmp_path)  # no weights in the folder
  with pytest.raises(ValueError, match=r"has attention_bias=True, .* generate.backend=transformers"):
    llm.make_sampler("keras_hub", _llm_config(str(tmp_path)))


def test_keras_hub_refuses_gemma3_image_text_folders(tmp_path):
  hf = transformers.Gemma3Config().to_dict()
  with pytest.raises(ValueError, match=r"config.json is a Gemma 3 image-text model .*"
                                       r"generate.backend=transformers takes either"):
    llm_keras_config.check(str(tmp_path), hf)


CAPTION = "A man holding a red plate next to a dog."
MESSY = [  # (template, what the model wrote, the accepted text or the rejection reason)
    ("swap_and", "A dog and a man.", parse.TOO_MUCH),
    ("replace_synonym", "", parse.EMPTY),
    ("replace_synonym", "  \n\n Rewritten:  \n", parse.EMPTY),
    ("replace_synonym", "NONE", parse.DECLINED),
    ("replace_synonym", "None.", parse.DECLINED),
    ("replace_synonym", "a man holding a red plate next to a dog", parse.UNCHANGED),
    ("replace_synonym", f"Caption: {CAPTION} Rewritten: A man holding a red dish next to a dog.",
     parse.COPY),
    ("replace_synonym", "Sure! Here is the rewritten caption: A man holding a red dish next to "
     "a dog.", parse.CHATTY),
    ("replace_synonym", "Here's one: A man holding a red dish next to a dog.", parse.CHATTY),
    ("replace_synonym", "A man holding a red dish next to a dog. I replaced plate with dish.",
     parse.CHATTY),
    ("replace_synonym", "A woman carrying a blue bowl beside a cat.", parse.TOO_MUCH),
    ("replace_synonym", "A man holding a red pneumonoultramicroscopicsilicovolcanoconiosis "
     "supercalifragilisticexpialidocious next to a dog.", parse.TOO_LONG),
    ("replace_synonym", "A man holding a red dish next to a dog.\nCaption: A cat.\nRewritten:",
     "A man holding a red dish next to a dog."),
    ("replace_synonym", '  "A man holding a red dish next to a dog."  ',
     "A man holding a red dish next to a dog."),
    ("replace_synonym", "Rewritten caption: A man holding a red dish next to a dog.",
     "A man holding a red dish next to a dog."),
    ("replace_relation", "A man holding a red plate beside a dog.",
     "A man holding a red plate beside a dog."),
    ("replace_verb", "A man carrying a red plate next to a dog.",
     "A man carrying a red plate next to a dog."),
]


@pytest.mark.parametrize("template,raw,want", MESSY)
def test_parser_on_messy_llm_answers(template, raw, want):
  got = parse.parse(CAPTION, raw, template, llm.too_long_for(30))
  if want in parse.REASONS:
    assert got == want
  else:
    assert isinstance(got, parse.Accepted) and got.text == want


def test_parser_span_and_swap():
  caption = "A red cat and a small dog on a table."
  got = parse.parse(caption, "A small dog and a red cat on a table.", "swap_and",
                    llm.too_long_for(77))
  assert isinstance(got, parse.Accepted)
  assert caption[got.span[0]:got.span[1]] == "red cat and a small dog"
  got = parse.parse(CAPTION, "A man holding a red dish next to a dog.", "replace_synonym",
                    llm.too_long_for(77))
  assert CAPTION[got.span[0]:got.span[1]] == "plate"


class _Scripted:
  """A sampler that answers each prompt with the next scripted text's token ids."""

  def __init__(self, tokenizer, answers, batch_size=3):
    self.batch_size, self._tokenizer, self._answers = batch_size, tokenizer, iter(answers)
    self.calls = []

  def sample(self, prompts):
    self.calls.append(len(prompts))
    return [self._tokenizer.encode(next(self._answers)).ids for _ in prompts]


def test_llm_generator_turns_answers_into_hard_positives_and_counted_rejections(tmp_path):
  tokenizer = _tokenizer().backend_tokenizer
  _tokenizer().save_pretrained(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
  captions = ["a man on a table", "a red cat and a small dog"]
  answers = ["a woman on a table", "none",  # caption 0: replace_synonym, swap_and
             "a red cat and a small dog", "a small dog and a red cat"]
  sampler = _Scripted(tokenizer, answers)
  generator = llm.LLMGenerator(sampler, llm.Prompter(str(tmp_path), "none"),
                               llm.load_templates(["replace_synonym", "swap_and"]), 1,
                               llm.too_long_for(77), "keras_hub")
  first, second = generator.generate(captions, [random.Random(0), random.Random(1)])
  assert sampler.calls == [3, 1]
  assert first.hard_texts == [rules.HardText(rules.HARD_POSITIVE, "replace_synonym",
                                             "keras_hub:replace_synonym", "a woman on a table",
                                             (2, 5))]
  assert first.rejections == {"swap_and": parse.DECLINED}
  assert [h.text for h in second.hard_texts] == ["a small dog and a red cat"]
  assert second.rejections == {"replace_synonym": parse.UNCHANGED}


def test_llm_backend_runs_through_the_resumable_generate_machinery(tmp_path):
  model = _write_model(str(tmp_path), "llama")
  captions = tmp_path / "captions.txt"
  captions.write_text("a man holding a red plate next to a dog\na small cat and a dog on a table\n"
                      "a woman sitting on top of a table\n")
  config = generate_config.get_config(
      f"input={captions},backend=keras_hub,model={model},output.shard_size=2,"
      "generate.llm.batch_size=8,generate.llm.max_new_tokens=6,generate.llm.prompt_bucket=16")
  generate_run.run(config, str(tmp_path / "out"))
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  llm_rejections = {f: r for f, r in summary["rejections"].items()
                    if f in config.generate.llm.templates}
  assert set(llm_rejections) == set(config.generate.llm.templates)
  assert all(set(r) <= set(parse.REASONS) and sum(r.values()) == 3
             for r in llm_rejections.values())
  assert summary["llm_prompt_example"] == {  # no chat template in the folder: the raw prompt
      "caption": "a man holding a red plate next to a dog", "template": "swap_and",
      "prompt": prompts.fill(prompts.load("swap_and"), "a man holding a red plate next to a dog")}
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["fingerprint"]["backend"] == "keras_hub"
  first = (tmp_path / "out" / "hard_texts.jsonl").read_bytes()
  os.remove(tmp_path / "out" / "shards" / "shard-00001.done")
  generate_run.run(config, str(tmp_path / "out"))  # regenerates the lost shard only
  assert (tmp_path / "out" / "hard_texts.jsonl").read_bytes() == first
  config.generate.llm.max_new_tokens = 7
  with pytest.raises(ValueError, match="settings|another run|differ"):
    generate_run.run(config, str(tmp_path / "out"))


@pytest.mark.parametrize("overrides,message", [
    ("backend=jax", "generate.backend is 'jax'"),
    ("backend=keras_hub", "generate.llm.model is empty"),
    ("backend=transformers,model={tmp}", "generate.llm.model: .* holds no config.json"),
    ("backend=keras_hub,model={model},generate.llm.batch_size=3",
     "generate.llm.batch_size 3 is not a multiple"),
    ("backend=keras_hub,model={model},generate.llm.temperature=-1", "generate.llm.temperature"),
    ("backend=keras_hub,model={model},generate.llm.templates=nothere.txt", "nothere.txt"),
])
def test_bad_llm_settings_name_the_field(tmp_path, overrides, message):
  model = tmp_path / "model"
  model.mkdir()
  (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
  _tokenizer().save_pretrained(model)
  captions = tmp_path / "captions.txt"
  captions.write_text("a man on a table\n")
  config = generate_config.get_config(
      f"input={captions}," + overrides.format(tmp=tmp_path, model=model))
  with pytest.raises(ValueError, match=message):
    generate_run.run(config, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()  # nothing written for a run that cannot start


CHAT = ("{{ bos_token }}{% for m in messages %}caption : {{ m['content'] }} </s>{% endfor %}"
        "{% if add_generation_prompt %}rewritten :{% endif %}")


def _with_chat_template(folder) -> str:
  tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
  tokenizer.chat_template = CHAT
  tokenizer.save_pretrained(folder)
  return folder


def test_chat_template_prompts_are_transformers_own_and_both_backends_read_them(tmp_path):
  model = _with_chat_template(_write_model(str(tmp_path), "llama"))
  texts = ["a man holding a red plate", "a dog on a table next to a cat"]
  want = [transformers.PreTrainedTokenizerFast.from_pretrained(model).apply_chat_template(
      [{"role": "user", "content": t}], tokenize=True, add_generation_prompt=True,
      return_dict=False) for t in texts]
  assert want[0][:2] == [1, WORDS.index("caption")] and want[0].count(1) == 1  # one start token
  assert llm.Prompter(model, "auto").ids(texts) == want
  assert llm.Prompter(model, "tokenizer").ids(texts) == want
  raw = llm.Prompter(model, "none")
  assert raw.ids(texts) == [e.ids for e in llm.load_tokenizer(model).encode_batch(texts)]
  assert raw.text(texts[0]) == texts[0]
  seen, answers = {}, {}
  for backend in ("keras_hub", "transformers"):
    sampler = llm.make_sampler(backend, _llm_config(model))
    calls = seen[backend] = []
    record = lambda ids, sample=sampler.sample, calls=calls: calls.append(ids) or sample(ids)
    sampler.sample = record
    generator = llm.LLMGenerator(sampler, llm.Prompter(model, "auto"),
                                 llm.load_templates(["replace_synonym"]), 1,
                                 llm.too_long_for(77), backend)
    answers[backend] = generator.generate(texts, [random.Random(0), random.Random(1)])
  assert seen["keras_hub"] == seen["transformers"] == [
      llm.Prompter(model, "auto").ids([prompts.fill(prompts.load("replace_synonym"), t)
                                       for t in texts])]
  assert [o.rejections for o in answers["keras_hub"]] == [
      o.rejections for o in answers["transformers"]]
  assert [o.hard_texts for o in answers["keras_hub"]] == [
      o.hard_texts for o in answers["transformers"]]


def test_a_folder_without_chat_template_prompts_raw_or_is_named(tmp_path, caplog):
  model = tmp_path / "model"
  _tokenizer().save_pretrained(model)
  (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
  with caplog.at_level("INFO"):
    prompter = llm.Prompter(str(model), "auto")
  assert [r.getMessage() for r in caplog.records] == [
      f"{model} has no chat template: the prompts go to the model raw"]
  assert prompter.ids(["a man"]) == [llm.load_tokenizer(str(model)).encode("a man").ids]
  with pytest.raises(ValueError, match=f"chat_template=tokenizer: '{model}' has no chat template"):
    llm.Prompter(str(model), "tokenizer")
  with pytest.raises(ValueError, match="generate.llm.chat_template is 'jinja'; expected one of"):
    llm.Prompter(str(model), "jinja")
