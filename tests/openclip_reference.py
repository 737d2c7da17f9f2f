"""Reference OpenCLIP models with random weights and matching inputs, for the port's tests.

The 1-D tensors (biases, LayerNorm scales, logit scale) are perturbed after OpenCLIP's init,
which sets them to constants: zero biases and unit scales could hide a mis-mapped key. The
matrices are random already.
"""

import functools
import pathlib

import numpy as np
import open_clip
import timm
from timm.models import vision_transformer
import torch
import transformers

from hpjax.models.config import TIMM_SIGLIP_MODELS

CONFIG_DIR = pathlib.Path(__file__).parents[1] / "hpjax" / "models" / "configs"
TINY_JSON = CONFIG_DIR / "hpjax-tiny.json"
TINY_SIGLIP = ("hpjax-tiny-siglip", "hpjax-tiny-siglip2")  # exact / tanh GELU
SOT, EOT = 49406, 49407


@functools.cache
def _register_tiny():
  open_clip.add_model_config(str(TINY_JSON))


@functools.cache
def register_tiny_siglip() -> None:
  """Makes timm build hpjax's tiny SigLIP trunks (`hpjax_tiny_siglip`, `..._siglip2`: the
  shapes of models.config.TIMM_SIGLIP_MODELS, built as timm builds its SigLIP ViTs) and
  open_clip know the two tiny SigLIP configs."""
  for name in TINY_SIGLIP:
    timm_name = name.replace("-", "_")
    arch = TIMM_SIGLIP_MODELS[timm_name]

    def build(pretrained=False, _name=timm_name, _arch=arch, **kwargs):
      args = dict(img_size=_arch.image_size, patch_size=_arch.patch_size, embed_dim=_arch.width,
                  depth=_arch.layers, num_heads=_arch.heads, mlp_ratio=_arch.mlp_ratio,
                  class_token=False, global_pool="map",
                  act_layer="gelu_tanh" if _arch.gelu_tanh else "gelu")
      return vision_transformer._create_vision_transformer(  # pylint: disable=protected-access
          _name, pretrained=pretrained, **dict(args, **kwargs))

    build.__name__ = timm_name
    timm.models.register_model(build)
    open_clip.add_model_config(str(CONFIG_DIR / f"{name}.json"))


def openclip_model(name: str, seed: int = 0) -> torch.nn.Module:
  """open_clip.create_model(name) with random weights, 1-D tensors perturbed, in eval mode."""
  _register_tiny()
  torch.manual_seed(seed)
  return perturb_vectors(open_clip.create_model(name).eval())


def perturb_vectors(model: torch.nn.Module) -> torch.nn.Module:
  """Moves biases and LayerNorm gains off their constant inits (zeros, ones), so a parity test
  fails when a converter drops or swaps one of them."""
  with torch.no_grad():
    for param in model.parameters():
      if param.ndim <= 1:
        param.add_(0.02 * torch.randn_like(param))
  return model


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def random_images(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
  """Normalised-looking float images, NCHW (OpenCLIP's layout)."""
  return rng.standard_normal((batch, 3, size, size)).astype(np.float32)


def random_tokens(rng: np.random.Generator, batch: int, eot_positions=(5, 76, 12, 40),
                  length: int = 77) -> np.ndarray:
  """Token ids as the tokenizer lays them out: SOT, random BPE ids, EOT, zero padding."""
  tokens = np.zeros((batch, length), np.int32)
  for row in range(batch):
    eot = min(eot_positions[row % len(eot_positions)], length - 1)
    tokens[row, 0] = SOT
    tokens[row, 1:eot] = rng.integers(1, SOT, eot - 1)
    tokens[row, eot] = EOT
  return tokens


def perturb_all(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Adds noise to every tensor, matrices included: towers whose init leaves whole rows or
  matrices at zero (HF padding embeddings, fused biases) must still show a mis-mapped key."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.02 * torch.randn(param.shape, generator=generator))
  return model.eval()


def hf_clip_model(hidden_act: str, eos_token_id: int) -> transformers.CLIPModel:
  """A random CLIPModel with hpjax-tiny's dimensions; 1-D tensors perturbed off their constants."""
  towers = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                hidden_act=hidden_act)
  config = transformers.CLIPConfig(
      text_config=dict(towers, eos_token_id=eos_token_id),
      vision_config=dict(towers, image_size=64, patch_size=16), projection_dim=64)
  torch.manual_seed(0)
  return perturb_vectors(transformers.CLIPModel(config).eval())
