"""The synthetic world's zero-shot probe and retrieval split: read by the package's own readers,
labelled as rendered, captioned truly, never training images."""

import collections
import json
import os

import numpy as np
import pytest
from PIL import Image

from hpjax.data import captions as captions_lib
from hpjax.data import classification
from hpjax.data import synthetic
from hpjax.data import synthetic_probes
from hpjax.data import synthetic_world as sw
from hpjax.data.synthetic_render import COLOUR_RGB

SMALL = dict(num_train=40, num_eval=4, num_probe=48, num_retrieval=30, three_object_frac=0.5)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return synthetic.write_world(str(tmp_path_factory.mktemp("world") / "w"), seed=1,
                               hard_texts="edits", **SMALL)


def _scenes(paths):
  with open(paths.scenes_jsonl) as f:
    return {r["image"]: sw.Scene.from_json(r) for r in map(json.loads, f)}


def _relative(paths, image):
  return os.path.relpath(image, paths.image_root)


def test_the_probe_loads_with_the_classification_readers_and_shows_its_labels(world):
  classes = classification.load_class_set(world.zeroshot_classes)
  assert len(classes.names) == len(sw.COLOURS) * len(sw.SHAPES) == len(set(classes.names))
  assert all(t.count("{}") == 1 for t in classes.templates) and len(classes.templates) >= 3
  images = classification.load_labelled_images(world.zeroshot_images, len(classes.names),
                                               image_root=world.image_root)
  assert len(images.images) == SMALL["num_probe"]
  # Every class, held-out ones included, the same number of times.
  assert collections.Counter(images.labels.tolist()) == {
      label: SMALL["num_probe"] // len(classes.names) for label in range(len(classes.names))}
  assert {tuple(classes.names[label].split()) for label in images.labels} >= set(
      synthetic.DEFAULT_HELDOUT)
  scenes = _scenes(world)
  for image, label in zip(images.images, images.labels):
    (obj,) = scenes[_relative(world, image)].objects
    assert f"{obj.colour} {obj.shape}" == classes.names[label], image
    pixels = np.asarray(Image.open(image)).astype(int)
    assert tuple(pixels[int(obj.y * 64), int(obj.x * 64)]) == COLOUR_RGB[obj.colour], image


def test_the_retrieval_split_loads_as_karpathys_test_split_with_five_true_captions(world):
  loaded = captions_lib.load_caption_set(world.retrieval_annotations, world.image_root, "test")
  assert len(loaded.images) == SMALL["num_retrieval"]
  assert len(loaded.captions) == synthetic_probes.CAPTIONS_PER_IMAGE * SMALL["num_retrieval"]
  scenes = _scenes(world)
  for i, image in enumerate(loaded.images):
    assert os.path.isfile(image)
    texts = [t for t, owner in zip(loaded.captions, loaded.caption_image) if owner == i]
    assert len(set(texts)) == synthetic_probes.CAPTIONS_PER_IMAGE, texts
    scene = scenes[_relative(world, image)]
    for text in texts:
      assert sw.holds(text, scene), (image, text)
    # The training distribution: no held-out combination is shown.
    assert not {o.combo for o in scene.objects} & set(synthetic.DEFAULT_HELDOUT)


def test_probe_images_are_never_training_images(world):
  with open(world.train_jsonl) as f:
    train = [json.loads(line)["image"] for line in f]
  probe = [_relative(world, p) for p in captions_lib.load_caption_set(
      world.retrieval_annotations, world.image_root).images]
  with open(world.zeroshot_images) as f:
    probe += [json.loads(line)["image"] for line in f]
  assert not set(probe) & set(train)
  def pixels(image):
    with open(os.path.join(world.image_root, image), "rb") as f:
      return f.read()
  assert not {pixels(i) for i in probe} & {pixels(i) for i in train}
  scenes = _scenes(world)
  assert not {scenes[i] for i in probe} & {scenes[i] for i in train}


def test_the_probes_do_not_depend_on_the_training_split(world, tmp_path):
  other = synthetic.write_world(str(tmp_path / "w"), seed=1, hard_texts="edits",
                                **{**SMALL, "num_train": 12})
  for name in ("zeroshot_images", "zeroshot_classes", "retrieval_annotations"):
    with open(getattr(world, name), "rb") as a, open(getattr(other, name), "rb") as b:
      assert a.read() == b.read(), name
