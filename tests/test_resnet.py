"""OpenAI's ModifiedResNet tower vs. open_clip with the same random weights, its conversion both
ways, OpenAI TorchScript archives with the architecture inferred from tensor shapes."""

import copy
import dataclasses
import functools
import json

import jax
import numpy as np
import open_clip
import pytest
import torch

import hpjax
from hpjax import checkpoints
from hpjax.checkpoints import CheckpointMismatchError
from hpjax.checkpoints.mapping import key_table
from hpjax.models import CLIP, CLIPConfig, get_model_config, infer_openai_config, list_models
from hpjax.models.resnet import BatchNorm
from openclip_reference import openclip_model, random_images, random_tokens, state_dict_numpy

# A second depth and width beside RN50: two blocks in some stages (blocks without a shortcut
# conv), a 3x3 attention-pool grid. Heads are 64 wide, as OpenAI's loader assumes, so the
# TorchScript test can infer this config back.
SMALL = {
    "embed_dim": 64, "quick_gelu": True,
    "vision_cfg": {"image_size": 96, "layers": [2, 1, 2, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
BATCH = 2


def calibrate_batch_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Gives every BatchNorm a random gain and the running statistics of a batch of random
  images. With its init statistics (0, 1) a random ResNet's activations shrink layer by layer
  until the features barely depend on the image (and a wrong padding would hide below 1e-4)."""
  norms = [m for m in model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  size = model.visual.image_size
  size = size[0] if isinstance(size, tuple) else size
  with torch.no_grad():
    for norm in norms:
      norm.weight.uniform_(0.5, 1.5)
      norm.momentum = 1.0  # running statistics := this batch's
    model.visual.train()
    model.visual(torch.from_numpy(random_images(np.random.default_rng(seed), 8, size)))
    for norm in norms:
      norm.momentum = 0.1
  return model.eval()


@pytest.fixture(scope="module")
def small_json(tmp_path_factory):
  path = tmp_path_factory.mktemp("configs") / "hpjax-rn-small.json"
  path.write_text(json.dumps(SMALL))
  open_clip.add_model_config(str(path))
  return path


@pytest.fixture(scope="module")
def small(small_json):
  """(torch model, config, OpenCLIP state dict) of the small ResNet CLIP."""
  torch_model = calibrate_batch_norms(openclip_model("hpjax-rn-small"))
  return torch_model, get_model_config(str(small_json)), state_dict_numpy(torch_model)


def _run_torch(torch_model, images, tokens):
  with torch.no_grad():
    image, text, scale = torch_model(torch.from_numpy(images), torch.from_numpy(tokens).long())
  return image.numpy(), text.numpy(), scale.item()


@functools.cache
def _jitted_apply(config):  # One compile per config for the whole module.
  return jax.jit(CLIP(config).apply)


def _run_hpjax(config, params, images, tokens):
  with jax.default_matmul_precision("highest"):
    return _jitted_apply(config)({"params": params}, images.transpose(0, 2, 3, 1), tokens)


def test_small_resnet_features_and_logits_match_open_clip(small):
  torch_model, config, state_dict = small
  rng = np.random.default_rng(0)
  images, tokens = random_images(rng, BATCH, 96), random_tokens(rng, BATCH)
  want_image, want_text, want_scale = _run_torch(torch_model, images, tokens)
  image, text, scale = _run_hpjax(config, checkpoints.openclip_to_params(state_dict, config),
                                  images, tokens)
  np.testing.assert_allclose(image, want_image, rtol=0, atol=1e-4)
  np.testing.assert_allclose(text, want_text, rtol=0, atol=1e-4)
  np.testing.assert_allclose(scale * image @ text.T, want_scale * want_image @ want_text.T,
                             rtol=0, atol=1e-4)


@pytest.mark.slow
def test_rn50_image_features_match_open_clip():
  torch_model = calibrate_batch_norms(openclip_model("RN50"))
  config = get_model_config("RN50")
  params = checkpoints.openclip_to_params(state_dict_numpy(torch_model), config)
  images = torch.from_numpy(random_images(np.random.default_rng(1), BATCH, 224))
  with torch.no_grad():
    want = torch_model.encode_image(images).numpy()
    exact = copy.deepcopy(torch_model).double().encode_image(images.double()).numpy()
  encode = lambda p, x: CLIP(config).apply({"params": p}, x, method="encode_image")
  with jax.default_matmul_precision("highest"):
    got = np.asarray(jax.jit(encode)(params, images.numpy().transpose(0, 2, 3, 1)))
  # Through 16 calibrated bottlenecks the features reach ~5 and fp32 itself drifts ~2e-4 from
  # the float64 result (measured: PyTorch 1.7e-4, hpjax 2.3e-4): hpjax must be as accurate as
  # PyTorch's fp32, and its normalised features (what is scored) within 1e-4 of open_clip's.
  assert np.abs(got - exact).max() <= 2 * np.abs(want - exact).max()
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(unit(got), unit(want), rtol=0, atol=1e-4)


def test_round_trip_is_bit_identical_and_loads_strictly_in_open_clip(small, small_json, tmp_path):
  _, _, state_dict = small
  assert any(k.endswith("num_batches_tracked") for k in state_dict)  # dropped on import
  source = checkpoints.write_state_dict(state_dict, tmp_path / "source.safetensors")
  _, params = hpjax.create_model(str(small_json), pretrained=source)
  assert set(params["visual"]["layer1_0"]["downsample_1"]) == {"scale", "bias", "mean", "var"}
  exported = hpjax.export_openclip(params, str(small_json), tmp_path / "exported.safetensors")
  reloaded = open_clip.create_model("hpjax-rn-small", pretrained=str(exported))  # strict
  got = state_dict_numpy(reloaded)
  assert sorted(got) == sorted(state_dict)
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):  # BatchNorm's step counter is not kept: PyTorch's
      assert value == 1 and got[key] == 0, key  # loader sets 0 (calibration counted 1 step)
    else:
      assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key


def test_batch_norm_statistics_get_no_gradient():
  bn = BatchNorm(3)
  x = np.random.default_rng(2).standard_normal((2, 4, 4, 3)).astype(np.float32)
  params = {"scale": np.full(3, 1.5, np.float32), "bias": np.full(3, 0.2, np.float32),
            "mean": np.full(3, 0.3, np.float32), "var": np.full(3, 2.0, np.float32)}
  grads = jax.grad(lambda p: (bn.apply({"params": p}, x) ** 2).sum())(params)
  assert not np.any(grads["mean"]) and not np.any(grads["var"])
  assert np.all(grads["scale"] != 0) and np.all(grads["bias"] != 0)  # the affine part trains


def test_checkpoint_of_another_resnet_lists_every_bad_key(small):
  _, config, state_dict = small
  other = dataclasses.replace(
      config, vision=dataclasses.replace(config.vision, layers=(3, 1, 1, 1), image_size=64))
  with pytest.raises(CheckpointMismatchError) as info:
    checkpoints.openclip_to_params(state_dict, other)
  error = info.value
  assert "visual.layer1.2.conv1.weight" in error.missing
  assert "visual.layer1.2.bn3.running_var" in error.missing
  assert "visual.layer3.1.conv2.weight" in error.unexpected
  assert "visual.layer3.1.bn2.num_batches_tracked" in error.unexpected  # not a BN of `other`
  assert error.misshaped == {"visual.attnpool.positional_embedding": ((10, 512), (5, 512))}
  assert "mis-shaped: visual.attnpool.positional_embedding" in str(error)


@pytest.mark.parametrize("name", [n for n in list_models() if n.endswith("-quickgelu")])
def test_openai_config_inferred_from_shapes_of_every_shipped_openai_architecture(name):
  with torch.device("meta"):  # Shapes only.
    state = open_clip.model.CLIP(**open_clip.get_model_config(name)).state_dict()
  assert infer_openai_config(state) == get_model_config(name)  # the name included


def test_inference_without_the_keys_it_needs_names_them():
  with pytest.raises(ValueError, match="no 'visual.attnpool.positional_embedding'"):
    infer_openai_config({"ln_final.weight": np.zeros(4)}, "x.pt")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.*deprecated")
def test_torchscript_archive_infers_the_architecture_and_gives_open_clips_features(small, tmp_path):
  torch_model, config, state_dict = small
  traced_model = copy.deepcopy(torch_model)
  for name, value in (("input_resolution", 96), ("context_length", 77), ("vocab_size", 49408)):
    if hasattr(traced_model, name):  # A plain int attribute in open_clip, a tensor in OpenAI's.
      delattr(traced_model, name)
    traced_model.register_buffer(name, torch.tensor(value))
  images = torch.zeros(1, 3, 96, 96)
  traced = torch.jit.trace(traced_model, (images, torch.zeros(1, 77, dtype=torch.long)),
                           check_trace=False)
  path = tmp_path / "RN-small.pt"
  traced.save(str(path))
  model, params = hpjax.create_model(None, pretrained=path)
  assert model.config == dataclasses.replace(config, name="openai-inferred")
  # The same architecture as open_clip's builder for OpenAI state dicts infers.
  openai_built = open_clip.model.build_model_from_openai_state_dict(
      {k: torch.from_numpy(v) for k, v in state_dict.items()})
  assert ({k: e.torch_shape for k, e in key_table(model.config).items()}
          == {k: tuple(v.shape) for k, v in openai_built.state_dict().items()
              if not k.endswith("num_batches_tracked")})
  rng = np.random.default_rng(3)
  images, tokens = random_images(rng, BATCH, 96), random_tokens(rng, BATCH)
  want_image, want_text, _ = _run_torch(torch_model, images, tokens)
  image, text, _ = _run_hpjax(config, params, images, tokens)  # config == model.config but name
  np.testing.assert_allclose(image, want_image, rtol=0, atol=1e-4)
  np.testing.assert_allclose(text, want_text, rtol=0, atol=1e-4)


@pytest.mark.parametrize("vision_cfg, message", [
    ({"layers": [3, 4, 6], "width": 64, "patch_size": None}, "a ResNet has four stages"),
    ({"layers": 12, "width": 768, "patch_size": None}, "patch_size is null"),
])
def test_bad_resnet_config_is_an_error(vision_cfg, message):
  with pytest.raises(ValueError, match=message):
    CLIPConfig.from_dict({"embed_dim": 8, "vision_cfg": vision_cfg})
