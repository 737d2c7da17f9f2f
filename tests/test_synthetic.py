"""The synthetic world: determinism, checked labels, held-out combinations, files, pixels."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from hpjax.data import suites
from hpjax.data import synthetic
from hpjax.data import records as records_lib
from hpjax.data import synthetic_world as sw
from hpjax.data.synthetic_render import BACKGROUND_RGB, COLOUR_RGB, render
from hpjax.evaluate import benchmarks

SMALL = dict(num_train=240, num_eval=60, three_object_frac=0.5, num_probe=24, num_retrieval=8)
TINY = dict(num_eval=4, num_probe=24, num_retrieval=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The default world: hard texts by the rule generators."""
  return synthetic.write_world(str(tmp_path_factory.mktemp("world") / "w"), seed=3, **SMALL)


@pytest.fixture(scope="module")
def edits_world(tmp_path_factory):
  """The world before the rule route: hard texts by its own edit generator."""
  return synthetic.write_world(str(tmp_path_factory.mktemp("edits") / "w"), seed=3,
                               hard_texts="edits", **SMALL)


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _json(path):
  with open(path) as f:
    return json.load(f)


def _scenes(paths):
  return {r["image"]: sw.Scene.from_json(r) for r in _jsonl(paths.scenes_jsonl)}


def _files(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _triples(paths, name):
  data = _json(os.path.join(paths.eval_root, "data", f"{name}.json"))
  swapped = _json(os.path.join(paths.eval_root, "swapped_data", f"{name}.json"))
  return data, swapped


# ---------------------------------------------------------------------------------------------
# Semantics.

def test_relations_and_their_converses():
  a = sw.Obj("circle", "red", "small", 0.25, 0.25)
  b = sw.Obj("square", "blue", "large", 0.75, 0.27)
  scene = sw.Scene((a, b))
  assert sw.holds("a red circle left of a blue square", scene)
  assert sw.holds("a big azure square to the right of a tiny crimson circle", scene)
  assert not sw.holds("a red circle right of a blue square", scene)
  assert not sw.holds("a red circle above a blue square", scene)  # same row: neither above
  assert not sw.holds("a blue square below a red circle", scene)
  assert sw.holds("the blue square and the red circle", scene)
  assert not sw.holds("the blue circle and the red square", scene)
  assert not sw.holds("a large red circle left of a blue square", scene)


@pytest.mark.parametrize("text", [
    "a red circle", "a red circle near a blue square", "a red blob left of a blue square",
    "a circle red left of a blue square", "an red circle left of a blue square",
    "a red circle left of a blue square and"])
def test_parse_rejects_text_outside_the_grammar(text):
  with pytest.raises(sw.CaptionError, match="caption"):
    sw.parse(text)


def test_parse_round_trips_and_writes_an_before_vowels():
  text = "an ivory circle to the left of a big emerald square"
  caption = sw.parse(text)
  assert caption.text == text and caption.relation == "left"
  assert caption.first == sw.Phrase("a", None, "ivory", "circle")


# ---------------------------------------------------------------------------------------------
# Every label in the written world is checked by the semantics.

@pytest.mark.parametrize("route", ["rules", "edits"])
def test_every_training_label_is_true_or_false_as_claimed(world, edits_world, route):
  paths = {"rules": world, "edits": edits_world}[route]
  scenes = _scenes(paths)
  records = _jsonl(paths.train_jsonl)
  assert len(records) == SMALL["num_train"]
  counts = {"hn": 0, "hp": 0}
  for r in records:
    scene = scenes[r["image"]]
    assert sw.parse(r["caption"]).text == r["caption"]
    assert sw.holds(r["caption"], scene), r
    if route == "edits":  # the edit generator finds both for every caption
      assert r["hard_negatives"] and r["hard_positives"], r
    for text in r["hard_negatives"]:
      assert not sw.holds(text, scene), (r["image"], text)
    for text in r["hard_positives"]:
      assert sw.holds(text, scene) and text != r["caption"], (r["image"], text)
    for edits in (r["hard_negatives"], r["hard_positives"]):
      assert len(set(edits)) == len(edits), edits
    counts["hn"] += len(r["hard_negatives"])
    counts["hp"] += len(r["hard_positives"])
  # The rule route keeps fewer: its synonyms are words no finetuning caption uses (see
  # test_synthetic_hard_texts), and only captions with "and" get a reordering.
  least = {"rules": (1, 0.3), "edits": (2, 1.5)}[route]
  assert (counts["hn"] > least[0] * len(records)
          and counts["hp"] > least[1] * len(records)), counts


def test_web_corpus_describes_the_training_images_in_every_word(world):
  scenes = _scenes(world)
  web = _jsonl(world.pretrain_jsonl)
  train_images = [r["image"] for r in _jsonl(world.train_jsonl)]
  assert [r["image"] for r in web] == [i for i in train_images for _ in range(3)]
  assert all(set(r) == {"image", "caption"} for r in web)
  for r in web:
    assert sw.holds(r["caption"], scenes[r["image"]]), r
  words = {w for r in web for w in r["caption"].split()}
  assert words >= _rare_words() | _plain_words()  # every synonym, in pretraining
  records = records_lib.read_jsonl(world.pretrain_jsonl)
  assert len(records) == len(web) and all(os.path.isfile(r["image"]) for r in records)


def _plain_words():
  tables = (sw.COLOURS, sw.SIZES, sw.RELATIONS)
  return {w for t in tables for words in t.values() for w in words[0].split()}


def _rare_words():
  """Words only a synonym uses ("of" and "the" of "to the left of" are common words)."""
  tables = (sw.COLOURS, sw.SIZES, sw.RELATIONS)
  rare = {w for t in tables for words in t.values() for phrase in words[1:] for w in phrase.split()}
  return rare - _plain_words() - {"the", "a"}


def test_finetuning_and_eval_captions_use_plain_words_rare_ones_only_in_edits(edits_world):
  world = edits_world
  rare = _rare_words()
  records = _jsonl(world.train_jsonl)
  in_negatives = in_positives = 0
  for r in records:
    assert not set(r["caption"].split()) & rare, r["caption"]
    in_negatives += sum(bool(set(t.split()) & rare) for t in r["hard_negatives"])
    in_positives += sum(bool(set(t.split()) & rare) for t in r["hard_positives"])
  # The edit generator draws replacement words from the whole vocabulary; the synonym swaps
  # (positives) always write a rare word.
  assert in_negatives > 0.2 * len(records) and in_positives > 0.5 * len(records)
  for name in synthetic.SUITE_NAMES:
    for orig, swap in zip(*_triples(world, name)):
      assert not set(orig["true_caption"].split()) & rare, orig
      if name != "visual_genome_attribution":  # REPLACE's c_p is a synonym swap
        assert set(swap["true_caption"].split()) & rare, swap


def test_caption_words_any_writes_captions_in_random_synonyms(tmp_path):
  paths = synthetic.write_world(str(tmp_path / "w"), seed=3, caption_words="any", web_captions=1,
                                **SMALL)
  captions = [r["caption"] for r in _jsonl(paths.train_jsonl)]
  assert sum(bool(set(c.split()) & _rare_words()) for c in captions) > 0.3 * len(captions)
  assert len(_jsonl(paths.pretrain_jsonl)) == SMALL["num_train"]


def _edit_kinds(caption, others):
  """How each of `others` was made from `caption`, judged on meanings (concepts, not words)."""
  c_first, c_rel, c_second = sw.meaning(caption)
  converse = sw.CONVERSE.get(c_rel)
  kinds = set()
  for text in others:
    first, rel, second = sw.meaning(text)
    if (first, rel, second) == (c_first, c_rel, c_second):
      kinds.add("synonym")
    elif (first[1:], rel, second[1:]) == (c_second[1:], converse, c_first[1:]):
      kinds.add("reorder")
    elif rel != c_rel:
      kinds.add("relation")
    elif (first[1:], second[1:]) == (c_second[1:], c_first[1:]):
      kinds.add("order")
    elif any((first[f], second[f]) == (c_second[f], c_first[f]) != (c_first[f], c_second[f])
             and all(p[:f] + p[f + 1:] == q[:f] + q[f + 1:]
                     for p, q in ((first, c_first), (second, c_second)))
             for f in (1, 2)):  # size or colour exchanged, all else kept
      kinds.add("swap")
    else:
      kinds.add("attribute")
  return kinds


@pytest.mark.parametrize("route", ["rules", "edits"])
def test_training_edits_cover_every_kind(world, edits_world, route):
  negatives, positives = set(), set()
  for r in _jsonl({"rules": world, "edits": edits_world}[route].train_jsonl):
    negatives |= _edit_kinds(r["caption"], r["hard_negatives"])
    positives |= _edit_kinds(r["caption"], r["hard_positives"])
  assert negatives == {"attribute", "relation", "swap", "order"}
  # By the rules, a synonym is a word that no finetuning caption uses: none is kept.
  assert positives == {"rules": {"reorder"}, "edits": {"synonym", "reorder"}}[route]


def test_the_routes_differ_only_in_hard_texts_and_edits_replays_the_edit_generator(
    world, edits_world):
  rules_records, edits_records = _jsonl(world.train_jsonl), _jsonl(edits_world.train_jsonl)
  assert ([(r["image"], r["caption"]) for r in rules_records]
          == [(r["image"], r["caption"]) for r in edits_records])
  for name in ("images/train/000007.png", "images/eval/000003.png"):
    assert _files(world.image_root)[name] == _files(edits_world.image_root)[name]
  assert _files(world.eval_root) == _files(edits_world.eval_root)
  assert not os.path.exists(edits_world.hard_texts_counts)
  heldout = frozenset(synthetic.DEFAULT_HELDOUT)
  combos = [c for c in sw.combos() if c not in heldout]
  for i in (0, 1, 100):  # each record is the edit generator's on the image's own stream
    rng = sw.scene_rng(3, "train", i)
    scene = sw.sample_scene(rng, combos, sw.object_count(rng, SMALL["three_object_frac"]))
    assert {"image": f"images/train/{i:06d}.png",
            **synthetic.training_record(rng, scene, heldout, 3, 2)} == edits_records[i]


@pytest.mark.parametrize("name", synthetic.SUITE_NAMES)
def test_every_suite_triple_is_checked(world, name):
  scenes = _scenes(world)
  data, swapped = _triples(world, name)
  assert len(data) == len(swapped) == SMALL["num_eval"]
  for orig, swap in zip(data, swapped):
    scene = scenes[orig["image_path"]]
    c, c_n, c_p = orig["true_caption"], orig["false_caption"], swap["true_caption"]
    assert swap["false_caption"] == c_n and swap["image_path"] == orig["image_path"]
    assert sw.holds(c, scene) and sw.holds(c_p, scene) and not sw.holds(c_n, scene), orig
    assert len({c, c_n, c_p}) == 3
    expected = {"vl_checklist_attributes": ({"attribute"}, {"synonym"}),
                "vl_checklist_relations": ({"relation"}, {"synonym"}),
                "visual_genome_attribution": ({"swap"}, {"reorder"})}[name]
    assert (_edit_kinds(c, [c_n]), _edit_kinds(c, [c_p])) == expected, (c, c_n, c_p)


def test_swap_records_have_the_aro_fields(world):
  data, _ = _triples(world, "visual_genome_attribution")
  for r in data:
    c = sw.parse(r["true_caption"])
    assert r["attributes"] == [c.first.colour or c.first.size, c.second.colour or c.second.size]
    assert (r["bbox_x"], r["bbox_y"], r["bbox_w"], r["bbox_h"]) == (0, 0, 64, 64)


# ---------------------------------------------------------------------------------------------
# Held-out combinations.

@pytest.mark.parametrize("route", ["rules", "edits"])
def test_heldout_combinations_never_reach_training(world, edits_world, route):
  world = {"rules": world, "edits": edits_world}[route]
  heldout = set(synthetic.DEFAULT_HELDOUT)
  scenes = _scenes(world)
  for r in _jsonl(world.train_jsonl):
    assert not {o.combo for o in scenes[r["image"]].objects} & heldout, r["image"]
    for text in [r["caption"]] + r["hard_negatives"] + r["hard_positives"]:
      assert not sw.named_combos(text) & heldout, text
  eval_objects = [o.combo for image, s in scenes.items() if image.startswith("images/eval/")
                  for o in s.objects]
  assert set(eval_objects) & heldout, "the evaluation split should show held-out combinations"


@pytest.mark.parametrize("name", synthetic.SUITE_NAMES)
def test_heldout_suites_hold_exactly_the_records_naming_heldout_combinations(world, name):
  heldout = set(synthetic.DEFAULT_HELDOUT)
  expected = [(o, s) for o, s in zip(*_triples(world, name))
              if any(sw.named_combos(t) & heldout
                     for t in (o["true_caption"], o["false_caption"], s["true_caption"]))]
  subset = os.path.join(world.heldout_eval_root, "{}", f"{name}.json")
  assert expected, "the small world should have held-out records"
  assert list(zip(_json(subset.format("data")), _json(subset.format("swapped_data")))) == expected


# ---------------------------------------------------------------------------------------------
# Files: determinism, caching, loaders.

def test_same_seed_same_files_other_seed_other_files(world, tmp_path):
  again = synthetic.write_world(str(tmp_path / "again"), seed=3, **SMALL)
  other = synthetic.write_world(str(tmp_path / "other"), seed=4, **SMALL)
  files = _files(world.image_root)
  assert _files(again.image_root) == files
  other_files = _files(other.image_root)
  for name in ["train.jsonl", "pretrain.jsonl", "scenes.jsonl", "images/train/000000.png",
               "hard_texts.json", "images/zeroshot/000000.png", "probe/retrieval.json"] + [
      f"eval/data/{n}.json" for n in synthetic.SUITE_NAMES]:
    assert other_files[name] != files[name], name


def test_eval_split_does_not_depend_on_num_train(world, tmp_path):
  fewer = synthetic.write_world(str(tmp_path / "w"), seed=3, **{**SMALL, "num_train": 10})
  assert _files(fewer.eval_root) == _files(world.eval_root)


def test_a_killed_writers_temporary_world_is_removed_by_the_next_one(tmp_path, caplog):
  from test_writers import dead_pid  # pylint: disable=g-import-not-at-top
  from hpjax import leftovers  # pylint: disable=g-import-not-at-top
  host = leftovers.name("").rsplit("-", 2)[0]
  left = tmp_path / f".world-{host}-{dead_pid()}-0123abcd"
  os.makedirs(left / "images")
  synthetic.write_world(str(tmp_path / "w"), num_train=8, **TINY)
  assert sorted(os.listdir(tmp_path)) == ["w"]
  assert f"removed {left}, left by a run that was stopped" in caplog.text


def test_world_is_cached_and_rebuilt_when_changed_or_damaged(tmp_path):
  out = str(tmp_path / "w")
  paths = synthetic.write_world(out, num_train=8, **TINY)
  manifest_mtime = os.stat(paths.manifest).st_mtime_ns
  before = _files(out)
  assert synthetic.write_world(out, num_train=8, **TINY) == paths
  assert os.stat(paths.manifest).st_mtime_ns == manifest_mtime  # reused, not rewritten
  with open(os.path.join(out, "images/eval/000001.png"), "wb") as f:
    f.write(b"damaged")
  synthetic.write_world(out, num_train=8, **TINY)
  assert _files(out) == before
  synthetic.write_world(out, num_train=9, **TINY)
  assert len(_jsonl(paths.train_jsonl)) == 9
  assert _json(paths.manifest)["params"]["num_train"] == 9
  assert os.path.isfile(paths.hard_texts_counts)
  synthetic.write_world(out, num_train=9, hard_texts="edits", **TINY)
  assert _json(paths.manifest)["params"]["hard_texts"] == "edits"
  assert not os.path.exists(paths.hard_texts_counts)


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
  (tmp_path / "mine.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="manifest.json"):
    synthetic.write_world(str(tmp_path), num_train=4, num_eval=2)
  assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad, message", [
    (dict(heldout=[("pink", "circle")]), "held-out"),
    (dict(three_object_frac=1.5), "three_object_frac"),
    (dict(num_eval=0), "num_eval"),
    (dict(web_captions=0), "web_captions"),
    (dict(caption_words="fancy"), "caption_words"),
    (dict(hard_texts="llm"), "hard_texts"),
    (dict(num_probe=23), "num_probe"),
    (dict(num_retrieval=0), "num_retrieval"),
])
def test_rejects_bad_parameters_by_name(tmp_path, bad, message):
  with pytest.raises(ValueError, match=message):
    synthetic.write_world(str(tmp_path / "w"), **bad)
  assert not os.path.exists(tmp_path / "w")


def test_suites_load_with_the_evaluation_loaders(world):
  loaded = {suites.HARD_POSITIVE_FILES[name]: suite for name, suite in
            benchmarks.load_hard_positive(world.eval_root, image_dir=world.image_root).items()}
  assert sorted(loaded) == sorted(synthetic.SUITE_NAMES)
  assert len(benchmarks.load_hard_positive(world.heldout_eval_root, ["swap"],
                                           world.image_root)["swap"]) > 0
  for name, suite in loaded.items():
    data, swapped = _triples(world, name)
    assert len(suite) == len(data)
    for record, orig, swap in zip(suite.records, data, swapped):
      assert os.path.isfile(record.image)
      assert record.caption("c") == orig["true_caption"]
      assert record.caption("c_n") == orig["false_caption"]
      assert record.caption("c_p") == swap["true_caption"]
    crop = suite.records[0].crop
    assert crop == ((0.0, 0.0, 64.0, 64.0) if name == suites.SWAP_NAME else None)


def test_training_records_read_with_the_training_reader(world):
  records = records_lib.read_jsonl(world.train_jsonl)
  assert [r["caption"] for r in records] == [r["caption"] for r in _jsonl(world.train_jsonl)]
  assert all(os.path.isfile(r["image"]) for r in records)


def test_training_images_resolve_relative_to_the_jsonl(world):
  folder = os.path.dirname(world.train_jsonl)
  for r in _jsonl(world.train_jsonl):
    with Image.open(os.path.join(folder, r["image"])) as image:
      assert image.size == (64, 64) and image.mode == "RGB"


# ---------------------------------------------------------------------------------------------
# Pixels.

def test_render_paints_each_object_in_its_colour_and_size():
  small = sw.Obj("circle", "red", "small", 0.25, 0.25)
  large = sw.Obj("triangle", "blue", "large", 0.75, 0.75)
  pixels = np.asarray(render(sw.Scene((small, large)), 64)).astype(int)
  for obj in (small, large):
    assert tuple(pixels[int(obj.y * 64), int(obj.x * 64)]) == COLOUR_RGB[obj.colour]
  assert tuple(pixels[0, 0]) == tuple(pixels[2, 61]) == BACKGROUND_RGB
  area = {c: int(np.all(pixels == COLOUR_RGB[c], axis=-1).sum()) for c in ("red", "blue")}
  assert area["blue"] > 2 * area["red"] > 0


def test_written_images_show_their_scenes(world):
  for image, scene in _scenes(world).items():
    pixels = np.asarray(Image.open(os.path.join(world.image_root, image))).astype(int)
    for obj in scene.objects:
      centre = pixels[int(obj.y * 64), int(obj.x * 64)]
      assert tuple(centre) == COLOUR_RGB[obj.colour], (image, obj)
