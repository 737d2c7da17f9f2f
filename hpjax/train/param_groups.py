"""Each parameter's layer group, and from it the per-parameter table of what trains and at
which learning-rate scale: tower locking and layer-wise learning-rate decay read one table.

Groups follow OpenCLIP's `lock` methods. A tower's parameters are ordered
  [stem (patch/token embeddings, class and positional embeddings, ln_pre),
   block 0, ..., block L-2, (block L-1 with the final norm / attention pool), projection],
so `lock_image_unlocked_groups=N` leaves the last N of these trainable (OpenCLIP's
`lock_image_tower(unlocked_groups)`), and `lock_text_unlocked_layers` the same for the text
tower (`lock_text_tower(unlocked_layers)`). With `lock_text_freeze_layer_norm` off, the
LayerNorms of locked text layers stay trainable (OpenCLIP's HF text tower without the flag).
Layer decay d gives group g of n the scale d ** (n - 1 - g): the projection trains at the full
rate, each group towards the input at d times the next one (BEiT's and timm's rule).
`logit_scale` and `logit_bias` belong to neither tower: never locked, never decayed.
"""

from __future__ import annotations

import dataclasses
import re

import jax

IMAGE, TEXT, SHARED = "image", "text", "shared"
SHARED_NAMES = ("logit_scale", "logit_bias")
_BLOCK = re.compile(r"^(resblocks|blocks|layer)_(\d+)$")
# Leaf-path parts that place a non-block parameter before, after or at the end of the blocks.
_STEM = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "token_embedding",
         "cls_emb", "patch_embed", "pos_embed", "embeddings")
_FINAL = ("ln_post", "ln_final", "norm", "attn_pool")
_HEAD = ("proj", "text_projection", "head")
_LAYER_NORMS = re.compile(r"^(ln_\w+|LayerNorm|norm\w*)$")
_RESNET_PARTS = re.compile(r"^(layer\d_\d+|bn\d|attnpool)$")


def tower_of(path: tuple[str, ...]) -> str:
  if path[0] in SHARED_NAMES:
    return SHARED
  return IMAGE if path[0] == "visual" else TEXT


def _position(path: tuple[str, ...]) -> tuple[str, int]:
  """('stem' | 'block' | 'final' | 'head', block index or -1) of a tower parameter."""
  for part in path:
    match = _BLOCK.match(part)
    if match:
      return "block", int(match.group(2))
  for part in path[1:] if path[0] == "visual" else path:
    if part in _STEM:
      return "stem", -1
    if part in _FINAL:
      return "final", -1
    if part in _HEAD or re.fullmatch(r"proj_\d+", part):
      return "head", -1
  raise ValueError(f"param {'/'.join(path)}: no layer group (stem, block, final norm or "
                   "projection) for it; locking and layer decay do not know this tower")


def layer_groups(params) -> dict[tuple[str, ...], tuple[str, int, int]]:
  """Flax path -> (tower, group index, number of groups in that tower); shared params get
  (SHARED, 0, 1). Raises ValueError for a ResNet image tower (OpenCLIP locks it only whole)."""
  paths = [tuple(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  out = {p: (SHARED, 0, 1) for p in paths if tower_of(p) == SHARED}
  if _is_resnet(params):  # (one group: only `lock_image` with no unlocked groups applies)
    out.update({p: (IMAGE, 0, 1) for p in paths if tower_of(p) == IMAGE})
  positions = {p: _position(p) for p in paths if p not in out}
  for tower in (IMAGE, TEXT):
    mine = {p: pos for p, pos in positions.items() if tower_of(p) == tower}
    blocks = sorted({i for kind, i in mine.values() if kind == "block"})
    has_stem = any(kind == "stem" for kind, _ in mine.values())
    has_head = any(kind == "head" for kind, _ in mine.values())
    last = (has_stem + len(blocks) - 1) if blocks else has_stem
    for p, (kind, i) in mine.items():
      index = {"stem": 0, "block": has_stem + i, "final": last, "head": last + 1}[kind]
      out[p] = (tower, index, last + 1 + has_head)
  return out


def tower_sizes(params) -> dict[str, int]:
  """The number of layer groups of each tower."""
  return {tower: n for tower, _, n in layer_groups(params).values() if tower != SHARED}


@dataclasses.dataclass(frozen=True)
class ParamTable:
  """Per-parameter trees: `trainable` (bool) and `lr_scale` (float, 0 where locked)."""
  trainable: dict
  lr_scale: dict


def _is_resnet(params) -> bool:
  return any(_RESNET_PARTS.match(k) for k in params.get("visual", {}))


def build_table(params, *, lock_image: bool = False, lock_image_unlocked_groups: int = 0,
                lock_text: bool = False, lock_text_unlocked_layers: int = 0,
                lock_text_freeze_layer_norm: bool = True, image_layer_decay: float = 1.0,
                text_layer_decay: float = 1.0) -> ParamTable:
  """The table for OpenCLIP's lock and layer-decay options; errors name the field."""
  partial = (lock_image and lock_image_unlocked_groups) or image_layer_decay != 1.0
  if partial and _is_resnet(params):
    raise ValueError("locking.lock_image_unlocked_groups / optim.image_layer_decay: a ResNet "
                     "image tower has no layer groups (OpenCLIP locks it only whole)")
  groups = layer_groups(params)
  sizes = tower_sizes(params)
  for field, tower, n in (
      ("locking.lock_image_unlocked_groups", IMAGE, lock_image_unlocked_groups),
      ("locking.lock_text_unlocked_layers", TEXT, lock_text_unlocked_layers)):
    if n > sizes.get(tower, 0):
      raise ValueError(f"{field}={n} is more than the {sizes.get(tower, 0)} layer groups of the "
                       f"{tower} tower")
  locked = {IMAGE: (lock_image, lock_image_unlocked_groups),
            TEXT: (lock_text, lock_text_unlocked_layers)}
  decay = {IMAGE: image_layer_decay, TEXT: text_layer_decay}

  def trainable(path, tower, index, n):
    if tower == SHARED or not locked[tower][0]:
      return True
    if index >= n - locked[tower][1]:
      return True
    return tower == TEXT and not lock_text_freeze_layer_norm and any(
        _LAYER_NORMS.match(part) for part in path)

  def scale(path):
    tower, index, n = groups[path]
    if not trainable(path, tower, index, n):
      return 0.0
    return 1.0 if tower == SHARED else float(decay[tower] ** (n - 1 - index))

  key = lambda p: tuple(k.key for k in p)
  return ParamTable(
      trainable=jax.tree_util.tree_map_with_path(lambda p, _: scale(key(p)) > 0, params),
      lr_scale=jax.tree_util.tree_map_with_path(lambda p, _: scale(key(p)), params))


def options(config) -> dict | None:
  """`build_table`'s arguments from a run config (its `locking` group and the optimizer's layer
  decays); None when nothing is locked or decayed."""
  kwargs = {**config.locking, "image_layer_decay": config.optim.image_layer_decay,
            "text_layer_decay": config.optim.text_layer_decay}
  if kwargs["lock_image"] or kwargs["lock_text"] or kwargs["image_layer_decay"] != 1.0 or \
      kwargs["text_layer_decay"] != 1.0:
    return kwargs
  return None
