"""Hard negatives and hard positives from captions by the rule generators (hpjax.generate).

  python -m hpjax.generate --workdir=/data/coco_rules \
    --config=configs/generate.py:input=annotations/captions_train2017.json,image_root=/data/coco/train2017
  python -m hpjax.main --config=configs/hnhp.py:source=/data/coco_rules/train.jsonl ...

Config argument: `key=value` pairs, a short name (input, image_root, format, seed, families)
or a dotted field; lists use '+': `families=swap_and+replace_synonym`. Several processes or
hosts share the work with `process_index`/`process_count` and the same workdir.
"""

import functools

import ml_collections

from configs import common
from hpjax import config_fields

SHORTCUTS = {"input": "input.path", "image_root": "input.image_root", "format": "input.format",
             "seed": "generate.seed", "families": "generate.families"}


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.program = "generate"
  c.workdir = ""
  c.input = ml_collections.ConfigDict()
  c.input.path = ""
  c.input.format = "auto"  # coco (.json), jsonl, negclip_tsv (.tsv), text (.txt)
  c.input.image_root = ""  # joined to each caption's image path
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
