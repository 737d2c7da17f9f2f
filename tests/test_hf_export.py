"""Export to HF transformers CLIPModel folders: transformers computes what hpjax computes."""

import json

import jax
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import transformers
from PIL import Image

import hpjax
from hpjax import preprocess
from hpjax import tokenizer as tokenizer_lib
from hpjax.checkpoints import convert, hf, mapping
from hpjax.models.clip import CLIP
from openclip_reference import (hf_clip_model, openclip_model, random_images, random_tokens,
                                state_dict_numpy)

CAPTIONS = ["a photo of a cat", "Two DOGS, running on the beach!", "the small red cube left of "
            "the blue sphere", "café crème at 7:30 o'clock", " extra   spaces\tand\nlines ",
            "a " * 100 + "very long caption"]


def _check_image_processor(folder, size: int) -> None:
  """The exported CLIPImageProcessor is hpjax's eval transform to within one uint8 level
  (resize rounding), on odd sizes and both orientations."""
  processor = transformers.CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
  rng = np.random.default_rng(0)
  one_level = 1 / 255 / preprocess.OPENAI_STD.min() + 1e-6
  for shape in [(size + 76, size + 33), (size, 2 * size + 52), (size + 33, size)]:
    image = Image.fromarray(rng.integers(0, 255, shape[::-1] + (3,), dtype=np.uint8))
    theirs = processor(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = preprocess.eval_transform(size)(image)
    assert theirs.shape == ours.shape == (size, size, 3)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=one_level)
    assert np.abs(theirs - ours).mean() < 0.01 * one_level


def _load_hf(folder) -> transformers.CLIPModel:
  model, info = transformers.CLIPModel.from_pretrained(str(folder), output_loading_info=True,
                                                       local_files_only=True)
  assert not any(info.values()), info  # No key missing, unexpected, mis-shaped or unused.
  return model.eval()


@pytest.mark.parametrize("name", [
    "hpjax-tiny",
    pytest.param("ViT-B-32-quickgelu", marks=pytest.mark.slow),
    pytest.param("ViT-B-16", marks=pytest.mark.slow)])
def test_exported_folder_computes_hpjax_features_in_transformers(name, tmp_path):
  params = mapping.openclip_to_params(state_dict_numpy(openclip_model(name)),
                                      hpjax.get_model_config(name))
  folder = hpjax.export_hf(params, name, tmp_path / "hf")
  hf_model = _load_hf(folder)
  config = hpjax.get_model_config(name)
  assert hf_model.config.text_config.hidden_act == ("quick_gelu" if config.quick_gelu else "gelu")
  rng = np.random.default_rng(0)
  images = random_images(rng, 2, config.vision.image_size)
  tokens = random_tokens(rng, 2)
  model = CLIP(config)
  with jax.default_matmul_precision("highest"):
    image, text, scale = jax.jit(model.apply)({"params": params}, images.transpose(0, 2, 3, 1),
                                              tokens)
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(tokens).long(), pixel_values=torch.from_numpy(images))
  np.testing.assert_allclose(out.image_embeds.numpy(), image, rtol=0, atol=1e-4)
  np.testing.assert_allclose(out.text_embeds.numpy(), text, rtol=0, atol=1e-4)
  np.testing.assert_allclose(out.logits_per_image.numpy(), scale * image @ text.T, rtol=0,
                             atol=1e-4)
  _check_image_processor(folder, config.vision.image_size)


def test_hf_to_hpjax_to_hf_is_bit_identical_and_tokenizer_ids_match(tmp_path):
  hf_model = hf_clip_model("quick_gelu", 49407)
  want = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
  src = tmp_path / "model.safetensors"
  safetensors.torch.save_file(want, src)
  config = hpjax.get_model_config("hpjax-tiny").to_dict()
  config_path = tmp_path / "tiny-quickgelu.json"
  config_path.write_text(json.dumps({**config, "quick_gelu": True}))
  run = ml_collections.ConfigDict({"src": str(src), "dst": "", "model": str(config_path),
                                   "direction": "to_hf"})
  summary = convert.run(run, tmp_path / "convert")
  got = safetensors.numpy.load_file(f"{summary['dst']}/model.safetensors")
  assert sorted(got) == sorted(k for k in want if not k.endswith("position_ids"))
  for key, value in got.items():
    assert value.dtype == np.float32 and np.array_equal(value, want[key].numpy()), key
  reloaded = _load_hf(summary["dst"])
  assert json.loads(reloaded.config.to_json_string())["text_config"]["eos_token_id"] == 49407

  # The exported tokenizer: hpjax's ids up to the first EOT, EOT as padding (not 0) after it;
  # the text features from either are the same.
  ours = hpjax.get_tokenizer("hpjax-tiny")(CAPTIONS)
  tokenizer = transformers.CLIPTokenizer.from_pretrained(summary["dst"], local_files_only=True)
  theirs = tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=77,
                     return_tensors="np")["input_ids"]
  after_eot = np.arange(77) >= tokenizer_lib.token_lengths(ours)[:, None]
  np.testing.assert_array_equal(np.where(after_eot, 0, theirs), ours)
  assert (theirs[after_eot] == tokenizer_lib.EOT_ID).all() and after_eot.any()
  model, params = hpjax.create_model(str(config_path), pretrained=src)
  with jax.default_matmul_precision("highest"):
    text = model.apply({"params": params}, ours, normalize=True, method="encode_text")
  with torch.no_grad():
    hf_text = reloaded.get_text_features(input_ids=torch.from_numpy(theirs).long())
  hf_text = getattr(hf_text, "pooler_output", hf_text)
  np.testing.assert_allclose(hf_text / hf_text.norm(dim=-1, keepdim=True), text, rtol=0, atol=1e-5)
  with pytest.raises(FileExistsError, match="hf_model exists"):
    convert.run(run, tmp_path / "convert")


def test_export_refuses_what_clipmodel_cannot_compute(tmp_path):
  config = hpjax.get_model_config("hpjax-tiny")
  layer_scale = config.__class__.from_dict(
      {**config.to_dict(), "vision_cfg": {**config.to_dict()["vision_cfg"], "ls_init_value": 0.1}},
      name="tiny-ls")
  with pytest.raises(ValueError, match=r"'tiny-ls' cannot be exported .*vision_cfg.ls_init_value"):
    hf.hf_config(layer_scale)
  state = {"visual.transformer.resblocks.0.ls_1.gamma": np.ones(64, np.float32),
           "logit_scale": np.ones((), np.float32)}
  with pytest.raises(ValueError, match=r"1 key\(s\) have no HF CLIPModel counterpart: "
                                       r"\['visual.transformer.resblocks.0.ls_1.gamma'\]"):
    hf.openclip_to_hf(state)
  assert not list(tmp_path.iterdir())
