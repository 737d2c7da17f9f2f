"""HF transformers `CLIPModel` state dicts, renamed into OpenCLIP keys.

HF splits attention into q/k/v projections (concatenated here into OpenCLIP's fused
`in_proj_weight`), stores the projections as bias-free Linear layers ((out, in): transposed
here into OpenCLIP's (in, out) matrices) and names the rest differently. The result goes
through the same table and checks as an OpenCLIP checkpoint.

Equivalences to know (checked by tests/test_hf_import.py):
* Activation: HF's `hidden_act='quick_gelu'` is OpenCLIP's `quick_gelu: true` (OpenAI weights);
  `'gelu'` is the exact erf GELU. Head counts and the activation are not visible in the weights:
  pick the hpjax config that matches the HF config (openai/clip-vit-base-patch32 is
  ViT-B-32-quickgelu, clip-vit-base-patch16 is ViT-B-16 with quick_gelu, ...).
* Text pooling: HF pools at the first `eos_token_id` (49407 in current configs) or, for legacy
  configs with eos_token_id == 2, at argmax(input_ids). OpenCLIP and hpjax pool at
  argmax(input_ids). Both pick the first EOT whenever a sequence contains EOT (it is the largest
  id); they differ only for sequences without any EOT.
* HF's `position_ids` buffer is not a weight and is dropped.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

# (HF key regex, OpenCLIP key template); q/k/v and the projections are handled separately.
_RENAMES = (
    (r"text_model\.embeddings\.token_embedding\.weight", "token_embedding.weight"),
    (r"text_model\.embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"text_model\.final_layer_norm\.(weight|bias)", r"ln_final.\1"),
    (r"vision_model\.embeddings\.class_embedding", "visual.class_embedding"),
    (r"vision_model\.embeddings\.patch_embedding\.weight", "visual.conv1.weight"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "visual.positional_embedding"),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"visual.ln_pre.\1"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"visual.ln_post.\1"),
    (r"(text|vision)_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
     r"\1:transformer.resblocks.\2.attn.out_proj.\3"),
    (r"(text|vision)_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.(weight|bias)",
     r"\1:transformer.resblocks.\2.ln_\3.\4"),
    (r"(text|vision)_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)",
     r"\1:transformer.resblocks.\2.mlp.c_fc.\3"),
    (r"(text|vision)_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)",
     r"\1:transformer.resblocks.\2.mlp.c_proj.\3"),
    (r"logit_scale", "logit_scale"),
)
_QKV = re.compile(r"(text|vision)_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")
_PROJECTIONS = {"text_projection.weight": "text_projection",
                "visual_projection.weight": "visual.proj"}
_TOWER_PREFIX = {"text": "", "vision": "visual."}


def is_hf_state_dict(state_dict: Mapping[str, object]) -> bool:
  return any(k.startswith(("text_model.", "vision_model.")) for k in state_dict)


def hf_to_openclip(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames an HF CLIPModel state dict into OpenCLIP keys; unknown keys pass through unchanged
  so that the shape/key check reports them."""
  out, qkv = {}, {}
  for key, value in state_dict.items():
    if key.endswith("position_ids"):
      continue
    if key in _PROJECTIONS:
      out[_PROJECTIONS[key]] = np.array(np.asarray(value).T, order="C")
      continue
    match = _QKV.fullmatch(key)
    if match:
      tower, layer, part, kind = match.groups()
      qkv.setdefault((tower, layer, kind), {})[part] = value
      continue
    out[_rename(key)] = value
  for (tower, layer, kind), parts in qkv.items():
    name = f"{_TOWER_PREFIX[tower]}transformer.resblocks.{layer}.attn.in_proj_{kind}"
    if set(parts) != {"q", "k", "v"}:
      raise ValueError(f"HF checkpoint: {tower} layer {layer} has {sorted(parts)} {kind} "
                       "projections, expected q, k and v")
    out[name] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
  return out


def _rename(key: str) -> str:
  for pattern, template in _RENAMES:
    if re.fullmatch(pattern, key):
      renamed = re.sub(pattern, template, key)
      tower, sep, rest = renamed.partition(":")
      return _TOWER_PREFIX[tower] + rest if sep else renamed
  return key
