"""Image preprocessing identical to OpenCLIP's transforms, producing NHWC float32 for Flax.

OpenCLIP's eval transform is torchvision `Resize(size)` (shorter side, bicubic) and
`CenterCrop(size)` on the PIL image in its own mode, then `convert('RGB')`, `ToTensor` and the
OpenAI mean/std `Normalize`. The same PIL calls with torchvision's size and offset rounding
are made here, so the pixels are bit-identical and only the layout differs (HWC, not CHW).
Resizing before the RGB conversion matters: PIL resizes palette images with NEAREST and RGBA
ones with premultiplied alpha. SigLIP's weights in OpenCLIP use another eval transform (their
pretrained cfg): `Resize((size, size))`, a squash without crop, bicubic, mean = std = 0.5
(`model_transform` picks it for a timm SigLIP tower).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)  # OpenCLIP's SigLIP pretrained cfg
RESIZE_MODES = ("shortest", "squash")


def load_image(source: str | os.PathLike | bytes,
               crop_box: Sequence[float] | None = None) -> Image.Image:
  """Opens an image file (or encoded bytes), returns it in RGB, cropped to (x, y, w, h) if given.

  A box that runs past the image is padded with black, as the authors' and ARO's code crop
  (PIL `Image.crop` after `convert('RGB')`). Raises OSError naming the file when it cannot be
  read or decoded (or is over PIL's pixel limit), and ValueError naming the file and the box
  when the box is empty or wholly outside the image.
  """
  return load_cropped(source, crop_box)[0]


def load_cropped(source: str | os.PathLike | bytes,
                 crop_box: Sequence[float] | None = None) -> tuple[Image.Image, bool]:
  """`load_image`, and whether the crop box was padded (it runs past the image)."""
  name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
      image.load()
      rgb = image.convert("RGB")
  except OSError as e:
    raise type(e)(f"cannot read image {name}: {e}") from e
  except Image.DecompressionBombError as e:  # over PIL's pixel limit: unreadable, as above
    raise OSError(f"cannot read image {name}: {e}") from e
  if crop_box is None:
    return rgb, False
  return _crop(rgb, crop_box, name), box_overruns(crop_box, rgb.size)


def pil_box(box: Sequence[float]) -> tuple[int, int, int, int]:
  """(x, y, w, h) -> the integer (left, upper, right, lower) that PIL's `crop` rounds it to."""
  x, y, w, h = box
  return tuple(int(round(v)) for v in (x, y, x + w, y + h))


def box_overruns(box: Sequence[float], size: tuple[int, int]) -> bool:
  """Whether PIL's crop of `box` (x, y, w, h) reaches past an image of `size` (w, h)."""
  left, upper, right, lower = pil_box(box)
  return left < 0 or upper < 0 or right > size[0] or lower > size[1]


def _crop(image: Image.Image, box: Sequence[float], name: str) -> Image.Image:
  left, upper, right, lower = pil_box(box)
  if right <= left or lower <= upper:
    raise ValueError(f"{name}: crop box (x, y, w, h) = {tuple(box)} is empty (w and h must "
                     "round to at least one pixel)")
  if right <= 0 or lower <= 0 or left >= image.width or upper >= image.height:
    raise ValueError(f"{name}: crop box (x, y, w, h) = {tuple(box)} lies wholly outside the "
                     f"image of {image.width}x{image.height} pixels (a box that runs past the "
                     "edge is padded black; one outside is not a crop of the image)")
  return image.crop((left, upper, right, lower))


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
  """torchvision `Resize(size)` on PIL: shorter side to `size`, longer side truncated."""
  width, height = image.size
  short, long = min(width, height), max(width, height)
  new_short, new_long = size, int(size * long / short)
  new_size = (new_short, new_long) if width <= height else (new_long, new_short)
  if new_size == image.size:
    return image
  return image.resize(new_size, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """torchvision `CenterCrop(size)` for images at least `size` on each side."""
  width, height = image.size
  if width < size or height < size:
    raise ValueError(f"cannot centre-crop {size}x{size} from an image of size {image.size}")
  top = int(round((height - size) / 2.0))
  left = int(round((width - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def rgb_pixels(image: Image.Image) -> np.ndarray:
  return np.asarray(image.convert("RGB"), np.uint8)


def normalize(pixels: np.ndarray, mean: Sequence[float] = OPENAI_MEAN,
              std: Sequence[float] = OPENAI_STD) -> np.ndarray:
  """uint8 RGB (..., 3) -> float32 normalised (OpenAI's mean/std unless given), in ToTensor +
  Normalize's float32 order.

  Also traces under jax.jit on a jax array, so a pipeline can ship uint8 `eval_pixels` (4x
  fewer bytes) and normalise on the device (equal to within 1e-6 there).
  """
  return ((pixels.astype(np.float32) / np.float32(255) - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))


def eval_pixels(image: Image.Image, image_size: int, resize_mode: str = "shortest") -> np.ndarray:
  """uint8 (image_size, image_size, 3): the eval geometry before normalisation ('shortest':
  shorter side resized, centre crop; 'squash': both sides resized, aspect ratio not kept)."""
  if resize_mode == "squash":
    size = (image_size, image_size)
    return rgb_pixels(image if image.size == size else
                      image.resize(size, Image.Resampling.BICUBIC))
  if resize_mode != "shortest":
    raise ValueError(f"resize_mode {resize_mode!r}: expected one of {RESIZE_MODES}")
  return rgb_pixels(center_crop(resize_shorter_side(image, image_size), image_size))


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """PIL image -> float32 (image_size, image_size, 3), as OpenCLIP's eval transform.

  A class rather than a closure so that it pickles into data-loader worker processes; equal
  settings compare equal, so the scorer can tell that two models share a preprocessing.
  """
  image_size: int
  resize_mode: str = "shortest"
  mean: tuple[float, ...] = tuple(OPENAI_MEAN.tolist())
  std: tuple[float, ...] = tuple(OPENAI_STD.tolist())

  def __post_init__(self):
    if self.resize_mode not in RESIZE_MODES:
      raise ValueError(f"resize_mode {self.resize_mode!r}: expected one of {RESIZE_MODES}")

  def __call__(self, image: Image.Image) -> np.ndarray:
    return normalize(eval_pixels(image, self.image_size, self.resize_mode), self.mean, self.std)


def eval_transform(image_size: int) -> EvalTransform:
  return EvalTransform(image_size)


def model_transform(config) -> EvalTransform:
  """The eval transform OpenCLIP gives the weights of `config` (a `CLIPConfig`): SigLIP's for a
  timm SigLIP tower, the OpenAI one otherwise."""
  size = config.vision.image_size
  if config.vision.timm_model_name is not None:
    return EvalTransform(size, "squash", INCEPTION_MEAN, INCEPTION_STD)
  return EvalTransform(size)


def preprocess_batch(images: Sequence[Image.Image], image_size: int) -> np.ndarray:
  """Eval transform of a batch -> (N, image_size, image_size, 3), normalised in one pass."""
  if not images:
    return np.zeros((0, image_size, image_size, 3), np.float32)
  return normalize(np.stack([eval_pixels(image, image_size) for image in images]))


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale: Sequence[float] = (0.9, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision `RandomResizedCrop.get_params` drawing from a numpy Generator: (top, left, h, w).

  Up to ten tries for a box of area fraction in `scale` and log-uniform aspect ratio in
  `ratio` that fits; otherwise the largest centred box with a ratio inside `ratio`.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


class TrainTransform:
  """OpenCLIP's train transform (RandomResizedCrop, bicubic; RGB; normalise) -> HWC float32.

  `transform(image, rng=None)` draws its crop from the Generator passed per call (e.g.
  grain's per-record rng), else from its own Generator made from `rng` (a seed or
  Generator), so a data worker given the same seeds produces the same crops. Picklable.
  """

  def __init__(self, image_size: int, scale: Sequence[float] = (0.9, 1.0),
               ratio: Sequence[float] = (3 / 4, 4 / 3),
               rng: np.random.Generator | int | None = None):
    self.image_size, self.scale, self.ratio = image_size, tuple(scale), tuple(ratio)
    self.rng = np.random.default_rng(rng)

  def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
    top, left, h, w = random_resized_crop_box(self.rng if rng is None else rng, *image.size,
                                              self.scale, self.ratio)
    crop = image.crop((left, top, left + w, top + h))
    size = (self.image_size, self.image_size)
    if crop.size != size:
      crop = crop.resize(size, Image.Resampling.BICUBIC)
    return normalize(rgb_pixels(crop))


def train_transform(image_size: int, scale: Sequence[float] = (0.9, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3),
                    rng: np.random.Generator | int | None = None) -> TrainTransform:
  return TrainTransform(image_size, scale, ratio, rng)
