"""LoRA training: adapters as their own param tree, merged functionally into frozen base weights.

The adapters are kept in loralib's (TSVLC / DAC) layout, the one `checkpoints/lora.py` imports:
for an adapted weight of OpenCLIP shape (out, in) or a conv (out, in, k, k), `lora_A` is
(r*k, in*k) and `lora_B` (out*k, r*k), and the weight used is W + (alpha / r) * (B @ A) viewed
as W's shape. The tree mirrors the params: adapters[...path of the kernel...] = {"lora_A",
"lora_B"}. Merging inside the step leaves every model family's code unchanged; only the
adapters are differentiated, updated and held in the optimizer state. As in loralib, A starts
Kaiming-uniform and B at zero, so training starts from the base model.

With LoRA dropout (PEFT's `lora_dropout`, TSVLC's and DAC's) a merged weight cannot say that only
the adapter sees dropped inputs: training then runs the adapters unmerged beside the frozen
weights, y = base(x) + (alpha / r) * B(A(dropout(x))), by intercepting the adapted Dense and Conv
modules' calls (`Unmerged`), so the tower modules stay unchanged. A conv adapter's product is a
kernel (loralib's ConvLoRA), applied to the dropped input. Evaluation and exports merge.
"""

from __future__ import annotations

import re
import zlib

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hpjax import config_fields
from hpjax.checkpoints import mapping

# Target name -> the Flax kernel paths it adapts (TSVLC's and DAC's placement), in OpenCLIP's
# blocks, timm's (SigLIP's trunk) and HF's text encoders alike (attention pools are not adapted).
TARGETS = {
    "in_proj": r".*\.(attn\.in_proj|blocks_\d+\.attn\.qkv|attention\.self\.(query|key|value))"
               r"\.kernel",
    "out_proj": r".*\.(attn\.out_proj|blocks_\d+\.attn\.proj|attention\.output\.dense)\.kernel",
    "c_fc": r".*\.(mlp\.c_fc|blocks_\d+\.mlp\.fc1|layer_\d+\.intermediate\.dense)\.kernel",
    "c_proj": r".*\.(mlp\.c_proj|blocks_\d+\.mlp\.fc2|layer_\d+\.output\.dense)\.kernel",
    "conv1": r"visual\.(conv1|trunk\.patch_embed\.proj)\.kernel",  # the patch embedding
}
TOWERS = ("image", "text")


def options(config) -> tuple[dict[str, int], dict[str, list[str]]] | None:
  """(ranks, targets) per tower from a run config's `lora` group; None without LoRA."""
  ranks = {t: config.lora[f"{t}_rank"] for t in TOWERS}
  if not any(ranks.values()):
    return None
  return ranks, {t: config_fields.split_list(config.lora[f"{t}_targets"]) for t in TOWERS}


def _tower(path: tuple[str, ...]) -> str:
  return "image" if path[0] == "visual" else "text"


def _kernel_size(torch_shape) -> int:
  return torch_shape[-1] if len(torch_shape) == 4 else 1


def adapter_shapes(torch_shape, rank: int):
  """(lora_A shape, lora_B shape) for a weight of OpenCLIP shape `torch_shape`."""
  k = _kernel_size(torch_shape)
  return (rank * k, torch_shape[1] * k), (torch_shape[0] * k, rank * k)


def _torch_shape(flax_shape, layout):
  return tuple(flax_shape[i] for i in layout.to_torch)


def plan(params, ranks: dict[str, int], targets: dict[str, list[str]]) -> dict:
  """Flax kernel path -> rank, for every kernel a tower's targets name.

  Raises ValueError naming the field: an unknown target, a target that matches no module of
  the model, or a rank larger than an adapted layer's width.
  """
  flat = {tuple(k.key for k in p): x.shape
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  out = {}
  for tower in TOWERS:
    if not ranks[tower]:
      continue
    field = f"lora.{tower}_targets"
    for name in targets[tower]:
      if name not in TARGETS:
        raise ValueError(f"{field}: {name!r} is not a LoRA target; known: {sorted(TARGETS)}")
      hits = [p for p in flat if _tower(p) == tower and "attn_pool" not in p
              and re.fullmatch(TARGETS[name], ".".join(p))]
      if not hits:
        raise ValueError(f"{field}: {name!r} matches no module of the {tower} tower")
      for p in hits:
        _, layout = mapping.openclip_key(p, len(flat[p]))
        torch_shape = _torch_shape(flat[p], layout)
        width = min(torch_shape[0], int(np.prod(torch_shape[1:])))  # fan-out, fan-in
        if ranks[tower] > width:
          raise ValueError(f"lora.{tower}_rank={ranks[tower]} is larger than the width "
                           f"{width} of {'.'.join(p)} {torch_shape}")
        out[p] = ranks[tower]
  return out


def init_adapters(params, layer_ranks: dict, rng) -> dict:
  """Adapters for `plan`'s layers: A Kaiming-uniform (a = sqrt(5), loralib's), B zero."""
  flat = flax.traverse_util.flatten_dict(params)
  out = {}
  for i, (path, rank) in enumerate(sorted(layer_ranks.items())):
    _, layout = mapping.openclip_key(path, flat[path].ndim)
    a_shape, b_shape = adapter_shapes(_torch_shape(flat[path].shape, layout), rank)
    bound = 1.0 / np.sqrt(a_shape[1])  # kaiming_uniform(a=sqrt(5)) on a (r, in) matrix
    a = jax.random.uniform(jax.random.fold_in(rng, i), a_shape, jnp.float32, -bound, bound)
    out[path] = {"lora_A": a, "lora_B": jnp.zeros(b_shape, jnp.float32)}
  return flax.traverse_util.unflatten_dict(out)


def _is_pair(node) -> bool:
  return isinstance(node, dict) and set(node) == {"lora_A", "lora_B"}


def flat_adapters(adapters) -> dict:
  """Kernel path -> {'lora_A', 'lora_B'}."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if _is_pair(value):
        out[prefix + (key,)] = value
      else:
        walk(value, prefix + (key,))

  walk(adapters, ())
  return out


def delta(base, pair, alpha: float):
  """(alpha / r) * (B @ A) as the Flax kernel `base`'s shape and layout (fp32)."""
  _, layout = mapping.openclip_key(("x", "kernel"), base.ndim)
  torch_shape = _torch_shape(base.shape, layout)
  rank = pair["lora_A"].shape[0] // _kernel_size(torch_shape)
  product = (pair["lora_B"].astype(jnp.float32) @ pair["lora_A"].astype(jnp.float32))
  return (alpha / rank) * product.reshape(torch_shape).transpose(layout.to_flax)


def merge(params, adapters, alpha: float):
  """The params with every adapter merged into its kernel (a function: traced in the step)."""
  flat = flax.traverse_util.flatten_dict(params)
  for path, pair in flat_adapters(adapters).items():
    flat[path] = (flat[path] + delta(flat[path], pair, alpha)).astype(flat[path].dtype)
  return flax.traverse_util.unflatten_dict(flat)


def tsvlc_state_dict(params, adapters, config) -> dict[str, np.ndarray]:
  """The base weights as an OpenCLIP state dict with the adapters beside them, unmerged, under
  loralib's names (`X.lora_A` for `X.weight`, `X.in_proj_weight_lora_A`): TSVLC's layout."""
  out = mapping.params_to_openclip(jax.device_get(params), config)
  for path, pair in flat_adapters(jax.device_get(adapters)).items():
    key, _ = mapping.openclip_key(path, np.ndim(flax.traverse_util.flatten_dict(params)[path]))
    key = mapping.with_text_prefix(key, config)
    stem = key.removesuffix(".weight") + "." if key.endswith(".weight") else key + "_"
    for name in ("lora_A", "lora_B"):
      out[stem + name] = np.array(pair[name], np.float32, order="C")
  return out


_DROPOUT_STREAM = zlib.crc32(b"lora.dropout")  # apart from the model's and the adapters' init


def dropout_key(seed: int, step):
  """The step's dropout key: deterministic under the seed, new at every step (and on resume)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _DROPOUT_STREAM), step)


def dropout_mask(key, path: tuple[str, ...], shape, rate: float):
  """Which inputs of the module at `path` (a kernel's path without 'kernel') the adapter keeps.
  The mask has the global shape, so each device shard draws its own part of it."""
  layer_key = jax.random.fold_in(key, zlib.crc32(".".join(path).encode()))
  return jax.random.bernoulli(layer_key, 1.0 - rate, shape)


class Unmerged:
  """`model` whose `apply` runs the adapters unmerged beside the (frozen) params it is given,
  each on dropout(x) of its module's input x with masks drawn from `key`: what the step
  differentiates with lora.dropout > 0. Each adapted module runs once per `apply` (one mask)."""

  def __init__(self, model, adapters, alpha: float, rate: float, key):
    self.model, self.alpha, self.rate, self.key = model, alpha, rate, key
    self.pairs = {path[:-1]: pair for path, pair in flat_adapters(adapters).items()}

  def apply(self, variables, *args, **kwargs):
    with nn.intercept_methods(self._intercept):
      return self.model.apply(variables, *args, **kwargs)

  def _intercept(self, call, args, kwargs, context):
    module = context.module
    pair = (self.pairs.get(module.path) if context.method_name == "__call__"
            and isinstance(module, (nn.Dense, nn.Conv)) else None)
    if pair is None:
      return call(*args, **kwargs)
    x, out = args[0], call(*args, **kwargs)
    keep = dropout_mask(self.key, module.path, x.shape, self.rate)
    dropped = jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)
    return out + self._branch(module, dropped, pair).astype(out.dtype)

  def _branch(self, module, x, pair):
    """(alpha / r) * B(A(x)): two thin matmuls for a Dense; the product kernel for a Conv."""
    dtype = module.dtype or x.dtype
    if isinstance(module, nn.Dense):
      a, b = (pair[n].astype(dtype) for n in ("lora_A", "lora_B"))
      rank = a.shape[0]
      return (self.alpha / rank) * ((x.astype(dtype) @ a.T) @ b.T)
    kernel = delta(module.get_variable("params", "kernel"), pair, self.alpha)
    conv = module.clone(parent=None, use_bias=False)
    return conv.apply({"params": {"kernel": kernel.astype(module.param_dtype)}}, x)
