"""SigLIP's SentencePiece and SigLIP 2's Gemma tokenizers against transformers and open_clip.

The SentencePiece models are trained here (seconds) with the layouts of the real ones: c4_en's
(unigram, NFKC, a dummy prefix; pad 0, EOS 1, unk 2, no BOS) and Gemma's (BPE with byte
fallback, no normalisation, no dummy prefix; pad 0, EOS 1, BOS 2, unk 3).
"""
import json
import random
import shutil

import numpy as np
import open_clip
import pytest
import sentencepiece
import transformers

from hpjax import tokenizer as tokenizer_lib
from hpjax.models import config as config_lib

TEXTS = ["A photo of a CAT.", "two  dogs,   left of\tthe red-car!", "foo_bar (baz) [qux]", "",
         "x&amp;y caf\u00e9 na\u00efve \u00c9T\u00c9", "Mixed CASE words: Zyx ABC?", "q " * 70,
         "\u2014 \u201cquoted\u201d \u2019tis", "digits 0123 and 42x"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """{'t5': c4_en-like spiece.model, 'gemma': Gemma-like tokenizer.model} in their folders."""
  root = tmp_path_factory.mktemp("spm")
  rng = random.Random(0)
  words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123") for _ in range(rng.randint(1, 7)))
           for _ in range(300)]
  lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
  common = dict(pad_id=0, eos_id=1, pad_piece="<pad>", minloglevel=2)
  layouts = {
      "t5": dict(model_type="unigram", vocab_size=300, unk_id=2, bos_id=-1, eos_piece="</s>",
                 **common),
      "gemma": dict(model_type="bpe", vocab_size=600, byte_fallback=True, bos_id=2, unk_id=3,
                    eos_piece="<eos>", bos_piece="<bos>", add_dummy_prefix=False,
                    normalization_rule_name="identity", **common)}
  out = {}
  for name, layout in layouts.items():
    folder = root / name
    folder.mkdir()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines),
                                             model_prefix=str(root / name), **layout)
    out[name] = folder / ("spiece.model" if name == "t5" else "tokenizer.model")
    shutil.move(root / f"{name}.model", out[name])
  return out


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


def _siglip_like_config(tmp_path, **text_cfg):
  """A CLIP JSON config whose OpenCLIP text tower names an HF tokenizer, as SigLIP's do."""
  config = json.loads((config_lib.CONFIG_DIR / "hpjax-tiny.json").read_text())
  config["text_cfg"].update(context_length=16, hf_tokenizer_name="timm/ViT-B-16-SigLIP",
                            **text_cfg)
  path = tmp_path / "siglip-like.json"
  path.write_text(json.dumps(config))
  return str(path)


def test_get_tokenizer_reads_a_local_sentencepiece_model(models, tmp_path):
  path = _siglip_like_config(tmp_path, tokenizer_kwargs={"clean": "canonicalize"})
  tokenizer = tokenizer_lib.get_tokenizer(path, tokenizer_dir=models["t5"].parent)
  assert isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer)
  np.testing.assert_array_equal(
      tokenizer(TEXTS), tokenizer_lib.SentencePieceTokenizer(models["t5"], 16)(TEXTS))
  with pytest.raises(ValueError, match="siglip-like: text_cfg names the HF tokenizer "
                                       "'timm/ViT-B-16-SigLIP'; pass tokenizer_dir=, its "
                                       "SentencePiece model file .*spiece.model"):
    tokenizer_lib.get_tokenizer(path)
  with pytest.raises(FileNotFoundError, match=f"tokenizer folder {tmp_path} must hold one "
                                              "SentencePiece model of .*found \\[\\]"):
    tokenizer_lib.get_tokenizer(path, tokenizer_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="SentencePiece model .*nope.model does not exist"):
    tokenizer_lib.get_tokenizer(path, tokenizer_dir=tmp_path / "nope.model")
  lower = _siglip_like_config(tmp_path, tokenizer_kwargs={"clean": "lower"})
  with pytest.raises(ValueError, match="asks for tokenizer_kwargs {'clean': 'lower'}; hpjax's "
                                       "SentencePieceTokenizer takes none but clean="
                                       "'canonicalize'"):
    tokenizer_lib.get_tokenizer(lower, tokenizer_dir=models["t5"])
