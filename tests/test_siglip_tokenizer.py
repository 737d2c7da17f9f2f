"""SigLIP's SentencePiece and SigLIP 2's Gemma tokenizers against transformers and open_clip,
on SentencePiece models trained here with the layouts of the real ones (helpers.py)."""
import json

import numpy as np
import open_clip
import pytest
import transformers

from hpjax import tokenizer as tokenizer_lib
from hpjax.models import config as config_lib
from helpers import SENTENCEPIECE_LAYOUTS, train_sentencepiece

TEXTS = ["A photo of a CAT.", "two  dogs,   left of\tthe red-car!", "foo_bar (baz) [qux]", "",
         "x&amp;y caf\u00e9 na\u00efve \u00c9T\u00c9", "Mixed CASE words: Zyx ABC?", "q " * 70,
         "\u2014 \u201cquoted\u201d \u2019tis", "digits 0123 and 42x"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """{'t5': c4_en-like spiece.model, 'gemma': Gemma-like tokenizer.model}, each in a folder."""
  root = tmp_path_factory.mktemp("spm")
  return {name: train_sentencepiece(root / name, name) for name in SENTENCEPIECE_LAYOUTS}


def _openclip_folder(models, name, tmp_path):
  """The tokenizer folder of a timm SigLIP repository, made as open_clip's SigLipTokenizer makes
  it (T5 with pad = EOS; Gemma without BOS, with EOS, pad 0), and read by open_clip's
  HFTokenizer with clean='canonicalize' as open_clip.get_tokenizer('ViT-B-16-SigLIP') does."""
  if name == "t5":
    hf = transformers.T5TokenizerFast.from_pretrained(str(models[name].parent), extra_ids=0,
                                                      legacy=False)
    hf.pad_token = hf.eos_token
  else:
    hf = transformers.GemmaTokenizerFast.from_pretrained(
        str(models[name].parent), add_bos_token=False, add_eos_token=True, padding_side="right")
  hf.save_pretrained(str(tmp_path / name))
  return tmp_path / name


@pytest.mark.parametrize("name", ["t5", "gemma"])
@pytest.mark.parametrize("context_length", [64, 8])
def test_ids_equal_open_clips_hf_tokenizer(models, name, context_length, tmp_path):
  """Cleaning, EOS kept last when cut, the pad id: open_clip's ids for the timm repositories."""
  folder = _openclip_folder(models, name, tmp_path)
  want = open_clip.tokenizer.HFTokenizer(str(folder), context_length=context_length,
                                         clean="canonicalize")(TEXTS).numpy()
  got = tokenizer_lib.SentencePieceTokenizer(models[name], context_length)(TEXTS)
  np.testing.assert_array_equal(got, want)
  ours = tokenizer_lib.SentencePieceTokenizer(models[name].parent)
  assert (ours.pad_token_id, ours.eot_token_id) == ((1, 1) if name == "t5" else (0, 1))
  assert (got[:, -1] == ours.eot_token_id).any()  # Some rows were cut, keeping their EOS.
  assert not (got == 2).any() or name == "t5"  # Gemma: no BOS.


def test_siglip_ids_equal_transformers_siglip_tokenizer(models):
  """HF's SiglipTokenizer lower-cases and strips punctuation itself (no ftfy, html or `_`)."""
  hf = transformers.SiglipTokenizer(vocab_file=str(models["t5"]))
  ours = tokenizer_lib.SentencePieceTokenizer(models["t5"])
  hf_ids = lambda texts: np.array(hf(texts, padding="max_length", max_length=64,
                                     truncation=True).input_ids)
  np.testing.assert_array_equal(ours(TEXTS), hf_ids([tokenizer_lib.canonicalize(t)
                                                     for t in TEXTS]))
  plain = [t for t in TEXTS if "_" not in t and "&" not in t and t.isascii()]
  assert len(plain) >= 5
  np.testing.assert_array_equal(ours(plain), hf_ids(plain))


def test_gemma_ids_equal_transformers_gemma_tokenizer(models):
  """SigLIP 2: Gemma's pieces, EOS, no BOS, pad 0 (GemmaTokenizerFast as open_clip builds it)."""
  hf = transformers.GemmaTokenizerFast.from_pretrained(
      str(models["gemma"].parent), add_bos_token=False, add_eos_token=True, padding_side="right")
  ids = hf([tokenizer_lib.canonicalize(t) for t in TEXTS], padding="max_length", max_length=64,
           truncation=True).input_ids
  np.testing.assert_array_equal(tokenizer_lib.SentencePieceTokenizer(models["gemma"])(TEXTS), ids)


def test_get_tokenizer_reads_a_local_sentencepiece_model(models, tmp_path):
  """OpenCLIP's SigLIP configs name `timm/ViT-B-16-SigLIP(2)` with clean='canonicalize'."""
  for name, vocab in (("ViT-B-16-SigLIP", "t5"), ("ViT-B-16-SigLIP2", "gemma")):
    tokenizer = tokenizer_lib.get_tokenizer(name, tokenizer_dir=models[vocab].parent)
    assert isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer)
    assert tokenizer.context_length == 64
    np.testing.assert_array_equal(
        tokenizer(TEXTS), tokenizer_lib.SentencePieceTokenizer(models[vocab], 64)(TEXTS))
  with pytest.raises(ValueError, match="ViT-B-16-SigLIP: text_cfg names the HF tokenizer "
                                       "'timm/ViT-B-16-SigLIP'; pass tokenizer_dir=, its "
                                       "SentencePiece model file .*spiece.model"):
    tokenizer_lib.get_tokenizer("ViT-B-16-SigLIP")
  with pytest.raises(FileNotFoundError, match=f"tokenizer folder {tmp_path} must hold one "
                                              "SentencePiece model of .*found \\[\\]"):
    tokenizer_lib.get_tokenizer("ViT-B-16-SigLIP", tokenizer_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="SentencePiece model .*nope.model does not exist"):
    tokenizer_lib.get_tokenizer("ViT-B-16-SigLIP", tokenizer_dir=tmp_path / "nope.model")
  config = json.loads((config_lib.CONFIG_DIR / "ViT-B-16-SigLIP.json").read_text())
  config["text_cfg"]["tokenizer_kwargs"] = {"clean": "lower"}
  (tmp_path / "lower.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="asks for tokenizer_kwargs {'clean': 'lower'}; hpjax's "
                                       "SentencePieceTokenizer takes none but clean="
                                       "'canonicalize'"):
    tokenizer_lib.get_tokenizer(str(tmp_path / "lower.json"), tokenizer_dir=models["t5"])
  config["text_cfg"].update(tokenizer_kwargs={"clean": "canonicalize"}, vocab_size=299)
  (tmp_path / "small.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="small: the SentencePiece model .*spiece.model has 300 "
                                       "pieces, more than text_cfg.vocab_size 299"):
    tokenizer_lib.get_tokenizer(str(tmp_path / "small.json"), tokenizer_dir=models["t5"])
