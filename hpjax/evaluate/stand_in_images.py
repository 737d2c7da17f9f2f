"""Deterministic stand-in images for suites whose real images are not at hand.

Tests and benchmarks run the real annotation files (e.g. REPLACE) without Visual Genome: each
distinct image path gets one generated PNG, seeded by the path, so any two runs (and the hpjax
and PyTorch sides of a parity check) see the same pixels. Sizes vary per image so resizing and
centre-cropping are exercised; SWAP-style crop boxes must fit inside `min_size`.
"""

from __future__ import annotations

import os
import zlib
from typing import Iterable

import numpy as np
from PIL import Image

from hpjax.data import suites as suites_lib


def stand_in_image(key: str, min_size: int = 64, extra: int = 48) -> Image.Image:
  """A blocky random RGB pattern whose content and size depend only on `key`."""
  rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
  width, height = (min_size + int(rng.integers(0, extra + 1)) for _ in range(2))
  blocks = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
  pixels = blocks.repeat(8, axis=0).repeat(8, axis=1)[:height, :width]
  noise = rng.integers(-20, 21, size=pixels.shape)
  return Image.fromarray(np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8))


def write_stand_in_images(records: Iterable[suites_lib.EvalRecord], image_root: str,
                          min_size: int = 64, extra: int = 48) -> int:
  """Writes one PNG per distinct record image under `image_root` (kept if present); returns the
  number of distinct images. The file keeps the record's path (and extension) so the loaders'
  paths resolve unchanged; Pillow reads it by content, not by name."""
  paths = dict.fromkeys(r.image for r in records)
  for path in paths:
    full = os.path.join(image_root, path)
    if os.path.exists(full):
      continue
    os.makedirs(os.path.dirname(full), exist_ok=True)
    stand_in_image(path, min_size, extra).save(full, format="PNG")
  return len(paths)
