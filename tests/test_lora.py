"""LoRA checkpoints (TSVLC / DAC layout): merged at import, equal to the adapters run unmerged."""

import copy
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hpjax
from hpjax import checkpoints
from configs import eval_hp
from hpjax.evaluate import runner
from openclip_reference import openclip_model, random_images, random_tokens, state_dict_numpy

REPO = pathlib.Path(__file__).parents[1]
NAME = "hpjax-tiny"
RANK = 4  # TSVLC / DAC: rank 4, lora_alpha 1; the merge scale is lora_alpha / rank.


def _adapters(torch_model, rng):
  """Random adapters in TSVLC's layout on attention, MLP (both towers) and the patch conv."""
  def pair(out_features, in_features, k=1):
    return (rng.normal(0, 0.1, (RANK * k, in_features * k)).astype(np.float32),
            rng.normal(0, 0.1, (out_features * k, RANK * k)).astype(np.float32))
  adapters = {}
  for tower in (torch_model.visual.transformer, torch_model.transformer):
    prefix = "visual.transformer" if tower is torch_model.visual.transformer else "transformer"
    for i, block in enumerate(tower.resblocks):
      width = block.attn.embed_dim
      hidden = block.mlp.c_fc.out_features
      base = f"{prefix}.resblocks.{i}"
      for key, shape in ((f"{base}.attn.in_proj_weight_lora_", (3 * width, width)),
                         (f"{base}.attn.out_proj.lora_", (width, width)),
                         (f"{base}.mlp.c_fc.lora_", (hidden, width)),
                         (f"{base}.mlp.c_proj.lora_", (width, hidden))):
        adapters[key + "A"], adapters[key + "B"] = pair(*shape)
  out_channels, in_channels, k, _ = torch_model.visual.conv1.weight.shape
  adapters["visual.conv1.lora_A"], adapters["visual.conv1.lora_B"] = pair(
      out_channels, in_channels, k)
  return adapters


class UnmergedAttention(torch.nn.Module):
  """open_clip's batch-first nn.MultiheadAttention computing W x + s B(A x) in the fused
  in-projection and in the out-projection."""

  def __init__(self, mha, in_a, in_b, out_a, out_b, scale):
    super().__init__()
    self.mha, self.in_a, self.in_b, self.out_a, self.out_b = mha, in_a, in_b, out_a, out_b
    self.scale = scale

  def forward(self, q_x, k_x=None, v_x=None, need_weights=False, attn_mask=None):
    del k_x, v_x, need_weights  # self-attention only
    mha, (n, length, width) = self.mha, q_x.shape
    qkv = (F.linear(q_x, mha.in_proj_weight, mha.in_proj_bias)
           + self.scale * F.linear(F.linear(q_x, self.in_a), self.in_b))
    q, k, v = (t.reshape(n, length, mha.num_heads, -1).transpose(1, 2) for t in qkv.chunk(3, -1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    out = out.transpose(1, 2).reshape(n, length, width)
    return (F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
            + self.scale * F.linear(F.linear(out, self.out_a), self.out_b)), None


def _unmerged_model(torch_model, adapters, scale):
  """A copy of `torch_model` that runs every adapter, times `scale`, beside its frozen base
  weight."""
  model = copy.deepcopy(torch_model)
  t = {k: torch.from_numpy(v) for k, v in adapters.items()}

  def add_low_rank(a, b):
    return lambda module, inputs, output: output + scale * F.linear(F.linear(inputs[0], a), b)

  for tower, prefix in ((model.visual.transformer, "visual.transformer"),
                        (model.transformer, "transformer")):
    for i, block in enumerate(tower.resblocks):
      base = f"{prefix}.resblocks.{i}"
      block.attn = UnmergedAttention(
          block.attn, t[f"{base}.attn.in_proj_weight_lora_A"],
          t[f"{base}.attn.in_proj_weight_lora_B"], t[f"{base}.attn.out_proj.lora_A"],
          t[f"{base}.attn.out_proj.lora_B"], scale)
      for name in ("c_fc", "c_proj"):
        getattr(block.mlp, name).register_forward_hook(
            add_low_rank(t[f"{base}.mlp.{name}.lora_A"], t[f"{base}.mlp.{name}.lora_B"]))
  conv = model.visual.conv1
  # loralib's ConvLoRA: the (out*k, in*k) product viewed row-major as the kernel.
  delta = (t["visual.conv1.lora_B"] @ t["visual.conv1.lora_A"]).view(conv.weight.shape)
  conv.register_forward_hook(
      lambda module, inputs, output: output + F.conv2d(inputs[0], scale * delta,
                                                       stride=module.stride))
  return model


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
  """(torch model, its adapters, a safetensors file with base weights and adapters)."""
  torch_model = openclip_model(NAME, seed=2)
  adapters = _adapters(torch_model, np.random.default_rng(0))
  path = tmp_path_factory.mktemp("lora") / "svlc_lora.safetensors"
  checkpoints.write_state_dict({**state_dict_numpy(torch_model), **adapters}, path)
  return torch_model, adapters, path


@pytest.mark.parametrize("alpha", [1.0, 2.5])  # at 1, 1/rank and alpha/rank agree
def test_merged_import_equals_the_unmerged_adapters(lora_file, alpha):
  torch_model, adapters, path = lora_file
  model, params = hpjax.create_model(NAME, pretrained=path, lora_rank=RANK, lora_alpha=alpha)
  rng = np.random.default_rng(1)
  images, tokens = random_images(rng, 2, 64), random_tokens(rng, 2)
  inputs = torch.from_numpy(images), torch.from_numpy(tokens).long()
  with torch.no_grad():
    want = _unmerged_model(torch_model, adapters, alpha / RANK)(*inputs)
    base = torch_model(*inputs)
  with jax.default_matmul_precision("highest"):
    got = jax.jit(model.apply)({"params": params}, images.transpose(0, 2, 3, 1), tokens)
  for g, w, b in zip(got[:2], want[:2], base[:2]):
    assert np.abs(w.numpy() - b.numpy()).max() > 1e-2  # the adapters matter
    np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-5)


def test_lora_file_loaded_as_a_plain_checkpoint_says_it_holds_adapters(lora_file):
  _, _, path = lora_file
  with pytest.raises(ValueError, match=r"holds LoRA adapters of rank 4 on 17 weights.*"
                                       r"lora_rank=4"):
    hpjax.create_model(NAME, pretrained=path)


def test_rank_that_does_not_fit_names_the_keys(lora_file):
  _, _, path = lora_file
  with pytest.raises(ValueError) as info:
    checkpoints.load_params(path, hpjax.get_model_config(NAME), lora_rank=8)
  message = str(info.value)
  assert "visual.conv1.lora_A: shape (64, 48) does not fit rank 8" in message
  assert "expected (128, 48)" in message
  assert "transformer.resblocks.1.attn.in_proj_weight_lora_B: shape (192, 4)" in message


def test_adapter_without_its_base_weight_or_partner_is_named(lora_file, tmp_path):
  torch_model, adapters, _ = lora_file
  state_dict = {**state_dict_numpy(torch_model), **adapters}
  del state_dict["visual.conv1.weight"], state_dict["transformer.resblocks.0.mlp.c_fc.lora_B"]
  path = checkpoints.write_state_dict(state_dict, tmp_path / "broken.safetensors")
  with pytest.raises(ValueError) as info:
    checkpoints.load_params(path, hpjax.get_model_config(NAME), lora_rank=RANK)
  message = str(info.value)
  assert "visual.conv1.lora_A, visual.conv1.lora_B: adapter of 'visual.conv1.weight'" in message
  assert "transformer.resblocks.0.mlp.c_fc.lora_A: its lora_B partner is missing" in message


def test_lora_rank_for_a_file_without_adapters_is_an_error(lora_file, tmp_path):
  torch_model, _, _ = lora_file
  path = checkpoints.write_state_dict(state_dict_numpy(torch_model), tmp_path / "plain.safetensors")
  with pytest.raises(ValueError, match="holds no LoRA adapters"):
    hpjax.create_model(NAME, pretrained=path, lora_rank=RANK)


def test_a_lora_file_converts_and_evaluates_from_the_command_line(lora_file, tmp_path):
  """The fields the adapters' error names exist: convert (config and tools/convert.py) and the
  evaluation config take lora_rank / lora_alpha."""
  _, _, path = lora_file
  want = checkpoints.load_params(path, hpjax.get_model_config(NAME), lora_rank=RANK,
                                 lora_alpha=2.5)
  script = [sys.executable, str(REPO / "tools" / "convert.py"), f"--src={path}",
            f"--model={NAME}", "--direction=to_openclip"]
  plain = subprocess.run(script + [f"--dst={tmp_path / 'plain.safetensors'}"],
                         capture_output=True, text=True, cwd=REPO)
  assert plain.returncode == 1 and "Traceback" not in plain.stderr
  assert plain.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint {path} holds LoRA")
  merged = subprocess.run(script + [f"--dst={tmp_path / 'merged.safetensors'}", "--lora_rank=4",
                                    "--lora_alpha=2.5"], capture_output=True, text=True, cwd=REPO)
  assert merged.returncode == 0, merged.stderr[-2000:]
  got = checkpoints.load_params(tmp_path / "merged.safetensors", hpjax.get_model_config(NAME))
  jax.tree.map(np.testing.assert_array_equal, got, want)
  config = eval_hp.get_config(f"models={NAME}={path},lora_rank=4,lora_alpha=2.5")
  (spec,) = runner.model_specs(config)
  assert spec.lora == {"lora_rank": 4, "lora_alpha": 2.5}
  jax.tree.map(np.testing.assert_array_equal, runner.build(spec)[1], want)
