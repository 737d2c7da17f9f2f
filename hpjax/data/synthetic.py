"""A synthetic compositional world: the study's embedded default when no dataset is at hand.

`write_world(out_dir)` renders scenes of two or three coloured shapes and writes
- `train.jsonl`: the finetuning records `{"image", "caption", "hard_negatives",
  "hard_positives"}` (image paths relative to the JSONL's folder, PNG files);
- `pretrain.jsonl`: the web corpus of the same images, `web_captions` records `{"image",
  "caption"}` per image, what the pretraining stage (hpjax/train/pretrain.py) trains on;
- `eval/data/<suite>.json` + `eval/swapped_data/<suite>.json`: the REPLACE (attributes,
  relations) and SWAP (VG-Attribution) suites in the authors' layout, paired by index, image
  paths relative to `out_dir`;
- `eval_heldout/`: the same layout holding only the records whose c, c_n or c_p names a
  held-out combination (image ids kept), to score compositional generalisation;
- `probe/`: the zero-shot probe (`zeroshot.jsonl`, `zeroshot_classes.json`) and the retrieval
  split in Karpathy's 5-captions form (`retrieval.json`), images under `images/` (see
  hpjax.data.synthetic_probes): what a finetune costs, next to what it gains;
- `hard_texts.json` (the rule route): the hard texts kept and rejected per family and reason;
- `scenes.jsonl`: every image's scene, so anyone can re-check any caption with
  `synthetic_world.holds`;
- `manifest.json`: the parameters and a digest of every file; a second call with the same
  parameters reuses the world.

The two corpora differ as the paper's do. Web captions say each concept in any of its words
(crimson as often as red) and name the objects in either order. The finetuning captions, like
COCO's, use each concept's plain word (`caption_words="plain"`), and so do the evaluation
captions c. The hard texts are made by the rule generators of `python -m hpjax.generate` over
each caption (`hard_texts="rules"`, hpjax.data.synthetic_hard_texts), kept only when the scene
labels them as their kind and every word of them occurs in some finetuning caption.
`hard_texts="edits"` writes them with the world's own edit generator instead, which draws
replacement words from the whole vocabulary: there a rare word occurs only in a negative, a
shortcut that finetuning on negatives alone can learn, and the hard positives (synonym swaps,
reorderings) are exactly the edits that shortcut rejects. `caption_words="any"` writes the
finetuning and evaluation captions in random words too (the world without that regularity).

Some (colour, shape) combinations are held out: no training image shows them and no training
caption, hard negative or hard positive names them; the evaluation scenes draw from all
combinations. Every caption's label is checked by the scene semantics before it is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np
from absl import logging

from hpjax import leftovers
from hpjax.data import suites as suites_lib
from hpjax.data import synthetic_hard_texts
from hpjax.data import synthetic_probes
from hpjax.data import synthetic_world as sw
from hpjax.data.synthetic_render import write_png

GENERATOR = "hpjax.data.synthetic"
VERSION = 4
HARD_TEXTS = ("rules", "edits")  # write_world(hard_texts=...)
HARD_TEXTS_JSON = "hard_texts.json"
SUITE_NAMES = tuple(suites_lib.HARD_POSITIVE_FILES.values())  # the files of REPLACE and SWAP
DEFAULT_HELDOUT = (("red", "triangle"), ("blue", "circle"), ("green", "diamond"),
                   ("yellow", "square"))
_MAX_TRIES = 100
_TMP_WORLD = ".world-"  # a world being written, beside its folder (leftovers.name)


class WorldPaths(NamedTuple):
  train_jsonl: str
  eval_root: str
  image_root: str

  @property
  def pretrain_jsonl(self) -> str:
    """The web corpus of the training images: what the pretraining stage trains on."""
    return os.path.join(self.image_root, "pretrain.jsonl")

  @property
  def scenes_jsonl(self) -> str:
    return os.path.join(self.image_root, "scenes.jsonl")

  @property
  def heldout_eval_root(self) -> str:
    """The suites' records whose captions name a held-out combination, in the same layout."""
    return os.path.join(self.image_root, "eval_heldout")

  @property
  def zeroshot_images(self) -> str:
    """The zero-shot probe's images, `{"image", "label"}` per line (classification's list)."""
    return os.path.join(self.image_root, synthetic_probes.ZEROSHOT_JSONL)

  @property
  def zeroshot_classes(self) -> str:
    """The probe's class-set JSON: every (colour, shape) class, with prompt templates."""
    return os.path.join(self.image_root, synthetic_probes.ZEROSHOT_CLASSES)

  @property
  def retrieval_annotations(self) -> str:
    """The retrieval split in Karpathy's split-file form (split 'test', 5 captions each)."""
    return os.path.join(self.image_root, synthetic_probes.RETRIEVAL_JSON)

  @property
  def hard_texts_counts(self) -> str:
    """The rule route's counts per family and reason (absent in a world of edits)."""
    return os.path.join(self.image_root, HARD_TEXTS_JSON)

  @property
  def manifest(self) -> str:
    return os.path.join(self.image_root, "manifest.json")


def _checked(rng: np.random.Generator, candidates: Sequence[sw.Caption], scene: sw.Scene,
             truth: bool, limit: int = 1, avoid: frozenset = frozenset(),
             exclude: Sequence[str] = ()) -> list[sw.Caption]:
  """Up to `limit` random candidates true (or false) of `scene`, naming no `avoid` combo.

  Truth is judged on the caption's text parsed back, so what is checked is what gets written.
  """
  seen, out = set(exclude), []
  for i in rng.permutation(len(candidates)):
    caption = candidates[i]
    if (caption.text not in seen and sw.holds(caption.text, scene) == truth
        and not sw.named_combos(caption) & avoid):
      seen.add(caption.text)
      out.append(caption)
      if len(out) == limit:
        break
  return out


def _one_checked(rng, candidates, scene, truth) -> sw.Caption | None:
  found = _checked(rng, candidates, scene, truth)
  return found[0] if found else None


# ---------------------------------------------------------------------------------------------
# Training records.

def training_record(rng: np.random.Generator, scene: sw.Scene, heldout: frozenset,
                    num_negatives: int, num_positives: int, plain: bool = True) -> dict:
  """A caption of the scene with checked hard negatives (one per edit kind first) and positives."""
  caption = sw.scene_caption(rng, scene, plain)
  negative_kinds = [sw.attribute_replacements(caption, rng), sw.relation_replacements(caption, rng),
                    sw.attribute_swaps(caption), sw.object_swaps(caption)]
  positive_kinds = [sw.synonym_swaps(caption), sw.reorderings(caption, rng)]
  return {"caption": caption.text,
          "hard_negatives": _one_per_kind(rng, negative_kinds, scene, False, heldout,
                                          num_negatives, caption.text),
          "hard_positives": _one_per_kind(rng, positive_kinds, scene, True, heldout,
                                          num_positives, caption.text)}


def _one_per_kind(rng, kinds, scene, truth, heldout, limit, caption_text) -> list[str]:
  """Up to `limit` checked edits, drawing round-robin over the edit kinds for variety."""
  pools = [[c.text for c in _checked(rng, k, scene, truth, limit, heldout, [caption_text])]
           for k in kinds]
  pools = [p for p in pools if p]
  out = []
  for round_ in itertools.zip_longest(*[pools[i] for i in rng.permutation(len(pools))]):
    for text in round_:
      if text is not None and text not in out:
        out.append(text)
  return out[:limit]


# ---------------------------------------------------------------------------------------------
# Evaluation triples (c, c_n, c_p): each builder returns None when the scene cannot host one.

def _attribute_triple(rng, scene, plain):
  """REPLACE-attributes: one colour or size word replaced (c_n) or traded for a synonym (c_p)."""
  for a, b in sw.ordered_pairs(rng, scene):
    caption = sw.related(rng, a, b, "both", "both", plain)
    slots = list(itertools.product(sw.SLOTS, ("colour", "size")))
    for i in rng.permutation(len(slots)):
      slot, feature = slots[i]
      c_n = _one_checked(rng, sw.attribute_replacements(caption, rng, [feature], [slot]), scene,
                         False)
      c_p = _one_checked(rng, sw.synonym_swaps(caption, [feature], [slot]), scene, True)
      if c_n and c_p:
        return caption, c_n, c_p
  return None


def _relation_triple(rng, scene, plain):
  """REPLACE-relations: the relation replaced (c_n) or said with its synonym (c_p)."""
  for a, b in sw.ordered_pairs(rng, scene):
    detail = ("colour", "both")[rng.integers(2)]
    caption = sw.related(rng, a, b, detail, detail, plain)
    c_n = _one_checked(rng, sw.relation_replacements(caption, rng), scene, False)
    c_p = _one_checked(rng, sw.synonym_swaps(caption, ["relation"]), scene, True)
    if c_n and c_p:
      return caption, c_n, c_p
  return None


def _swap_triple(rng, scene, plain):
  """SWAP: "the A x and the B y"; c_n rebinds the attributes, c_p reorders the conjuncts."""
  for a, b in sw.ordered_pairs(rng, scene):
    features = [f for f in ("colour", "size") if getattr(a, f) != getattr(b, f)]
    if a.shape == b.shape or not features:
      continue
    feature = features[rng.integers(len(features))]
    caption = sw.conjoined(rng, a, b, feature, feature, plain)
    c_n = _one_checked(rng, sw.attribute_swaps(caption), scene, False)
    c_p = _one_checked(rng, sw.reorderings(caption, rng), scene, True)
    if c_n and c_p:
      return caption, c_n, c_p
  return None


_TRIPLES: dict[str, Callable] = {  # by the suite's file (eval/data/<file>.json)
    suites_lib.HARD_POSITIVE_FILES["replace_attributes"]: _attribute_triple,
    suites_lib.HARD_POSITIVE_FILES["replace_relations"]: _relation_triple,
    suites_lib.SWAP_NAME: _swap_triple,
}


def _suite_records(name: str, index: int, image_path: str, image_size: int, triple) -> tuple:
  """The (data/, swapped_data/) records of one triple, in the suite's file format."""
  c, c_n, c_p = (t.text for t in triple)
  base = {"image_id": str(index), "image_path": image_path, "false_caption": c_n}
  if name == suites_lib.SWAP_NAME:
    attributes = [triple[0].first.colour or triple[0].first.size,
                  triple[0].second.colour or triple[0].second.size]
    base.update(bbox_x=0, bbox_y=0, bbox_w=image_size, bbox_h=image_size, attributes=attributes)
  return {**base, "true_caption": c}, {**base, "true_caption": c_p}


# ---------------------------------------------------------------------------------------------
# Writing the world.

def _write_train(root, params, heldout) -> None:
  """train.jsonl, pretrain.jsonl, the training scenes and, by the rule route, hard_texts.json:
  the rule route's hard texts need every finetuning caption first (their words), hence the
  records are written after all images."""
  combos = [c for c in sw.combos() if c not in heldout]
  plain = params["caption_words"] == "plain"
  by_rules = params["hard_texts"] == "rules"
  records, scenes_drawn = [], []
  with open(os.path.join(root, "pretrain.jsonl"), "w") as web, \
       open(os.path.join(root, "scenes.jsonl"), "a") as scenes:
    for i in range(params["num_train"]):
      rng = sw.scene_rng(params["seed"], "train", i)
      scene = sw.sample_scene(rng, combos, sw.object_count(rng, params["three_object_frac"]))
      image = f"images/train/{i:06d}.png"
      write_png(scene, params["image_size"], os.path.join(root, image))
      records.append({"image": image, **(
          {"caption": sw.scene_caption(rng, scene, plain).text} if by_rules else
          training_record(rng, scene, heldout, params["num_hard_negatives"],
                          params["num_hard_positives"], plain))})
      scenes_drawn.append(scene)
      for _ in range(params["web_captions"]):
        caption = sw.scene_caption(rng, scene, plain=False).text
        web.write(json.dumps({"image": image, "caption": caption}) + "\n")
      scenes.write(scene.line(image))
  if by_rules:
    hard_texts, counts = synthetic_hard_texts.rule_hard_texts(
        [r["caption"] for r in records], scenes_drawn, heldout, params["num_hard_negatives"],
        params["num_hard_positives"], params["seed"])
    for record, hard in zip(records, hard_texts):
      record.update(hard)
    with open(os.path.join(root, HARD_TEXTS_JSON), "w") as f:
      json.dump({"families": counts}, f, indent=1)
    logging.info("synthetic world: hard texts by the rule generators over %d captions:\n  %s",
                 len(records), "\n  ".join(synthetic_hard_texts.log_lines(counts)))
  with open(os.path.join(root, "train.jsonl"), "w") as train:
    for record in records:
      train.write(json.dumps(record) + "\n")


def _write_eval(root, params, heldout) -> None:
  combos = sw.combos()
  plain = params["caption_words"] == "plain"
  everything = {name: ([], []) for name in SUITE_NAMES}  # name -> (data/, swapped_data/)
  unseen = {name: ([], []) for name in SUITE_NAMES}
  with open(os.path.join(root, "scenes.jsonl"), "a") as scenes:
    for i in range(params["num_eval"]):
      rng = sw.scene_rng(params["seed"], "eval", i)
      for _ in range(_MAX_TRIES):  # a scene must host a triple of every suite
        scene = sw.sample_scene(rng, combos, sw.object_count(rng, params["three_object_frac"]))
        triples = {name: build(rng, scene, plain) for name, build in _TRIPLES.items()}
        if all(triples.values()):
          break
      else:
        raise RuntimeError(f"no eval scene for index {i} hosts every suite in {_MAX_TRIES} tries")
      for name, (c, c_n, c_p) in triples.items():  # the written texts, judged once more
        if not (sw.holds(c.text, scene) and sw.holds(c_p.text, scene)
                and not sw.holds(c_n.text, scene)):
          raise AssertionError(f"{name} triple {(c.text, c_n.text, c_p.text)} mislabelled for "
                               f"{scene}")
      image = f"images/eval/{i:06d}.png"
      write_png(scene, params["image_size"], os.path.join(root, image))
      scenes.write(scene.line(image))
      for name, triple in triples.items():
        pair = _suite_records(name, i, image, params["image_size"], triple)
        targets = [everything]
        if any(sw.named_combos(t) & heldout for t in triple):
          targets.append(unseen)
        for target in targets:
          for records, record in zip(target[name], pair):
            records.append(record)
  for folder, suites in (("eval", everything), ("eval_heldout", unseen)):
    for name, files in suites.items():
      for sub, records in zip(("data", "swapped_data"), files):
        with open(os.path.join(root, folder, sub, f"{name}.json"), "w") as f:
          json.dump(records, f, indent=0)


def _write_probes(root, params, heldout) -> None:
  """The zero-shot probe and the retrieval split (hpjax.data.synthetic_probes)."""
  seen = [c for c in sw.combos() if c not in heldout]
  with open(os.path.join(root, "scenes.jsonl"), "a") as scenes:
    synthetic_probes.write_zeroshot(root, params["seed"], params["num_probe"],
                                    params["image_size"], scenes)
    synthetic_probes.write_retrieval(root, params["seed"], params["num_retrieval"],
                                     params["image_size"], seen, params["three_object_frac"],
                                     params["caption_words"] == "plain", scenes)


def _digest(root: str) -> str:
  """sha256 over every file's relative path and bytes, the manifest excepted."""
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root)
      if rel == "manifest.json":
        continue
      h.update(rel.encode() + b"\0")
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def _read_manifest(path: str) -> dict | None:
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR else None


def write_world(out_dir: str, *, seed: int = 0, num_train: int = 10000, num_eval: int = 500,
                image_size: int = 64, three_object_frac: float = 0.25,
                heldout: Sequence[tuple[str, str]] = DEFAULT_HELDOUT,
                num_hard_negatives: int = 3, num_hard_positives: int = 2,
                caption_words: str = "plain", web_captions: int = 3, num_probe: int = 240,
                num_retrieval: int = 200, hard_texts: str = "rules",
                rebuild: bool = True) -> WorldPaths:
  """Writes (or reuses, when `out_dir` holds the same world intact) the synthetic world.

  Args:
    out_dir: the world's folder; a folder of anything else is never overwritten.
    seed: the world's seed; each image draws from its own stream (seed, split, index).
    num_train: training images, one record each.
    num_eval: evaluation images; each yields one record of each of the three suites.
    image_size: side of the square PNG images.
    three_object_frac: fraction of scenes with three objects instead of two.
    heldout: (colour, shape) combinations kept out of the training split.
    num_hard_negatives, num_hard_positives: most per training record.
    caption_words: "plain": the finetuning and evaluation captions use each concept's plain
      word (as COCO's); "any": random synonyms, like the web corpus.
    web_captions: captions per training image in the web corpus (pretrain.jsonl).
    num_probe: zero-shot probe images, one object each, spread evenly over every (colour,
      shape) class (held-out ones too); at least one per class.
    num_retrieval: retrieval images (new scenes of the training distribution), 5 captions each.
    hard_texts: "rules": the training records' hard texts by the rule generators, checked and
      counted (hpjax.data.synthetic_hard_texts); "edits": by the world's own edit generator
      (the world before the rule route, whose rare words occur only in hard texts).
    rebuild: False: only reuse; a missing, other or changed world raises ValueError naming why
      (a run's checkpoints must not continue on a world written anew).

  Returns:
    WorldPaths(train_jsonl, eval_root, image_root); suite `image_path`s are relative to
    image_root, training `image`s to the JSONL's folder (the same folder).
  """
  heldout = frozenset(tuple(c) for c in heldout)
  for colour, shape in heldout:
    if colour not in sw.COLOURS or shape not in sw.SHAPES:
      raise ValueError(f"held-out combination {(colour, shape)!r} is not a (colour, shape) of "
                       f"{sorted(sw.COLOURS)} x {sw.SHAPES}")
  if not 0.0 <= three_object_frac <= 1.0:
    raise ValueError(f"three_object_frac={three_object_frac} is not a fraction in [0, 1]")
  if caption_words not in ("plain", "any"):
    raise ValueError(f"caption_words={caption_words!r}: expected 'plain' or 'any'")
  if min(num_train, num_eval, web_captions, num_retrieval) < 1 or image_size < 8:
    raise ValueError(f"num_train={num_train}, num_eval={num_eval}, web_captions={web_captions}, "
                     f"num_retrieval={num_retrieval} must be >= 1 and image_size={image_size} "
                     ">= 8")
  num_classes = len(sw.combos())
  if num_probe < num_classes:
    raise ValueError(f"num_probe={num_probe}: the zero-shot probe needs at least one image of "
                     f"each of its {num_classes} classes")
  if hard_texts not in HARD_TEXTS:
    raise ValueError(f"hard_texts={hard_texts!r}: expected one of {HARD_TEXTS}")
  if len(heldout) >= len(sw.COLOURS) * len(sw.SHAPES):
    raise ValueError("every (colour, shape) combination is held out: nothing left to train on")
  params = {"version": VERSION, "seed": seed, "num_train": num_train, "num_eval": num_eval,
            "image_size": image_size, "three_object_frac": three_object_frac,
            "heldout": sorted(list(c) for c in heldout),
            "num_hard_negatives": num_hard_negatives, "num_hard_positives": num_hard_positives,
            "caption_words": caption_words, "web_captions": web_captions,
            "num_probe": num_probe, "num_retrieval": num_retrieval, "hard_texts": hard_texts}
  out_dir = os.path.abspath(out_dir)
  paths = WorldPaths(os.path.join(out_dir, "train.jsonl"), os.path.join(out_dir, "eval"), out_dir)
  manifest = _read_manifest(paths.manifest)
  if manifest and manifest["params"] == params and manifest["digest"] == _digest(out_dir):
    logging.info("synthetic world: reusing %s", out_dir)
    return paths
  if not rebuild:
    why = ("holds no synthetic world" if manifest is None else
           "holds a world of other parameters " + str(sorted(
               k for k in params if manifest["params"].get(k) != params[k]))
           if manifest["params"] != params else "has files changed since the world was written")
    raise ValueError(f"{out_dir} {why}; not rebuilt (rebuild=False)")
  if os.path.isdir(out_dir) and os.listdir(out_dir) and manifest is None:
    raise FileExistsError(f"{out_dir} is not empty and holds no synthetic-world manifest.json: "
                          "refusing to overwrite it; pass an empty or new folder")
  start = time.time()
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  leftovers.remove_stale(parent, _TMP_WORLD)
  tmp = os.path.join(parent, leftovers.name(_TMP_WORLD))
  os.makedirs(tmp)
  try:
    for sub in ("images/train", "images/eval", "images/zeroshot", "images/retrieval", "probe",
                "eval/data", "eval/swapped_data", "eval_heldout/data", "eval_heldout/swapped_data"):
      os.makedirs(os.path.join(tmp, sub))
    _write_train(tmp, params, heldout)
    _write_eval(tmp, params, heldout)
    _write_probes(tmp, params, heldout)
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
      json.dump({"generator": GENERATOR, "params": params, "digest": _digest(tmp)}, f, indent=1)
    if os.path.isdir(out_dir):
      shutil.rmtree(out_dir)  # an outdated or damaged world of ours (manifest checked above)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("synthetic world: wrote %d training and %d evaluation images to %s in %.1fs",
               num_train, num_eval, out_dir, time.time() - start)
  return paths
