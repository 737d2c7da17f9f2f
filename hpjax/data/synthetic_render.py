"""Pillow rendering of synthetic scenes: flat shapes on a grey ground, anti-aliased.

Shapes are drawn at `SUPERSAMPLE` times the target size and box-filtered down, which smooths the
edges of a 64x64 image at a cost of well under a millisecond per image.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from hpjax.data.synthetic_world import Obj, Scene

COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 235),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 205),
    "white": (248, 248, 248),
}
BACKGROUND_RGB = (110, 110, 110)
# Half the extent of a shape, as a fraction of the image side. A large shape at a jittered cell
# centre (0.25 +- 0.04) stays inside its own quarter of the image.
SIZE_RADIUS = {"small": 0.09, "large": 0.18}
SUPERSAMPLE = 4


def _outline(obj: Obj, side: float) -> tuple[str, list[tuple[float, float]]]:
  """('ellipse', bbox) or ('polygon', points) for an object in pixels of a `side`-pixel image."""
  cx, cy, r = obj.x * side, obj.y * side, SIZE_RADIUS[obj.size] * side
  if obj.shape == "circle":
    return "ellipse", [(cx - r, cy - r), (cx + r, cy + r)]
  if obj.shape == "square":
    h = 0.85 * r  # about the area of the circle of radius r
    return "polygon", [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
  if obj.shape == "triangle":
    return "polygon", [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
  if obj.shape == "diamond":
    return "polygon", [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
  raise ValueError(f"cannot draw shape {obj.shape!r}")


def render(scene: Scene, image_size: int) -> Image.Image:
  """The scene as an RGB image of `image_size` x `image_size` pixels."""
  side = image_size * SUPERSAMPLE
  image = Image.new("RGB", (side, side), BACKGROUND_RGB)
  draw = ImageDraw.Draw(image)
  for obj in scene.objects:
    kind, points = _outline(obj, side)
    getattr(draw, kind)(points, fill=COLOUR_RGB[obj.colour])
  return image.reduce(SUPERSAMPLE)


def write_png(scene: Scene, image_size: int, path: str) -> None:
  render(scene, image_size).save(path, format="PNG", compress_level=1)  # flat shapes compress well
