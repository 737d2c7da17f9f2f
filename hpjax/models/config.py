"""Model configs in OpenCLIP's JSON schema (embed_dim, vision_cfg, text_cfg, quick_gelu).

Configs ship as package data under `models/configs/`; a user may also pass the path of a JSON
file of their own. Only the fields the Flax towers implement are accepted: an unknown or
unsupported field is an error rather than a silently different model.

Three text towers exist: OpenCLIP's TextTransformer (causal and EOT-pooled as in CLIP, or
bidirectional and pooled at the last position as in SigLIP), CoCa's (`embed_cls`: a class token
appended at the end) and an HF RoBERTa encoder (`hf_model_name`). The HF architecture (widths,
depth, vocabulary) is not in OpenCLIP's JSON: it is derived from `hf_model_name`, either a
known HF name (`HF_TEXT_MODELS`) or a local folder holding the HF `config.json`. Likewise a
timm image tower (`timm_model_name`, SigLIP's) takes its architecture from the known-name
table `TIMM_SIGLIP_MODELS`, as timm's model registry builds it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
from typing import Any, Mapping

import numpy as np

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"

# OpenCLIP fields that do not change the architecture we build (tokenizer hints, whether
# token features are also returned, whether HF weights are downloaded at build time).
_IGNORED_VISION_FIELDS = {"output_tokens", "timm_model_pretrained"}
_IGNORED_TEXT_FIELDS = {"tokenizer_kwargs", "output_tokens", "hf_model_pretrained"}


@dataclasses.dataclass(frozen=True)
class TimmViTConfig:
  """What timm's registered SigLIP ViT of one name builds: no class token, learned positions,
  biased patch conv, pre-LN blocks, final norm, MAP head; LayerNorm eps 1e-6 throughout."""
  width: int
  layers: int
  heads: int
  patch_size: int
  image_size: int
  mlp_ratio: float = 4.0
  gelu_tanh: bool = False  # timm's act_layer='gelu_tanh' (the SigLIP 2 B/32, L/16-512, So400m/16)

  @property
  def mlp_dim(self) -> int:
    return int(self.width * self.mlp_ratio)


def _sizes(prefix: str, family: dict[str, Any], sizes: tuple[int, ...], gelu_tanh: bool = False
           ) -> dict[str, TimmViTConfig]:
  return {f"{prefix}_{size}": TimmViTConfig(image_size=size, gelu_tanh=gelu_tanh, **family)
          for size in sizes}


_B = dict(width=768, layers=12, heads=12, patch_size=16)
_L = dict(width=1024, layers=24, heads=16, patch_size=16)
_SO400M = dict(width=1152, layers=27, heads=16, mlp_ratio=3.7362)
# timm_model_name -> architecture, as timm 1.0's vision_transformer.py registers each name; a
# name may carry a pretrained tag after a dot (`vit_base_patch16_siglip_224.v2_webli`), which
# timm strips too.
TIMM_SIGLIP_MODELS: dict[str, TimmViTConfig] = {
    **_sizes("vit_base_patch16_siglip", _B, (224, 256, 384, 512)),
    **_sizes("vit_base_patch32_siglip", dict(_B, patch_size=32), (256,), gelu_tanh=True),
    **_sizes("vit_large_patch16_siglip", _L, (256, 384)),
    **_sizes("vit_large_patch16_siglip", _L, (512,), gelu_tanh=True),
    **_sizes("vit_so400m_patch14_siglip", dict(_SO400M, patch_size=14), (224, 378, 384)),
    **_sizes("vit_so400m_patch16_siglip", dict(_SO400M, patch_size=16), (256, 384, 512),
             gelu_tanh=True),
    # hpjax's tiny towers for tests and the synthetic world (tests register them with timm).
    "hpjax_tiny_siglip": TimmViTConfig(64, 2, 2, 8, 64),
    "hpjax_tiny_siglip2": TimmViTConfig(64, 2, 2, 8, 64, gelu_tanh=True),
}


def timm_vit_config(name: str) -> TimmViTConfig:
  """The architecture of a known timm SigLIP tower name (a `.tag` suffix is ignored)."""
  base = name.split(".", 1)[0]
  if base not in TIMM_SIGLIP_MODELS:
    raise ValueError(f"vision_cfg.timm_model_name {name!r} is not a known timm SigLIP tower; "
                     f"known: {', '.join(sorted(TIMM_SIGLIP_MODELS))}")
  return TIMM_SIGLIP_MODELS[base]


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
  # CoCa: 256 learned queries attend over all tokens; ln_post and proj act on the queries.
  attentional_pool: bool = False
  attn_pooler_queries: int = 256
  attn_pooler_heads: int = 8
  # OpenCLIP's timm tower (SigLIP): architecture from the name; the other ViT fields are unused,
  # as in OpenCLIP. Only the MAP-pooled trunk without an extra projection is ported.
  timm_model_name: str | None = None
  timm_pool: str = "avg"
  timm_proj: str = "linear"

  def __post_init__(self):
    if self.timm_model_name is not None:
      self._check_timm()
    if self.is_resnet and len(self.layers) != 4:
      raise ValueError(f"vision_cfg.layers {list(self.layers)}: a ResNet has four stages")
    if not self.is_resnet and self.patch_size is None:
      raise ValueError("vision_cfg.patch_size is null, which only a ResNet (layers given as a "
                       "list of four stage depths) may have")

  def _check_timm(self):
    timm = timm_vit_config(self.timm_model_name)
    where = f"vision_cfg (timm_model_name {self.timm_model_name!r})"
    if self.timm_pool != "map":
      raise ValueError(f"{where}: timm_pool {self.timm_pool!r} is not supported (SigLIP's 'map')")
    if self.timm_proj != "none":
      raise ValueError(f"{where}: timm_proj {self.timm_proj!r} is not supported ('none': the "
                       "MAP head's output is the feature)")
    if self.image_size != timm.image_size:
      raise ValueError(f"{where}: image_size {self.image_size} differs from the {timm.image_size} "
                       "px that timm builds this tower for")

  @property
  def is_resnet(self) -> bool:
    return isinstance(self.layers, tuple)

  @property
  def timm(self) -> TimmViTConfig | None:
    """The timm tower's architecture (None for hpjax's own ViT and ResNet)."""
    return None if self.timm_model_name is None else timm_vit_config(self.timm_model_name)

  @property
  def heads(self) -> int:
    if self.timm is not None:
      return self.timm.heads
    return (self.width * 32 if self.is_resnet else self.width) // self.head_width

  @property
  def grid_size(self) -> int:
    """Tokens per side: patches of a ViT, the 32x-downsampled feature map of a ResNet."""
    if self.timm is not None:
      return self.image_size // self.timm.patch_size
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
  # SigLIP: bidirectional attention (pool_type 'last'); OpenCLIP's LayerNorm / GELU arguments,
  # kept as sorted (key, value) pairs so configs stay hashable ({"eps": 1e-6}, {"approximate":
  # "tanh"}).
  no_causal_mask: bool = False
  norm_kwargs: tuple[tuple[str, Any], ...] | None = None
  act_kwargs: tuple[tuple[str, Any], ...] | None = None
  # CoCa: a class embedding appended after the tokens, pooled at the last position; pad_id
  # marks the padding its class token may not attend to.
  embed_cls: bool = False
  pad_id: int = 0
  # hpjax's switch for CoCa as OpenCLIP 2.19-2.22 ran it (the study's version): the last of
  # 77 ids is dropped to make room for the class token, and only the class token's query row
  # is pad-masked. Off: OpenCLIP >= 2.24 (context_length ids, every row pad-masked).
  coca_legacy: bool = False
  # OpenCLIP's HF text tower: a transformers model name or local folder, pooling, projection.
  hf_model_name: str | None = None
  hf_tokenizer_name: str | None = None
  hf_pooler_type: str = "mean_pooler"
  hf_proj_type: str = "mlp"

  def __post_init__(self):
    if self.pool_type not in ("argmax", "last"):
      raise ValueError(f"text_cfg.pool_type {self.pool_type!r} is not supported ('argmax': CLIP, "
                       "'last': SigLIP)")
    for field, allowed in (("norm_kwargs", {"eps"}), ("act_kwargs", {"approximate"})):
      unknown = sorted(set(dict(getattr(self, field) or ())) - allowed)
      if unknown:
        raise ValueError(f"text_cfg.{field}: unsupported keys {unknown} (supported: "
                         f"{sorted(allowed)})")
    if self.gelu_approximate not in ("none", "tanh"):
      raise ValueError(f"text_cfg.act_kwargs.approximate {self.gelu_approximate!r}: expected "
                       "'none' or 'tanh'")

  @property
  def norm_eps(self) -> float:
    """LayerNorm epsilon: PyTorch's 1e-5 unless norm_kwargs.eps (SigLIP's 1e-6)."""
    return dict(self.norm_kwargs or ()).get("eps", 1e-5)

  @property
  def gelu_approximate(self) -> str:
    """torch GELU's `approximate` argument from act_kwargs ('tanh' in SigLIP 2's text tower)."""
    return dict(self.act_kwargs or ()).get("approximate", "none")

  @property
  def causal_eot_pooled(self) -> bool:
    """CLIP's own text tower: causal, pooled at EOT, so a text's feature depends only on its own
    tokens (what length buckets and packing rely on). CoCa's appended CLS, SigLIP's
    bidirectional tower pooled at the last position and the HF towers see every position."""
    return (self.hf_model_name is None and not self.embed_cls and self.pool_type == "argmax"
            and not self.no_causal_mask)

  @property
  def input_length(self) -> int:
    """Ids per text the tower takes, the tokenizer's context length (CoCa in legacy mode is
    given 77 ids for its 76 token positions and drops the last)."""
    return self.context_length + int(self.coca_legacy)

  @property
  def hf(self) -> "HFTextConfig | None":
    """The HF encoder's architecture, derived from hf_model_name (None for other towers)."""
    return None if self.hf_model_name is None else hf_text_config(self.hf_model_name)


@dataclasses.dataclass(frozen=True)
class HFTextConfig:
  """The fields of an HF RoBERTa `config.json` that shape the encoder."""
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  vocab_size: int
  max_position_embeddings: int
  type_vocab_size: int = 1
  pad_token_id: int = 1
  layer_norm_eps: float = 1e-5
  hidden_act: str = "gelu"
  model_type: str = "roberta"


HF_TEXT_MODELS = {
    "roberta-base": HFTextConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, vocab_size=50265,
                                 max_position_embeddings=514),
}


@functools.cache
def hf_text_config(name_or_dir: str) -> HFTextConfig:
  """A known HF text model's architecture, or the one in `name_or_dir`/config.json."""
  if name_or_dir in HF_TEXT_MODELS:
    return HF_TEXT_MODELS[name_or_dir]
  path = pathlib.Path(name_or_dir) / "config.json"
  if not path.is_file():
    raise ValueError(f"hf_model_name {name_or_dir!r} is neither a known HF text model "
                     f"({', '.join(HF_TEXT_MODELS)}) nor a folder with an HF config.json")
  raw = json.loads(path.read_text())
  fields = {f.name for f in dataclasses.fields(HFTextConfig)}
  cfg = HFTextConfig(**{k: v for k, v in raw.items() if k in fields})
  if cfg.model_type not in ("roberta", "xlm-roberta"):
    raise ValueError(f"{path}: model_type {cfg.model_type!r} is not supported (RoBERTa only)")
  if cfg.hidden_act != "gelu":
    raise ValueError(f"{path}: hidden_act {cfg.hidden_act!r} is not supported (exact 'gelu')")
  return cfg


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  embed_dim: int
  vision: VisionConfig
  text: TextConfig
  quick_gelu: bool = False
  init_logit_scale: float = 2.6592600345611572  # ln(1 / 0.07), as OpenCLIP.
  init_logit_bias: float | None = None
  # OpenCLIP's CustomTextCLIP (and CoCa) key the text tower under `text.`.
  custom_text: bool = False
  # CoCa's captioning decoder: recorded (sorted (key, value) pairs, hashable), not built.
  multimodal_cfg: tuple[tuple[str, Any], ...] | None = None
  name: str = "custom"

  @property
  def text_key_prefix(self) -> str:
    """Prefix of the text tower's keys in OpenCLIP files of this architecture."""
    nested = (self.custom_text or self.multimodal_cfg is not None
              or self.text.hf_model_name is not None)
    return "text." if nested else ""

  @property
  def ignored_key_prefixes(self) -> tuple[str, ...]:
    """OpenCLIP keys of parts hpjax does not build (CoCa's decoder): listed, never loaded."""
    return ("text_decoder.",) if self.multimodal_cfg is not None else ()

  @classmethod
  def from_dict(cls, d: dict[str, Any], name: str = "custom") -> "CLIPConfig":
    d = dict(d)
    vision = _build(VisionConfig, d.pop("vision_cfg", {}), f"{name}: vision_cfg",
                    _IGNORED_VISION_FIELDS)
    text = _build(TextConfig, d.pop("text_cfg", {}), f"{name}: text_cfg", _IGNORED_TEXT_FIELDS)
    if text.hf_model_name is not None:
      _check_hf_text(text, f"{name}: text_cfg")
    if not isinstance(vision.attentional_pool, bool):  # OpenCLIP's WIP 'parallel' / 'cascade'
      raise ValueError(f"{name}: vision_cfg: attentional_pool {vision.attentional_pool!r} is not "
                       "supported (true or false: CoCa's original pooler)")
    if isinstance(d.get("multimodal_cfg"), dict):
      d["multimodal_cfg"] = tuple(sorted(d["multimodal_cfg"].items()))
    top = {f.name for f in dataclasses.fields(cls)} - {"vision", "text", "name"}
    unknown = sorted(set(d) - top)
    if unknown:
      raise ValueError(f"{name}: unsupported top-level config fields {unknown}; known: {sorted(top)}")
    if "embed_dim" not in d:
      raise ValueError(f"{name}: config has no 'embed_dim'")
    if vision.timm is not None and d["embed_dim"] != vision.timm.width:
      raise ValueError(f"{name}: embed_dim {d['embed_dim']} differs from the width "
                       f"{vision.timm.width} of {vision.timm_model_name!r}, whose MAP head's "
                       "output is the image feature (timm_proj 'none')")
    if d.get("quick_gelu") and text.act_kwargs:
      raise ValueError(f"{name}: quick_gelu and text_cfg.act_kwargs exclude each other "
                       "(OpenCLIP's QuickGELU takes no arguments)")
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
    if self.multimodal_cfg is not None:
      out["multimodal_cfg"] = dict(self.multimodal_cfg)
    if self.custom_text:
      out["custom_text"] = True
    return out


def _check_hf_text(text: TextConfig, where: str) -> None:
  """Fails early on an unknown HF model or a pooler / projection the port does not have."""
  text.hf  # pylint: disable=pointless-statement
  if text.hf_pooler_type != "mean_pooler":
    raise ValueError(f"{where}: hf_pooler_type {text.hf_pooler_type!r} is not supported "
                     "(use 'mean_pooler')")
  if text.hf_proj_type not in ("mlp", "linear"):
    raise ValueError(f"{where}: hf_proj_type {text.hf_proj_type!r} is not supported "
                     "(use 'mlp' or 'linear')")


def _hashable(value):
  """JSON lists -> tuples, objects -> sorted (key, value) pairs: frozen configs stay hashable."""
  if isinstance(value, list):
    return tuple(value)
  if isinstance(value, dict):
    return tuple(sorted(value.items()))
  return value


def _build(cls, fields: dict[str, Any], where: str, ignored: set[str]):
  fields = {k: _hashable(v) for k, v in fields.items() if k not in ignored}
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(
        f"{where}: unsupported fields {unknown} (timm towers and other OpenCLIP variants are "
        f"not ported); supported: {sorted(known)}")
  return cls(**fields)


_PAIR_FIELDS = ("norm_kwargs", "act_kwargs")  # JSON objects, kept as (key, value) pairs


def _non_default(cfg) -> dict[str, Any]:
  out = {}
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    if f.name in _PAIR_FIELDS and value is not None:
      value = dict(value)
    elif isinstance(value, tuple):
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
