"""What a finetune costs, measured in the synthetic world: a zero-shot probe and a retrieval split.

The zero-shot probe shows one object per image over every (colour, shape) class, held-out ones
included, and names the classes in the format `classification.load_class_set` reads, its
images in the JSONL list `classification.load_labelled_images` reads. The retrieval split is
new scenes of the training distribution, each with 5 distinct true captions in plain words (as
COCO's test split), in Karpathy's split-file form that `captions.load_caption_set` reads. Both
draw from streams of their own (`synthetic_world.STREAMS`): never a training image. Every image
path is relative to the world's folder.
"""

from __future__ import annotations

import json
import os

from hpjax.data import synthetic_world as sw
from hpjax.data.synthetic_render import write_png

ZEROSHOT_JSONL = "probe/zeroshot.jsonl"
ZEROSHOT_CLASSES = "probe/zeroshot_classes.json"
RETRIEVAL_JSON = "probe/retrieval.json"
TEMPLATES = ("a {}.", "a picture of a {}.", "a drawing of a {}.", "a {} on a grey background.",
             "a flat {} shape.")
CAPTIONS_PER_IMAGE = 5
_MAX_TRIES = 100


def write_zeroshot(root: str, seed: int, num_images: int, image_size: int, scenes) -> None:
  """`num_images` one-object images, class `i % len(sw.combos())` for image i (balanced), at a
  random cell and size; their scenes appended to the open `scenes` file."""
  combos = sw.combos()
  with open(os.path.join(root, ZEROSHOT_CLASSES), "w") as f:
    json.dump({"classnames": [f"{colour} {shape}" for colour, shape in combos],
               "templates": list(TEMPLATES)}, f, indent=0)
  with open(os.path.join(root, ZEROSHOT_JSONL), "w") as listing:
    for i in range(num_images):
      label = i % len(combos)
      scene = sw.sample_scene(sw.scene_rng(seed, "zeroshot", i), [combos[label]], 1)
      image = f"images/zeroshot/{i:06d}.png"
      write_png(scene, image_size, os.path.join(root, image))
      listing.write(json.dumps({"image": image, "label": label}) + "\n")
      scenes.write(scene.line(image))


def true_captions(rng, scene: sw.Scene, count: int, plain: bool) -> list[str]:
  """`count` distinct captions, each checked true of `scene` (by `scene_caption`)."""
  found = []
  for _ in range(_MAX_TRIES * count):
    text = sw.scene_caption(rng, scene, plain).text
    if text not in found:
      found.append(text)
      if len(found) == count:
        return found
  raise RuntimeError(f"found {len(found)} distinct captions of {scene}, not {count}")


def write_retrieval(root: str, seed: int, num_images: int, image_size: int, combos,
                    three_object_frac: float, plain: bool, scenes) -> None:
  """`num_images` scenes of `combos` (the training distribution), 5 true captions each."""
  entries = []
  for i in range(num_images):
    rng = sw.scene_rng(seed, "retrieval", i)
    scene = sw.sample_scene(rng, combos, sw.object_count(rng, three_object_frac))
    image = f"images/retrieval/{i:06d}.png"
    write_png(scene, image_size, os.path.join(root, image))
    scenes.write(scene.line(image))
    texts = true_captions(rng, scene, CAPTIONS_PER_IMAGE, plain)
    entries.append({"filename": image, "imgid": i, "split": "test", "sentences": [
        {"raw": text, "tokens": text.split(), "imgid": i} for text in texts]})
  with open(os.path.join(root, RETRIEVAL_JSON), "w") as f:
    json.dump({"dataset": "hpjax-synthetic", "images": entries}, f, indent=0)
