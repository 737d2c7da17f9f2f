"""Checkpoint files: OpenCLIP round trips, the file formats and key variants, orbax dirs, bad input."""

import collections
import copy
import io
import os
import pickle
import re

import jax
import numpy as np
import open_clip
import optax
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
import torch
from etils import epath

import hpjax
from hpjax import checkpoints
from hpjax.checkpoints import big_vision, files
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


def _openai_archive(torch_model, path):
  """`torch_model` saved as OpenAI's TorchScript archives are; returns the traced module."""
  torch_model = copy.deepcopy(torch_model)
  for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
    if hasattr(torch_model, name):  # A plain int attribute in open_clip, a tensor in OpenAI's.
      delattr(torch_model, name)
    torch_model.register_buffer(name, torch.tensor(value))
  images, tokens = torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)
  traced = torch.jit.trace(torch_model, (images, tokens), check_trace=False)
  traced.save(str(path))
  return traced


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.*deprecated")
def test_torchscript_archive(reference, tmp_path):
  torch_model, state_dict = reference
  path = tmp_path / "openai.pt"
  traced = _openai_archive(torch_model, path)
  assert "input_resolution" in traced.state_dict()
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


def _count_bytes_read(monkeypatch) -> collections.Counter:
  """Bytes that readers take from each file opened through etils.epath."""
  counts = collections.Counter()
  path_type = type(epath.Path("x"))
  open_file = path_type.open

  class Counting(io.RawIOBase):

    def __init__(self, f, name):
      super().__init__()
      self.f, self.name = f, name

    def readable(self):
      return True

    def seekable(self):
      return True

    def readinto(self, buffer):
      n = self.f.readinto(buffer)
      counts[self.name] += n
      return n

    def seek(self, offset, whence=io.SEEK_SET):
      return self.f.seek(offset, whence)

    def tell(self):
      return self.f.tell()

    def close(self):
      self.f.close()
      super().close()

  monkeypatch.setattr(path_type, "open",
                      lambda self, mode="r", **kw: Counting(open_file(self, mode, **kw), str(self)))
  return counts


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.*deprecated")
def test_stand_ins_have_every_key_and_shape_and_read_no_tensor(reference, tmp_path, monkeypatch):
  torch_model, state_dict = reference
  paths = [checkpoints.write_state_dict(state_dict, tmp_path / "a.safetensors"),
           checkpoints.write_state_dict(state_dict, tmp_path / "a.pt")]
  paths.append(tmp_path / "openai.pt")
  _openai_archive(torch_model, paths[-1])
  torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state_dict.items()}},
             tmp_path / "nested.bin")
  paths.append(tmp_path / "nested.bin")
  want = {p: {k: v.shape for k, v in checkpoints.read_state_dict(p).items()} for p in paths}
  np.savez(tmp_path / "bv.npz", **{"params/img/embedding/kernel": np.zeros((4, 4, 3, 32)),
                                   "params/t": np.zeros(1)})
  counts = _count_bytes_read(monkeypatch)
  for path in paths:
    stand_ins = files.read_stand_ins(path)
    assert {k: v.shape for k, v in stand_ins.items()} == want[path], path
    assert all(v.base is not None and v.strides == (0,) * v.ndim for v in stand_ins.values())
    assert 0 < counts[str(path)] < os.path.getsize(path) / 100, path  # the header, no tensor
  npz = files.read_npz_stand_ins(tmp_path / "bv.npz")
  assert {k: v.shape for k, v in npz.items()} == {"params/img/embedding/kernel": (4, 4, 3, 32),
                                                  "params/t": (1,)}


def _lora_file(state_dict, path, rank=2):
  base = "visual.transformer.resblocks.0.mlp.c_fc"
  out, inner = state_dict[f"{base}.weight"].shape
  adapters = {f"{base}.lora_A": np.ones((rank, inner), np.float32),
              f"{base}.lora_B": np.ones((out, rank), np.float32)}
  return checkpoints.write_state_dict({**state_dict, **adapters}, path)


def test_check_params_raises_what_load_params_raises(reference, tmp_path):
  torch_model, state_dict = reference
  config = get_model_config(NAME)
  broken = dict(state_dict)
  del broken["visual.proj"]
  broken["text_projection"] = np.zeros((64, 32), np.float32)
  hf_broken = checkpoints.hf.openclip_to_hf(state_dict)
  hf_broken["text_model.encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((8, 32), np.float32)
  marker = tmp_path / "unpickled.txt"
  torch.save({"state_dict": _Payload(str(marker))}, tmp_path / "evil.pt")
  torch.save({"visual.proj": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.bin")
  params = checkpoints.openclip_to_params(state_dict, config)
  del params["visual"]["ln_pre"]
  checkpoints.save_params(tmp_path / "orbax", params)
  lora = _lora_file(state_dict, tmp_path / "lora.safetensors")
  cases = [
      (tmp_path / "nothing.safetensors", {}),
      (checkpoints.write_state_dict(broken, tmp_path / "broken.safetensors"), {}),
      (checkpoints.write_state_dict(hf_broken, tmp_path / "hf.safetensors"), {}),
      (tmp_path / "evil.pt", {}), (tmp_path / "mixed.bin", {}), (tmp_path / "orbax", {}),
      (lora, {}), (lora, {"lora_rank": 3}),
      (checkpoints.write_state_dict(state_dict, tmp_path / "plain.pt"), {"lora_rank": 2}),
      (tmp_path / "nothing.npz", {}),
  ]
  for path, kwargs in cases:
    with pytest.raises(Exception) as loaded:
      checkpoints.load_params(path, config, **kwargs)
    with pytest.raises(type(loaded.value)) as checked:
      checkpoints.check_params(path, config, **kwargs)
    assert str(checked.value) == str(loaded.value), path
  assert not marker.exists()
  assert checkpoints.check_params(lora, config, lora_rank=2) == []


def test_check_params_passes_what_load_params_loads(reference, tmp_path):
  _, state_dict = reference
  config = get_model_config(NAME)
  checkpoints.save_params(tmp_path / "orbax", checkpoints.openclip_to_params(state_dict, config))
  hf = checkpoints.write_state_dict(checkpoints.hf.openclip_to_hf(state_dict),
                                    tmp_path / "hf.safetensors")
  siglip, siglip_params = hpjax.create_model("hpjax-tiny-siglip")
  big_vision.save(siglip_params, siglip.config, tmp_path / "siglip.npz")
  for path, model_config in ((tmp_path / "orbax", config), (hf, config),
                             (tmp_path / "siglip.npz", siglip.config)):
    assert checkpoints.check_params(path, model_config) == []
    checkpoints.load_params(path, model_config)
  with pytest.raises(ValueError) as loaded:
    checkpoints.load_params(tmp_path / "siglip.npz", get_model_config("ViT-B-16-SigLIP"))
  with pytest.raises(ValueError, match=re.escape(str(loaded.value))):
    checkpoints.check_params(tmp_path / "siglip.npz", get_model_config("ViT-B-16-SigLIP"))


def test_a_truncated_safetensors_file_fails_the_check(reference, tmp_path):
  _, state_dict = reference
  path = checkpoints.write_state_dict(state_dict, tmp_path / "full.safetensors")
  path.write_bytes(path.read_bytes()[:-4])
  with pytest.raises(ValueError, match="full.safetensors is not a readable .safetensors file: "
                                       "the tensors do not cover"):
    checkpoints.check_params(path, get_model_config(NAME))
