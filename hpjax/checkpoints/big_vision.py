"""big_vision SigLIP `.npz` checkpoints <-> Flax params of a SigLIP config: one rule table.

big_vision is Flax too, so Dense kernels, the patch conv and LayerNorm scales keep their layout;
what changes is the names and attention: MultiHeadDotProductAttention keeps per-head kernels
(query/key/value (width, heads, head_dim), out (heads, head_dim, width)) where hpjax fuses q/k/v
(timm's `qkv`; the MAP head's `kv`) into one (width, 3 * width) kernel. The rules map onto the
param tree directly (checkpoints/renaming.py); the forms files come in are normalised first:
* keys under `params/` (as `big_vision.utils.save_checkpoint` writes them) or bare;
* blocks stacked by `nn.scan` (`Transformer/encoderblock/...` with a leading depth axis) or
  one per index (`encoderblock_{i}`);
* older text towers carrying a second positional embedding, `txt/Encoder_0/pos_embedding`,
  which the encoder adds to `txt/pos_embedding`: the two are summed.
`t` is the log temperature (hpjax's `logit_scale`), `b` the bias (`logit_bias`). big_vision
computes GELU in its tanh form; an OpenCLIP SigLIP config computes what timm does with the
same weights (exact GELU in SigLIP's B/16 image tower), as OpenCLIP's own conversion does.
Files are read with `np.load(allow_pickle=False)`.
"""

from __future__ import annotations

import io
import re

from etils import epath
import jax
import numpy as np

from hpjax.checkpoints import files, mapping
from hpjax.checkpoints.renaming import DROP_AXIS, SAME, Change, RuleTable
from hpjax.models.clip import CLIP, param_shapes
from hpjax.models.config import CLIPConfig

_STACKED = re.compile(r"(.*/)encoderblock/(.*)")
_BLOCK = re.compile(r"(.*/)encoderblock_(\d+)/(.*)")
_OLD_TEXT_POSITIONS, _TEXT_POSITIONS = "txt/Encoder_0/pos_embedding", "txt/pos_embedding"


def _heads_out(tower: str) -> Change:
  """query/key/value: (..., heads, head_dim) <-> (..., width); `tower` keys the head count."""
  return Change(f"heads_out_{tower}", lambda v, c: v.reshape(v.shape[:-2] + (-1,)),
                lambda v, c: v.reshape(v.shape[:-1] + (c[tower], -1)))


def _heads_in(tower: str) -> Change:
  """out: (heads, head_dim, width) <-> (width, width)."""
  return Change(f"heads_in_{tower}", lambda v, c: v.reshape(-1, v.shape[-1]),
                lambda v, c: v.reshape(c[tower], -1, v.shape[-1]))


def _block(bv: str, flax: str, tower: str, names: tuple[str, ...]) -> tuple:
  """One encoder block's rules; names: Flax ln1, ln2, fused qkv, out, fc1, fc2 under `flax`."""
  ln1, ln2, qkv, out, fc1, fc2 = names
  attn = bv + "MultiHeadDotProductAttention_0/"
  return (
      (bv + "LayerNorm_0/{sb}", flax + ln1 + "/{sb}", SAME),
      (bv + "LayerNorm_1/{sb}", flax + ln2 + "/{sb}", SAME),
      (attn + "{query_key_value}/{kb}", flax + qkv + "/{kb}", _heads_out(tower)),
      (attn + "out/kernel", flax + out + "/kernel", _heads_in(tower)),
      (attn + "out/bias", flax + out + "/bias", SAME),
      (bv + "MlpBlock_0/Dense_0/{kb}", flax + fc1 + "/{kb}", SAME),
      (bv + "MlpBlock_0/Dense_1/{kb}", flax + fc2 + "/{kb}", SAME),
  )


_TRUNK, _POOL, _MAP = "visual/trunk/", "visual/trunk/attn_pool/", "img/MAPHead_0/"
# (big_vision key, Flax param path, change).
RULES = (
    ("img/embedding/{kb}", _TRUNK + "patch_embed/proj/{kb}", SAME),
    ("img/pos_embedding", _TRUNK + "pos_embed", SAME),
    *_block("img/Transformer/encoderblock_{n}/", _TRUNK + "blocks_{n}/", "img",
            ("norm1", "norm2", "attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2")),
    ("img/Transformer/encoder_norm/{sb}", _TRUNK + "norm/{sb}", SAME),
    (_MAP + "probe", _POOL + "latent", SAME),
    (_MAP + "MultiHeadDotProductAttention_0/query/{kb}", _POOL + "q/{kb}", _heads_out("img")),
    (_MAP + "MultiHeadDotProductAttention_0/{key_value}/{kb}", _POOL + "kv/{kb}",
     _heads_out("img")),
    (_MAP + "MultiHeadDotProductAttention_0/out/kernel", _POOL + "proj/kernel", _heads_in("img")),
    (_MAP + "MultiHeadDotProductAttention_0/out/bias", _POOL + "proj/bias", SAME),
    (_MAP + "LayerNorm_0/{sb}", _POOL + "norm/{sb}", SAME),
    (_MAP + "MlpBlock_0/Dense_0/{kb}", _POOL + "mlp/fc1/{kb}", SAME),
    (_MAP + "MlpBlock_0/Dense_1/{kb}", _POOL + "mlp/fc2/{kb}", SAME),
    ("txt/Embed_0/embedding", "token_embedding/embedding", SAME),
    (_TEXT_POSITIONS, "positional_embedding", DROP_AXIS),
    *_block("txt/Encoder_0/encoderblock_{n}/", "transformer/resblocks_{n}/", "txt",
            ("ln_1", "ln_2", "attn/in_proj", "attn/out_proj", "mlp/c_fc", "mlp/c_proj")),
    ("txt/Encoder_0/encoder_norm/{sb}", "ln_final/{sb}", SAME),
    ("txt/head/{kb}", "text_projection/{kb}", SAME),
    ("t", "logit_scale", DROP_AXIS),
    ("b", "logit_bias", DROP_AXIS),
)
_TABLE = RuleTable(RULES, fuse_axis=-1)


def _heads(config: CLIPConfig) -> dict[str, int]:
  if config.vision.timm is None:
    raise ValueError(f"model {config.name!r} is not a SigLIP model (no vision_cfg.timm_model_name)"
                     ": big_vision SigLIP files need one")
  return {"img": config.vision.timm.heads, "txt": config.text.heads}


def normalize(arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """`params/` stripped, stacked blocks split per index, the older second text positional
  embedding added into `txt/pos_embedding`."""
  out = {}

  def put(key, value):
    if key in out:
      raise ValueError(f"{source}: {key!r} appears twice (with and without params/, or both "
                       "stacked and per block)")
    out[key] = value

  for key, value in arrays.items():
    key = key.removeprefix("params/")
    stacked = _STACKED.fullmatch(key)
    if stacked:
      for i, block in enumerate(value):
        put(f"{stacked[1]}encoderblock_{i}/{stacked[2]}", block)
    else:
      put(key, value)
  if _OLD_TEXT_POSITIONS in out:
    if _TEXT_POSITIONS not in out:
      raise ValueError(f"{source}: has {_OLD_TEXT_POSITIONS} but no {_TEXT_POSITIONS} to add "
                       "it to")
    old, new = out.pop(_OLD_TEXT_POSITIONS), out[_TEXT_POSITIONS]
    if old.shape != new.shape:
      raise ValueError(f"{source}: {_OLD_TEXT_POSITIONS} {old.shape} and {_TEXT_POSITIONS} "
                       f"{new.shape} differ in shape")
    out[_TEXT_POSITIONS] = new + old
  return out


def read_npz(path) -> dict[str, np.ndarray]:
  """The arrays of a big_vision .npz file (no pickles)."""
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"big_vision checkpoint {path} does not exist")
  with files.npz_errors(path), np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as npz:
    arrays = {k: npz[k] for k in npz.files}
  for key, value in arrays.items():
    files.check_npz_dtype(path, key, value.dtype)
  return arrays


def to_params(arrays: dict[str, np.ndarray], config: CLIPConfig, param_dtype=np.float32,
              source: str = "big_vision checkpoint") -> dict:
  """big_vision arrays (as in the .npz) -> the nested Flax params of SigLIP `config`."""
  heads = _heads(config)
  flat, unmatched, origin = _TABLE.convert(normalize(arrays, source), True, source, heads)
  if unmatched:
    raise ValueError(f"{source}: {len(unmatched)} key(s) are not big_vision SigLIP parameters "
                     f"hpjax knows: {sorted(unmatched)}")
  want = {"/".join(p.key for p in path): tuple(leaf.shape) for path, leaf
          in jax.tree_util.tree_flatten_with_path(param_shapes(CLIP(config)))[0]}
  got = {k: v.shape for k, v in flat.items()}
  try:
    mapping.check_keys(got, want, source, config.name)
  except mapping.CheckpointMismatchError as e:
    misshaped = {f"{k} (from {', '.join(origin[k])})": shapes
                 for k, shapes in e.misshaped.items()}
    unexpected = [f"{k} (from {', '.join(origin[k])})" for k in e.unexpected]
    raise mapping.CheckpointMismatchError(source, config.name, e.missing, unexpected,
                                          misshaped) from None
  params: dict = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = params
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = np.asarray(value, dtype=param_dtype)
  return params


def load(path, config: CLIPConfig, param_dtype=np.float32) -> dict:
  return to_params(read_npz(path), config, param_dtype, f"big_vision checkpoint {path}")


def from_params(params, config: CLIPConfig, prefix: str = "params/", stacked: bool = False
                ) -> dict[str, np.ndarray]:
  """Flax params of SigLIP `config` -> big_vision arrays (fp32), under `prefix`, blocks per
  index or stacked as `nn.scan` stores them."""
  flat = {"/".join(p.key for p in path): np.asarray(jax.device_get(leaf), np.float32)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  out, unmatched, _ = _TABLE.convert(flat, False, "params", _heads(config))
  if unmatched:
    raise ValueError(f"params of {config.name!r}: {len(unmatched)} parameter(s) have no "
                     f"big_vision counterpart: {sorted(unmatched)}")
  if stacked:
    blocks: dict[str, dict[int, np.ndarray]] = {}
    for key in [k for k in out if _BLOCK.fullmatch(k)]:
      head, index, tail = _BLOCK.fullmatch(key).groups()
      blocks.setdefault(f"{head}encoderblock/{tail}", {})[int(index)] = out.pop(key)
    out.update({k: np.stack([v[i] for i in sorted(v)]) for k, v in blocks.items()})
  return {prefix + k: v for k, v in sorted(out.items())}


def save(params, config: CLIPConfig, path, **kwargs) -> epath.Path:
  """Writes `params` as a new big_vision .npz file (see `from_params` for the options), aside
  and renamed (`files.write_aside`)."""
  files.check_destination(path, (".npz",))
  buffer = io.BytesIO()
  np.savez(buffer, **from_params(params, config, **kwargs))
  return files.write_aside(path, lambda aside: aside.write_bytes(buffer.getvalue()), (".npz",))
