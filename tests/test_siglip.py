"""SigLIP towers vs open_clip's SigLIP models (timm trunk): features, keys, round trips, configs,
preprocessing, and scores on fixture suites.

The tiny towers are built on both sides from the shipped `hpjax-tiny-siglip*.json` configs; timm
learns their trunks from `openclip_reference.register_tiny_siglip`. Every tensor is perturbed,
so a swapped or dropped key shows.
"""

import functools
import json
import zlib

import jax
import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image

import hpjax
from hpjax import checkpoints
from hpjax import preprocess
from hpjax.models import CLIP, CLIPConfig, get_model_config
from hpjax.models import config as config_lib
from helpers import (hard_positive_figures, per_record_scores, torch_encoders,
                     traced_operations, write_fixture_suites)
from openclip_reference import (TINY_SIGLIP, perturb_all, random_images, register_tiny_siglip,
                                state_dict_numpy)

VOCAB, CONTEXT = 1000, 16  # hpjax-tiny-siglip's text_cfg


@functools.cache
def torch_siglip(name: str) -> torch.nn.Module:
  register_tiny_siglip()
  torch.manual_seed(0)
  return perturb_all(open_clip.create_model(name), seed=1)


def tiny(name: str):
  """(config, params converted from the perturbed open_clip model, that model)."""
  torch_model = torch_siglip(name)
  config = get_model_config(name)
  state = checkpoints.files.normalize_keys(state_dict_numpy(torch_model))
  return config, checkpoints.openclip_to_params(state, config), torch_model


def siglip_ids(rng, batch: int) -> np.ndarray:
  """Ids as SigLIP's tokenizers lay them out: text, EOS, then pad up to the full context (one
  row fills it). Pad = EOS = 1 as in SigLIP 1; the pads are part of the pooled feature."""
  ids = np.ones((batch, CONTEXT), np.int32)
  for row, length in enumerate((3, CONTEXT, 9, 1)[:batch]):
    ids[row, :length] = rng.integers(2, VOCAB, length)
  return ids


def features(config, params, images, ids):
  """(image, text) features, unnormalised, NCHW images; one jitted program (compiles dominate)."""
  model = CLIP(config)

  def both(variables, images, ids):
    return (model.apply(variables, images, method="encode_image"),
            model.apply(variables, ids, method="encode_text"))

  with jax.default_matmul_precision("highest"):
    out = jax.jit(both)({"params": params}, images.transpose(0, 2, 3, 1), ids)
  return tuple(map(np.asarray, out))


@pytest.mark.parametrize("name", TINY_SIGLIP)
def test_features_match_open_clip_siglip(name):
  config, params, torch_model = tiny(name)
  rng = np.random.default_rng(0)
  images, ids = random_images(rng, 3, 64), siglip_ids(rng, 4)
  with torch.no_grad():
    want_image = torch_model.encode_image(torch.from_numpy(images)).numpy()
    want_text = torch_model.encode_text(torch.from_numpy(ids).long()).numpy()
  got_image, got_text = features(config, params, images, ids)
  np.testing.assert_allclose(got_image, want_image, atol=1e-4, rtol=0)
  np.testing.assert_allclose(got_text, want_text, atol=1e-4, rtol=0)
  assert float(params["logit_bias"]) == torch_model.logit_bias.item()
  # GELU's exact and tanh forms differ by < 5e-4 anywhere, too little to show in the features:
  # which one each tower runs is read from the traced program (erfc vs tanh).
  text_gelu, image_gelu = (
      {op for op, _ in traced_operations(functools.partial(CLIP(config).apply, method=method),
                                         {"params": params}, x)} & {"erfc", "tanh"}
      for method, x in (("encode_text", ids), ("encode_image", images.transpose(0, 2, 3, 1))))
  assert text_gelu == image_gelu == ({"tanh"} if name.endswith("2") else {"erfc"})


def test_text_tower_sees_every_position_and_takes_the_full_context():
  config, params, _ = tiny(TINY_SIGLIP[0])
  ids = siglip_ids(np.random.default_rng(2), 2)
  ids = np.concatenate([ids, ids[:1]])
  ids[2, -1] = 7  # A trailing pad changed: bidirectional attention and last-position pooling.
  images = random_images(np.random.default_rng(2), 1, 64)
  _, text = features(config, params, images, ids)
  assert np.abs(text[0] - text[2]).max() > 1e-3
  with pytest.raises(ValueError, match="takes 16 ids per text, unpacked; got rows of 8"):
    features(config, params, images, ids[:, :8])
  assert not config.text.causal_eot_pooled


def _siglip_dict(**vision):
  with open(config_lib.CONFIG_DIR / "hpjax-tiny-siglip.json") as f:
    d = json.load(f)
  d["vision_cfg"].update(vision)
  return d


@pytest.mark.parametrize("change, match", [
    (dict(timm_pool="avg"), "timm_pool 'avg' is not supported"),
    (dict(timm_proj="linear"), "timm_proj 'linear' is not supported"),
    (dict(timm_model_name="vit_base_patch16_clip_224"), "not a known timm SigLIP tower"),
    (dict(image_size=96), "image_size 96 differs from the 64 px"),
])
def test_unsupported_timm_fields_are_refused(change, match):
  with pytest.raises(ValueError, match=match):
    CLIPConfig.from_dict(_siglip_dict(**change))


def test_config_errors_name_the_field():
  d = _siglip_dict()
  with pytest.raises(ValueError, match="embed_dim 32 differs from the width 64"):
    CLIPConfig.from_dict({**d, "embed_dim": 32})
  with pytest.raises(ValueError, match=r"norm_kwargs: unsupported keys \['elementwise_affine'\]"):
    CLIPConfig.from_dict({**d, "text_cfg": {**d["text_cfg"],
                                            "norm_kwargs": {"elementwise_affine": False}}})
  with pytest.raises(ValueError, match="pool_type 'first' is not supported"):
    CLIPConfig.from_dict({**d, "text_cfg": {**d["text_cfg"], "pool_type": "first"}})
  with pytest.raises(ValueError, match="quick_gelu and text_cfg.act_kwargs"):
    CLIPConfig.from_dict({**d, "quick_gelu": True,
                          "text_cfg": {**d["text_cfg"], "act_kwargs": {"approximate": "tanh"}}})
  # A pretrained tag after the timm name is accepted, as timm accepts it.
  tagged = _siglip_dict(timm_model_name="hpjax_tiny_siglip.v2_webli")
  assert CLIPConfig.from_dict(tagged).vision.timm == config_lib.TIMM_SIGLIP_MODELS[
      "hpjax_tiny_siglip"]
  # The OpenCLIP JSON form comes back (norm_kwargs as an object).
  assert CLIPConfig.from_dict(d).to_dict()["text_cfg"]["norm_kwargs"] == {"eps": 1e-6}


def test_timm_name_table_is_what_timm_builds():
  """Every non-tiny name of the table against timm's own model on the meta device (no memory):
  widths, depth, heads, patch, image size, MLP width and which GELU."""
  for name, arch in config_lib.TIMM_SIGLIP_MODELS.items():
    if name.startswith("hpjax_"):
      continue
    trunk = timm.create_model(name, num_classes=0, device="meta")
    block = trunk.blocks[0]
    assert (trunk.embed_dim, len(trunk.blocks), block.attn.num_heads,
            trunk.patch_embed.patch_size[0], trunk.patch_embed.img_size[0],
            block.mlp.fc1.out_features, trunk.attn_pool.mlp.fc1.out_features) == (
                arch.width, arch.layers, arch.heads, arch.patch_size, arch.image_size,
                arch.mlp_dim, arch.mlp_dim), name
    want = "GELUTanh" if arch.gelu_tanh else "GELU"
    assert {type(block.mlp.act).__name__, type(trunk.attn_pool.mlp.act).__name__} == {want}, name
    assert trunk.cls_token is None and trunk.attn_pool.latent_len == 1, name


def test_openclip_file_round_trip_is_bit_identical(tmp_path):
  name = TINY_SIGLIP[1]
  torch_model = torch_siglip(name)
  state = state_dict_numpy(torch_model)
  source = checkpoints.write_state_dict(state, tmp_path / "open_clip.safetensors")
  _, params, transform = hpjax.create_model_and_transforms(name, pretrained=str(source))
  assert transform == preprocess.model_transform(get_model_config(name))
  exported = hpjax.export_openclip(params, name, tmp_path / "exported.safetensors")
  reloaded = open_clip.create_model(name, pretrained=str(exported)).state_dict()  # strict
  assert list(reloaded) == list(torch_model.state_dict())
  for key, value in torch_model.state_dict().items():
    assert torch.equal(reloaded[key], value), key
  # A file without the MAP probe, or with the probe's fused kv split, is refused by key.
  del state["visual.trunk.attn_pool.latent"]
  state["visual.trunk.attn_pool.k.weight"] = state.pop("visual.trunk.attn_pool.kv.weight")
  broken = checkpoints.write_state_dict(state, tmp_path / "broken.safetensors")
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"2 missing, 1 unexpected[\s\S]*missing: visual.trunk.attn_pool.kv."
                           r"weight\n  missing: visual.trunk.attn_pool.latent"):
    checkpoints.load_params(broken, get_model_config(name))


def openclip_siglip_transform(size: int):
  """open_clip's eval transform for its SigLIP weights (the `webli` pretrained cfg)."""
  cfg = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP", "webli")
  return open_clip.image_transform(size, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                   resize_mode=cfg["resize_mode"],
                                   interpolation=cfg["interpolation"])


def test_eval_transform_is_open_clips_siglip_transform():
  rng = np.random.default_rng(0)
  rgb = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
  images = [rgb(97, 203), rgb(300, 31), rgb(224, 224), rgb(10, 7), rgb(101, 150).quantize(64),
            Image.fromarray(rng.integers(0, 256, (150, 101, 4), dtype=np.uint8)),
            rgb(101, 150).convert("L")]
  ours = preprocess.model_transform(get_model_config("ViT-B-16-SigLIP"))
  reference = openclip_siglip_transform(224)
  for i, image in enumerate(images):
    np.testing.assert_array_equal(ours(image), reference(image).permute(1, 2, 0).numpy(),
                                  err_msg=f"image {i} ({image.mode} {image.size})")
  # CLIP models keep OpenAI's transform (resize the shorter side, centre crop).
  assert preprocess.model_transform(get_model_config("ViT-B-16")) == preprocess.eval_transform(224)


def stand_in_ids(texts) -> np.ndarray:
  """A stand-in for SigLIP's tokenizer (siglip-weights ships the real one): a word's id from its
  CRC, then EOS and pads (= 1) up to the context, as the SentencePiece tokenizer lays ids out."""
  ids = np.ones((len(texts), CONTEXT), np.int32)
  for row, text in enumerate(texts):
    words = [2 + zlib.crc32(w.encode()) % (VOCAB - 2) for w in text.lower().split()]
    ids[row, :min(len(words), CONTEXT - 1)] = words[:CONTEXT - 1]
  return ids


def test_scores_on_fixture_suites_match_open_clip_features(tmp_path):
  from hpjax.evaluate import scorer as scorer_lib  # pylint: disable=g-import-not-at-top
  config, params, torch_model = tiny(TINY_SIGLIP[0])
  suites = write_fixture_suites(str(tmp_path), num=6)
  images = str(tmp_path / "images")
  scorer = scorer_lib.Scorer(CLIP(config), stand_in_ids, image_root=images, image_batch_size=8,
                             text_batch_size=16, num_workers=2)  # default buckets: ignored
  assert scorer.buckets == scorer_lib.exact_buckets(config) == (CONTEXT,)
  records = [r for suite in suites.values() for r in suite.records]  # REPLACE, then SWAP
  with jax.default_matmul_precision("highest"):
    got = scorer.score(params, records).scores
  want = per_record_scores(records, images, 64, *torch_encoders(torch_model),
                           transform=openclip_siglip_transform(64),
                           tokenizer=lambda t: torch.from_numpy(stand_in_ids(t)).long())
  np.testing.assert_allclose(got, want, atol=1e-4)
  start = 0
  for name, suite in suites.items():
    rows, start = slice(start, start + len(suite.records)), start + len(suite.records)
    roles = suite.records[0].roles
    assert hard_positive_figures(got[rows], roles) == hard_positive_figures(want[rows], roles), name


def test_runner_decodes_siglip_and_clip_models_of_one_size_in_separate_passes():
  """Both tiny models take 64 px images, through different transforms."""
  from configs import eval_hp  # pylint: disable=g-import-not-at-top
  from hpjax.evaluate import runner  # pylint: disable=g-import-not-at-top
  models = "hpjax-tiny=random+hpjax-tiny-siglip=random+hpjax-tiny=random"
  passes = runner.decode_passes(runner.model_specs(eval_hp.get_config(f"models={models}")), 8)
  assert [[s.label for s in group] for group in passes] == [
      ["hpjax-tiny:random-init", "hpjax-tiny:random-init#2"], ["hpjax-tiny-siglip:random-init"]]
  assert [group[0].preprocess_key for group in passes] == [
      ("eval", 64), ("eval", 64, "squash", (0.5,) * 3, (0.5,) * 3)]


def test_scorer_refuses_ids_outside_the_vocabulary():
  """CLIP BPE ids (up to 49407) fed to a 1000-id SigLIP tower would give NaN features."""
  from hpjax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from hpjax.evaluate import scorer as scorer_lib  # pylint: disable=g-import-not-at-top
  config = get_model_config(TINY_SIGLIP[0])
  clip_ids = tokenizer_lib.get_tokenizer(context_length=CONTEXT)
  scorer = scorer_lib.Scorer(CLIP(config), clip_ids, num_workers=1)
  with pytest.raises(ValueError, match=r"hpjax-tiny-siglip: token ids span \[0, 49407\], outside "
                                       r"its vocabulary of 1000"):
    scorer.encode_tokens(None, clip_ids(["a red dog"]))


@pytest.mark.parametrize("name", [n for n in hpjax.list_models() if "SigLIP" in n])
def test_exported_hf_config_has_each_towers_own_gelu(name):
  """Every shipped SigLIP / SigLIP 2 name, each tower against its own reference: the vision
  GELU as timm builds the trunk (meta device), the text GELU as open_clip's config of the name
  sets it (several names differ between the towers)."""
  exported = checkpoints.hf.siglip_config(get_model_config(name))
  trunk = timm.create_model(open_clip.get_model_config(name)["vision_cfg"]["timm_model_name"],
                            num_classes=0, device="meta")
  vision = {"GELUTanh": "gelu_pytorch_tanh", "GELU": "gelu"}[type(trunk.blocks[0].mlp.act).__name__]
  text_cfg = open_clip.get_model_config(name)["text_cfg"]
  text = ("gelu_pytorch_tanh" if (text_cfg.get("act_kwargs") or {}).get("approximate") == "tanh"
          else "gelu")
  assert (exported["vision_config"]["hidden_act"], exported["text_config"]["hidden_act"]) == (
      vision, text)
