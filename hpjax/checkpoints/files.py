"""Reading and writing OpenCLIP-style state dict files as flat dicts of numpy arrays.

* `.safetensors` is read with the safetensors numpy backend: no torch needed.
* `.bin` / `.pt` / `.pth` go through `torch.load(weights_only=True)`: a file that is not a
  plain (possibly nested) dict of tensors is refused, never unpickled.
* OpenAI's original checkpoints are TorchScript archives. They are read with
  `torch.jit.load(map_location='cpu').state_dict()`, which runs TorchScript's own loader rather
  than Python's unpickler; still, load such archives only from sources you trust.

Paths may be local or remote (`gs://...`, through etils.epath): remote files are read into memory
first, local ones are read in place.

Keys are normalised to OpenCLIP's plain `CLIP` layout: a dict nested under `state_dict` is
unwrapped, a `module.` prefix (DDP) and a `text.` prefix (CustomTextCLIP) are stripped, and
buffers that are not weights (`attn_mask`, HF's `position_ids`, OpenAI's `input_resolution`,
`context_length`, `vocab_size`) are dropped. Export puts the `text.` prefix back where the
architecture has it (mapping.with_text_prefix).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any, Mapping

from etils import epath
import numpy as np
import safetensors.numpy

_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
# Buffers, not weights: attention masks, and the index buffers older transformers versions
# saved in HF text towers (`text.transformer.embeddings.position_ids`).
_BUFFER_SUFFIXES = ("attn_mask", "embeddings.position_ids", "embeddings.token_type_ids")


def read_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into {key: numpy array} with normalised OpenCLIP keys."""
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file {path} does not exist")
  if path.suffix == ".safetensors":
    raw = (safetensors.numpy.load_file(str(path)) if is_local(path)
           else safetensors.numpy.load(path.read_bytes()))
  else:
    source = str(path) if is_local(path) else io.BytesIO(path.read_bytes())
    raw = (_read_torchscript(path, source) if _is_torchscript(source)
           else _read_torch_state_dict(path, source))
  return normalize_keys(raw, str(path))


def is_local(path: epath.Path) -> bool:
  """False for URLs such as gs://bucket/x, which epath reads remotely."""
  return "://" not in str(path)


def normalize_keys(state_dict: Mapping[str, Any], source: str = "state dict") -> dict[str, Any]:
  """Strips `module.` and `text.` prefixes and drops non-weight buffers."""
  out = {}
  for key, value in state_dict.items():
    key = key.removeprefix("module.").removeprefix("text.")
    if key.endswith(_BUFFER_SUFFIXES) or key in _NOT_WEIGHTS:
      continue
    if key in out:
      raise ValueError(f"{source}: key {key!r} appears twice after stripping module./text. "
                       "prefixes")
    out[key] = value
  return out


def _torch(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs torch (pip install 'hpjax[torch]'); .safetensors "
                      "files need no torch") from e
  return torch


def _is_torchscript(source) -> bool:
  """Whether `source` (a file name or a BytesIO) is a TorchScript zip archive."""
  try:
    if not zipfile.is_zipfile(source):
      return False
    with zipfile.ZipFile(source) as archive:
      return any(name.endswith("/constants.pkl") or "/code/" in name
                 for name in archive.namelist())
  finally:
    if isinstance(source, io.BytesIO):
      source.seek(0)


def _read_torchscript(path: epath.Path, source) -> dict[str, np.ndarray]:
  torch = _torch(path)
  module = torch.jit.load(source, map_location="cpu")
  return {k: _to_numpy(v) for k, v in module.state_dict().items()}


def _read_torch_state_dict(path: epath.Path, source) -> dict[str, np.ndarray]:
  torch = _torch(path)
  try:
    obj = torch.load(source, map_location="cpu", weights_only=True)
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


def write_state_dict(state_dict: Mapping[str, np.ndarray], path) -> epath.Path:
  """Writes `.safetensors` (no torch needed) or `.bin`/`.pt` (a plain torch state dict)."""
  path = epath.Path(path)
  if path.suffix == ".safetensors":
    data = safetensors.numpy.save({k: np.array(v, order="C") for k, v in state_dict.items()})
  elif path.suffix in (".bin", ".pt", ".pth"):
    torch = _torch(path)
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, buffer)
    data = buffer.getvalue()
  else:
    raise ValueError(f"cannot write {path}: use a .safetensors, .bin, .pt or .pth file name")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path
