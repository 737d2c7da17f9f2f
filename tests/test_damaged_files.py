"""A truncated, foreign or undecodable checkpoint file is one error naming it (a user error
type, which the command line prints as one line), from the full read and from the header read
of the pre-check alike."""

import io

import ml_dtypes
import numpy as np
import pytest

from hpjax import checkpoints, errors
from hpjax.checkpoints import big_vision, files

STATE = {"visual.proj": np.ones((64, 64), np.float32)}


def _npz(arrays) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def _one_error(read, path, message):
  with pytest.raises(errors.USER_ERRORS) as info:
    read(path)
  line = errors.summary(info.value)
  assert str(path) in line and message in line and "\n" not in line, line


@pytest.mark.parametrize("read", [files.read_state_dict, files.read_stand_ins])
def test_truncated_or_garbage_safetensors(tmp_path, read):
  whole = checkpoints.write_state_dict(STATE, tmp_path / "whole.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(whole[:len(whole) // 2])
  (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint at all" * 8)
  for name in ("cut.safetensors", "garbage.safetensors"):
    _one_error(read, tmp_path / name, "is not a readable .safetensors file")


@pytest.mark.parametrize("read", [big_vision.read_npz, files.read_npz_stand_ins])
def test_truncated_or_bfloat16_big_vision_npz(tmp_path, read):
  whole = _npz({"params/t": np.ones(1000, np.float32)})
  for name, data in (("cut.npz", whole[:len(whole) // 2]), ("tail.npz", whole[:-30])):
    (tmp_path / name).write_bytes(data)
    _one_error(read, tmp_path / name, "is not a readable .npz file")
  (tmp_path / "bf16.npz").write_bytes(_npz({"params/t": np.ones(3, ml_dtypes.bfloat16)}))
  _one_error(read, tmp_path / "bf16.npz", "params/t")
  _one_error(read, tmp_path / "bf16.npz", "save it as float32")
