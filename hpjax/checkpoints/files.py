"""Reading and writing OpenCLIP-style state dict files as flat dicts of numpy arrays.

* `.safetensors` is read with the safetensors numpy backend: no torch needed.
* `.bin` / `.pt` / `.pth` go through `torch.load(weights_only=True)`: a file that is not a
  plain (possibly nested) dict of tensors is refused, never unpickled.
* OpenAI's original checkpoints are TorchScript archives. They are read with
  `torch.jit.load(map_location='cpu').state_dict()`, which runs TorchScript's own loader rather
  than Python's unpickler; still, load such archives only from sources you trust.

Keys are normalised to OpenCLIP's plain `CLIP` layout: a dict nested under `state_dict` is
unwrapped, a `module.` prefix (DDP) and a `text.` prefix (CustomTextCLIP) are stripped, and
buffers that are not weights (`attn_mask`, OpenAI's `input_resolution`, `context_length`,
`vocab_size`) are dropped.
"""

from __future__ import annotations

import pathlib
import pickle
import zipfile
from typing import Any, Mapping

import numpy as np
import safetensors.numpy

_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


def read_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into {key: numpy array} with normalised OpenCLIP keys."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file {path} does not exist")
  if path.suffix == ".safetensors":
    raw = safetensors.numpy.load_file(str(path))
  elif _is_torchscript(path):
    raw = _read_torchscript(path)
  else:
    raw = _read_torch_state_dict(path)
  return normalize_keys(raw)


def normalize_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Strips `module.` and `text.` prefixes and drops non-weight buffers."""
  out = {}
  for key, value in state_dict.items():
    key = key.removeprefix("module.").removeprefix("text.")
    if key.endswith("attn_mask") or key in _NOT_WEIGHTS:
      continue
    if key in out:
      raise ValueError(f"key {key!r} appears twice after stripping module./text. prefixes")
    out[key] = value
  return out


def _torch(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs torch (pip install 'hpjax[torch]'); .safetensors "
                      "files need no torch") from e
  return torch


def _is_torchscript(path: pathlib.Path) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _read_torchscript(path: pathlib.Path) -> dict[str, np.ndarray]:
  torch = _torch(path)
  module = torch.jit.load(str(path), map_location="cpu")
  return {k: _to_numpy(v) for k, v in module.state_dict().items()}


def _read_torch_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
  torch = _torch(path)
  try:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"{path} is refused: it is not a plain state dict, and hpjax never "
                     f"unpickles arbitrary objects (torch.load(weights_only=True): {reason})") from e
  except RuntimeError as e:
    raise ValueError(f"{path} is not a readable torch checkpoint: {e}") from e
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  not_tensors = {k: type(v).__name__ for k, v in obj.items() if not isinstance(v, torch.Tensor)}
  if not_tensors:
    raise ValueError(f"{path} is not a plain state dict: non-tensor entries {not_tensors}")
  return {k: _to_numpy(v) for k, v in obj.items()}


def _to_numpy(tensor) -> np.ndarray:
  tensor = tensor.detach().cpu()
  if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16; fp32 holds it exactly.
    tensor = tensor.float()
  return tensor.numpy()


def write_state_dict(state_dict: Mapping[str, np.ndarray], path) -> pathlib.Path:
  """Writes `.safetensors` (no torch needed) or `.bin`/`.pt` (a plain torch state dict)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".safetensors":
    safetensors.numpy.save_file({k: np.array(v, order="C") for k, v in state_dict.items()},
                                str(path))
  elif path.suffix in (".bin", ".pt", ".pth"):
    torch = _torch(path)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, str(path))
  else:
    raise ValueError(f"cannot write {path}: use a .safetensors, .bin, .pt or .pth file name")
  return path
