"""HF transformers CLIPModel (random init, saved as safetensors) imported into the Flax CLIP."""

import json

import jax
import ml_collections
import numpy as np
import open_clip
import pytest
import safetensors.torch
import torch

import hpjax
from hpjax.checkpoints import convert
from openclip_reference import hf_clip_model, random_images, random_tokens


@pytest.fixture(params=[("quick_gelu", 49407), ("gelu", 49407), ("quick_gelu", 2)],
                ids=["quick_gelu", "exact_gelu", "legacy_argmax_pooling"])
def hf_checkpoint(request, tmp_path):
  """(HF model, its safetensors file, the matching hpjax config file)."""
  hidden_act, eos_token_id = request.param
  model = hf_clip_model(hidden_act, eos_token_id)
  path = tmp_path / "model.safetensors"
  safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
  config = hpjax.get_model_config("hpjax-tiny").to_dict()
  config["quick_gelu"] = hidden_act == "quick_gelu"
  config_path = tmp_path / f"tiny-from-hf-{hidden_act}-{eos_token_id}.json"  # Unique in open_clip.
  config_path.write_text(json.dumps(config))
  return model, path, config_path


def _tokens(rng, hf_model):
  """random_tokens, plus, for a legacy config (eos_token_id 2, where HF pools at argmax), the
  id 2 at position 1: HF's current rule (first eos_token_id) would then pool there, not at the
  EOT, so the case tells the two rules apart."""
  tokens = random_tokens(rng, 2)
  eos = hf_model.config.text_config.eos_token_id
  if eos == 2:
    tokens[:, 1] = eos
    assert ((tokens == eos).argmax(-1) != tokens.argmax(-1)).all()
  return tokens


def test_hf_import_matches_transformers(hf_checkpoint):
  hf_model, path, config_path = hf_checkpoint
  model, params = hpjax.create_model(str(config_path), pretrained=path)
  rng = np.random.default_rng(0)
  images = random_images(rng, 2, 64)
  tokens = _tokens(rng, hf_model)
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(tokens).long(), pixel_values=torch.from_numpy(images))
  with jax.default_matmul_precision("highest"):
    image, text, scale = jax.jit(model.apply)({"params": params}, images.transpose(0, 2, 3, 1),
                                              tokens)
  np.testing.assert_allclose(image, out.image_embeds.numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(text, out.text_embeds.numpy(), rtol=0, atol=1e-4)
  np.testing.assert_allclose(scale * image @ text.T, out.logits_per_image.numpy(), rtol=0,
                             atol=1e-4)


def test_hf_to_open_clip_file_gives_open_clip_the_hf_model(hf_checkpoint, tmp_path):
  """HF -> OpenCLIP in one conversion: open_clip then computes what transformers computes."""
  hf_model, path, config_path = hf_checkpoint
  config = ml_collections.ConfigDict({"src": str(path), "dst": "", "model": str(config_path),
                                      "direction": "to_openclip"})
  summary = convert.run(config, tmp_path / "convert")
  open_clip.add_model_config(str(config_path))
  torch_model = open_clip.create_model(config_path.stem, pretrained=summary["dst"]).eval()
  rng = np.random.default_rng(1)
  images = torch.from_numpy(random_images(rng, 2, 64))
  tokens = torch.from_numpy(_tokens(rng, hf_model)).long()
  with torch.no_grad():
    want = hf_model(input_ids=tokens, pixel_values=images)
    image, text, _ = torch_model(images, tokens)
  np.testing.assert_allclose(image.numpy(), want.image_embeds.numpy(), rtol=0, atol=1e-5)
  np.testing.assert_allclose(text.numpy(), want.text_embeds.numpy(), rtol=0, atol=1e-5)


def test_hf_checkpoint_with_wrong_dimensions_lists_the_problem(tmp_path):
  model = hf_clip_model("quick_gelu", 49407)
  state = {k: v.contiguous() for k, v in model.state_dict().items()
           if not k.startswith("vision_model.post_layernorm")}
  path = tmp_path / "model.safetensors"
  safetensors.torch.save_file(state, path)
  with pytest.raises(ValueError, match=r"HF checkpoint .*\n(.|\n)*missing: visual.ln_post.bias"):
    hpjax.create_model("hpjax-tiny", pretrained=path)
  with pytest.raises(ValueError, match="mis-shaped: visual.proj: checkpoint .64, 64. vs model .768, 512."):
    hpjax.create_model("ViT-B-32", pretrained=path)
