"""HF transformers `CLIPModel` <-> OpenCLIP keys: one rule set, read in both directions.

HF splits attention into q/k/v projections (OpenCLIP's fused `in_proj_weight` is their
concatenation), stores the projections as bias-free Linear layers ((out, in), where OpenCLIP
keeps (in, out) matrices) and names the rest differently. An HF file is renamed into OpenCLIP
keys and then goes through the same OpenCLIP <-> Flax table and checks as an OpenCLIP
checkpoint (`hf_to_openclip`); an export runs the same rules backwards (`openclip_to_hf`) and
writes a folder that `transformers.CLIPModel`, `CLIPTokenizer` and `CLIPImageProcessor` read.

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

import json
import os
import re
import uuid
from typing import Mapping

from etils import epath
import numpy as np
import safetensors.numpy

from hpjax import preprocess
from hpjax import tokenizer as tokenizer_lib
from hpjax.models.config import CLIPConfig

# How a tensor changes between the two sides: kept, transposed, or q/k/v split <-> fused.
SAME, TRANSPOSE, QKV = "same", "transpose", "qkv"
_TOWERS = (("text", ""), ("vision", "visual."))
_PLACEHOLDERS = {"n": r"\d+", "p": "weight|bias", "i": r"\d", "qkv": "[qkv]"}

# (HF key, OpenCLIP key, how): `{T}` is HF's tower (text/vision), `{P}` OpenCLIP's prefix for it.
_TOWER_RULES = (
    ("{T}_model.encoder.layers.{n}.self_attn.{qkv}_proj.{p}",
     "{P}transformer.resblocks.{n}.attn.in_proj_{p}", QKV),
    ("{T}_model.encoder.layers.{n}.self_attn.out_proj.{p}",
     "{P}transformer.resblocks.{n}.attn.out_proj.{p}", SAME),
    ("{T}_model.encoder.layers.{n}.layer_norm{i}.{p}", "{P}transformer.resblocks.{n}.ln_{i}.{p}",
     SAME),
    ("{T}_model.encoder.layers.{n}.mlp.fc1.{p}", "{P}transformer.resblocks.{n}.mlp.c_fc.{p}", SAME),
    ("{T}_model.encoder.layers.{n}.mlp.fc2.{p}", "{P}transformer.resblocks.{n}.mlp.c_proj.{p}",
     SAME),
)
RULES = tuple(
    (hf.replace("{T}", tower), oc.replace("{P}", prefix), how)
    for tower, prefix in _TOWERS for hf, oc, how in _TOWER_RULES) + (
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight", SAME),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding", SAME),
    ("text_model.final_layer_norm.{p}", "ln_final.{p}", SAME),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding", SAME),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight", SAME),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding", SAME),
    ("vision_model.pre_layrnorm.{p}", "visual.ln_pre.{p}", SAME),
    ("vision_model.post_layernorm.{p}", "visual.ln_post.{p}", SAME),
    ("text_projection.weight", "text_projection", TRANSPOSE),
    ("visual_projection.weight", "visual.proj", TRANSPOSE),
    ("logit_scale", "logit_scale", SAME),
)

HF_SOT, HF_EOT = "<|startoftext|>", "<|endoftext|>"


def _regex(template: str) -> re.Pattern:
  parts = re.split(r"\{(\w+)\}", template)
  return re.compile("".join(
      re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})"
      for i, part in enumerate(parts)))


_COMPILED = tuple((_regex(hf), _regex(oc), hf, oc, how) for hf, oc, how in RULES)


def _match(key: str, side: int):
  """(groups, the other side's template, how) of the first rule whose `side` matches `key`."""
  for rule in _COMPILED:
    found = rule[side].fullmatch(key)
    if found:
      return found.groupdict(), rule[3 - side], rule[4]
  return None


def is_hf_state_dict(state_dict: Mapping[str, object]) -> bool:
  return any(k.startswith(("text_model.", "vision_model.")) for k in state_dict)


def hf_to_openclip(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames an HF CLIPModel state dict into OpenCLIP keys; unknown keys pass through unchanged
  so that the shape/key check reports them."""
  out, qkv = {}, {}
  for key, value in state_dict.items():
    if key.endswith("position_ids"):
      continue
    rule = _match(key, 0)
    if rule is None:
      out[key] = value
      continue
    groups, template, how = rule
    name = template.format(**groups)
    if how == QKV:
      qkv.setdefault(name, {})[groups["qkv"]] = value
    else:
      out[name] = np.array(np.asarray(value).T, order="C") if how == TRANSPOSE else value
  for name, parts in qkv.items():
    if set(parts) != {"q", "k", "v"}:
      raise ValueError(f"HF checkpoint: {name} has only the {sorted(parts)} projections, "
                       "expected q, k and v")
    out[name] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
  return out


def openclip_to_hf(state_dict: Mapping[str, np.ndarray], source: str = "params"
                   ) -> dict[str, np.ndarray]:
  """The same rules backwards; an OpenCLIP key without an HF CLIPModel counterpart (LayerScale,
  a text projection bias, ...) is an error listing every such key."""
  out, unmapped = {}, []
  for key, value in state_dict.items():
    rule = _match(key, 1)
    if rule is None:
      unmapped.append(key)
      continue
    groups, template, how = rule
    value = np.asarray(value)
    if how == QKV:
      for part, chunk in zip("qkv", np.split(value, 3, axis=0)):
        out[template.format(**groups, qkv=part)] = np.array(chunk, order="C")
    else:
      out[template.format(**groups)] = np.array(value.T if how == TRANSPOSE else value, order="C")
  if unmapped:
    raise ValueError(f"{source}: {len(unmapped)} key(s) have no HF CLIPModel counterpart: "
                     f"{sorted(unmapped)}")
  return out


def hf_config(config: CLIPConfig) -> dict:
  """The `CLIPModel` config.json of an hpjax config; refuses what CLIPModel cannot compute."""
  vision, text = config.vision, config.text
  unsupported = {
      "vision_cfg.ls_init_value": vision.ls_init_value, "text_cfg.ls_init_value":
      text.ls_init_value, "init_logit_bias": config.init_logit_bias}
  unsupported = {k: v for k, v in unsupported.items() if v is not None}
  for field, value, want in (("vision_cfg.pool_type", vision.pool_type, "tok"),
                             ("text_cfg.pool_type", text.pool_type, "argmax"),
                             ("vision_cfg.no_ln_pre", vision.no_ln_pre, False),
                             ("text_cfg.proj_bias", text.proj_bias, False)):
    if value != want:
      unsupported[field] = value
  if unsupported:
    raise ValueError(f"model {config.name!r} cannot be exported as an HF CLIPModel: "
                     f"{unsupported} have no CLIPModel equivalent")
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


def image_processor_config(image_size: int) -> dict:
  """`CLIPImageProcessor` settings of hpjax's (= OpenCLIP's) eval transform: bicubic resize of
  the shorter side, centre crop, OpenAI mean and std."""
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


def write_folder(openclip_state: Mapping[str, np.ndarray], config: CLIPConfig, folder
                 ) -> epath.Path:
  """Writes an HF CLIPModel folder (config.json, model.safetensors, tokenizer and image processor
  files) from an
  OpenCLIP-keyed fp32 state dict. The folder must not exist; it appears complete or not at
  all (written under a temporary name, then renamed)."""
  folder = epath.Path(folder)
  if folder.exists():
    raise FileExistsError(f"{folder} exists; remove it or choose another folder")
  files = {"config.json": json.dumps(hf_config(config), indent=2) + "\n",
           "preprocessor_config.json": json.dumps(
               image_processor_config(config.vision.image_size), indent=2) + "\n",
           **tokenizer_files(config.text.context_length)}
  weights = openclip_to_hf(openclip_state, f"model {config.name!r}")
  tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp.mkdir(parents=True)
  try:
    (tmp / "model.safetensors").write_bytes(safetensors.numpy.save(
        {k: np.asarray(v, np.float32) for k, v in sorted(weights.items())},
        metadata={"format": "pt"}))
    for name, text in files.items():
      (tmp / name).write_text(text)
    tmp.rename(folder)
  except BaseException:
    tmp.rmtree(missing_ok=True)
    raise
  return folder
