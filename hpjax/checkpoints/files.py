"""Reading and writing OpenCLIP-style state dict files as flat dicts of numpy arrays.

* `.safetensors` is read with the safetensors numpy backend: no torch needed.
* `.bin` / `.pt` / `.pth` go through `torch.load(weights_only=True)`: a file that is not a
  plain (possibly nested) dict of tensors is refused, never unpickled.
* OpenAI's original checkpoints are TorchScript archives. They are read with
  `torch.jit.load(map_location='cpu').state_dict()`, which runs TorchScript's own loader rather
  than Python's unpickler; still, load such archives only from sources you trust.

Paths may be local or remote (`gs://...`, through etils.epath): remote files are read into memory
first, local ones are read in place.

`read_stand_ins` reads what a file says about its tensors (the .safetensors header, the torch
pickle) and none of their data: each tensor is a `stand_in` of its shape that takes no memory,
so a checkpoint can be checked through the whole loading path before it is loaded, and is read
once.

Keys are normalised to OpenCLIP's plain `CLIP` layout: a dict nested under `state_dict` is
unwrapped, a `module.` prefix (DDP) and a `text.` prefix (CustomTextCLIP) are stripped, and
buffers that are not weights (`attn_mask`, HF's `position_ids`, OpenAI's `input_resolution`,
`context_length`, `vocab_size`) are dropped. Export puts the `text.` prefix back where the
architecture has it (mapping.with_text_prefix).
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import struct
import zipfile
import zlib
from typing import Any, Callable, Mapping

from etils import epath
import numpy as np
import safetensors.numpy

from hpjax import leftovers

_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
# Buffers, not weights: attention masks, and the index buffers older transformers versions
# saved in HF text towers (`text.transformer.embeddings.position_ids`).
_BUFFER_SUFFIXES = ("attn_mask", "embeddings.position_ids", "embeddings.token_type_ids")


def read_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into {key: numpy array} with normalised OpenCLIP keys."""
  path = _existing(path)
  if path.suffix == ".safetensors":
    try:
      raw = (safetensors.numpy.load_file(str(path)) if is_local(path)
             else safetensors.numpy.load(path.read_bytes()))
    except safetensors.SafetensorError as e:  # truncated, or not a .safetensors file at all
      raise ValueError(f"{path} is not a readable .safetensors file: {e}") from e
  else:
    source = str(path) if is_local(path) else io.BytesIO(path.read_bytes())
    tensors = (_read_torchscript(path, source) if _is_torchscript(source)
               else _read_torch_state_dict(path, source))
    raw = {k: _to_numpy(v) for k, v in tensors.items()}
  return normalize_keys(raw, str(path))


def read_stand_ins(path) -> dict[str, np.ndarray]:
  """`read_state_dict`'s keys, each with a `stand_in` of its tensor's shape, reading no tensor
  data: only the .safetensors header or the torch pickle (TorchScript's too, unpickled without
  running anything)."""
  path = _existing(path)
  with path.open("rb") as f:
    if path.suffix == ".safetensors":
      shapes = _safetensors_shapes(path, f)
    elif _is_torchscript(f):
      shapes = _torchscript_shapes(path, f)
    else:
      shapes = {k: v.shape for k, v in _read_torch_state_dict(path, f, "meta").items()}
  return normalize_keys({k: stand_in(shape) for k, shape in shapes.items()}, str(path))


def read_npz_stand_ins(path) -> dict[str, np.ndarray]:
  """A big_vision .npz file's arrays (`big_vision.read_npz`) as `stand_in`s, from the .npy
  headers of its members: no array data is read."""
  path = _existing(path, "big_vision checkpoint")
  readers = {(1, 0): np.lib.format.read_array_header_1_0,
             (2, 0): np.lib.format.read_array_header_2_0}
  shapes = {}
  with path.open("rb") as f, npz_errors(path), zipfile.ZipFile(f) as archive:
    for name in archive.namelist():
      with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version not in readers:
          raise ValueError(f"{path}: {name} is a .npy file of version {version}, not 1.0 or 2.0")
        shape, _, dtype = readers[version](member)
        if dtype.hasobject:  # What np.load(allow_pickle=False) refuses.
          raise ValueError(f"{path}: {name} holds Python objects, which are never unpickled")
        check_npz_dtype(path, name, dtype)
        shapes[name.removesuffix(".npy")] = shape
  return {key: stand_in(shape) for key, shape in shapes.items()}


@contextlib.contextmanager
def npz_errors(path):
  """A truncated or foreign .npz file's zip and .npy errors as one ValueError naming it."""
  try:
    yield
  except (zipfile.BadZipFile, EOFError, zlib.error) as e:
    raise ValueError(f"{path} is not a readable .npz file (truncated or not a zip of .npy "
                     f"arrays): {e}") from e


def check_npz_dtype(path, name: str, dtype: np.dtype) -> None:
  """Numbers only: numpy stores what it cannot name (bfloat16) as raw bytes ('|V2')."""
  if dtype.kind not in "fiub":
    raise ValueError(f"{path}: {name} is stored as {dtype.str!r}, not as numbers numpy can read "
                     "(a bfloat16 array is saved as raw 2-byte values); save it as float32")


def stand_in(shape) -> np.ndarray:
  """Zeros of `shape` that take no memory (a read-only broadcast of one fp32 zero): every
  check of the loading path (keys, shapes, renaming, LoRA merging) runs on it as on the tensor."""
  return np.broadcast_to(np.float32(0), tuple(shape))


def _existing(path, what: str = "checkpoint file") -> epath.Path:
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} {path} does not exist")
  return path


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
  """Whether `source` (a file name or an open file) is a TorchScript zip archive."""
  try:
    if not zipfile.is_zipfile(source):
      return False
    with zipfile.ZipFile(source) as archive:
      return any(name.endswith("/constants.pkl") or "/code/" in name
                 for name in archive.namelist())
  finally:
    if not isinstance(source, str):
      source.seek(0)


def _read_torchscript(path: epath.Path, source) -> dict:
  torch = _torch(path)
  return torch.jit.load(source, map_location="cpu").state_dict()


def _read_torch_state_dict(path: epath.Path, source, map_location: str = "cpu") -> dict:
  """The tensors of a plain torch state dict file (on the meta device: shapes, no data read)."""
  torch = _torch(path)
  try:
    obj = torch.load(source, map_location=map_location, weights_only=True)
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
  return dict(obj)


def _safetensors_shapes(path: epath.Path, f) -> dict[str, tuple[int, ...]]:
  """Key -> shape from a .safetensors header: 8 bytes of length, then JSON {key: {dtype, shape,
  data_offsets}}; the offsets must cover the file, as the safetensors reader demands."""
  size = f.seek(0, io.SEEK_END)
  f.seek(0)
  try:
    (length,) = struct.unpack("<Q", f.read(8))
    if length > size - 8:
      raise ValueError(f"a header of {length} bytes in a file of {size}")
    header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + length + end != size:
      raise ValueError(f"the tensors do not cover the file's {size} bytes")
    return {key: tuple(entry["shape"]) for key, entry in header.items()}
  except (struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
    raise ValueError(f"{path} is not a readable .safetensors file: {e}") from e


class _Attributes:
  """An object of a TorchScript pickle, kept as the attributes it was built with."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)


class _TensorShape(tuple):
  """A tensor of a TorchScript pickle, kept as its shape."""


class _TorchScriptShapes(pickle.Unpickler):
  """Unpickles a TorchScript archive's data.pkl into `_Attributes` and `_TensorShape`s: no
  class of the file is looked up, no code is run and no storage is loaded."""

  def find_class(self, module, name):
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return lambda storage, offset, size, *rest: _TensorShape(size)
    return _Attributes

  def persistent_load(self, pid):
    del pid


def _torchscript_shapes(path: epath.Path, f) -> dict[str, tuple[int, ...]]:
  """Key -> shape of every tensor attribute of the pickled module tree (a traced module keeps
  its parameters and buffers as attributes: its state dict)."""
  with zipfile.ZipFile(f) as archive:
    names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if not names:
      raise ValueError(f"{path} is not a readable TorchScript archive: it has no data.pkl")
    root = _TorchScriptShapes(io.BytesIO(archive.read(names[0]))).load()

  def walk(node, prefix):
    for attribute, value in vars(node).items():
      if isinstance(value, _TensorShape):
        yield prefix + attribute, tuple(value)
      elif isinstance(value, _Attributes):
        yield from walk(value, f"{prefix}{attribute}.")

  return dict(walk(root, ""))


def _to_numpy(tensor) -> np.ndarray:
  tensor = tensor.detach().cpu()
  if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16; fp32 holds it exactly.
    tensor = tensor.float()
  return tensor.numpy()


STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_ASIDE = ".partial-"  # `.NAME.partial-HOST-PID-RANDOM`: a destination being written, beside it


def check_destination(path, suffixes: tuple[str, ...] = ()) -> epath.Path:
  """`path` as a destination: it must not exist (nothing is replaced that the user did not
  remove) and, given `suffixes`, end in one of them. Called before the work that fills it."""
  path = epath.Path(path)
  if suffixes and path.suffix not in suffixes:
    raise ValueError(f"cannot write {path}: use a file name ending in {' or '.join(suffixes)}")
  if path.exists():
    raise FileExistsError(f"{path} exists; remove it or choose another name")
  return path


def write_aside(path, write: Callable[[epath.Path], None],
                suffixes: tuple[str, ...] = ()) -> epath.Path:
  """Checks `path` (`check_destination`), lets `write` fill a file or folder beside it and
  renames that into place: after a kill or a full disk, `path` is complete or absent. What a
  killed writer of the same destination left beside it is removed first (and logged)."""
  path = check_destination(path, suffixes)
  path.parent.mkdir(parents=True, exist_ok=True)
  stem = f".{path.name}{_ASIDE}"
  if is_local(path):
    leftovers.remove_stale(path.parent, stem)
  aside = path.parent / leftovers.name(stem)
  try:
    write(aside)
    aside.rename(path)
  except BaseException:
    if aside.is_dir():
      aside.rmtree(missing_ok=True)
    elif aside.exists():
      aside.unlink()
    raise
  return path


def write_state_dict(state_dict: Mapping[str, np.ndarray], path) -> epath.Path:
  """Writes `.safetensors` (no torch needed) or `.bin`/`.pt` (a plain torch state dict), to a
  new file (`write_aside`)."""
  path = check_destination(path, STATE_DICT_SUFFIXES)
  if path.suffix == ".safetensors":
    data = safetensors.numpy.save({k: np.array(v, order="C") for k, v in state_dict.items()})
  else:
    torch = _torch(path)
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, buffer)
    data = buffer.getvalue()
  return write_aside(path, lambda aside: aside.write_bytes(data))
