"""The public API end to end: image file + caption -> hpjax features equal open_clip's."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import open_clip
import torch
from PIL import Image

import hpjax
from hpjax import checkpoints
from openclip_reference import openclip_model, state_dict_numpy

NAME = "hpjax-tiny"


def test_pipeline_matches_open_clip_from_pil_and_text(tmp_path):
  torch_model = openclip_model(NAME)
  path = checkpoints.write_state_dict(state_dict_numpy(torch_model), tmp_path / "tiny.safetensors")
  _, _, torch_preprocess = open_clip.create_model_and_transforms(NAME)
  model, params, preprocess = hpjax.create_model_and_transforms(NAME, pretrained=path)
  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8))
  captions = ["a red cube left of a blue sphere", "a blue sphere left of a red cube"]
  with torch.no_grad():
    want_image = torch_model.encode_image(torch_preprocess(image)[None], normalize=True).numpy()
    want_text = torch_model.encode_text(open_clip.get_tokenizer(NAME)(captions),
                                        normalize=True).numpy()
  with jax.default_matmul_precision("highest"):
    encode = jax.jit(model.apply, static_argnames=("normalize", "method"))
    image_features = encode({"params": params}, preprocess(image)[None], normalize=True,
                            method="encode_image")
    text_features = encode({"params": params}, hpjax.get_tokenizer(NAME)(captions),
                           normalize=True, method="encode_text")
  np.testing.assert_allclose(image_features, want_image, rtol=0, atol=1e-4)
  np.testing.assert_allclose(text_features, want_text, rtol=0, atol=1e-4)


def test_random_init_and_loading_give_the_same_dtypes(tmp_path):
  # One random init only: compiling an init costs XLA:CPU seconds per random tensor.
  _, first = hpjax.create_model(NAME, param_dtype=jnp.bfloat16)
  path = hpjax.export_openclip(first, NAME, tmp_path / "first.safetensors")
  _, loaded = hpjax.create_model(NAME, pretrained=path, param_dtype=jnp.bfloat16)
  dtypes = jax.tree.map(lambda x: x.dtype, first)
  assert dtypes["visual"]["proj"] == jnp.bfloat16 and dtypes["logit_scale"] == jnp.float32
  assert jax.tree.map(lambda x: x.dtype, loaded) == dtypes
  jax.tree.map(np.testing.assert_array_equal, loaded, first)


def test_public_names_and_lazy_import():
  assert {"ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "hpjax-tiny"} <= set(hpjax.list_models())
  assert hpjax.get_model_config("ViT-B-16").vision.patch_size == 16
  for name in hpjax.__all__:
    assert callable(getattr(hpjax, name)), name
  code = "import sys, hpjax; assert 'jax' not in sys.modules and 'torch' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)
