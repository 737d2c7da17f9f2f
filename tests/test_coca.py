"""CoCa's contrastive path vs open_clip's CoCa (3.3, installed) and vs OpenCLIP 2.19-2.22's text
encoding (a torch rendering of its code, the `coca_legacy` switch); keys, round trips, decoder."""

import dataclasses
import functools
import json

import jax
import ml_collections
import numpy as np
import open_clip
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F

from configs import eval_hp
from helpers import write_fixture_suites
import hpjax
from hpjax import checkpoints
from hpjax import tokenizer as tokenizer_lib
from hpjax.checkpoints import convert, mapping
from hpjax.evaluate import runner
from hpjax.models import CLIP, CLIPConfig, get_model_config
from openclip_reference import perturb_all, random_images, random_tokens, state_dict_numpy

CONTEXT = 15  # text_cfg.context_length: CoCa has CONTEXT + 1 positions (its class token).
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 24, "patch_size": 8,
                   "attentional_pool": True, "attn_pooler_heads": 4, "attn_pooler_queries": 6,
                   "output_tokens": True},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 40, "heads": 2,
                 "layers": 2, "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 40, "heads": 2,
                       "layers": 1, "attn_pooler_heads": 2},
    "custom_text": True,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(config JSON path, perturbed torch CoCa, its OpenCLIP file, hpjax params, ignored keys)."""
  folder = tmp_path_factory.mktemp("coca")
  path = folder / "coca-tiny.json"
  path.write_text(json.dumps(TINY))
  open_clip.add_model_config(str(path))
  torch.manual_seed(0)
  torch_model = perturb_all(open_clip.create_model("coca-tiny"))
  source = checkpoints.write_state_dict(state_dict_numpy(torch_model), folder / "coca.safetensors")
  params, ignored = checkpoints.load_params(source, get_model_config(str(path)),
                                            return_ignored=True)
  return path, torch_model, source, params, ignored


def _tokens(length):
  return random_tokens(np.random.default_rng(1), 4, eot_positions=(3, length - 1, 7, 11),
                       length=length)


def _encode(config, params, x, method="encode_text"):
  """One jitted program per call: on XLA:CPU far quicker to start than op-by-op dispatch."""
  with jax.default_matmul_precision("highest"):
    apply = jax.jit(functools.partial(CLIP(config).apply, method=method))
    return np.asarray(apply({"params": params}, x))


def test_features_match_open_clip_coca(tiny):
  path, torch_model, _, params, _ = tiny
  config = get_model_config(str(path))
  images = random_images(np.random.default_rng(0), 3, 32)
  tokens = _tokens(CONTEXT)  # open_clip >= 2.24 feeds context_length ids, EOT last when full.
  tokens[2, 5] = 0  # A pad inside the text: 3.3 masks that key on every query row.
  with torch.no_grad():
    want_image = torch_model.encode_image(torch.from_numpy(images), normalize=False).numpy()
    want_text = torch_model.encode_text(torch.from_numpy(tokens).long(), normalize=False).numpy()
  got_image = _encode(config, params, images.transpose(0, 2, 3, 1), "encode_image")
  np.testing.assert_allclose(got_image, want_image, atol=1e-4, rtol=0)
  np.testing.assert_allclose(_encode(config, params, tokens), want_text, atol=1e-4, rtol=0)
  # A shorter batch (a length bucket) is padded back: the class token keeps its position.
  np.testing.assert_allclose(_encode(config, params, tokens[[0, 2], :12]), want_text[[0, 2]],
                             atol=1e-4, rtol=0)


def _legacy_encode(model, tokens):
  """OpenCLIP 2.19-2.22's CoCa.encode_text: the last id dropped, the class token appended, the
  pad mask on the class token's row only (its build_cls_mask), pooled at the last position."""
  text = model.text
  ids = tokens[:, :-1]
  x = text.token_embedding(ids)
  x = torch.cat([x, text.cls_emb.reshape(1, 1, -1).expand(x.shape[0], 1, -1)], dim=1)
  seq_len = x.shape[1]
  causal = torch.full((seq_len, seq_len), float("-inf")).triu(1)
  cls_mask = F.pad((ids != 0).unsqueeze(1), (1, 0, ids.shape[1], 0), value=True)
  additive = torch.zeros(cls_mask.shape).masked_fill(~cls_mask, float("-inf"))
  mask = causal[None] + additive.repeat_interleave(text.heads, 0)
  x = text.transformer(x + text.positional_embedding[:seq_len], attn_mask=mask)
  return text.ln_final(x[:, -1]) @ text.text_projection


def test_legacy_mode_matches_open_clip_2_20_text_encoding(tiny):
  path, torch_model, _, params, _ = tiny
  tokens = _tokens(CONTEXT + 1)  # The study's 77 ids for 76 positions: the last one is dropped.
  tokens[2, 5] = 0  # A pad inside the text: the two versions' masks differ there.
  with torch.no_grad():
    want = _legacy_encode(torch_model, torch.from_numpy(tokens).long()).numpy()
    current = torch_model.encode_text(torch.from_numpy(tokens[:, :-1]).long(),
                                      normalize=False).numpy()
  config = get_model_config(str(path))
  legacy = dataclasses.replace(config, text=dataclasses.replace(config.text, coca_legacy=True))
  got = _encode(legacy, params, tokens)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # On the same ids with trailing pads only, the two masks give the same feature (rows 0, 1,
  # 3; row 1 fills the context, and 2.20 dropped its EOT); a pad inside the text (row 2) does not.
  np.testing.assert_allclose(got[[0, 1, 3]], current[[0, 1, 3]], atol=1e-4, rtol=0)
  assert np.abs(got[2] - current[2]).max() > 1e-3
  # The tokenizer follows: 16 ids in legacy mode (the study's 77), 15 otherwise (open_clip's 76).
  assert tokenizer_lib.get_tokenizer(legacy).context_length == CONTEXT + 1
  assert tokenizer_lib.get_tokenizer(config).context_length == CONTEXT
  with pytest.raises(ValueError, match="token length 17 exceeds 16"):
    _encode(legacy, params, np.zeros((1, CONTEXT + 2), np.int32))


def test_decoder_keys_are_ignored_listed_and_carried_through_export(tiny, tmp_path):
  path, torch_model, source, params, ignored = tiny
  state_dict = state_dict_numpy(torch_model)
  decoder = sorted(k for k in state_dict if k.startswith("text_decoder."))
  assert decoder and sorted(ignored) == decoder
  exported = hpjax.export_openclip(params, str(path), tmp_path / "back.safetensors", extra=ignored)
  back = checkpoints.read_state_dict(exported)
  written = safetensors.numpy.load_file(str(exported))
  assert sorted(written) == sorted(state_dict)  # text. prefix back, decoder carried through.
  for key, value in state_dict.items():  # bit for bit (open_clip leaves some decoder tensors
    # uninitialised, so they may hold NaNs, which array_equal would call unequal)
    assert (written[key].dtype, written[key].shape, written[key].tobytes()) == (
        value.dtype, value.shape, value.tobytes()), key
  assert sorted(back) == sorted(checkpoints.read_state_dict(source))
  open_clip.create_model("coca-tiny", pretrained=str(exported))  # strict key matching
  # The convert program does the same and lists the ignored keys in its summary.
  summary = convert.run(ml_collections.ConfigDict(dict(
      src=str(source), model=str(path), direction="to_openclip", dst="")), tmp_path / "convert")
  assert summary["ignored_keys"] == decoder
  assert sorted(safetensors.numpy.load_file(summary["dst"])) == sorted(state_dict)
  # Without the decoder the file is incomplete for OpenCLIP's strict loading.
  partial = hpjax.export_openclip(params, str(path), tmp_path / "partial.safetensors")
  with pytest.raises(RuntimeError, match="text_decoder"):
    open_clip.create_model("coca-tiny", pretrained=str(partial))
  with pytest.raises(ValueError, match=r"must be keys of parts hpjax does not build"):
    hpjax.export_openclip(params, str(path), tmp_path / "x.safetensors",
                          extra={"visual.proj": np.zeros(1)})
  # A plain state dict with the decoder left in is refused by the strict converter itself.
  with pytest.raises(checkpoints.CheckpointMismatchError, match="unexpected: text_decoder"):
    checkpoints.openclip_to_params(checkpoints.read_state_dict(source),
                                   get_model_config(str(path)))


def test_shipped_coca_config_has_open_clips_keys_and_shapes():
  cfg = open_clip.get_model_config("coca_ViT-B-32")
  cfg.pop("custom_text")
  with torch.device("meta"):
    torch_model = open_clip.coca_model.CoCa(**cfg)
  want = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()
          if not k.startswith("text_decoder.")}
  config = get_model_config("coca_ViT-B-32")
  got = {mapping.with_text_prefix(k, config): e.torch_shape
         for k, e in mapping.key_table(config).items()}
  assert got == want
  assert config.ignored_key_prefixes == ("text_decoder.",)
  # Newer OpenCLIP's unfinished pooler variants are refused, not read as the original one.
  variant = json.loads(json.dumps(TINY))
  variant["vision_cfg"]["attentional_pool"] = "parallel"
  with pytest.raises(ValueError, match="v: vision_cfg: attentional_pool 'parallel' is not"):
    CLIPConfig.from_dict(variant, "v")


def test_an_evaluation_run_lists_the_ignored_decoder_keys_in_results_json(tiny, tmp_path):
  path, _, source, _, ignored = tiny
  root = str(tmp_path / "suites")
  write_fixture_suites(root, num=4)
  config = eval_hp.get_config(f"suite_root={root},image_root={root}/images,batch_size=8,"
                              f"gallery_size=0,models={path}={source}")
  runner.run(config, str(tmp_path / "eval"))
  (model,) = json.loads((tmp_path / "eval" / "results.json").read_text())["models"]
  assert model["ignored_keys"] == sorted(ignored)
  assert model["ignored_keys"] and all(k.startswith("text_decoder.") for k in ignored)
