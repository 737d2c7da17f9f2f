"""LoRA adapters of TSVLC / DAC checkpoints, merged into plain OpenCLIP weights at import.

Their files keep each adapted weight beside its unmerged adapters (loralib's layout):
- a Linear `X.weight` (out, in) with `X.lora_A` (r, in) and `X.lora_B` (out, r);
- attention's fused `X.in_proj_weight` (3E, E) with `X.in_proj_weight_lora_A` (r, E), shared by
  q, k and v, and `X.in_proj_weight_lora_B` (3E, r);
- a conv `X.weight` (out, in, k, k) with `X.lora_A` (r*k, in*k) and `X.lora_B` (out*k, r*k),
  whose product is viewed row-major as the kernel (loralib's ConvLoRA; TSVLC adapts the patch
  conv and the ResNet convs this way).
Merged: W += (lora_alpha / r) * (B @ A), computed in fp32. TSVLC and DAC use r = 4, alpha = 1,
on attention, MLP and conv layers of both towers. The caller names the rank (`lora_rank`, and
`lora_alpha`, which no file holds, on `create_model` or `checkpoints.load_params`); a file with
adapters loaded without it is an error naming the rank its shapes show, so adapters are never
merged or dropped silently. Merging at import leaves a plain OpenCLIP state dict for the one
rule table: the Flax model never carries adapters.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

_ADAPTER = re.compile(r"(.*?)(\.|_)lora_([AB])")


def _base_key(prefix: str, sep: str) -> str:
  # `X.lora_A` adapts `X.weight`; `X.in_proj_weight_lora_A` adapts `X.in_proj_weight`.
  return f"{prefix}.weight" if sep == "." else prefix


def _adapters(state_dict: Mapping[str, Any]) -> dict[str, dict[str, str]]:
  """Base key -> {'A': key, 'B': key} for every adapter key of `state_dict`."""
  found: dict[str, dict[str, str]] = {}
  for key in state_dict:
    match = _ADAPTER.fullmatch(key)
    if match:
      prefix, sep, which = match.groups()
      found.setdefault(_base_key(prefix, sep), {})[which] = key
  return found


def _kernel_size(base_shape: tuple[int, ...]) -> int:
  return base_shape[-1] if len(base_shape) == 4 else 1


def _rank_of(a_shape: tuple[int, ...], base_shape: tuple[int, ...]) -> int:
  return a_shape[0] // _kernel_size(base_shape)


def _expected_shapes(base_shape: tuple[int, ...], rank: int):
  k = _kernel_size(base_shape)
  return (rank * k, base_shape[1] * k), (base_shape[0] * k, rank * k)


def _problems(state_dict: Mapping[str, Any], adapters: dict[str, dict[str, str]],
              rank: int) -> list[str]:
  """One line per adapter key that cannot be merged at `rank`, naming it."""
  problems = []
  for base, pair in sorted(adapters.items()):
    for which in "AB":
      if which not in pair:
        present = pair["B" if which == "A" else "A"]
        problems.append(f"{present}: its lora_{which} partner is missing")
    if base not in state_dict:
      problems.append(f"{', '.join(sorted(pair.values()))}: adapter of {base!r}, which the "
                      "checkpoint does not hold")
    if len(pair) < 2 or base not in state_dict:
      continue
    base_shape = tuple(np.shape(state_dict[base]))
    if len(base_shape) not in (2, 4):
      problems.append(f"{pair['A']}: adapts {base} of shape {base_shape}, not a Linear or conv")
      continue
    want = dict(zip("AB", _expected_shapes(base_shape, rank)))
    for which in "AB":
      got = tuple(np.shape(state_dict[pair[which]]))
      if got != want[which]:
        problems.append(f"{pair[which]}: shape {got} does not fit rank {rank} on "
                        f"{base} {base_shape} (expected {want[which]})")
  return problems


def merge_lora(state_dict: Mapping[str, Any], lora_rank: int | None, lora_alpha: float = 1.0,
               source: str = "checkpoint") -> dict[str, Any]:
  """`state_dict` with every adapter pair merged into its base weight and removed.

  With `lora_rank=None`, a file holding adapters is an error that names their rank; with a rank,
  a file without adapters, an unpaired adapter, an adapter without its base weight or one whose
  shape does not fit the rank is an error naming every such key.
  """
  adapters = _adapters(state_dict)
  if lora_rank is None:
    if adapters:
      ranks = sorted({_rank_of(np.shape(state_dict[pair["A"]]), np.shape(state_dict[base]))
                      for base, pair in adapters.items() if "A" in pair and base in state_dict})
      example = next(iter(adapters.values()))
      raise ValueError(
          f"{source} holds LoRA adapters of rank {', '.join(map(str, ranks)) or '?'} on "
          f"{len(adapters)} weights (e.g. {sorted(example.values())}); load it with "
          f"lora_rank={ranks[0] if ranks else 'r'} (and lora_alpha, 1 for TSVLC/DAC) to merge "
          "them into the weights")
    return dict(state_dict)
  if not adapters:
    raise ValueError(f"{source} holds no LoRA adapters (no '*.lora_A'/'*_lora_A' keys), but "
                     f"lora_rank={lora_rank} was given; load it without lora_rank")
  problems = _problems(state_dict, adapters, lora_rank)
  if problems:
    raise ValueError(f"{source}: LoRA adapters that cannot be merged at rank {lora_rank}:\n"
                     + "\n".join(f"  {p}" for p in problems))
  scale = lora_alpha / lora_rank
  adapter_keys = {key for pair in adapters.values() for key in pair.values()}
  merged = {k: v for k, v in state_dict.items() if k not in adapter_keys}
  for base, pair in adapters.items():
    weight = np.asarray(state_dict[base], np.float32)
    delta = (np.asarray(state_dict[pair["B"]], np.float32)
             @ np.asarray(state_dict[pair["A"]], np.float32))
    merged[base] = weight + np.float32(scale) * delta.reshape(weight.shape)
  return merged
