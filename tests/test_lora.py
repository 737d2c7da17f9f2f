"""LoRA checkpoints (TSVLC / DAC layout): merged at import, equal to the adapters run unmerged."""

import copy
import functools
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

import hpjax
from hpjax import checkpoints
from configs import eval_hp
from helpers import assert_same_tree
from hpjax.checkpoints import mapping
from hpjax.evaluate import runner
from hpjax.models.clip import CLIP
from hpjax.train import lora as lora_lib
from hpjax.train import step as step_lib
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


def _kept(x, name):
  """No dropout: the adapter sees its module's input."""
  del name
  return x


class UnmergedAttention(torch.nn.Module):
  """open_clip's batch-first nn.MultiheadAttention computing W x + s B(A dropped(x)) in the fused
  in-projection and in the out-projection (`dropped(x, name)`: the adapter's input)."""

  def __init__(self, mha, in_a, in_b, out_a, out_b, scale, dropped=_kept, prefix=""):
    super().__init__()
    self.mha, self.in_a, self.in_b, self.out_a, self.out_b = mha, in_a, in_b, out_a, out_b
    self.scale, self.dropped, self.prefix = scale, dropped, prefix

  def forward(self, q_x, k_x=None, v_x=None, need_weights=False, attn_mask=None):
    del k_x, v_x, need_weights  # self-attention only
    mha, (n, length, width) = self.mha, q_x.shape
    low_rank = lambda x, a, b, name: self.scale * F.linear(F.linear(
        self.dropped(x, self.prefix + name), a), b)
    qkv = (F.linear(q_x, mha.in_proj_weight, mha.in_proj_bias)
           + low_rank(q_x, self.in_a, self.in_b, "in_proj"))
    q, k, v = (t.reshape(n, length, mha.num_heads, -1).transpose(1, 2) for t in qkv.chunk(3, -1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    out = out.transpose(1, 2).reshape(n, length, width)
    return (F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
            + low_rank(out, self.out_a, self.out_b, "out_proj")), None


def _unmerged_model(torch_model, adapters, scale, dropped=_kept):
  """A copy of `torch_model` that runs every adapter, times `scale`, beside its frozen base
  weight, on `dropped(x, name)` of its module's input x (`name`: the module's hpjax path, e.g.
  'visual.transformer.resblocks_0.mlp.c_fc'). `adapters`: numpy arrays or torch tensors."""
  model = copy.deepcopy(torch_model)
  t = {k: v if torch.is_tensor(v) else torch.from_numpy(v) for k, v in adapters.items()}

  def add_low_rank(a, b, name):
    return lambda module, inputs, output: output + scale * F.linear(
        F.linear(dropped(inputs[0], name), a), b)

  for tower, prefix in ((model.visual.transformer, "visual.transformer"),
                        (model.transformer, "transformer")):
    for i, block in enumerate(tower.resblocks):
      base = f"{prefix}.resblocks.{i}"
      block.attn = UnmergedAttention(
          block.attn, t[f"{base}.attn.in_proj_weight_lora_A"],
          t[f"{base}.attn.in_proj_weight_lora_B"], t[f"{base}.attn.out_proj.lora_A"],
          t[f"{base}.attn.out_proj.lora_B"], scale, dropped, f"{prefix}.resblocks_{i}.attn.")
      for name in ("c_fc", "c_proj"):
        getattr(block.mlp, name).register_forward_hook(add_low_rank(
            t[f"{base}.mlp.{name}.lora_A"], t[f"{base}.mlp.{name}.lora_B"],
            f"{prefix}.resblocks_{i}.mlp.{name}"))
  conv = model.visual.conv1
  # loralib's ConvLoRA: the (out*k, in*k) product viewed row-major as the kernel.
  delta = (t["visual.conv1.lora_B"] @ t["visual.conv1.lora_A"]).view(conv.weight.shape)
  conv.register_forward_hook(
      lambda module, inputs, output: output + F.conv2d(dropped(inputs[0], "visual.conv1"),
                                                       scale * delta, stride=module.stride))
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


# -- LoRA dropout in training --------------------------------------------------------------------

DROPOUT, SEED = 0.3, 7


def test_dropout_step_gradient_equals_the_unmerged_reference():
  """The step's adapter gradient (SGD at lr 1: before - after) equals torch autograd through
  open_clip running each adapter unmerged on mask * x / (1 - p), with the step's masks, pulled
  back from the feature gradients of hpjax's loss."""
  torch_model = openclip_model(NAME, seed=2)
  config = hpjax.get_model_config(NAME)
  params = mapping.openclip_to_params(state_dict_numpy(torch_model), config)
  targets = {"image": list(lora_lib.TARGETS), "text": ["in_proj", "out_proj", "c_fc", "c_proj"]}
  adapters = lora_lib.init_adapters(params, lora_lib.plan(params, {"image": RANK, "text": RANK},
                                                          targets), jax.random.key(0))
  rng = np.random.default_rng(3)
  adapters = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), adapters)
  images, tokens = random_images(rng, 4, 64), random_tokens(rng, 12).reshape(4, 3, -1)
  batch = {"image": images.transpose(0, 2, 3, 1), "caption": tokens[:, 0],
           "hard_positives": tokens[:, 1:2], "hard_positive_mask": np.array([[1], [0], [1], [1]],
                                                                             bool),
           "hard_negatives": tokens[:, 2:], "hard_negative_mask": np.ones((4, 1), bool)}
  tx = optax.sgd(1.0)
  step = functools.partial(step_lib.train_step, model=CLIP(config), tx=tx,
                           schedule=optax.constant_schedule(1.0), positives="multi",
                           local_weight=0.0, lora_alpha=2.5, seed=SEED)
  state = step_lib.init_state(params, tx, adapters)
  with jax.default_matmul_precision("highest"):
    after, _ = jax.jit(functools.partial(step, lora_dropout=DROPOUT))(state, batch)
  got = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), adapters, after.adapters)
  assert_same_tree(after.params, params)  # the base, bit-identical

  key = jax.random.fold_in(lora_lib.dropout_key(SEED, 0), 0)  # step 0, micro-batch 0

  def dropped(x, name):
    """x * mask / (1 - p), the mask drawn for hpjax's layout: (tokens, width) rows, NHWC."""
    shape = (x.shape[0], *x.shape[2:], x.shape[1]) if x.ndim == 4 else (-1, x.shape[-1])
    mask = lora_lib.dropout_mask(key, tuple(name.split(".")), np.empty(x.shape).reshape(
        shape).shape, DROPOUT)
    mask = np.array(mask).transpose(0, 3, 1, 2) if x.ndim == 4 else np.array(mask)
    assert 0.5 < mask.mean() < 0.9, name  # p of the inputs dropped
    return x * torch.from_numpy(mask.reshape(x.shape)) / (1 - DROPOUT)

  tsvlc = lambda tree: {k: v for k, v in lora_lib.tsvlc_state_dict(params, tree, config).items()
                        if "lora_" in k}
  weights = {k: torch.from_numpy(v).requires_grad_() for k, v in tsvlc(adapters).items()}
  reference = _unmerged_model(torch_model, weights, 2.5 / RANK, dropped)
  image = reference.encode_image(torch.from_numpy(images), normalize=True)
  text = reference.encode_text(torch.from_numpy(tokens.reshape(12, -1)).long(), normalize=True)
  features = {"image": image.detach().numpy(), "caption": text.detach().numpy()[0::3],
              "hard_positives": text.detach().numpy()[1::3, None],
              "hard_negatives": text.detach().numpy()[2::3, None]}
  with jax.default_matmul_precision("highest"):
    feature_grads = jax.grad(lambda f: step_lib.loss_of_features(
        params, f, batch, "multi", 0.0)[0])(features)
  text_grads = np.stack([feature_grads["caption"], feature_grads["hard_positives"][:, 0],
                         feature_grads["hard_negatives"][:, 0]], axis=1).reshape(12, -1)
  want = torch.autograd.grad([image, text], list(weights.values()),
                             [torch.from_numpy(np.array(feature_grads["image"])),
                              torch.from_numpy(text_grads)])
  got = tsvlc(got)
  for name, w in zip(weights, want):
    assert np.abs(w.numpy()).max() > 1e-4, name  # every adapter gets a gradient
    np.testing.assert_allclose(got[name], w.numpy(), rtol=0, atol=1e-5, err_msg=name)
  # Without dropout the gradient differs (the masks matter).
  with jax.default_matmul_precision("highest"):
    merged, _ = jax.jit(step)(state, batch)
  some = "visual.transformer.resblocks.0.mlp.c_fc.lora_A"
  plain = np.asarray(tsvlc(jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), adapters,
                                        merged.adapters))[some])
  assert np.abs(plain - got[some]).max() > 1e-3
