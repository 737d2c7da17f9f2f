"""HF transformers `CLIPModel` / `SiglipModel` <-> OpenCLIP keys: rule sets read both ways.

HF splits attention into q/k/v projections (OpenCLIP's fused `in_proj_weight` is their
concatenation), stores the projections as bias-free Linear layers ((out, in), where OpenCLIP
keeps (in, out) matrices) and names the rest differently. An HF file is renamed into OpenCLIP
keys and then goes through the same OpenCLIP <-> Flax table and checks as an OpenCLIP
checkpoint (`hf_to_openclip`); an export runs the same rules backwards (`openclip_to_hf`) and
writes a folder that `transformers.CLIPModel`, `CLIPTokenizer` and `CLIPImageProcessor` read
(for SigLIP: `SiglipModel` and `SiglipImageProcessor`; the architecture of a SiglipModel folder
is inferred from its config.json, `infer_siglip_config`).

Equivalences to know (checked by tests/test_hf_import.py and tests/test_hf_export.py):
* Activation: HF's `hidden_act='quick_gelu'` is OpenCLIP's `quick_gelu: true` (OpenAI weights);
  `'gelu'` is the exact erf GELU. Head counts and the activation are not visible in the weights:
  pick the hpjax config that matches the HF config (openai/clip-vit-base-patch32 is
  ViT-B-32-quickgelu, clip-vit-base-patch16 is ViT-B-16 with quick_gelu, ...).
* Text pooling: HF pools at the first `eos_token_id` (49407 in current configs) or, for legacy
  configs with eos_token_id == 2, at argmax(input_ids). OpenCLIP and hpjax pool at
  argmax(input_ids). Both pick the first EOT whenever a sequence contains EOT (it is the largest
  id); they differ only for sequences without any EOT. Exports write eos_token_id = 49407.
* Padding: OpenCLIP pads with id 0; the exported tokenizer pads with `<|endoftext|>` (49407), as
  OpenAI's HF repositories do, so its ids equal hpjax's up to the first EOT and differ only in
  the padding after it, which neither the causal text tower nor the EOT pooling reads. (Padding
  with "!", id 0, would make HF split every "!" in a caption off as the pad token.)
* HF's `position_ids` buffer is not a weight and is dropped.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping

from absl import logging
from etils import epath
import numpy as np
import safetensors.numpy

from hpjax import preprocess
from hpjax import tokenizer as tokenizer_lib
from hpjax.checkpoints import files, renaming
from hpjax.checkpoints.renaming import ADD_AXIS, DROP_AXIS, SAME, TRANSPOSE
from hpjax.models import config as config_lib
from hpjax.models.config import CLIPConfig

# (HF key, OpenCLIP key, change) rules (checkpoints/renaming.py): `{qkv}` on the HF side only
# fuses q/k/v into OpenCLIP's in_proj; `{T}` is HF's tower (text/vision), `{P}` OpenCLIP's
# prefix for it.
_TOWER_RULES = (
    ("{T}_model.encoder.layers.{n}.self_attn.{qkv}_proj.{p}",
     "{P}transformer.resblocks.{n}.attn.in_proj_{p}", SAME),
    ("{T}_model.encoder.layers.{n}.self_attn.out_proj.{p}",
     "{P}transformer.resblocks.{n}.attn.out_proj.{p}", SAME),
    ("{T}_model.encoder.layers.{n}.layer_norm{i}.{p}", "{P}transformer.resblocks.{n}.ln_{i}.{p}",
     SAME),
    ("{T}_model.encoder.layers.{n}.mlp.fc1.{p}", "{P}transformer.resblocks.{n}.mlp.c_fc.{p}", SAME),
    ("{T}_model.encoder.layers.{n}.mlp.fc2.{p}", "{P}transformer.resblocks.{n}.mlp.c_proj.{p}",
     SAME),
)


def _tower(tower: str, prefix: str) -> tuple:
  return tuple((hf.replace("{T}", tower), oc.replace("{P}", prefix), change)
               for hf, oc, change in _TOWER_RULES)


_TEXT_RULES = _tower("text", "") + (
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight", SAME),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding", SAME),
    ("text_model.final_layer_norm.{p}", "ln_final.{p}", SAME),
)
RULES = _TEXT_RULES + _tower("vision", "visual.") + (
    ("vision_model.embeddings.class_embedding", "visual.class_embedding", SAME),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight", SAME),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding", SAME),
    ("vision_model.pre_layrnorm.{p}", "visual.ln_pre.{p}", SAME),
    ("vision_model.post_layernorm.{p}", "visual.ln_post.{p}", SAME),
    ("text_projection.weight", "text_projection", TRANSPOSE),
    ("visual_projection.weight", "visual.proj", TRANSPOSE),
    ("logit_scale", "logit_scale", SAME),
)
# HF SiglipModel <-> OpenCLIP's SigLIP (timm trunk `visual.trunk.*`, CLIP's text tower with a
# biased head). HF's MAP head keeps torch's fused in_proj where timm has q and kv (`{q_kv}`);
# HF's vision positions lack timm's leading axis, its logit scale and bias are (1,), not ().
_TRUNK, _LAYER = "visual.trunk.", "vision_model.encoder.layers.{n}."
SIGLIP_RULES = _TEXT_RULES + (
    ("text_model.head.{p}", "text_projection.{p}", SAME),
    ("vision_model.embeddings.patch_embedding.{p}", _TRUNK + "patch_embed.proj.{p}", SAME),
    ("vision_model.embeddings.position_embedding.weight", _TRUNK + "pos_embed", ADD_AXIS),
    (_LAYER + "self_attn.{qkv}_proj.{p}", _TRUNK + "blocks.{n}.attn.qkv.{p}", SAME),
    (_LAYER + "self_attn.out_proj.{p}", _TRUNK + "blocks.{n}.attn.proj.{p}", SAME),
    (_LAYER + "layer_norm{i}.{p}", _TRUNK + "blocks.{n}.norm{i}.{p}", SAME),
    (_LAYER + "mlp.fc{i}.{p}", _TRUNK + "blocks.{n}.mlp.fc{i}.{p}", SAME),
    ("vision_model.post_layernorm.{p}", _TRUNK + "norm.{p}", SAME),
    ("vision_model.head.probe", _TRUNK + "attn_pool.latent", SAME),
    ("vision_model.head.attention.in_proj_{p}", _TRUNK + "attn_pool.{q_kv}.{p}", SAME),
    ("vision_model.head.attention.out_proj.{p}", _TRUNK + "attn_pool.proj.{p}", SAME),
    ("vision_model.head.layernorm.{p}", _TRUNK + "attn_pool.norm.{p}", SAME),
    ("vision_model.head.mlp.fc{i}.{p}", _TRUNK + "attn_pool.mlp.fc{i}.{p}", SAME),
    ("logit_scale", "logit_scale", DROP_AXIS),
    ("logit_bias", "logit_bias", DROP_AXIS),
)



def _patch_linear(value, context):
  """Siglip2Model's patch Linear (width, patch * patch * 3), over patches flattened as (row,
  column, channel), as the conv kernel (width, 3, patch, patch) it applies."""
  del context
  patch = round((value.shape[-1] / 3) ** 0.5)
  if value.ndim != 2 or 3 * patch * patch != value.shape[1]:
    raise ValueError(f"expected (width, patch * patch * 3), got {value.shape}")
  return value.reshape(value.shape[0], patch, patch, 3).transpose(0, 3, 1, 2)


# HF Siglip2Model (NaFlex) at its native grid: its patch embedding is a Linear over flattened
# patches, and its positions, resized per image, are the identity at that grid. Else SiglipModel.
_PATCH_LINEAR = renaming.Change(
    "patch_linear", _patch_linear,
    lambda v, c: v.transpose(0, 2, 3, 1).reshape(v.shape[0], -1))
SIGLIP2_RULES = (("vision_model.embeddings.patch_embedding.weight",
                  _TRUNK + "patch_embed.proj.weight", _PATCH_LINEAR),) + SIGLIP_RULES
CLIP_MODEL, SIGLIP_MODEL, SIGLIP2_MODEL = "CLIPModel", "SiglipModel", "Siglip2Model"
_TABLES = {CLIP_MODEL: renaming.RuleTable(RULES), SIGLIP_MODEL: renaming.RuleTable(SIGLIP_RULES),
           SIGLIP2_MODEL: renaming.RuleTable(SIGLIP2_RULES)}

HF_SOT, HF_EOT = "<|startoftext|>", "<|endoftext|>"


def is_hf_state_dict(state_dict: Mapping[str, object]) -> bool:
  return any(k.startswith(("text_model.", "vision_model.")) for k in state_dict)


def hf_model_class(state_dict: Mapping[str, object]) -> str:
  """SiglipModel (a logit bias, a MAP head `head.probe`), Siglip2Model (the same, with a Linear
  patch embedding) or CLIPModel."""
  if "logit_bias" not in state_dict and "vision_model.head.probe" not in state_dict:
    return CLIP_MODEL
  patch = state_dict.get("vision_model.embeddings.patch_embedding.weight")
  return SIGLIP2_MODEL if np.ndim(patch) == 2 else SIGLIP_MODEL


def hf_to_openclip(state_dict: Mapping[str, np.ndarray], source: str = "HF checkpoint"
                   ) -> dict[str, np.ndarray]:
  """Renames an HF CLIPModel or SiglipModel state dict into OpenCLIP keys; unknown keys pass
  through unchanged so that the shape/key check reports them."""
  state_dict = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
  out, unmatched, _ = _TABLES[hf_model_class(state_dict)].convert(state_dict, True, source)
  return {**out, **{k: state_dict[k] for k in unmatched}}


def openclip_to_hf(state_dict: Mapping[str, np.ndarray], source: str = "params",
                   model: str = CLIP_MODEL) -> dict[str, np.ndarray]:
  """The same rules backwards, into the keys of HF class `model`; an OpenCLIP key without an
  HF counterpart (LayerScale, a text projection bias in a CLIPModel, ...) is an error listing
  every such key."""
  out, unmatched, _ = _TABLES[model].convert(state_dict, False, source)
  if unmatched:
    raise ValueError(f"{source}: {len(unmatched)} key(s) have no HF {model} counterpart: "
                     f"{sorted(unmatched)}")
  return out


def is_siglip(config: CLIPConfig) -> bool:
  """Whether `config` exports as an HF SiglipModel (a timm SigLIP image tower) or a CLIPModel."""
  return config.vision.timm is not None


def _refuse(config: CLIPConfig, model: str, unsupported: dict) -> None:
  unsupported = {k: v for k, v in unsupported.items() if v is not None}
  if unsupported:
    raise ValueError(f"model {config.name!r} cannot be exported as an HF {model}: "
                     f"{unsupported} have no {model} equivalent")


def _gelu(approximate: bool) -> str:
  return "gelu_pytorch_tanh" if approximate else "gelu"


def siglip_config(config: CLIPConfig) -> dict:
  """The `SiglipModel` config.json of an hpjax SigLIP config (each tower's GELU as hpjax computes
  it); refuses what SiglipModel cannot compute."""
  vision, text = config.vision.timm, config.text
  wanted = {"text_cfg.no_causal_mask": (text.no_causal_mask, True),
            "text_cfg.pool_type": (text.pool_type, "last"),
            "text_cfg.proj_bias": (text.proj_bias, True),
            "text_cfg.ls_init_value": (text.ls_init_value, None),
            "text_cfg.hf_model_name": (text.hf_model_name, None),
            "text_cfg.embed_cls": (text.embed_cls, False), "quick_gelu": (config.quick_gelu, False)}
  _refuse(config, "SiglipModel", {
      **{k: got for k, (got, want) in wanted.items() if got != want},
      "init_logit_bias": "null" if config.init_logit_bias is None else None})
  return {
      "architectures": ["SiglipModel"], "model_type": "siglip", "initializer_factor": 1.0,
      "torch_dtype": "float32",
      "text_config": {
          "model_type": "siglip_text_model", "vocab_size": text.vocab_size,
          "hidden_size": text.width, "intermediate_size": int(text.width * text.mlp_ratio),
          "num_hidden_layers": text.layers, "num_attention_heads": text.heads,
          "max_position_embeddings": text.context_length, "projection_size": config.embed_dim,
          "hidden_act": _gelu(text.gelu_approximate == "tanh"), "layer_norm_eps": text.norm_eps,
          "attention_dropout": 0.0},
      "vision_config": {
          "model_type": "siglip_vision_model", "hidden_size": vision.width,
          "intermediate_size": vision.mlp_dim, "num_hidden_layers": vision.layers,
          "num_attention_heads": vision.heads, "image_size": vision.image_size,
          "patch_size": vision.patch_size, "num_channels": 3, "hidden_act": _gelu(vision.gelu_tanh),
          "layer_norm_eps": 1e-6, "attention_dropout": 0.0, "vision_use_head": True},
  }


_TANH_GELUS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")


def infer_siglip_config(hf: Mapping, source: str) -> CLIPConfig:
  """The hpjax config of an HF `SiglipModel` config.json (or `Siglip2Model`'s, at the resolution
  of its position grid): the text tower as HF computes it; the image tower the timm SigLIP
  tower of the same sizes (`TIMM_SIGLIP_MODELS`), whose GELU is timm's (as in OpenCLIP: exact
  for SigLIP's B/16, L/16-256/384 and So400m/14, where HF and big_vision compute the tanh
  form). Named after the shipped config it equals, if any; `hf_tokenizer_name` is the folder
  `source` (its spiece.model / tokenizer.model)."""
  if hf.get("model_type") not in ("siglip", "siglip2"):
    raise ValueError(f"{source}: config.json has model_type {hf.get('model_type')!r}; hpjax "
                     "infers the architecture of SiglipModel / Siglip2Model ('siglip', "
                     "'siglip2') folders only (for a CLIPModel, name the matching hpjax config)")
  text, vision = hf["text_config"], hf["vision_config"]
  # Siglip2Model (NaFlex) holds a square grid of num_patches positions: its native resolution.
  image_size = vision.get("image_size") or vision["patch_size"] * round(vision["num_patches"] ** .5)
  sizes = (vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"],
           vision["patch_size"], image_size, vision["intermediate_size"])
  towers = sorted((t.gelu_tanh != (vision.get("hidden_act") in _TANH_GELUS), name)
                  for name, t in config_lib.TIMM_SIGLIP_MODELS.items()
                  if (t.width, t.layers, t.heads, t.patch_size, t.image_size, t.mlp_dim) == sizes)
  if not towers:
    raise ValueError(f"{source}: no known timm SigLIP tower has the vision_config sizes (width, "
                     f"layers, heads, patch, image size, mlp) {sizes}")
  (activation_differs, timm_name), hidden = towers[0], text["hidden_size"]
  if activation_differs:
    logging.warning("%s: vision hidden_act %r; hpjax computes %s with timm's GELU, as OpenCLIP "
                    "does", source, vision.get("hidden_act"), timm_name)
  text_cfg = {"context_length": text["max_position_embeddings"],
              "vocab_size": text["vocab_size"], "width": hidden,
              "heads": text["num_attention_heads"], "layers": text["num_hidden_layers"],
              "mlp_ratio": text["intermediate_size"] / hidden, "no_causal_mask": True,
              "proj_bias": True, "pool_type": "last", "hf_tokenizer_name": source,
              "norm_kwargs": {"eps": text.get("layer_norm_eps", 1e-6)}}
  if text.get("hidden_act") in _TANH_GELUS:
    text_cfg["act_kwargs"] = {"approximate": "tanh"}
  config = CLIPConfig.from_dict({
      "embed_dim": text.get("projection_size", hidden), "init_logit_bias": -10,
      "custom_text": True, "text_cfg": text_cfg,
      "vision_cfg": {"image_size": image_size, "timm_model_name": timm_name,
                     "timm_pool": "map", "timm_proj": "none"}}, name="hf-siglip-inferred")
  bare = lambda c: dataclasses.replace(c, name="", text=dataclasses.replace(
      c.text, hf_tokenizer_name=None))
  for name in config_lib.list_models():
    shipped = config_lib.get_model_config(name)
    if bare(shipped) == bare(config):
      return dataclasses.replace(shipped, text=dataclasses.replace(shipped.text,
                                                                  hf_tokenizer_name=source))
  return config


def hf_config(config: CLIPConfig) -> dict:
  """The `CLIPModel` config.json of an hpjax config; refuses what CLIPModel cannot compute."""
  if is_siglip(config):
    return siglip_config(config)
  vision, text = config.vision, config.text
  unsupported = {
      "vision_cfg.ls_init_value": vision.ls_init_value, "text_cfg.ls_init_value":
      text.ls_init_value, "init_logit_bias": config.init_logit_bias}
  for field, value, want in (("vision_cfg.pool_type", vision.pool_type, "tok"),
                             ("text_cfg.pool_type", text.pool_type, "argmax"),
                             ("vision_cfg.no_ln_pre", vision.no_ln_pre, False),
                             ("text_cfg.proj_bias", text.proj_bias, False)):
    if value != want:
      unsupported[field] = value
  _refuse(config, "CLIPModel", unsupported)
  act = "quick_gelu" if config.quick_gelu else "gelu"
  common = {"hidden_act": act, "layer_norm_eps": 1e-5, "projection_dim": config.embed_dim,
            "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0,
            "initializer_range": 0.02}
  return {
      "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.embed_dim,
      "logit_scale_init_value": config.init_logit_scale, "initializer_factor": 1.0,
      "torch_dtype": "float32",
      "text_config": {
          **common, "model_type": "clip_text_model", "vocab_size": text.vocab_size,
          "hidden_size": text.width, "intermediate_size": int(text.width * text.mlp_ratio),
          "num_hidden_layers": text.layers, "num_attention_heads": text.heads,
          "max_position_embeddings": text.context_length,
          "bos_token_id": tokenizer_lib.SOT_ID, "eos_token_id": tokenizer_lib.EOT_ID,
          "pad_token_id": tokenizer_lib.EOT_ID},
      "vision_config": {
          **common, "model_type": "clip_vision_model", "hidden_size": vision.width,
          "intermediate_size": int(vision.width * vision.mlp_ratio),
          "num_hidden_layers": vision.layers, "num_attention_heads": vision.heads,
          "image_size": vision.image_size, "patch_size": vision.patch_size, "num_channels": 3},
  }


def image_processor_config(image_size: int, siglip: bool = False) -> dict:
  """`CLIPImageProcessor` settings of hpjax's (= OpenCLIP's) eval transform: bicubic resize of
  the shorter side, centre crop, OpenAI mean and std. SigLIP: `SiglipImageProcessor`'s bicubic
  square resize with mean = std = 0.5 (`preprocess.model_transform`'s SigLIP transform)."""
  if siglip:
    return {"image_processor_type": "SiglipImageProcessor", "do_convert_rgb": True,
            "do_resize": True, "size": {"height": image_size, "width": image_size},
            "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(preprocess.INCEPTION_MEAN),
            "image_std": list(preprocess.INCEPTION_STD)}
  return {"image_processor_type": "CLIPImageProcessor", "do_convert_rgb": True,
          "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
          "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
          "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
          "image_mean": preprocess.OPENAI_MEAN.tolist(), "image_std": preprocess.OPENAI_STD.tolist()}


def tokenizer_files(context_length: int) -> dict[str, str]:
  """vocab.json, merges.txt and the tokenizer config of hpjax's (= OpenCLIP's) CLIP BPE."""
  vocab, merges = tokenizer_lib._vocab_and_merges()  # pylint: disable=protected-access
  hf_vocab = {{tokenizer_lib.SOT_TOKEN: HF_SOT, tokenizer_lib.EOT_TOKEN: HF_EOT}.get(t, t): i
              for t, i in vocab.items()}
  config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": context_length,
            "bos_token": HF_SOT, "eos_token": HF_EOT, "unk_token": HF_EOT, "pad_token": HF_EOT,
            "do_lower_case": True, "errors": "replace", "clean_up_tokenization_spaces": False}
  special = {"bos_token": HF_SOT, "eos_token": HF_EOT, "unk_token": HF_EOT, "pad_token": HF_EOT}
  return {"vocab.json": json.dumps(hf_vocab, ensure_ascii=False),
          "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
          "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
          "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}


def sentencepiece_tokenizer_files(tokenizer: tokenizer_lib.SentencePieceTokenizer
                                  ) -> dict[str, str | bytes]:
  """The SentencePiece model and the transformers tokenizer config giving `tokenizer`'s ids:
  SiglipTokenizer for SigLIP's T5 vocabularies (pad = EOS), GemmaTokenizer for SigLIP 2's
  (no BOS, EOS appended, `<pad>` on the right)."""
  piece = tokenizer.processor.id_to_piece
  special = {"eos_token": piece(tokenizer.eot_token_id), "pad_token": piece(tokenizer.pad_token_id),
             "unk_token": piece(tokenizer.processor.unk_id())}
  common = {"model_max_length": tokenizer.context_length, **special}
  if tokenizer.processor.bos_id() < 0:
    name, config = "spiece.model", {"tokenizer_class": "SiglipTokenizer", "do_lower_case": True}
  else:
    name, config = "tokenizer.model", {
        "tokenizer_class": "GemmaTokenizer", "bos_token": piece(tokenizer.processor.bos_id()),
        "add_bos_token": False, "add_eos_token": True, "padding_side": "right"}
  return {name: tokenizer.model_file.read_bytes(),
          "tokenizer_config.json": json.dumps({**config, **common}, indent=2) + "\n",
          "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}


def write_folder(openclip_state: Mapping[str, np.ndarray], config: CLIPConfig, folder,
                 tokenizer=None) -> epath.Path:
  """Writes an HF CLIPModel folder (config.json, model.safetensors, tokenizer and image processor
  files), or for SigLIP a SiglipModel folder, with the tokenizer files of `tokenizer` (its
  SentencePiece model or a folder holding it) if given, from an OpenCLIP-keyed fp32 state dict
  (`text.` prefixes stripped). The folder must not exist; it appears complete or not at all
  (`files.write_aside`)."""
  folder = files.check_destination(folder)
  siglip = is_siglip(config)
  if not siglip:
    if tokenizer is not None:
      raise ValueError(f"model {config.name!r}: tokenizer= is for SigLIP models (their "
                       "SentencePiece model); CLIP folders get hpjax's BPE vocabulary")
    tokenizer_names = tokenizer_files(config.text.context_length)
  elif tokenizer is not None:
    tokenizer_names = sentencepiece_tokenizer_files(
        tokenizer_lib.SentencePieceTokenizer(tokenizer, config.text.context_length))
  else:
    tokenizer_names = {}
  contents = {"config.json": json.dumps(hf_config(config), indent=2) + "\n",
              "preprocessor_config.json": json.dumps(
                  image_processor_config(config.vision.image_size, siglip), indent=2) + "\n",
              **tokenizer_names}
  weights = openclip_to_hf(openclip_state, f"model {config.name!r}",
                           SIGLIP_MODEL if siglip else CLIP_MODEL)

  def write(aside: epath.Path) -> None:
    aside.mkdir(parents=True)
    (aside / "model.safetensors").write_bytes(safetensors.numpy.save(
        {k: np.asarray(v, np.float32) for k, v in sorted(weights.items())},
        metadata={"format": "pt"}))
    for name, content in contents.items():
      if isinstance(content, bytes):
        (aside / name).write_bytes(content)
      else:
        (aside / name).write_text(content)

  return files.write_aside(folder, write)
