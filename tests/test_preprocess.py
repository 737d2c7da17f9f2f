"""Preprocessing against OpenCLIP's own transforms (torchvision on PIL) on generated images."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, Normalize, RandomResizedCrop
from torchvision.transforms import functional as tvf

from hpjax import preprocess


def random_rgb(rng, width, height):
  return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def images_in_every_mode():
  """Odd sizes (including the .5 centre-crop offsets and upscaling) and the PIL modes."""
  rng = np.random.default_rng(0)
  cases = {f"RGB {w}x{h}": random_rgb(rng, w, h)
           for w, h in [(97, 203), (300, 31), (224, 224), (225, 224), (227, 500), (10, 7)]}
  base = random_rgb(rng, 101, 150)
  cases.update({
      "L": base.convert("L"),
      "RGBA": Image.fromarray(rng.integers(0, 256, (150, 101, 4), dtype=np.uint8)),
      "LA": Image.fromarray(rng.integers(0, 256, (150, 101, 4), dtype=np.uint8)).convert("LA"),
      "P": base.quantize(64),
      "1": base.convert("1"),
      "CMYK": base.convert("CMYK"),
      "I;16": Image.fromarray(rng.integers(0, 65536, (150, 101), dtype=np.uint16)),
      "F": Image.fromarray(rng.random((150, 101), dtype=np.float32) * 255),
  })
  return cases


IMAGES = images_in_every_mode()


def reference_hwc(transform, image):
  return transform(image).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("size", [224, 64, 336])
def test_eval_transform_matches_openclip(size):
  reference = open_clip.image_transform(size, is_train=False)
  ours = preprocess.eval_transform(size)
  for name, image in IMAGES.items():
    got = ours(image)
    assert got.shape == (size, size, 3) and got.dtype == np.float32, name
    np.testing.assert_array_equal(got, reference_hwc(reference, image), err_msg=f"{name} at {size}")


def test_preprocess_batch_is_the_stacked_eval_transform():
  images = list(IMAGES.values())
  batch = preprocess.preprocess_batch(images, 64)
  assert batch.shape == (len(images), 64, 64, 3) and batch.dtype == np.float32
  np.testing.assert_array_equal(batch, np.stack([preprocess.eval_transform(64)(i) for i in images]))
  assert preprocess.preprocess_batch([], 64).shape == (0, 64, 64, 3)


def test_normalize_on_device_and_host_match_torchvision():
  """uint8 pixels -> ToTensor + Normalize with OpenCLIP's own mean and std, on host and jitted."""
  pixels = np.stack([preprocess.eval_pixels(image, 32) for image in IMAGES.values()])
  normalize = Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
  want = np.stack([normalize(tvf.to_tensor(p)).permute(1, 2, 0).numpy() for p in pixels])
  np.testing.assert_array_equal(preprocess.normalize(pixels), want)
  on_device = jax.jit(preprocess.normalize)(jnp.asarray(pixels))
  np.testing.assert_allclose(np.asarray(on_device), want, rtol=0, atol=1e-6)


def test_train_transform_crop_matches_torchvision_resized_crop():
  """Given the crop box, the pixels are torchvision's `resized_crop` (bicubic) + ToTensor + Normalize."""
  normalize = open_clip.image_transform(64, is_train=False).transforms[-1]
  transform = preprocess.train_transform(64)
  for name, image in IMAGES.items():
    box = preprocess.random_resized_crop_box(np.random.default_rng(3), *image.size)
    expected = tvf.resized_crop(image, *box, [64, 64], InterpolationMode.BICUBIC).convert("RGB")
    expected = normalize(tvf.to_tensor(expected)).permute(1, 2, 0).numpy()
    got = transform(image, np.random.default_rng(3))
    np.testing.assert_array_equal(got, expected, err_msg=name)


def test_train_transform_equals_openclip_when_the_crop_is_forced():
  """On a 300x31 strip no random box fits scale (0.9, 1): both fall back to the same centre box."""
  image = IMAGES["RGB 300x31"]
  reference = open_clip.image_transform(64, is_train=True)
  assert isinstance(reference.transforms[0], RandomResizedCrop)
  np.testing.assert_array_equal(preprocess.train_transform(64, rng=0)(image),
                                reference_hwc(reference, image))
  torch_box = RandomResizedCrop.get_params(image, [0.9, 1.0], [3 / 4, 4 / 3])
  assert preprocess.random_resized_crop_box(np.random.default_rng(0), 300, 31) == torch_box


def _ks_statistic(a, b):
  """The two-sample Kolmogorov-Smirnov distance: the largest gap between the empirical CDFs."""
  grid = np.sort(np.concatenate([a, b]))
  cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)
  return np.abs(cdf(a) - cdf(b)).max()


def test_random_crop_boxes_follow_torchvision_in_distribution():
  """Boxes (area fraction, aspect ratio, position) distributed as RandomResizedCrop.get_params'
  (log-uniform ratio): 10,000 draws each, every KS distance below the 0.1% critical value
  0.0276 (measured ~0.015; a uniform ratio, or a non-uniform area, gives ~0.08)."""
  width, height, scale, draws = 200, 150, (0.3, 0.6), 10_000
  rng = np.random.default_rng(0)
  ours = np.array([preprocess.random_resized_crop_box(rng, width, height, scale)
                   for _ in range(draws)], np.float64)
  torch.manual_seed(0)
  image = Image.new("RGB", (width, height))
  theirs = np.array([RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
                     for _ in range(draws)], np.float64)
  for boxes in (ours, theirs):
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
  features = lambda b: {"area": b[:, 2] * b[:, 3] / (width * height), "ratio": b[:, 3] / b[:, 2],
                        "top": b[:, 0] / (height - b[:, 2] + 1),
                        "left": b[:, 1] / (width - b[:, 3] + 1)}
  for name, a in features(ours).items():
    b = features(theirs)[name]
    assert _ks_statistic(a, b) < 0.0276, name


def test_train_transform_is_reproducible_from_seeds():
  image = IMAGES["RGB 227x500"]
  first = preprocess.train_transform(64, scale=(0.3, 1.0), rng=7)
  second = preprocess.train_transform(64, scale=(0.3, 1.0), rng=7)
  draws = [first(image) for _ in range(3)]
  for want in draws:
    np.testing.assert_array_equal(second(image), want)
  assert not np.array_equal(draws[0], draws[1])
  per_call = [first(image, np.random.default_rng(11)) for _ in range(2)]
  np.testing.assert_array_equal(per_call[0], per_call[1])


def test_transforms_pickle_for_worker_processes():
  image = IMAGES["RGB 97x203"]
  train = preprocess.train_transform(32, rng=5)
  copy = pickle.loads(pickle.dumps(train))
  np.testing.assert_array_equal(copy(image), train(image))
  evaluate = pickle.loads(pickle.dumps(preprocess.eval_transform(32)))
  np.testing.assert_array_equal(evaluate(image), preprocess.eval_transform(32)(image))


def test_load_image_converts_crops_and_names_the_file(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
  path = tmp_path / "picture.png"
  Image.fromarray(pixels).save(path)
  image = preprocess.load_image(path, crop_box=(5, 10, 20, 30))
  assert image.mode == "RGB" and image.size == (20, 30)
  np.testing.assert_array_equal(np.asarray(image), pixels[10:40, 5:25, :3])
  np.testing.assert_array_equal(np.asarray(preprocess.load_image(path.read_bytes())), pixels[..., :3])
  for box in [(45, 0, 0, 10), (0, 0, 5, 0.4), (3, 3, -2, 5)]:  # empty once PIL rounds the box
    with pytest.raises(ValueError, match=rf"picture\.png: crop box .*{box[0]}, {box[1]}.* empty"):
      preprocess.load_image(path, crop_box=box)
  with pytest.raises(FileNotFoundError, match="missing.png"):
    preprocess.load_image(tmp_path / "missing.png")
  (tmp_path / "text.jpg").write_text("not an image")
  with pytest.raises(OSError, match=r"text\.jpg"):
    preprocess.load_image(tmp_path / "text.jpg")
  (tmp_path / "cut.png").write_bytes(path.read_bytes()[:100])
  with pytest.raises(OSError, match=r"cut\.png"):
    preprocess.load_image(tmp_path / "cut.png")


def test_a_box_wholly_outside_the_image_and_an_image_over_the_pixel_limit_are_refused(
    tmp_path, monkeypatch):
  path = tmp_path / "picture.png"
  Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
  for box in [(40, 0, 10, 10), (0, 30, 10, 10), (-20, 0, 20, 10), (5, -12.6, 10, 12)]:
    with pytest.raises(ValueError, match=r"picture\.png: crop box .* wholly outside .* 40x30"):
      preprocess.load_image(path, crop_box=box)
  assert preprocess.load_cropped(path, crop_box=(39, 29, 10, 10))[1]  # one pixel in: padded
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1200 pixels: over twice the limit
  with pytest.raises(OSError, match=r"cannot read image .*picture\.png: .*exceeds limit"):
    preprocess.load_image(path)


@pytest.mark.parametrize("name", ["RGB 97x203", "P", "RGBA", "L"])
def test_crop_past_the_image_pads_black_as_pil_crop(tmp_path, name):
  """The authors (and ARO) crop with PIL after convert('RGB'): a box past the image is padded
  black. Fractional boxes round as PIL rounds them; a box inside is not counted as padded."""
  path = tmp_path / "image.png"
  IMAGES[name].save(path)
  reference = open_clip.image_transform(64, is_train=False)
  with Image.open(path) as image:
    rgb, (width, height) = image.convert("RGB"), image.size
  for box in [(width - 20, height - 30, 50, 60), (-10.4, -5.6, 40.6, 30.2),
              (0, 0, width + 0.6, height)]:
    x, y, w, h = box
    expected = rgb.crop((x, y, x + w, y + h))
    got, padded = preprocess.load_cropped(path, crop_box=box)
    assert padded and got.mode == "RGB", box
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=str(box))
    np.testing.assert_allclose(preprocess.eval_transform(64)(got),
                               reference_hwc(reference, expected), rtol=0, atol=1e-5)
  corner = np.asarray(preprocess.load_image(path, crop_box=(width - 20, height - 30, 50, 60)))
  assert (corner[30:] == 0).all() and (corner[:, 20:] == 0).all()
  assert (corner[:30, :20] == np.asarray(rgb)[height - 30:, width - 20:]).all()
  assert not preprocess.load_cropped(path, crop_box=(1.4, 0, width - 1.8, height))[1]
