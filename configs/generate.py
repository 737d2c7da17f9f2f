"""Hard negatives and hard positives from captions by the rule generators (hpjax.generate).

  python -m hpjax.generate --workdir=/data/coco_rules \
    --config=configs/generate.py:input=annotations/captions_train2017.json,image_root=/data/coco/train2017
  python -m hpjax.main --config=configs/hnhp.py:source=/data/coco_rules/train.jsonl ...

  python -m hpjax.generate --workdir=/data/coco_llm \
    --config=configs/generate.py:input=captions.json,backend=keras_hub,model=/models/Qwen2.5-1.5B

Config argument: `key=value` pairs, a short name (input, image_root, format, seed, families,
backend, model) or a dotted field; lists use '+': `families=swap_and+replace_synonym`. Several
processes or hosts share the work with `process_index`/`process_count` and the same workdir.
With an LLM backend the LLM makes the hard positives (generate.llm.templates) and the rule
families of hard negatives the hard negatives.
"""

import functools

import ml_collections

from configs import common
from hpjax import config_fields

SHORTCUTS = {"input": "input.path", "image_root": "input.image_root", "format": "input.format",
             "seed": "generate.seed", "families": "generate.families",
             "backend": "generate.backend", "model": "generate.llm.model"}


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.program = "generate"
  c.workdir = ""
  c.input = ml_collections.ConfigDict()
  c.input.path = ""
  c.input.format = "auto"  # coco (.json), jsonl, negclip_tsv (.tsv), text (.txt)
  c.input.image_root = ""  # joined to each caption's image path
  c.input.allow_paths_outside_root = False  # an absolute or '../' image path of the input
  c.input.max_words = 100  # a longer caption is bad input
  c.input.skip_bad = False  # skip (and count) empty, non-UTF-8 or overlong captions
  c.generate = ml_collections.ConfigDict()
  c.generate.families = ("swap_objects", "swap_attributes", "swap_relations",
                         "replace_attribute", "replace_relation", "swap_and", "replace_synonym")
  c.generate.hard_negatives = 1  # per caption, each from a different family
  c.generate.hard_positives = 1
  c.generate.seed = 0
  c.generate.tagger = "lexicon"  # or "module:factory" returning a Tagger (e.g. a spaCy wrapper)
  c.generate.batch_size = 256  # captions per generator call
  c.generate.backend = "rules"  # who makes hard positives: rules, keras_hub (JAX), transformers
  c.generate.llm = ml_collections.ConfigDict()  # the LLM backends' settings
  c.generate.llm.model = ""  # a Hugging Face model folder (config.json, tokenizer.json, weights)
  c.generate.llm.templates = ("swap_and", "replace_synonym", "replace_verb", "replace_relation")
  # the filled template as a user turn of the folder's chat template (instruction-tuned models):
  # "auto" when the folder has one, "tokenizer" always (an error without), "none": raw prompts
  c.generate.llm.chat_template = "auto"
  c.generate.llm.batch_size = 32  # prompts per sampler call (a multiple of the device count)
  c.generate.llm.max_new_tokens = 48
  c.generate.llm.prompt_bucket = 64  # prompts padded to a multiple: few compiled shapes
  c.generate.llm.temperature = 0.0  # 0 is greedy; > 0 samples (top_p, seeded by llm.seed)
  c.generate.llm.top_p = 1.0
  c.generate.llm.seed = 0
  c.generate.llm.dtype = ""  # e.g. bfloat16; empty keeps the folder's
  c.generate.llm.text_context = 77  # longer answers (CLIP BPE tokens) are rejected
  c.output = ml_collections.ConfigDict()
  c.output.formats = ("jsonl",)  # and/or "array_record" (images embedded; needs the images)
  c.output.shard_size = 10000  # captions per committed shard
  c.output.samples = 100  # random records on samples.html
  c.process_index = 0
  c.process_count = 1
  c.progress_every_s = 30.0
  for key, value in common.parse_arg(arg).items():
    name = SHORTCUTS.get(key, key)
    if not config_fields.field_error(c, name) and isinstance(
        functools.reduce(lambda node, part: node[part], name.split("."), c), tuple):
      value = tuple(str(value).split("+"))
    common.set_field(c, name, value)
  return c
