"""Every checkpoint writer checks its destination before work, writes aside and renames: an
existing file is never replaced, and a kill or a full disk leaves the destination absent, not
truncated. What a killed writer left beside it is removed by the next writer of that name."""

import os
import subprocess
import sys

from etils import epath
import numpy as np
import pytest

from configs import hnhp
from helpers import train_args
import hpjax
from hpjax import checkpoints, leftovers
from hpjax.checkpoints import big_vision, files
from hpjax.train import trainer

STATE = {"visual.proj": np.arange(6, dtype=np.float32).reshape(2, 3)}


def _full_disk(monkeypatch):
  """epath's write_bytes writes half, then fails as a full disk does."""
  write = epath.Path.write_bytes

  def half(self, data):
    write(self, data[:len(data) // 2])
    raise OSError(28, "No space left on device", str(self))

  monkeypatch.setattr(epath.Path, "write_bytes", half)


def _writers(tmp_path):
  """name -> (destination, write(destination)) of every writer of a checkpoint file."""
  return {
      "safetensors": (tmp_path / "a.safetensors",
                      lambda p: checkpoints.write_state_dict(STATE, p)),
      "torch": (tmp_path / "a.pt", lambda p: checkpoints.write_state_dict(STATE, p)),
      "aside": (tmp_path / "folder", lambda p: files.write_aside(
          p, lambda a: (a.mkdir(), (a / "x").write_bytes(b"12345678")))),
  }


@pytest.mark.parametrize("name", ["safetensors", "torch", "aside"])
def test_an_existing_destination_is_never_replaced(tmp_path, name):
  path, write = _writers(tmp_path)[name]
  path.write_bytes(b"the user's file") if name != "aside" else path.mkdir()
  with pytest.raises(FileExistsError, match=str(path)):
    write(path)
  assert (path.read_bytes() == b"the user's file") if name != "aside" else not os.listdir(path)
  assert sorted(os.listdir(tmp_path)) == [path.name]  # nothing left beside it


@pytest.mark.parametrize("name", ["safetensors", "torch", "aside"])
def test_a_full_disk_leaves_no_truncated_destination(tmp_path, monkeypatch, name):
  path, write = _writers(tmp_path)[name]
  _full_disk(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    write(path)
  assert not os.listdir(tmp_path)  # neither the destination nor the file written aside


def test_big_vision_writer_checks_first_and_writes_aside(tmp_path, monkeypatch):
  model, pair_params = hpjax.create_model("hpjax-tiny-siglip")
  config = model.config
  with pytest.raises(ValueError, match=r"\.npz"):
    big_vision.save(pair_params, config, tmp_path / "x.safetensors")
  existing = tmp_path / "old.npz"
  existing.write_bytes(b"kept")
  with pytest.raises(FileExistsError):
    big_vision.save(pair_params, config, existing)
  assert existing.read_bytes() == b"kept"
  with monkeypatch.context() as m:
    _full_disk(m)
    with pytest.raises(OSError, match="No space left"):
      big_vision.save(pair_params, config, tmp_path / "new.npz")
  assert sorted(os.listdir(tmp_path)) == ["old.npz"]
  big_vision.save(pair_params, config, tmp_path / "new.npz")
  assert set(big_vision.read_npz(tmp_path / "new.npz")) == set(
      big_vision.from_params(pair_params, config))


def dead_pid() -> str:
  return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()


def test_leftovers_of_a_killed_writer_are_removed_and_logged(tmp_path, caplog):
  host, dead = leftovers.name("").rsplit("-", 2)[0], dead_pid()
  stem = ".a.safetensors.partial-"
  left = tmp_path / f"{stem}{host}-{dead}-0123abcd"
  left.write_bytes(b"half a file")
  kept = [tmp_path / f"{stem}{host}-{os.getpid()}-feedbeef",  # a writer still running
          tmp_path / f"{stem}otherhost-{dead}-0123abcd"]  # a writer on another host
  for path in kept:
    path.write_bytes(b"being written")
  folder = tmp_path / f".hf.partial-{host}-{dead}-0123abcd"
  folder.mkdir()
  checkpoints.write_state_dict(STATE, tmp_path / "a.safetensors")
  assert sorted(os.listdir(tmp_path)) == sorted(
      ["a.safetensors", folder.name] + [p.name for p in kept])
  assert f"removed {left}, left by a run that was stopped" in caplog.text
  assert leftovers.remove_stale(tmp_path, ".hf.partial-") == [str(folder)]
  np.testing.assert_array_equal(
      checkpoints.read_state_dict(tmp_path / "a.safetensors")["visual.proj"], STATE["visual.proj"])


@pytest.mark.parametrize("name, error", [
    ("start.safetensors", FileExistsError),  # the run's own starting checkpoint
    ("export.npz", ValueError),  # a suffix the OpenCLIP export cannot write
])
def test_the_trainers_export_is_checked_before_training(train_source, tmp_path, name, error):
  export = tmp_path / name
  if error is FileExistsError:
    checkpoints.write_state_dict(STATE, export)
  before = export.read_bytes() if export.exists() else None
  config = hnhp.get_config(train_args(train_source, export_openclip=str(export),
                                      **{"model.pretrained": str(export)}))
  with pytest.raises(error, match=str(export)):
    trainer.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()  # no step was trained
  assert (export.read_bytes() if export.exists() else None) == before
