"""OpenAI's ModifiedResNet image tower (RN50 ... RN50x64) in Flax, named as OpenCLIP keys it.

`visual.layer2.0.downsample.1.running_var` lives at
`params['visual']['layer2_0']['downsample_1']['var']`, so checkpoints convert by the rule table
of checkpoints/mapping.py (OpenAI's TorchScript archives too: `config.infer_openai_config` reads
the architecture from the tensor shapes). The parity traps: every 3x3 conv pads (1, 1)
explicitly (Flax 'SAME' pads a stride-2 conv (0, 1)); strides are anti-aliased by AvgPool; the
attention pool prepends the mean token before adding its positional embedding and has separate
q/k/v/c projections; BatchNorm eps is 1e-5. ReLU throughout: the config's GELU is the text
tower's. BatchNorm runs in inference mode only, from the checkpoint's running statistics, which
stay frozen (see `BatchNorm`). The image size is fixed: 32 x the attention pool's grid.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hpjax.models.config import VisionConfig

Dtype = Any
EXPANSION = 4  # A bottleneck's output has 4x its planes.


class BatchNorm(nn.Module):
  """BatchNorm2d in inference mode, from running statistics.

  The statistics live in the `params` collection as `mean` and `var` (so callers keep passing
  `{"params": params}`) and pass through `jax.lax.stop_gradient`: their gradient is zero and,
  being vectors, they get no weight decay, so finetuning never changes them. `scale` and `bias`
  train as usual. OpenCLIP's `num_batches_tracked` counter is not kept (mapping.py).
  """
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape, pd = (self.features,), self.param_dtype
    scale = self.param("scale", nn.initializers.ones, shape, pd)
    bias = self.param("bias", nn.initializers.zeros, shape, pd)
    mean = jax.lax.stop_gradient(self.param("mean", nn.initializers.zeros, shape, pd))
    var = jax.lax.stop_gradient(self.param("var", nn.initializers.ones, shape, pd))
    mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var.astype(jnp.float32) + 1e-5)
    shift = bias.astype(jnp.float32) - mean.astype(jnp.float32) * mul
    return x * mul.astype(x.dtype) + shift.astype(x.dtype)


def _conv(features: int, kernel: int, name: str, stride: int = 1, **kw) -> nn.Conv:
  pad = kernel // 2  # PyTorch's symmetric padding, never Flax's asymmetric 'SAME'.
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, name=name, **kw)


def _avg_pool(x, size: int):
  return nn.avg_pool(x, (size, size), strides=(size, size)) if size > 1 else x


class Bottleneck(nn.Module):
  """1x1, 3x3, AvgPool(stride), 1x1 (x4); the shortcut is AvgPool(stride), 1x1 conv, BN."""
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = _conv(self.planes, 1, "conv1", **kw)(x)
    out = nn.relu(BatchNorm(self.planes, name="bn1", **kw)(out))
    out = _conv(self.planes, 3, "conv2", **kw)(out)
    out = nn.relu(BatchNorm(self.planes, name="bn2", **kw)(out))
    out = _avg_pool(out, self.stride)
    width = self.planes * EXPANSION
    out = BatchNorm(width, name="bn3", **kw)(_conv(width, 1, "conv3", **kw)(out))
    if self.downsample:  # OpenCLIP's downsample.-1 is the parameter-free pool.
      x = _conv(width, 1, "downsample_0", **kw)(_avg_pool(x, self.stride))
      x = BatchNorm(width, name="downsample_1", **kw)(x)
    return nn.relu(out + x)


class AttentionPool2d(nn.Module):
  """Multi-head attention of the mean token over itself and the feature map; returns its row."""
  grid_size: int
  heads: int
  output_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, dim = x.shape
    x = x.reshape(batch, height * width, dim)  # Row-major (h, w), as torch flattens NCHW.
    pos = self.param("positional_embedding", nn.initializers.normal(dim ** -0.5),
                     (self.grid_size ** 2 + 1, dim), self.param_dtype)
    if height * width + 1 != pos.shape[0]:
      raise ValueError(f"a {height}x{width} feature map does not fit the attention pool's "
                       f"{self.grid_size}x{self.grid_size} positional embedding: the image "
                       f"must be {self.grid_size * 32}x{self.grid_size * 32}")
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1) + pos.astype(x.dtype)
    dense = lambda features, name: nn.Dense(  # pylint: disable=g-long-lambda
        features, kernel_init=nn.initializers.normal(dim ** -0.5), dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    split = lambda y: y.reshape(batch, y.shape[1], self.heads, dim // self.heads)
    # Only the mean token's output is kept, so only its query is computed.
    q = split(dense(dim, "q_proj")(x[:, :1]))
    k, v = split(dense(dim, "k_proj")(x)), split(dense(dim, "v_proj")(x))
    out = jax.nn.dot_product_attention(q, k, v).reshape(batch, dim)
    return dense(self.output_dim, "c_proj")(out)


class ModifiedResNet(nn.Module):
  """The three-conv stem with AvgPool, four bottleneck stages, the attention pool."""
  cfg: VisionConfig
  output_dim: int
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    """images: (N, H, W, 3) normalised floats -> (N, output_dim) unnormalised features."""
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype)
    stem = ((cfg.width // 2, 2), (cfg.width // 2, 1), (cfg.width, 1))
    for i, (features, stride) in enumerate(stem, start=1):
      x = _conv(features, 3, f"conv{i}", stride, **kw)(x)
      x = nn.relu(BatchNorm(features, name=f"bn{i}", **kw)(x))
    x = _avg_pool(x, 2)
    block = nn.remat(Bottleneck) if self.remat else Bottleneck
    inplanes = cfg.width
    for stage, depth in enumerate(cfg.layers):
      planes, stride = cfg.width * 2 ** stage, 1 if stage == 0 else 2
      for j in range(depth):
        first = j == 0
        downsample = first and (stride > 1 or inplanes != planes * EXPANSION)
        x = block(planes, stride if first else 1, downsample, name=f"layer{stage + 1}_{j}", **kw)(x)
        inplanes = planes * EXPANSION
    return AttentionPool2d(cfg.grid_size, cfg.heads, self.output_dim, name="attnpool", **kw)(x)
