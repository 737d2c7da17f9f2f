"""OpenCLIP's HF-text (RoBERTa) tower vs open_clip built offline from a small local HF config:
features on RoBERTa ids and on CLIP ids (the study's), round trips, the tokenizer, bad input."""

import functools
import json

import jax
import numpy as np
import open_clip
import pytest
import safetensors.numpy
import tokenizers
import torch
import transformers

import hpjax
from hpjax import checkpoints
from hpjax import tokenizer as tokenizer_lib
from hpjax.checkpoints import mapping
from hpjax.models import CLIP, get_model_config
from openclip_reference import perturb_all, random_images, random_tokens, state_dict_numpy

HF_TINY = dict(vocab_size=49500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=80, type_vocab_size=1,
               pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(config JSON path, tokenizer folder, perturbed torch model, its file, hpjax params)."""
  folder = tmp_path_factory.mktemp("roberta")
  hf_dir = folder / "hf"
  transformers.RobertaConfig(**HF_TINY).save_pretrained(hf_dir)
  _write_tokenizer(hf_dir)
  path = folder / "roberta-tiny.json"
  path.write_text(json.dumps({
      "embed_dim": 24, "quick_gelu": True,
      "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                     "patch_size": 16},
      "text_cfg": {"hf_model_name": str(hf_dir), "hf_tokenizer_name": str(hf_dir),
                   "hf_pooler_type": "mean_pooler", "hf_model_pretrained": False}}))
  open_clip.add_model_config(str(path))
  torch.manual_seed(0)
  torch_model = perturb_all(open_clip.create_model("roberta-tiny", pretrained_text=False))
  state_dict = state_dict_numpy(torch_model)
  # transformers < 4.31 saved this index buffer; the study's checkpoint has it.
  state_dict["text.transformer.embeddings.position_ids"] = np.arange(80)[None]
  source = checkpoints.write_state_dict(state_dict, folder / "roberta.safetensors")
  return path, hf_dir, torch_model, source, checkpoints.load_params(source,
                                                                    get_model_config(str(path)))


def _write_tokenizer(folder):
  """A tiny byte-level BPE saved as a RobertaTokenizerFast folder (RoBERTa's special ids)."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  corpus = ["a photo of a cat on a mat", "two dogs left of a red car", "the horse eats grass"] * 5
  bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  bpe.save_model(str(folder))
  transformers.RobertaTokenizerFast(vocab=str(folder / "vocab.json"),
                                    merges=str(folder / "merges.txt")).save_pretrained(folder)


def _encode(config, params, x, method="encode_text"):
  with jax.default_matmul_precision("highest"):
    apply = jax.jit(functools.partial(CLIP(config).apply, method=method))
    return np.asarray(apply({"params": params}, x))


def _torch_text(torch_model, tokens):
  with torch.no_grad():
    return torch_model.encode_text(torch.from_numpy(tokens).long(), normalize=False).numpy()


def test_features_match_open_clip_on_roberta_and_clip_ids(tiny):
  path, hf_dir, torch_model, _, params = tiny
  config = get_model_config(str(path))
  images = random_images(np.random.default_rng(0), 2, 32)
  with torch.no_grad():
    want_image = torch_model.encode_image(torch.from_numpy(images), normalize=False).numpy()
  got_image = _encode(config, params, images.transpose(0, 2, 3, 1), "encode_image")
  np.testing.assert_allclose(got_image, want_image, atol=1e-4, rtol=0)

  tokenizer = tokenizer_lib.get_tokenizer(config, tokenizer_dir=hf_dir)
  roberta_ids = tokenizer(["a photo of a cat", "two red dogs left of a car on the grass mat",
                           "x" * 200])
  assert (roberta_ids == 1).any() and roberta_ids.shape == (3, 77)
  want = _torch_text(torch_model, roberta_ids)
  np.testing.assert_allclose(_encode(config, params, roberta_ids), want, atol=1e-4, rtol=0)
  # Pads (id 1) are masked and keep their position: a shorter bucket gives the same features.
  np.testing.assert_allclose(_encode(config, params, roberta_ids[:2, :16]), want[:2], atol=1e-4,
                             rtol=0)
  # The study fed CLIP BPE ids (pad 0, nothing masked) to this tower; so does hpjax on request.
  clip_ids = random_tokens(np.random.default_rng(2), 3)
  clip_ids[1, 3] = 1  # CLIP's '"': RoBERTa's pad, masked and position-less inside the text.
  np.testing.assert_allclose(_encode(config, params, clip_ids), _torch_text(torch_model, clip_ids),
                             atol=1e-4, rtol=0)


def test_round_trip_is_bit_identical_and_loads_strictly(tiny, tmp_path):
  path, _, torch_model, _, params = tiny
  state_dict = state_dict_numpy(torch_model)
  exported = hpjax.export_openclip(params, str(path), tmp_path / "back.safetensors")
  written = safetensors.numpy.load_file(str(exported))
  assert sorted(written) == sorted(state_dict)  # text. prefix back, no position_ids buffer.
  for key, value in state_dict.items():
    assert np.array_equal(written[key], value), key
  open_clip.create_model("roberta-tiny", pretrained=str(exported))  # strict key matching


def test_shipped_roberta_config_has_open_clips_keys_and_shapes(monkeypatch):
  """roberta-ViT-B-32 against open_clip built on the meta device, with roberta-base's config
  (the HF architecture hpjax derives from hf_model_name) given in place of a download."""
  cfg = open_clip.get_model_config("roberta-ViT-B-32")
  cfg["text_cfg"]["hf_model_pretrained"] = False
  hf = get_model_config("roberta-ViT-B-32").text.hf
  roberta_base = transformers.RobertaConfig(
      vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
      num_hidden_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
      intermediate_size=hf.intermediate_size, max_position_embeddings=hf.max_position_embeddings,
      type_vocab_size=hf.type_vocab_size, pad_token_id=hf.pad_token_id)
  monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda name: roberta_base)
  with torch.device("meta"):
    torch_model = open_clip.model.CustomTextCLIP(**cfg)
  want = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
  config = get_model_config("roberta-ViT-B-32")
  got = {mapping.with_text_prefix(k, config): e.torch_shape
         for k, e in mapping.key_table(config).items()}
  assert got == want
  assert config.quick_gelu and want["text.proj.0.weight"] == (640, 768)


def test_tokenizer_ids_equal_open_clips_hf_tokenizer(tiny):
  path, hf_dir, *_ = tiny
  texts = ["a photo of a cat", "  two   dogs\tleft of a car  ", "Fish &amp; chips", "",
           "the horse eats grass " * 20]
  want = open_clip.tokenizer.HFTokenizer(str(hf_dir), context_length=77)(texts).numpy()
  got = tokenizer_lib.get_tokenizer(str(path), tokenizer_dir=hf_dir)(texts)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  short = tokenizer_lib.get_tokenizer(str(path), context_length=8, tokenizer_dir=hf_dir)
  np.testing.assert_array_equal(
      short(texts), open_clip.tokenizer.HFTokenizer(str(hf_dir), context_length=8)(texts).numpy())


def test_bad_input_names_what_is_missing(tiny, tmp_path):
  path, *_ = tiny
  with pytest.raises(ValueError, match="roberta-tiny: text_cfg names the HF tokenizer .* pass "
                                       "tokenizer_dir="):
    tokenizer_lib.get_tokenizer(str(path))
  with pytest.raises(FileNotFoundError, match=f"HF tokenizer folder {tmp_path / 'nope'} does not"):
    tokenizer_lib.get_tokenizer(str(path), tokenizer_dir=tmp_path / "nope")
  with pytest.raises(ValueError, match="names no HF tokenizer"):
    tokenizer_lib.get_tokenizer("ViT-B-32", tokenizer_dir=tmp_path)
  config = json.loads(path.read_text())
  config["text_cfg"]["hf_model_name"] = str(tmp_path / "absent")
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="is neither a known HF text model .* nor a folder"):
    get_model_config(str(bad))
  config["text_cfg"]["hf_model_name"] = "roberta-base"
  config["text_cfg"]["hf_pooler_type"] = "cls_pooler"
  bad.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="bad: text_cfg: hf_pooler_type 'cls_pooler' is not"):
    get_model_config(str(bad))
