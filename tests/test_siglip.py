"""SigLIP towers vs open_clip's SigLIP models (timm trunk): features, keys, round trips, configs.

The tiny towers are built on both sides from the shipped `hpjax-tiny-siglip*.json` configs; timm
learns their trunks from `openclip_reference.register_tiny_siglip`. Every tensor is perturbed,
so a swapped or dropped key shows.
"""

import dataclasses
import functools
import json

import jax
import numpy as np
import open_clip
import pytest
import timm
import torch

from hpjax import checkpoints
from hpjax.models import CLIP, CLIPConfig, get_model_config
from hpjax.models import config as config_lib
from helpers import traced_operations
from openclip_reference import (TINY_SIGLIP, perturb_all, random_images, register_tiny_siglip,
                                state_dict_numpy)

VOCAB, CONTEXT = 1000, 16  # hpjax-tiny-siglip's text_cfg


@functools.cache
def torch_siglip(name: str) -> torch.nn.Module:
  register_tiny_siglip()
  torch.manual_seed(0)
  return perturb_all(open_clip.create_model(name), seed=1)


def tiny(name: str):
  """(config, params converted from the perturbed open_clip model, that model)."""
  torch_model = torch_siglip(name)
  config = get_model_config(name)
  state = checkpoints.files.normalize_keys(state_dict_numpy(torch_model))
  return config, checkpoints.openclip_to_params(state, config), torch_model


def siglip_ids(rng, batch: int) -> np.ndarray:
  """Ids as SigLIP's tokenizers lay them out: text, EOS, then pad up to the full context (one
  row fills it). Pad = EOS = 1 as in SigLIP 1; the pads are part of the pooled feature."""
  ids = np.ones((batch, CONTEXT), np.int32)
  for row, length in enumerate((3, CONTEXT, 9, 1)[:batch]):
    ids[row, :length] = rng.integers(2, VOCAB, length)
  return ids


def encode(config, params, x, method):
  with jax.default_matmul_precision("highest"):
    apply = jax.jit(functools.partial(CLIP(config).apply, method=method))
    return np.asarray(apply({"params": params}, x))


@pytest.mark.parametrize("name", TINY_SIGLIP)
def test_features_match_open_clip_siglip(name):
  config, params, torch_model = tiny(name)
  rng = np.random.default_rng(0)
  images, ids = random_images(rng, 3, 64), siglip_ids(rng, 4)
  with torch.no_grad():
    want_image = torch_model.encode_image(torch.from_numpy(images)).numpy()
    want_text = torch_model.encode_text(torch.from_numpy(ids).long()).numpy()
  got_image = encode(config, params, images.transpose(0, 2, 3, 1), "encode_image")
  got_text = encode(config, params, ids, "encode_text")
  np.testing.assert_allclose(got_image, want_image, atol=1e-4, rtol=0)
  np.testing.assert_allclose(got_text, want_text, atol=1e-4, rtol=0)
  assert float(params["logit_bias"]) == torch_model.logit_bias.item()
  # GELU's exact and tanh forms differ by < 5e-4 anywhere, too little to show in the features:
  # which one each tower runs is read from the traced program (erfc vs tanh).
  text_gelu, image_gelu = (
      {op for op, _ in traced_operations(functools.partial(CLIP(config).apply, method=method),
                                         {"params": params}, x)} & {"erfc", "tanh"}
      for method, x in (("encode_text", ids), ("encode_image", images.transpose(0, 2, 3, 1))))
  assert text_gelu == image_gelu == ({"tanh"} if name.endswith("2") else {"erfc"})


def test_text_tower_sees_every_position_and_takes_the_full_context():
  config, params, _ = tiny(TINY_SIGLIP[0])
  ids = siglip_ids(np.random.default_rng(2), 2)
  changed = ids.copy()
  changed[0, -1] = 7  # A trailing pad: bidirectional attention and last-position pooling see it.
  full, edited = encode(config, params, ids, "encode_text"), encode(config, params, changed,
                                                                    "encode_text")
  assert np.abs(full[0] - edited[0]).max() > 1e-3
  np.testing.assert_array_equal(full[1], edited[1])
  with pytest.raises(ValueError, match="takes 16 ids per text, unpacked; got rows of 8"):
    encode(config, params, ids[:, :8], "encode_text")
  assert not config.text.causal_eot_pooled


def _siglip_dict(**vision):
  with open(config_lib.CONFIG_DIR / "hpjax-tiny-siglip.json") as f:
    d = json.load(f)
  d["vision_cfg"].update(vision)
  return d


@pytest.mark.parametrize("change, match", [
    (dict(timm_pool="avg"), "timm_pool 'avg' is not supported"),
    (dict(timm_proj="linear"), "timm_proj 'linear' is not supported"),
    (dict(timm_model_name="vit_base_patch16_clip_224"), "not a known timm SigLIP tower"),
    (dict(image_size=96), "image_size 96 differs from the 64 px"),
])
def test_unsupported_timm_fields_are_refused(change, match):
  with pytest.raises(ValueError, match=match):
    CLIPConfig.from_dict(_siglip_dict(**change))


def test_config_errors_name_the_field():
  d = _siglip_dict()
  with pytest.raises(ValueError, match="embed_dim 32 differs from the width 64"):
    CLIPConfig.from_dict({**d, "embed_dim": 32})
  with pytest.raises(ValueError, match=r"norm_kwargs: unsupported keys \['elementwise_affine'\]"):
    CLIPConfig.from_dict({**d, "text_cfg": {**d["text_cfg"],
                                            "norm_kwargs": {"elementwise_affine": False}}})
  with pytest.raises(ValueError, match="pool_type 'first' is not supported"):
    CLIPConfig.from_dict({**d, "text_cfg": {**d["text_cfg"], "pool_type": "first"}})
  with pytest.raises(ValueError, match="quick_gelu and text_cfg.act_kwargs"):
    CLIPConfig.from_dict({**d, "quick_gelu": True,
                          "text_cfg": {**d["text_cfg"], "act_kwargs": {"approximate": "tanh"}}})
  # A pretrained tag after the timm name is accepted, as timm accepts it.
  tagged = _siglip_dict(timm_model_name="hpjax_tiny_siglip.v2_webli")
  assert CLIPConfig.from_dict(tagged).vision.timm == config_lib.TIMM_SIGLIP_MODELS[
      "hpjax_tiny_siglip"]
  # The OpenCLIP JSON form comes back (norm_kwargs as an object).
  assert CLIPConfig.from_dict(d).to_dict()["text_cfg"]["norm_kwargs"] == {"eps": 1e-6}


def test_timm_name_table_is_what_timm_builds():
  """Every non-tiny name of the table against timm's own model on the meta device (no memory):
  widths, depth, heads, patch, image size, MLP width and which GELU."""
  for name, arch in config_lib.TIMM_SIGLIP_MODELS.items():
    if name.startswith("hpjax_"):
      continue
    trunk = timm.create_model(name, num_classes=0, device="meta")
    block = trunk.blocks[0]
    assert (trunk.embed_dim, len(trunk.blocks), block.attn.num_heads,
            trunk.patch_embed.patch_size[0], trunk.patch_embed.img_size[0],
            block.mlp.fc1.out_features, trunk.attn_pool.mlp.fc1.out_features) == (
                arch.width, arch.layers, arch.heads, arch.patch_size, arch.image_size,
                arch.mlp_dim, arch.mlp_dim), name
    want = "GELUTanh" if arch.gelu_tanh else "GELU"
    assert {type(block.mlp.act).__name__, type(trunk.attn_pool.mlp.act).__name__} == {want}, name
    assert trunk.cls_token is None and trunk.attn_pool.latent_len == 1, name
