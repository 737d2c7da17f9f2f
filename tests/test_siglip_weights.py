"""SigLIP weights from HF transformers' SiglipModel and big_vision .npz files, and back.

The reference is transformers' SiglipModel built offline from a tiny SiglipConfig (hpjax's tiny
SigLIP sizes) with every tensor perturbed; the big_vision files are written here from its state
dict by big_vision's own layout (per-head attention kernels, Flax kernels (in, out), HWIO conv).
"""

import functools
import json

import jax
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from PIL import Image

import hpjax
from hpjax import preprocess
from hpjax.checkpoints import big_vision, convert, hf, mapping
from hpjax.models.clip import CLIP
from hpjax import tokenizer as tokenizer_lib
from helpers import assert_same_tree, train_sentencepiece
from openclip_reference import perturb_all, random_images

# hpjax-tiny-siglip computes exact GELU in both towers, hpjax-tiny-siglip2 the tanh form (HF's
# and big_vision's): each is the SiglipConfig of the same sizes with that activation.
ACTIVATIONS = {"hpjax-tiny-siglip": "gelu", "hpjax-tiny-siglip2": "gelu_pytorch_tanh"}
VOCABULARIES = {"hpjax-tiny-siglip": "t5", "hpjax-tiny-siglip2": "gemma"}  # helpers' layouts


def _hf_siglip(name: str, naflex: bool = False) -> transformers.SiglipModel:
  """SiglipModel, or with naflex Siglip2Model with an 8 x 8 position grid (its 64 px)."""
  towers = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                hidden_act=ACTIVATIONS[name], layer_norm_eps=1e-6)
  text = dict(towers, vocab_size=1000, max_position_embeddings=16, projection_size=64)
  if naflex:
    config = transformers.Siglip2Config(text_config=text, vision_config=dict(
        towers, num_patches=64, patch_size=8))
  else:
    config = transformers.SiglipConfig(text_config=text,
                                       vision_config=dict(towers, image_size=64, patch_size=8))
  torch.manual_seed(0)
  return perturb_all((transformers.Siglip2Model if naflex else transformers.SiglipModel)(config))


@functools.cache
def _apply(name: str):
  """hpjax's forward of config `name`, jitted once for the module."""
  return jax.jit(CLIP(hpjax.get_model_config(name)).apply)


@pytest.fixture(scope="module", params=sorted(ACTIVATIONS))
def pair(request, tmp_path_factory):
  """(name, HF model, its save_pretrained folder, hpjax's jitted apply, params loaded from the
  folder)."""
  hf_model = _hf_siglip(request.param)
  folder = tmp_path_factory.mktemp("hf") / request.param
  hf_model.save_pretrained(str(folder))
  _, params = hpjax.create_model(None, pretrained=folder)
  return request.param, hf_model, folder, _apply(request.param), params


def _naflex_inputs(images):
  """Siglip2Model's inputs for NCHW images: patches flattened as (row, column, channel), all
  valid, on the full grid (as Siglip2ImageProcessor lays them out)."""
  n, c, size, _ = images.shape
  grid = size // 8
  patches = images.reshape(n, c, grid, 8, grid, 8).transpose(0, 2, 4, 3, 5, 1)
  return {"pixel_values": torch.from_numpy(patches.reshape(n, grid * grid, -1).copy()),
          "pixel_attention_mask": torch.ones(n, grid * grid, dtype=torch.long),
          "spatial_shapes": torch.tensor([[grid, grid]] * n)}


def _assert_same_outputs(hf_model, apply, params, seed=0, naflex=False):
  """Normalised features and logits of transformers' forward and of hpjax's (`apply`, jitted)."""
  rng = np.random.default_rng(seed)
  images = random_images(rng, 2, 64)
  tokens = rng.integers(0, 1000, (3, 16)).astype(np.int32)
  with jax.default_matmul_precision("highest"):
    image, text, scale = apply({"params": params}, images.transpose(0, 2, 3, 1), tokens)
  pixels = _naflex_inputs(images) if naflex else {"pixel_values": torch.from_numpy(images)}
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(tokens).long(), **pixels)
  np.testing.assert_allclose(out.image_embeds.numpy(), image, rtol=0, atol=1e-4)
  np.testing.assert_allclose(out.text_embeds.numpy(), text, rtol=0, atol=1e-4)
  logits = scale * image @ text.T + params["logit_bias"]
  np.testing.assert_allclose(out.logits_per_image.numpy(), logits, rtol=0, atol=1e-4)


def test_hf_folder_infers_the_config_and_computes_transformers_features(pair):
  name, hf_model, folder, apply, params = pair
  config, _ = hpjax.checkpoints.load_hf(folder)
  assert config.name == name  # The inferred architecture is the shipped config.
  assert config.text.hf_tokenizer_name == str(folder)
  _assert_same_outputs(hf_model, apply, params)


def test_export_hf_loads_strictly_in_transformers_and_round_trips(pair, tmp_path):
  name, hf_model, folder, apply, params = pair
  spm = train_sentencepiece(tmp_path / "spm", VOCABULARIES[name])
  out = hpjax.export_hf(params, name, tmp_path / "export", tokenizer=spm)
  loaded, info = transformers.SiglipModel.from_pretrained(str(out), output_loading_info=True,
                                                          local_files_only=True)
  assert not any(info.values()), info  # No key missing, unexpected, mis-shaped or unused.
  config = json.loads((out / "config.json").read_text())
  assert {config[t]["hidden_act"] for t in ("text_config", "vision_config")} == {ACTIVATIONS[name]}
  _assert_same_outputs(loaded.eval(), apply, params, seed=1)
  want = safetensors.numpy.load_file(str(folder / "model.safetensors"))
  got = safetensors.numpy.load_file(str(out / "model.safetensors"))
  assert sorted(got) == sorted(want)
  for key, value in want.items():  # HF -> hpjax -> HF, bit for bit.
    np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert got[key].dtype == value.dtype, key
  # The tokenizer: AutoTokenizer's ids are hpjax's (on canonical text, which HF does not clean).
  ours = tokenizer_lib.SentencePieceTokenizer(out, 16)
  texts = [tokenizer_lib.canonicalize(t) for t in ["A photo of a CAT.", "", "two dogs " * 9]]
  theirs = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)(
      texts, padding="max_length", max_length=16, truncation=True).input_ids
  np.testing.assert_array_equal(ours(texts), theirs)
  assert (ours(texts)[1, 1:] == ours.pad_token_id).all()
  # The image processor's PIL backend is hpjax's SigLIP transform (the torchvision one resizes
  # differently).
  processor = transformers.SiglipImageProcessorPil.from_pretrained(str(out), local_files_only=True)
  transform = preprocess.model_transform(hpjax.get_model_config(name))
  rng = np.random.default_rng(0)
  for shape in [(100, 61), (64, 64), (37, 90)]:
    image = Image.fromarray(rng.integers(0, 255, shape + (3,), dtype=np.uint8))
    theirs = processor(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(theirs, transform(image), rtol=0, atol=1e-6)


def test_hf_siglip2_naflex_folder_at_its_grid_computes_transformers_features(tmp_path):
  """Siglip2Model: its patch Linear is the conv kernel, its position grid timm's pos_embed."""
  name = "hpjax-tiny-siglip2"
  hf_model = _hf_siglip(name, naflex=True)
  hf_model.save_pretrained(str(tmp_path / "naflex"))
  model, params = hpjax.create_model(None, pretrained=tmp_path / "naflex")
  assert model.config.name == name
  _assert_same_outputs(hf_model, _apply(name), params, naflex=True)
  want = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  state = mapping.params_to_openclip(params, model.config)
  got = hf.openclip_to_hf(hpjax.checkpoints.files.normalize_keys(state), model=hf.SIGLIP2_MODEL)
  assert sorted(got) == sorted(want)
  for key, value in want.items():  # HF -> hpjax -> HF, bit for bit.
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def _heads(w, heads):
  """A (width, width) torch Linear weight as big_vision's (in, heads, head_dim) kernel."""
  return w.T.reshape(w.shape[1], heads, -1)


def _big_vision_block(sd, hf, bv, heads, out):
  """One encoder block (HF `hf` prefix) in big_vision's layout under `bv`."""
  out[f"{bv}LayerNorm_0/scale"], out[f"{bv}LayerNorm_0/bias"] = (
      sd[f"{hf}layer_norm1.weight"], sd[f"{hf}layer_norm1.bias"])
  out[f"{bv}LayerNorm_1/scale"], out[f"{bv}LayerNorm_1/bias"] = (
      sd[f"{hf}layer_norm2.weight"], sd[f"{hf}layer_norm2.bias"])
  attn = f"{bv}MultiHeadDotProductAttention_0/"
  for part, short in (("query", "q"), ("key", "k"), ("value", "v")):
    out[f"{attn}{part}/kernel"] = _heads(sd[f"{hf}self_attn.{short}_proj.weight"], heads)
    out[f"{attn}{part}/bias"] = sd[f"{hf}self_attn.{short}_proj.bias"].reshape(heads, -1)
  out[f"{attn}out/kernel"] = sd[f"{hf}self_attn.out_proj.weight"].T.reshape(heads, -1, 64)
  out[f"{attn}out/bias"] = sd[f"{hf}self_attn.out_proj.bias"]
  for i in range(2):
    out[f"{bv}MlpBlock_0/Dense_{i}/kernel"] = sd[f"{hf}mlp.fc{i + 1}.weight"].T
    out[f"{bv}MlpBlock_0/Dense_{i}/bias"] = sd[f"{hf}mlp.fc{i + 1}.bias"]


def big_vision_arrays(hf_model, heads: int = 2) -> dict[str, np.ndarray]:
  """The HF model's weights as big_vision's SigLIP checkpoint keys and layouts (per block)."""
  sd = {k: v.numpy().copy() for k, v in hf_model.state_dict().items()}
  out = {"img/embedding/kernel": sd["vision_model.embeddings.patch_embedding.weight"]
         .transpose(2, 3, 1, 0),
         "img/embedding/bias": sd["vision_model.embeddings.patch_embedding.bias"],
         "img/pos_embedding": sd["vision_model.embeddings.position_embedding.weight"][None],
         "img/Transformer/encoder_norm/scale": sd["vision_model.post_layernorm.weight"],
         "img/Transformer/encoder_norm/bias": sd["vision_model.post_layernorm.bias"],
         "img/MAPHead_0/probe": sd["vision_model.head.probe"],
         "txt/Embed_0/embedding": sd["text_model.embeddings.token_embedding.weight"],
         "txt/pos_embedding": sd["text_model.embeddings.position_embedding.weight"][None],
         "txt/Encoder_0/encoder_norm/scale": sd["text_model.final_layer_norm.weight"],
         "txt/Encoder_0/encoder_norm/bias": sd["text_model.final_layer_norm.bias"],
         "txt/head/kernel": sd["text_model.head.weight"].T,
         "txt/head/bias": sd["text_model.head.bias"],
         "t": sd["logit_scale"], "b": sd["logit_bias"]}
  for i in range(2):
    _big_vision_block(sd, f"vision_model.encoder.layers.{i}.",
                      f"img/Transformer/encoderblock_{i}/", heads, out)
    _big_vision_block(sd, f"text_model.encoder.layers.{i}.", f"txt/Encoder_0/encoderblock_{i}/",
                      heads, out)
  # The MAP head: torch's fused in_proj, then the same per-head layout.
  head, mha = "vision_model.head.", "img/MAPHead_0/MultiHeadDotProductAttention_0/"
  for part, w, b in zip(("query", "key", "value"),
                        np.split(sd[head + "attention.in_proj_weight"], 3),
                        np.split(sd[head + "attention.in_proj_bias"], 3)):
    out[f"{mha}{part}/kernel"], out[f"{mha}{part}/bias"] = _heads(w, heads), b.reshape(heads, -1)
  out[f"{mha}out/kernel"] = sd[head + "attention.out_proj.weight"].T.reshape(heads, -1, 64)
  out[f"{mha}out/bias"] = sd[head + "attention.out_proj.bias"]
  out["img/MAPHead_0/LayerNorm_0/scale"] = sd[head + "layernorm.weight"]
  out["img/MAPHead_0/LayerNorm_0/bias"] = sd[head + "layernorm.bias"]
  for i in range(2):
    out[f"img/MAPHead_0/MlpBlock_0/Dense_{i}/kernel"] = sd[f"{head}mlp.fc{i + 1}.weight"].T
    out[f"img/MAPHead_0/MlpBlock_0/Dense_{i}/bias"] = sd[f"{head}mlp.fc{i + 1}.bias"]
  return out


def _stacked(arrays):
  """nn.scan's form: `encoderblock/...` with the blocks along a leading axis."""
  out = {}
  for key, value in arrays.items():
    head, sep, tail = key.partition("encoderblock_")
    if not sep:
      out[key] = value
      continue
    index, rest = tail.split("/", 1)
    out.setdefault(f"{head}encoderblock/{rest}", {})[int(index)] = value
  return {k: np.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v
          for k, v in out.items()}


def _npz(path, arrays):
  np.savez(path, **arrays)
  return path


def test_big_vision_npz_forms_load_to_the_hf_params_and_export_bit_identically(pair, tmp_path):
  name, hf_model, _, apply, params = pair
  config = hpjax.get_model_config(name)
  arrays = big_vision_arrays(hf_model)
  forms = {"flat": arrays, "params": {f"params/{k}": v for k, v in arrays.items()},
           "stacked": {f"params/{k}": v for k, v in _stacked(arrays).items()}}
  for form, form_arrays in forms.items():
    _, loaded = hpjax.create_model(name, pretrained=_npz(tmp_path / f"{form}.npz", form_arrays))
    assert_same_tree(loaded, params)
  # The older text tower: a second positional embedding inside the encoder, added to the first.
  extra = np.random.default_rng(0).standard_normal((1, 16, 64)).astype(np.float32)
  double = dict(arrays, **{"txt/pos_embedding": arrays["txt/pos_embedding"] - extra,
                           "txt/Encoder_0/pos_embedding": extra})
  _, loaded = hpjax.create_model(name, pretrained=_npz(tmp_path / "double.npz", double))
  np.testing.assert_array_equal(loaded["positional_embedding"],
                                (double["txt/pos_embedding"] + extra)[0])
  _assert_same_outputs(hf_model, apply, loaded)
  # Export: hpjax params -> the very arrays big_vision stores, per block or stacked (the
  # convert program's to_big_vision writes the first).
  convert.run(ml_collections.ConfigDict(dict(
      src=str(tmp_path / "flat.npz"), model=name, direction="to_big_vision",
      dst=str(tmp_path / "export-params.npz"))), tmp_path)
  big_vision.save(params, config, tmp_path / "export-stacked.npz", stacked=True)
  for form in ("params", "stacked"):
    saved = tmp_path / f"export-{form}.npz"
    with np.load(saved, allow_pickle=False) as npz:
      got = {k: npz[k] for k in npz.files}
    assert sorted(got) == sorted(forms[form])
    for key, value in forms[form].items():
      np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_bad_big_vision_files_are_refused_naming_the_key(tmp_path):
  name = "hpjax-tiny-siglip"
  arrays = big_vision_arrays(_hf_siglip(name))
  config = hpjax.get_model_config(name)
  with pytest.raises(ValueError, match=r"1 key\(s\) are not big_vision SigLIP parameters hpjax "
                                       r"knows: \['img/head/kernel'\]"):
    big_vision.to_params(dict(arrays, **{"img/head/kernel": np.zeros((64, 8), np.float32)}),
                         config)
  wrong = dict(arrays, **{"txt/head/kernel": np.zeros((64, 32), np.float32)})
  with pytest.raises(mapping.CheckpointMismatchError,
                     match=r"mis-shaped: text_projection/kernel \(from txt/head/kernel\): "
                           r"checkpoint \(64, 32\) vs model \(64, 64\)"):
    big_vision.to_params(wrong, config)
  missing = {k: v for k, v in arrays.items() if k != "img/MAPHead_0/probe"}
  with pytest.raises(mapping.CheckpointMismatchError,
                     match="missing: visual/trunk/attn_pool/latent"):
    big_vision.to_params(missing, config)
  bad_heads = dict(arrays, **{"img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel":
                              np.zeros((3, 5, 64), np.float32)})
  with pytest.raises(mapping.CheckpointMismatchError, match="visual/trunk/attn_pool/proj/kernel "
                                                            r"\(from img/MAPHead_0/"):
    big_vision.to_params(bad_heads, config)
  odd = {"logit_bias": np.zeros(1, np.float32),
         "vision_model.head.attention.in_proj_weight": np.zeros((97, 32), np.float32)}
  with pytest.raises(ValueError, match=r"vision_model.head.attention.in_proj_weight \(shape "
                                       r"\(97, 32\)\) does not split into the \['q', 'kv'\]"):
    hf.hf_to_openclip(odd)
  pickled = tmp_path / "pickled.npz"
  np.savez(pickled, t=np.array([object()], dtype=object))
  with pytest.raises(ValueError, match="allow_pickle=False"):
    hpjax.create_model(name, pretrained=pickled)
  with pytest.raises(ValueError, match="'hpjax-tiny' is not a SigLIP model"):
    hpjax.create_model("hpjax-tiny", pretrained=_npz(tmp_path / "ok.npz", arrays))


def test_big_vision_stacked_export_and_import_keep_the_block_order_past_ten(tmp_path,
                                                                           monkeypatch):
  """12 blocks per tower: as strings, 'encoderblock_10' sorts before 'encoderblock_2'; the
  stacked axis must follow the block index, both ways."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from hpjax.models import config as config_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(config_lib.TIMM_SIGLIP_MODELS, "hpjax_deep_siglip", dataclasses.replace(
      config_lib.TIMM_SIGLIP_MODELS["hpjax_tiny_siglip"], layers=12))
  base = hpjax.get_model_config("hpjax-tiny-siglip")
  config = dataclasses.replace(
      base, name="deep", vision=dataclasses.replace(base.vision, timm_model_name="hpjax_deep_siglip"),
      text=dataclasses.replace(base.text, layers=12))
  _, params = hpjax.create_model(config)
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(0)  # every tensor distinct (LayerNorms start as ones)
  params = jax.tree.unflatten(tree, [np.asarray(l) + rng.standard_normal(l.shape).astype(
      np.float32) for l in leaves])
  stacked = big_vision.from_params(params, config, stacked=True)
  for i in range(12):
    np.testing.assert_array_equal(
        stacked["params/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"][i],
        params["visual"]["trunk"][f"blocks_{i}"]["mlp"]["fc1"]["kernel"], err_msg=str(i))
    np.testing.assert_array_equal(
        stacked["params/txt/Encoder_0/encoderblock/LayerNorm_0/scale"][i],
        params["transformer"][f"resblocks_{i}"]["ln_1"]["scale"], err_msg=str(i))
  for form in (True, False):
    path = big_vision.save(params, config, tmp_path / f"stacked-{form}.npz", stacked=form)
    assert_same_tree(big_vision.load(path, config), params)
