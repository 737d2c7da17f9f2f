"""Zero-shot classification and standard-protocol retrieval: metrics against their official
definitions spelled out per query, the evaluators against OpenCLIP's own zero-shot classifier
and a per-query recall loop, 1 vs 8 devices."""

import os

from etils import epath
import jax
import numpy as np
import open_clip
import pytest
import tensorflow_datasets as tfds
import torch
from PIL import Image

from hpjax import tokenizer as tokenizer_lib
from hpjax.data import captions as captions_lib
from hpjax.data import classification
from hpjax.evaluate import retrieval
from hpjax.evaluate import zeroshot
from helpers import write_json, write_random_image


# -- metrics on hand-made score matrices ------------------------------------------------------

def reference_topk(logits, labels, k):
  """OpenAI's notebook / CLIP_benchmark: the true class among the k first of a descending sort
  (exact ties: the lower index first, as a stable sort and argmax give them)."""
  return np.array([label in np.argsort(-row, kind="stable")[:k] for row, label in
                   zip(logits, labels)])


def reference_balanced_accuracy(logits, labels):
  """sklearn's balanced_accuracy_score(labels, argmax): mean recall over the present classes."""
  pred = logits.argmax(1)
  return np.mean([np.mean(pred[labels == c] == c) for c in sorted(set(labels.tolist()))])


def test_classification_metrics_match_the_notebook_definition_with_ties_and_repeats():
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 4, (200, 12)).astype(np.float32)  # many exact ties
  logits[:, 7] = logits[:, 3]  # a repeated class name: identical classifier rows
  labels = rng.integers(0, 12, 200)
  labels[:10] = 7
  got = zeroshot.classification_metrics(logits, labels)
  assert got["top1"] == pytest.approx(100 * reference_topk(logits, labels, 1).mean())
  assert got["top5"] == pytest.approx(100 * reference_topk(logits, labels, 5).mean())
  assert got["mean_per_class_recall"] == pytest.approx(
      100 * reference_balanced_accuracy(logits, labels))
  assert got["n"] == 200
  # Of the repeated pair the lower index always wins: class 7 is never top-1.
  assert not reference_topk(logits[labels == 7], labels[labels == 7], 1).any()


def reference_recall(scores, caption_image, k):
  """Per query: sort candidates by score, wrong ones first among equals (a tie counts against
  the model); a hit when a right one is among the first k."""
  t2i = []
  for j, row in enumerate(scores):
    order = sorted(range(len(row)), key=lambda i: (-row[i], i == caption_image[j]))
    t2i.append(caption_image[j] in order[:k])
  i2t = []
  for i in range(scores.shape[1]):
    col = scores[:, i]
    order = sorted(range(len(col)), key=lambda j: (-col[j], caption_image[j] == i))
    i2t.append(any(caption_image[j] == i for j in order[:k]))
  return 100 * np.mean(i2t), 100 * np.mean(t2i)


def clip_benchmark_recall(scores, caption_image, k):
  """CLIP_benchmark's loop: torch.topk per query, a hit when any positive is in it."""
  positive = torch.zeros(scores.shape, dtype=torch.bool)
  positive[torch.arange(len(caption_image)), torch.as_tensor(caption_image)] = True
  s = torch.as_tensor(scores)
  t2i = positive.gather(1, s.topk(k, dim=1).indices).any(1).float().mean().item()
  i2t = positive.T.gather(1, s.T.topk(k, dim=1).indices).any(1).float().mean().item()
  return 100 * i2t, 100 * t2i


@pytest.mark.parametrize("ties", [False, True])
def test_recall_matches_the_per_query_definition(ties):
  rng = np.random.default_rng(1)
  caption_image = np.repeat(np.arange(12), 5)  # several right captions per image
  rng.shuffle(caption_image)
  scores = (rng.integers(0, 5, (60, 12)) if ties else rng.normal(size=(60, 12))).astype(np.float32)
  got = retrieval.recall_metrics(scores, caption_image)
  for k in retrieval.KS:
    i2t, t2i = reference_recall(scores, caption_image, k)
    assert got[f"image_to_text_R@{k}"] == pytest.approx(i2t)
    assert got[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    assert got[f"mean_R@{k}"] == pytest.approx((i2t + t2i) / 2)
    if not ties:  # without exact ties the protocol is CLIP_benchmark's
      assert (i2t, t2i) == pytest.approx(clip_benchmark_recall(scores, caption_image, k))


def test_a_tie_counts_against_the_model():
  scores = np.array([[1.0, 1.0], [0.0, 1.0]], np.float32)  # caption 0 ties image 0 and 1
  got = retrieval.recall_metrics(scores, np.array([0, 1]), ks=(1,))
  assert got["text_to_image_R@1"] == 50.0 and got["image_to_text_R@1"] == 50.0


# -- loaders ----------------------------------------------------------------------------------

def test_shipped_imagenet_class_set():
  shipped = classification.load_class_set("imagenet1k")
  assert len(shipped.names) == 1000 and len(shipped.templates) == 80
  assert shipped.names[0] == "tench" and shipped.names.count("missile") == 2
  assert shipped.names == tuple(open_clip.IMAGENET_CLASSNAMES)
  assert [t.format("x") for t in shipped.templates] == [
      t("x") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]


def test_class_sources_and_their_errors(tmp_path):
  for label, name in enumerate(("b_cat", "a_dog")):
    os.makedirs(tmp_path / "tree" / name)
    write_random_image(tmp_path / "tree" / name / f"{label}.png", label)
  os.makedirs(tmp_path / "tree" / "c_empty")
  with pytest.raises(ValueError, match="tree/c_empty: a class folder with no image"):
    classification.load_image_folder(str(tmp_path / "tree"), 3)
  with pytest.raises(ValueError, match="3 class folders, but the class list has 2"):
    classification.load_image_folder(str(tmp_path / "tree"), 2)
  tree = classification.load_image_folder(str(tmp_path / "tree"), 3, skip_empty_classes=True)
  assert [os.path.basename(p) for p in tree.images] == ["1.png", "0.png"]  # a_dog first
  assert tree.labels.tolist() == [0, 1] and tree.skipped == 1
  (tmp_path / "l.jsonl").write_text('{"image": "x.png", "label": 1}\n'
                                    '{"image": "y.png", "label": 5}\n')
  with pytest.raises(ValueError, match=r"l.jsonl line 2: label 5 is outside the class list's 3"):
    classification.load_labelled_list(str(tmp_path / "l.jsonl"), 3)
  (tmp_path / "l.csv").write_text("image,label\nx.png,2\ny.png,0\n")
  listed = classification.load_labelled_images(str(tmp_path / "l.csv"), 3, image_root="/r")
  assert listed.images == ("/r/x.png", "/r/y.png") and listed.labels.tolist() == [2, 0]


def karpathy_fixture(path, with_test=True):
  images = [{"filepath": "val2014", "filename": f"{i}.jpg", "split": "test" if with_test else
             "val", "sentences": [{"raw": f"caption {i}.{k}", "tokens": []} for k in range(5)]}
            for i in range(3)] + [{"filepath": "train2014", "filename": "t.jpg", "split": "train",
                                   "sentences": [{"raw": "train"}]}]
  write_json(path, {"images": images, "dataset": "coco"})


def test_caption_files_in_every_form(tmp_path):
  karpathy_fixture(tmp_path / "dataset_coco.json")
  k = captions_lib.load_caption_set(str(tmp_path / "dataset_coco.json"), image_root="/coco")
  assert k.images == ("/coco/val2014/0.jpg", "/coco/val2014/1.jpg", "/coco/val2014/2.jpg")
  assert len(k.captions) == 15 and k.caption_image.tolist() == [0] * 5 + [1] * 5 + [2] * 5
  write_json(tmp_path / "coco_test_karpathy.json",
                [{"image": f"val2014/{i}.jpg", "caption": [f"caption {i}.{k}" for k in range(5)]}
                 for i in range(3)])
  c = captions_lib.load_caption_set(str(tmp_path / "coco_test_karpathy.json"), image_root="/coco")
  assert (c.images, c.captions) == (k.images, k.captions)
  karpathy_fixture(tmp_path / "no_test.json", with_test=False)
  with pytest.raises(ValueError, match=r"no_test.json: no image in the 'test' split"):
    captions_lib.load_caption_set(str(tmp_path / "no_test.json"))
  write_json(tmp_path / "indexed.json", {"images": ["a.jpg"], "captions": [[0, "a"], [3, "b"]]})
  with pytest.raises(ValueError, match=r"indexed.json caption 1: names image index 3"):
    captions_lib.load_caption_set(str(tmp_path / "indexed.json"))


# -- the evaluators against OpenCLIP ----------------------------------------------------------

def _pixels(path, size):
  with Image.open(path) as image:
    return open_clip.image_transform(size, is_train=False)(image.convert("RGB"))[None]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
  root = tmp_path_factory.mktemp("zs")
  paths = []
  for i in range(11):
    paths.append(str(root / f"{i}.png"))
    write_random_image(paths[-1], 100 + i, size=(40 + i, 30))
  return paths


def test_zeroshot_equals_openclip_classifier_on_1_and_8_devices(tiny_pair, labelled):
  config, model, params, torch_model = tiny_pair
  names = ("cat", "dog", "red car", "cat", "a very long class name " * 4)  # a repeat, > 32 tokens
  templates = ("a photo of a {}.", "{}", "a blurry photo of the {}, seen from far away.")
  class_set = classification.ClassSet(names, templates, "fixture")
  labels = np.arange(len(labelled)) % len(names)
  images = classification.LabelledImages(tuple(labelled), labels, "fixture")
  tokenizer = open_clip.get_tokenizer("ViT-B-32")
  with torch.no_grad():
    weights = open_clip.build_zero_shot_classifier(torch_model, tokenizer, names, templates,
                                                   num_classes_per_batch=2).numpy()
    feats = np.concatenate([torch_model.encode_image(_pixels(p, config.vision.image_size),
                                                     normalize=True).numpy() for p in labelled])
  kw = dict(tokenizer=tokenizer_lib.get_tokenizer(), image_batch_size=4, text_batch_size=8,
            num_workers=2)
  with jax.default_matmul_precision("highest"):
    one = zeroshot.ZeroShotEvaluator(model, class_set, images, "fx", devices=jax.devices()[:1],
                                     **kw)
    eight = zeroshot.ZeroShotEvaluator(model, class_set, images, "fx", **kw)
    np.testing.assert_allclose(one.classifier(params), weights.T, atol=1e-4)
    ours = {"one": one.run(params), "eight": eight.run(params)}
    other = jax.tree.map(lambda x: x * 1.5, params)
    both = eight.run_models([(eight.scorer, params), (eight.scorer, other)])  # one decode pass
    assert both == [ours["eight"], eight.run(other)] and both[0] != both[1]
  assert ours["one"] == ours["eight"]
  # The repeated name's two rows are one text's features: equal, as ours are (OpenCLIP encodes
  # them in different batches, a float rounding apart).
  weights[:, 3] = weights[:, 0]
  want = zeroshot.classification_metrics(feats @ weights, labels)
  assert ours["one"] == {f"fx/{k}": v for k, v in {**want, "skipped_images": 0.0,
                                                    "skipped_classes": 0.0}.items()}


def test_retrieval_equals_a_per_query_openclip_loop_on_1_and_8_devices(tiny_pair, labelled):
  config, model, params, torch_model = tiny_pair
  texts = [f"photo number {j} of a thing" for j in range(22)] + ["duplicate", "duplicate"]
  caption_image = np.array(list(range(11)) * 2 + [3, 5])
  data = captions_lib.CaptionSet(tuple(labelled), tuple(texts), caption_image, "fixture")
  tokenizer = open_clip.get_tokenizer("ViT-B-32")
  with torch.no_grad():
    image_feats = [torch_model.encode_image(_pixels(p, config.vision.image_size), normalize=True)
                   for p in labelled]
    text_feats = torch_model.encode_text(tokenizer(texts), normalize=True)
  scores = np.stack([(text_feats @ f.T)[:, 0].numpy() for f in image_feats], axis=1)
  kw = dict(tokenizer=tokenizer_lib.get_tokenizer(), image_batch_size=4, text_batch_size=8,
            num_workers=2)
  with jax.default_matmul_precision("highest"):
    one = retrieval.RetrievalEvaluator(model, data, "fx", devices=jax.devices()[:1], **kw)
    ours_scores = one.scores(params)
    got = one.run(params)
    eight_evaluator = retrieval.RetrievalEvaluator(model, data, "fx", **kw)
    eight = eight_evaluator.run(params)
    other = jax.tree.map(lambda x: x * 1.5, params)
    both = eight_evaluator.run_models([(eight_evaluator.scorer, params),
                                       (eight_evaluator.scorer, other)])
    assert both == [eight, eight_evaluator.run(other)]
  np.testing.assert_allclose(ours_scores, scores, atol=1e-4)
  assert got == eight
  for k in retrieval.KS:
    i2t, t2i = reference_recall(scores, caption_image, k)
    assert got[f"fx/image_to_text_R@{k}"] == pytest.approx(i2t)
    assert got[f"fx/text_to_image_R@{k}"] == pytest.approx(t2i)
  assert (got["fx/images"], got["fx/captions"]) == (11, 24)
  # The two identical captions of images 3 and 5 tie exactly: it counts against both.
  assert ours_scores[22, 3] == ours_scores[23, 3]


# -- TFDS datasets in the schemas of imagenet2012 / cifar100 and coco_captions, no TensorFlow --

def _png(folder, pixels) -> str:
  """An encoded image file (encoding arrays would need TensorFlow)."""
  path = os.path.join(folder, f"source_{pixels.shape[1]}_{pixels[0, 0, 0]}.png")
  Image.fromarray(pixels).save(path)
  return path


class FixtureClassification(tfds.core.GeneratorBasedBuilder, skip_registration=False):
  """imagenet_v2's / cifar100's schema: image, label (ClassLabel), file_name."""
  VERSION = tfds.core.Version("1.0.0")
  pkg_dir_path = epath.Path(__file__).parent  # (a test module is not a package)

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(), "label": tfds.features.ClassLabel(num_classes=3),
        "file_name": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for i in range(5):
      yield i, {"image": _png(self.data_dir, np.full((8, 8 + i, 3), 40 * i, np.uint8)),
                "label": i % 3,
                "file_name": f"{i}.png"}


class FixtureCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=False):
  """coco_captions' schema: image, image/filename, image/id, captions {id, text}."""
  VERSION = tfds.core.Version("1.0.0")
  pkg_dir_path = epath.Path(__file__).parent

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(), "image/filename": tfds.features.Text(),
        "image/id": np.int64, "captions": tfds.features.Sequence(
            {"id": np.int64, "text": tfds.features.Text()})}))

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      yield i, {"image": _png(self.data_dir, np.full((8, 8, 3), 60 * i, np.uint8)),
                "image/filename": f"{i}.jpg",
                "image/id": i, "captions": [{"id": 10 * i + k, "text": f"image {i} caption {k}"}
                                            for k in range(5)]}


def test_tfds_datasets_read_without_tensorflow(tmp_path):
  for builder in (FixtureClassification, FixtureCaptions):
    builder(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  labelled = classification.load_labelled_images("tfds:fixture_classification", 3,
                                                 tfds_data_dir=str(tmp_path))
  for path, label in zip(labelled.images, labelled.labels):  # (TFDS orders by key hash)
    with Image.open(path) as image:
      i = image.getpixel((0, 0))[0] // 40
      assert image.size == (8 + i, 8) and label == i % 3
  with pytest.raises(ValueError, match="tfds:fixture_classification: 3 classes, but the class "
                     "list has 1000"):
    classification.load_labelled_images("tfds:fixture_classification", 1000,
                                        tfds_data_dir=str(tmp_path))
  data = captions_lib.load_caption_set("tfds:fixture_captions:test", tfds_data_dir=str(tmp_path))
  assert len(data.images) == 3 and len(data.captions) == 15
  for caption, owner in zip(data.captions, data.caption_image):
    with Image.open(data.images[owner]) as image:
      assert caption.startswith(f"image {image.getpixel((0, 0))[0] // 60} caption")
  with pytest.raises(ValueError, match=r"features \[.*\]; expected \['image', 'captions'\]"):
    captions_lib.load_caption_set("tfds:fixture_classification", tfds_data_dir=str(tmp_path))
