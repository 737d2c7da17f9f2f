"""Checkpoint files: OpenCLIP round trips, the file formats and key variants, orbax dirs, bad input."""

import copy
import pickle

import jax
import numpy as np
import open_clip
import optax
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
import torch

import hpjax
from hpjax import checkpoints
from hpjax.checkpoints import CheckpointMismatchError
from hpjax.checkpoints.mapping import key_table
from hpjax.models import get_model_config, list_models
from hpjax.train.step import init_state
from helpers import assert_same_tree
from openclip_reference import openclip_model, state_dict_numpy

NAME = "hpjax-tiny"


@pytest.fixture(scope="module")
def reference():
  torch_model = openclip_model(NAME)
  return torch_model, state_dict_numpy(torch_model)


def _as_openclip(params):
  return checkpoints.params_to_openclip(params, get_model_config(NAME))


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_round_trip_is_bit_identical_and_loads_strictly_in_open_clip(reference, tmp_path, suffix):
  _, state_dict = reference
  source = checkpoints.write_state_dict(state_dict, tmp_path / "source.safetensors")
  _, params = hpjax.create_model(NAME, pretrained=source)
  exported = hpjax.export_openclip(params, NAME, tmp_path / f"exported{suffix}")
  reloaded = open_clip.create_model(NAME, pretrained=str(exported))  # strict key matching
  got = state_dict_numpy(reloaded)
  assert sorted(got) == sorted(state_dict)
  for key, value in state_dict.items():
    assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key


@pytest.fixture(scope="module")
def vit_b_32_state_dict():
  return state_dict_numpy(openclip_model("ViT-B-32-quickgelu"))


def test_round_trip_vit_b_32_every_key(vit_b_32_state_dict):
  state_dict = vit_b_32_state_dict
  config = get_model_config("ViT-B-32-quickgelu")
  back = checkpoints.params_to_openclip(checkpoints.openclip_to_params(state_dict, config), config)
  assert sorted(back) == sorted(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


# CoCa and HF-text configs (text. prefix, decoder) are checked in test_coca.py / test_hf_text.py.
@pytest.mark.parametrize("name", [n for n in list_models()
                                  if not get_model_config(n).text_key_prefix])
def test_every_shipped_config_has_open_clips_keys_and_shapes(name, reference):
  del reference  # Registers hpjax-tiny with open_clip.
  with torch.device("meta"):  # Shapes only: no memory, no init.
    torch_model = open_clip.model.CLIP(**open_clip.get_model_config(name))
  want = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()
          if not k.endswith("num_batches_tracked")}  # BatchNorm's counter: dropped on import
  config = get_model_config(name)
  assert {k: e.torch_shape for k, e in key_table(config).items()} == want
  assert config.quick_gelu == open_clip.get_model_config(name).get("quick_gelu", False)


def test_torch_file_nested_state_dict_with_module_prefix(reference, tmp_path):
  _, state_dict = reference
  path = tmp_path / "epoch_3.pt"
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": torch.from_numpy(v)
                                         for k, v in state_dict.items()}}, path)
  assert_same_tree(_as_openclip(hpjax.create_model(NAME, pretrained=path)[1]), state_dict)


def test_custom_text_clip_keys_and_attn_mask_buffers(reference, tmp_path):
  _, state_dict = reference
  custom = {k if k.startswith(("visual.", "logit_")) else f"text.{k}": v
            for k, v in state_dict.items()}
  custom["text.attn_mask"] = np.triu(np.full((77, 77), -np.inf, np.float32), 1)
  path = checkpoints.write_state_dict(custom, tmp_path / "custom_text.safetensors")
  assert_same_tree(_as_openclip(hpjax.create_model(NAME, pretrained=path)[1]), state_dict)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.*deprecated")
def test_torchscript_archive(reference, tmp_path):
  torch_model, state_dict = reference
  torch_model = copy.deepcopy(torch_model)
  for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
    if hasattr(torch_model, name):  # A plain int attribute in open_clip, a tensor in OpenAI's.
      delattr(torch_model, name)
    torch_model.register_buffer(name, torch.tensor(value))
  images, tokens = torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)
  traced = torch.jit.trace(torch_model, (images, tokens), check_trace=False)
  assert "input_resolution" in traced.state_dict()
  path = tmp_path / "openai.pt"
  traced.save(str(path))
  assert_same_tree(_as_openclip(hpjax.create_model(NAME, pretrained=path)[1]), state_dict)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_remote_files_are_read_from_memory(reference, tmp_path, monkeypatch, suffix):
  """The gs:// branch (bytes read through etils.epath), exercised on a local file."""
  _, state_dict = reference
  path = checkpoints.write_state_dict(state_dict, tmp_path / f"remote{suffix}")
  monkeypatch.setattr(checkpoints.files, "is_local", lambda path: False)
  assert_same_tree(_as_openclip(checkpoints.load_params(path, get_model_config(NAME))), state_dict)
  evil = tmp_path / "evil.pt"
  torch.save({"state_dict": _Payload(str(tmp_path / "unpickled.txt"))}, evil)
  with pytest.raises(ValueError, match="is refused"):
    checkpoints.read_state_dict(evil)
  assert not (tmp_path / "unpickled.txt").exists()


def test_bf16_safetensors_is_read_and_cast_to_param_dtype(reference, tmp_path):
  _, state_dict = reference
  path = tmp_path / "bf16.safetensors"
  bf16 = {k: v.astype(jax.numpy.bfloat16) for k, v in state_dict.items()}
  safetensors.numpy.save_file(bf16, str(path))
  params = checkpoints.load_params(path, get_model_config(NAME))
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  assert_same_tree(_as_openclip(params), {k: v.astype(np.float32) for k, v in bf16.items()})


def test_orbax_params_directory_round_trip(reference, tmp_path):
  _, state_dict = reference
  params = checkpoints.openclip_to_params(state_dict, get_model_config(NAME))
  checkpoints.save_params(tmp_path / "params", params)
  _, restored = hpjax.create_model(NAME, pretrained=tmp_path / "params")
  assert_same_tree(_as_openclip(restored), state_dict)


def test_orbax_directory_of_another_model_lists_the_mismatch(reference, tmp_path):
  _, state_dict = reference
  params = checkpoints.openclip_to_params(state_dict, get_model_config(NAME))
  del params["visual"]["ln_pre"]
  checkpoints.save_params(tmp_path / "params", params)
  with pytest.raises(CheckpointMismatchError, match="missing: visual/ln_pre/bias"):
    hpjax.create_model(NAME, pretrained=tmp_path / "params")


def test_mismatch_error_lists_missing_unexpected_and_misshaped_keys(reference, tmp_path):
  _, state_dict = reference
  broken = dict(state_dict)
  del broken["visual.proj"], broken["ln_final.bias"]
  broken["visual.extra.weight"] = np.zeros(3, np.float32)
  broken["text_projection"] = np.zeros((64, 32), np.float32)
  path = checkpoints.write_state_dict(broken, tmp_path / "broken.safetensors")
  with pytest.raises(CheckpointMismatchError) as error:
    hpjax.create_model(NAME, pretrained=path)
  message = str(error.value)
  assert str(path) in message
  assert "2 missing, 1 unexpected, 1 mis-shaped" in message
  for line in ("missing: visual.proj", "missing: ln_final.bias", "unexpected: visual.extra.weight",
               "mis-shaped: text_projection: checkpoint (64, 32) vs model (64, 64)"):
    assert line in message
  assert error.value.missing == ["ln_final.bias", "visual.proj"]


def test_checkpoint_of_a_bigger_model_is_rejected(vit_b_32_state_dict, tmp_path):
  path = checkpoints.write_state_dict(vit_b_32_state_dict, tmp_path / "b32.safetensors")
  with pytest.raises(CheckpointMismatchError, match="unexpected: transformer.resblocks.11.ln_1.bias"):
    hpjax.create_model(NAME, pretrained=path)


def test_unknown_model_name_lists_known_models():
  with pytest.raises(ValueError, match="unknown model 'ViT-X-99'.*ViT-B-32-quickgelu.*hpjax-tiny"):
    hpjax.create_model("ViT-X-99")


class _Payload:
  """Unpickling this would create a file: the loader must never get that far."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_pickled_objects_are_refused_not_unpickled(tmp_path):
  marker = tmp_path / "unpickled.txt"
  path = tmp_path / "evil.pt"
  torch.save({"state_dict": _Payload(str(marker))}, path)
  with pytest.raises(ValueError, match=f"{path} is refused: it is not a plain state dict"):
    hpjax.create_model(NAME, pretrained=path)
  assert not marker.exists()


def test_whole_pickled_module_is_refused(reference, tmp_path):
  torch_model, _ = reference
  path = tmp_path / "module.pt"
  torch.save(torch_model, path)
  with pytest.raises(ValueError, match="is refused: it is not a plain state dict"):
    hpjax.create_model(NAME, pretrained=path)


def test_state_dict_with_non_tensor_entries_is_refused(tmp_path):
  path = tmp_path / "mixed.bin"
  torch.save({"visual.proj": torch.zeros(2), "epoch": 3}, path)
  with pytest.raises(ValueError, match=r"not a plain state dict: non-tensor entries \{'epoch': 'int'\}"):
    checkpoints.read_state_dict(path)


def test_key_twice_after_prefix_stripping_is_an_error(tmp_path):
  path = checkpoints.write_state_dict({"visual.proj": np.zeros(2, np.float32),
                                       "module.visual.proj": np.ones(2, np.float32)},
                                      tmp_path / "twice.safetensors")
  with pytest.raises(ValueError, match="twice.safetensors: key 'visual.proj' appears twice"):
    checkpoints.read_state_dict(path)


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.safetensors does not exist"):
    hpjax.create_model(NAME, pretrained=tmp_path / "nothing.safetensors")


def test_pickle_module_is_never_used_for_safetensors(reference, tmp_path, monkeypatch):
  _, state_dict = reference
  path = checkpoints.write_state_dict(state_dict, tmp_path / "plain.safetensors")
  monkeypatch.setattr(pickle, "load", None)
  monkeypatch.setattr(torch, "load", None)
  assert_same_tree(_as_openclip(checkpoints.load_params(path, get_model_config(NAME))), state_dict)


def test_trainer_checkpoints_restore_their_params(reference, tmp_path):
  """A trainer's CheckpointManager folder (latest step) and a step folder both give the params."""
  _, state_dict = reference
  params = checkpoints.openclip_to_params(state_dict, get_model_config(NAME))
  manager = ocp.CheckpointManager(tmp_path / "checkpoints", item_names=("state",))
  for step in (1, 2):
    state = init_state(jax.tree.map(lambda x, s=step: x * s, params), optax.adamw(1e-3))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  step_1 = hpjax.create_model(NAME, pretrained=tmp_path / "checkpoints" / "1")[1]
  assert_same_tree(_as_openclip(step_1), state_dict)
  latest = hpjax.create_model(NAME, pretrained=tmp_path / "checkpoints")[1]
  np.testing.assert_array_equal(latest["visual"]["proj"], 2 * params["visual"]["proj"])
