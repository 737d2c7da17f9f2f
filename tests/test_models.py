"""Flax CLIP vs. open_clip with the same random weights: features, logits, text lengths, bf16, remat."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import open_clip
import torch

from helpers import traced_operations
from hpjax.checkpoints import openclip_to_params
from hpjax.models import CLIP, get_model_config
from openclip_reference import openclip_model, random_images, random_tokens, state_dict_numpy

BATCH = 2


@pytest.fixture(scope="module", params=["hpjax-tiny", "ViT-B-32-quickgelu", "ViT-B-16"])
def reference(request):
  """(torch model, Flax model, params converted from the torch model), built once per module."""
  torch_model = openclip_model(request.param)
  config = get_model_config(request.param)
  return torch_model, CLIP(config), openclip_to_params(state_dict_numpy(torch_model), config)


def test_features_and_logits_match_open_clip(reference):
  torch_model, model, params = reference
  rng = np.random.default_rng(0)
  images = random_images(rng, BATCH, model.config.vision.image_size)
  tokens = random_tokens(rng, BATCH)
  with torch.no_grad():
    want_image, want_text, want_scale = torch_model(torch.from_numpy(images),
                                                    torch.from_numpy(tokens).long())
    want_logits = torch_model.get_logits(torch.from_numpy(images), torch.from_numpy(tokens).long())[0]
  with jax.default_matmul_precision("highest"):
    image, text, scale = jax.jit(model.apply)({"params": params}, images.transpose(0, 2, 3, 1),
                                              tokens)
  logits = scale * image @ text.T
  np.testing.assert_allclose(image, want_image.numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(text, want_text.numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(logits, want_logits.numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(scale, want_scale.item(), rtol=1e-6)


# Every optional branch of the towers: LayerScale, average pooling (LN after or before it), no
# ln_pre, a biased text projection, a non-default MLP ratio and context length, logit_bias.
VARIANT = {
    "embed_dim": 32, "init_logit_bias": -10.0,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8,
                   "ls_init_value": 0.1, "pool_type": "avg", "final_ln_after_pool": True,
                   "no_ln_pre": True, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2,
                 "ls_init_value": 0.1, "proj_bias": True, "mlp_ratio": 3.0},
}


@pytest.mark.parametrize("ln_after_pool", [True, False])
def test_optional_branches_match_open_clip(tmp_path, ln_after_pool):
  variant = json.loads(json.dumps(VARIANT))
  variant["vision_cfg"]["final_ln_after_pool"] = ln_after_pool
  name = f"hpjax-variant-ln-after-pool-{ln_after_pool}"  # unique in open_clip's registry
  path = tmp_path / f"{name}.json"
  path.write_text(json.dumps(variant))
  open_clip.add_model_config(str(path))
  torch_model = openclip_model(name)
  config = get_model_config(str(path))
  params = openclip_to_params(state_dict_numpy(torch_model), config)
  rng = np.random.default_rng(4)
  images = random_images(rng, BATCH, 32)
  tokens = random_tokens(rng, BATCH, eot_positions=(4, 19), length=20)
  with torch.no_grad():
    want = torch_model(torch.from_numpy(images), torch.from_numpy(tokens).long())
  with jax.default_matmul_precision("highest"):
    got = CLIP(config).apply({"params": params}, images.transpose(0, 2, 3, 1), tokens)
  np.testing.assert_allclose(got[0], want[0].numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(got[1], want[1].numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(params["logit_bias"], want[3].item(), rtol=1e-6)


@pytest.mark.parametrize("length", [16, 32])
def test_short_text_length_equals_full_length(tiny_pair, length):
  config, _, params, _ = tiny_pair
  model = CLIP(config)
  tokens = random_tokens(np.random.default_rng(1), 4, eot_positions=(3, length - 1, 9, 1))
  encode = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))
  with jax.default_matmul_precision("highest"):
    full, short = encode(params, tokens), encode(params, tokens[:, :length])
  np.testing.assert_allclose(short, full, rtol=0, atol=1e-5)


def test_text_longer_than_context_is_an_error(tiny_pair):
  config, _, params, _ = tiny_pair
  tokens = np.zeros((1, config.text.context_length + 1), np.int32)
  with pytest.raises(ValueError, match="exceeds context_length 77"):
    CLIP(config).apply({"params": params}, tokens, method="encode_text")


MATMULS = ("dot_general", "conv_general_dilated")


def test_bf16_compute_stays_close_to_fp32(tiny_pair):
  config, _, params, _ = tiny_pair
  rng = np.random.default_rng(2)
  images = random_images(rng, BATCH, config.vision.image_size).transpose(0, 2, 3, 1)
  tokens = random_tokens(rng, BATCH)
  models = {dtype: CLIP(config, dtype=dtype) for dtype in (jnp.float32, jnp.bfloat16)}
  # The mechanism: every matmul and the patch convolution run on bf16 operands (fp32 params).
  for dtype, model in models.items():
    operations = traced_operations(model.apply, {"params": params}, images, tokens)
    assert {dt for name, dt in operations if name in MATMULS} == {jnp.dtype(dtype).name}
  with jax.default_matmul_precision("highest"):
    want = jax.jit(models[jnp.float32].apply)({"params": params}, images, tokens)
  got = jax.jit(models[jnp.bfloat16].apply)({"params": params}, images, tokens)
  for g, w in zip(got[:2], want[:2]):
    assert g.dtype == jnp.float32
    assert 1e-4 < np.abs(g - w).max() < 0.05  # bf16 rounding shows, and stays small
    np.testing.assert_array_less(0.995, np.sum(g * w, axis=-1))  # cosine of unit vectors


def test_remat_gives_same_outputs_and_gradients(tiny_pair):
  # Remat wraps every residual block of both towers the same way; the image tower shows it.
  config, _, params, _ = tiny_pair
  images = random_images(np.random.default_rng(3), BATCH, config.vision.image_size)
  images = images.transpose(0, 2, 3, 1)

  def loss(p, remat):
    features = CLIP(config, remat=remat).apply({"params": p}, images, method="encode_image")
    return jnp.sum(features ** 2)

  for remat in (False, True):  # the mechanism: a rematerialisation primitive in the jaxpr
    names = {name for name, _ in traced_operations(jax.grad(lambda p: loss(p, remat)), params)}
    assert any(n.startswith(("remat", "checkpoint")) for n in names) == remat, names
  with jax.default_matmul_precision("highest"):
    (plain_loss, plain_grads), (remat_loss, remat_grads) = (
        jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, remat) for remat in (False, True))
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               remat_grads["visual"], plain_grads["visual"])
