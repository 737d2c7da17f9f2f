"""Model configs in OpenCLIP's JSON schema (embed_dim, vision_cfg, text_cfg, quick_gelu).

Configs ship as package data under `models/configs/`; a user may also pass the path of a JSON
file of their own. Only the fields the Flax towers implement are accepted: an unknown or
unsupported field is an error rather than a silently different model.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Mapping

import numpy as np

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"

# OpenCLIP fields that do not change the architecture we build (tokenizer hints, timm/HF
# tower names are rejected separately below).
_IGNORED_TEXT_FIELDS = {"hf_tokenizer_name", "tokenizer_kwargs"}
_IGNORED_TOP_FIELDS = {"custom_text"}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """A ViT, or OpenAI's ModifiedResNet when `layers` is a tuple of four stage depths (OpenCLIP's
  JSON gives a list; it is kept as a tuple so configs stay hashable). For a ResNet, `width` is
  the stem width, `patch_size` is None and the attention pool has width * 32 // head_width heads."""
  image_size: int = 224
  layers: int | tuple[int, ...] = 12
  width: int = 768
  head_width: int = 64
  mlp_ratio: float = 4.0
  patch_size: int | None = 16
  ls_init_value: float | None = None
  final_ln_after_pool: bool = False
  pool_type: str = "tok"
  no_ln_pre: bool = False

  def __post_init__(self):
    if self.is_resnet and len(self.layers) != 4:
      raise ValueError(f"vision_cfg.layers {list(self.layers)}: a ResNet has four stages")
    if not self.is_resnet and self.patch_size is None:
      raise ValueError("vision_cfg.patch_size is null, which only a ResNet (layers given as a "
                       "list of four stage depths) may have")

  @property
  def is_resnet(self) -> bool:
    return isinstance(self.layers, tuple)

  @property
  def heads(self) -> int:
    return (self.width * 32 if self.is_resnet else self.width) // self.head_width

  @property
  def grid_size(self) -> int:
    """Tokens per side: patches of a ViT, the 32x-downsampled feature map of a ResNet."""
    return self.image_size // (32 if self.is_resnet else self.patch_size)


@dataclasses.dataclass(frozen=True)
class TextConfig:
  context_length: int = 77
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  layers: int = 12
  mlp_ratio: float = 4.0
  ls_init_value: float | None = None
  final_ln_after_pool: bool = False
  pool_type: str = "argmax"
  proj_bias: bool = False


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  embed_dim: int
  vision: VisionConfig
  text: TextConfig
  quick_gelu: bool = False
  init_logit_scale: float = 2.6592600345611572  # ln(1 / 0.07), as OpenCLIP.
  init_logit_bias: float | None = None
  name: str = "custom"

  @classmethod
  def from_dict(cls, d: dict[str, Any], name: str = "custom") -> "CLIPConfig":
    d = dict(d)
    for key in _IGNORED_TOP_FIELDS:
      d.pop(key, None)
    vision = _build(VisionConfig, d.pop("vision_cfg", {}), f"{name}: vision_cfg", set())
    text = _build(TextConfig, d.pop("text_cfg", {}), f"{name}: text_cfg", _IGNORED_TEXT_FIELDS)
    top = {f.name for f in dataclasses.fields(cls)} - {"vision", "text", "name"}
    unknown = sorted(set(d) - top)
    if unknown:
      raise ValueError(f"{name}: unsupported top-level config fields {unknown}; known: {sorted(top)}")
    if "embed_dim" not in d:
      raise ValueError(f"{name}: config has no 'embed_dim'")
    return cls(vision=vision, text=text, name=name, **d)

  def to_dict(self) -> dict[str, Any]:
    """The OpenCLIP JSON form (defaults omitted where OpenCLIP omits them)."""
    out: dict[str, Any] = {"embed_dim": self.embed_dim}
    if self.quick_gelu:
      out["quick_gelu"] = True
    if self.init_logit_bias is not None:
      out["init_logit_bias"] = self.init_logit_bias
    out["vision_cfg"] = _non_default(self.vision)
    out["text_cfg"] = _non_default(self.text)
    return out


def _build(cls, fields: dict[str, Any], where: str, ignored: set[str]):
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
            if k not in ignored}
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(
        f"{where}: unsupported fields {unknown} (timm/HF towers, attentional pooling and other "
        f"OpenCLIP variants are not ported); supported: {sorted(known)}")
  return cls(**fields)


def _non_default(cfg) -> dict[str, Any]:
  out = {}
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    if isinstance(value, tuple):
      value = list(value)
    if value != f.default or f.name in ("image_size", "layers", "width", "patch_size",
                                        "context_length", "vocab_size", "heads"):
      out[f.name] = value
  return out


def list_models() -> list[str]:
  """Names of the configs shipped with hpjax."""
  return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_model_config(name_or_path: str) -> CLIPConfig:
  """Returns the config for a shipped model name or a path to an OpenCLIP-schema JSON file."""
  path = pathlib.Path(name_or_path)
  if path.suffix == ".json" and path.is_file():
    return CLIPConfig.from_dict(json.loads(path.read_text()), name=path.stem)
  shipped = CONFIG_DIR / f"{name_or_path}.json"
  if not shipped.is_file():
    raise ValueError(
        f"unknown model {name_or_path!r}: not a shipped config and not a JSON file; "
        f"known models: {', '.join(list_models())}")
  return CLIPConfig.from_dict(json.loads(shipped.read_text()), name=name_or_path)


def infer_openai_config(state_dict: Mapping[str, Any], source: str = "state dict") -> CLIPConfig:
  """The architecture of an OpenAI-layout CLIP state dict, read from its tensor shapes as OpenAI's
  `clip.model.build_model` does (QuickGELU; 64-wide heads in both towers).

  The config takes the name of the shipped config it equals (e.g. 'RN50-quickgelu'), so it can be
  exported by name; otherwise it is named 'openai-inferred'.
  """
  def shape(key):
    if key not in state_dict:
      raise ValueError(f"{source}: cannot infer an OpenAI CLIP architecture: no {key!r} "
                       f"(keys start {sorted(state_dict)[:5]})")
    return tuple(np.shape(state_dict[key]))

  def count(pattern):  # Distinct block indices matching `pattern`.
    return len({m.group(1) for k in state_dict for m in [re.match(pattern, k)] if m})

  if "visual.proj" in state_dict:  # A ViT.
    width, _, _, patch = shape("visual.conv1.weight")
    grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)
    layers = count(r"visual\.transformer\.resblocks\.(\d+)\.")
    vision = VisionConfig(image_size=patch * grid, layers=layers, width=width, patch_size=patch)
  else:  # A ModifiedResNet: the attention pool sees the image downsampled 32x.
    grid = round((shape("visual.attnpool.positional_embedding")[0] - 1) ** 0.5)
    layers = tuple(count(rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5))
    vision = VisionConfig(image_size=32 * grid, layers=layers,
                          width=shape("visual.layer1.0.conv1.weight")[0], patch_size=None)
  text_width = shape("ln_final.weight")[0]
  text = TextConfig(context_length=shape("positional_embedding")[0],
                    vocab_size=shape("token_embedding.weight")[0], width=text_width,
                    heads=text_width // 64, layers=count(r"transformer\.resblocks\.(\d+)\."))
  config = CLIPConfig(embed_dim=shape("text_projection")[1], vision=vision, text=text,
                      quick_gelu=True, name="openai-inferred")
  for name in list_models():
    if dataclasses.replace(get_model_config(name), name=config.name) == config:
      return dataclasses.replace(config, name=name)
  return config
