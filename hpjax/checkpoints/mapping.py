"""OpenCLIP state dict <-> Flax CLIP params: a table of renaming rules plus layouts.

The Flax module names mirror OpenCLIP's keys (see models/transformer.py), so a Flax path such as
`visual/transformer/resblocks_3/mlp/c_fc/kernel` becomes the OpenCLIP key
`visual.transformer.resblocks.3.mlp.c_fc.weight` by the first matching rule below, and the
tensor changes layout (Linear (out, in) <-> kernel (in, out); conv OIHW <-> HWIO).
Every key of the model is derived from the model's own parameter shapes, so a checkpoint is
checked completely (missing, unexpected and mis-shaped keys) before anything is converted.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Mapping

import jax
import numpy as np

from hpjax.models.clip import CLIP, param_shapes
from hpjax.models.config import CLIPConfig


@dataclasses.dataclass(frozen=True)
class Layout:
  """How an OpenCLIP tensor is permuted into its Flax parameter, and back."""
  name: str
  to_flax: tuple[int, ...] | None
  to_torch: tuple[int, ...] | None


SAME = Layout("same", None, None)
LINEAR = Layout("linear", (1, 0), (1, 0))
CONV = Layout("conv", (2, 3, 1, 0), (3, 2, 0, 1))
KERNEL = Layout("kernel", None, None)  # A rule's placeholder: LINEAR for 2-D, CONV for 4-D.

# (Flax path joined by '.', OpenCLIP key, layout); the first match wins.
RULES = (
    (r"(.*)\.in_proj\.kernel", r"\1.in_proj_weight", LINEAR),
    # torch MultiheadAttention with kdim != dim (CoCa's attn_pool.attn); ResNet's attnpool
    # q/k/v_proj are plain Linear layers and fall through to the kernel rule.
    (r"(.*\.attn)\.([qkv])_proj\.kernel", r"\1.\2_proj_weight", LINEAR),
    (r"(.*)\.in_proj\.bias", r"\1.in_proj_bias", SAME),
    (r"(.*)\.kernel", r"\1.weight", KERNEL),  # Dense and Conv
    (r"(.*)\.scale", r"\1.weight", SAME),  # LayerNorm, BatchNorm
    (r"(.*)\.mean", r"\1.running_mean", SAME),  # BatchNorm statistics (models/resnet.py)
    (r"(.*)\.var", r"\1.running_var", SAME),
    (r"(.*)\.embedding", r"\1.weight", SAME),  # token_embedding
    (r"(.*)", r"\1", SAME),  # class/positional embeddings, proj, text_projection, ls gamma, logits
)

# Flax names `resblocks_3`, timm's `blocks_3`, `layer1_0`, `downsample_1`, HF's `layer_3` and the
# projection's `proj_0` are PyTorch's Sequential / ModuleList items `.3`.
_SEQUENCE_ITEM = re.compile(r"\b(resblocks|blocks|layer\d?|downsample|proj)_(\d+)\b")

# BatchNorm's step counter: no weight; dropped on import, and PyTorch's loader restores it as 0
# when a file lacks it, so strict loading needs none on export.
_BN_COUNTER = ".num_batches_tracked"


@dataclasses.dataclass(frozen=True)
class Entry:
  flax_path: tuple[str, ...]
  layout: Layout
  flax_shape: tuple[int, ...]
  torch_shape: tuple[int, ...]


class CheckpointMismatchError(ValueError):
  """A checkpoint whose keys or shapes do not fit the architecture; lists every problem."""

  def __init__(self, source: str, model: str, missing, unexpected, misshaped):
    self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), misshaped
    lines = [f"{source} does not fit model {model!r}: {len(self.missing)} missing, "
             f"{len(self.unexpected)} unexpected, {len(misshaped)} mis-shaped keys"]
    lines += [f"  missing: {k}" for k in self.missing]
    lines += [f"  unexpected: {k}" for k in self.unexpected]
    lines += [f"  mis-shaped: {k}: checkpoint {got} vs model {want}"
              for k, (got, want) in misshaped.items()]
    super().__init__("\n".join(lines))


def openclip_key(flax_path: tuple[str, ...], ndim: int = 2) -> tuple[str, Layout]:
  """The OpenCLIP key and layout of one Flax parameter path (of rank `ndim`)."""
  joined = _SEQUENCE_ITEM.sub(r"\1.\2", ".".join(flax_path))
  for pattern, template, layout in RULES:
    if re.fullmatch(pattern, joined):
      if layout is KERNEL:
        layout = CONV if ndim == 4 else LINEAR
      return re.sub(pattern, template, joined), layout
  raise AssertionError(f"no rule for {joined}")  # The last rule matches everything.


def key_table(config: CLIPConfig) -> dict[str, Entry]:
  """OpenCLIP key -> (Flax path, layout, OpenCLIP shape) for every parameter of `config`."""
  # Neither the activation nor the name changes a parameter: such variants share one table.
  return _key_table(dataclasses.replace(config, quick_gelu=False, name=""))


@functools.lru_cache(maxsize=16)
def _key_table(config: CLIPConfig) -> dict[str, Entry]:
  table = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(CLIP(config)))[0]:
    flax_path = tuple(p.key for p in path)
    flax_shape = tuple(leaf.shape)
    key, layout = openclip_key(flax_path, len(flax_shape))
    torch_shape = flax_shape
    if layout.to_torch is not None:
      torch_shape = tuple(flax_shape[i] for i in layout.to_torch)
    table[key] = Entry(flax_path, layout, flax_shape, torch_shape)
  return table


def check_keys(state: Mapping[str, tuple[int, ...]], table: Mapping[str, tuple[int, ...]],
               source: str, model: str) -> None:
  """Raises one CheckpointMismatchError if `state` (key -> shape) does not match `table`."""
  missing = sorted(set(table) - set(state))
  unexpected = sorted(set(state) - set(table))
  misshaped = {k: (tuple(state[k]), tuple(table[k])) for k in sorted(set(state) & set(table))
               if tuple(state[k]) != tuple(table[k])}
  if missing or unexpected or misshaped:
    raise CheckpointMismatchError(source, model, missing, unexpected, misshaped)


def openclip_to_params(state_dict: Mapping[str, np.ndarray], config: CLIPConfig,
                       param_dtype=np.float32, source: str = "checkpoint") -> dict:
  """An OpenCLIP-keyed state dict (numpy arrays) -> the nested Flax params of `config`."""
  table = key_table(config)
  state_dict = {k: v for k, v in state_dict.items() if not _is_bn_counter(k, table)}
  check_keys({k: np.shape(v) for k, v in state_dict.items()},
             {k: e.torch_shape for k, e in table.items()}, source, config.name)
  params: dict = {}
  for key, entry in table.items():
    value = np.asarray(state_dict[key])
    if entry.layout.to_flax is not None:
      value = value.transpose(entry.layout.to_flax)
    node = params
    for name in entry.flax_path[:-1]:
      node = node.setdefault(name, {})
    node[entry.flax_path[-1]] = np.array(value, dtype=param_dtype, order="C")
  return params


def split_ignored(state_dict: Mapping[str, np.ndarray], config: CLIPConfig
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(the keys the model is built from, the keys of parts hpjax does not build).

  The second dict holds e.g. CoCa's `text_decoder.*`: callers list it (logs, results.json) and
  may hand it back to `params_to_openclip(..., extra=...)` so an export stays complete.
  """
  kept = {k: v for k, v in state_dict.items() if not k.startswith(config.ignored_key_prefixes)}
  return kept, {k: v for k, v in state_dict.items() if k not in kept}


def with_text_prefix(key: str, config: CLIPConfig) -> str:
  """The key as OpenCLIP files of `config` spell it: CustomTextCLIP and CoCa nest the text
  tower under `text.` (files.normalize_keys strips it on reading)."""
  if key.startswith("visual.") or key in ("logit_scale", "logit_bias"):
    return key
  return config.text_key_prefix + key


def _is_bn_counter(key: str, table: Mapping[str, Entry]) -> bool:
  """Whether `key` is the step counter of a BatchNorm of the model (any other is unexpected)."""
  return (key.endswith(_BN_COUNTER)
          and key.removesuffix(_BN_COUNTER) + ".running_mean" in table)


def params_to_openclip(params, config: CLIPConfig, dtype=np.float32,
                       extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """Flax params of `config` -> an OpenCLIP state dict of contiguous numpy arrays.

  `extra`: tensors of parts hpjax does not build (`split_ignored`'s second dict), written
  unchanged so that OpenCLIP loads the file strictly.
  """
  extra = dict(extra or {})
  stray = sorted(k for k in extra if not k.startswith(config.ignored_key_prefixes))
  if stray:
    raise ValueError(f"extra tensors for {config.name!r} must be keys of parts hpjax does not "
                     f"build {config.ignored_key_prefixes}; got {stray[:10]}")
  table = key_table(config)
  flat = {openclip_key(tuple(p.key for p in path))[0]: leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  check_keys({k: np.shape(v) for k, v in flat.items()},
             {k: e.flax_shape for k, e in table.items()}, "params", config.name)
  out = {}
  for key, entry in table.items():
    value = np.asarray(jax.device_get(flat[key]))
    if entry.layout.to_torch is not None:
      value = value.transpose(entry.layout.to_torch)
    out[with_text_prefix(key, config)] = np.array(value, dtype=dtype, order="C")
  out.update(extra)
  return out
