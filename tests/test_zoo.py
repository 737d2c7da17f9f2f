"""The registry of the study's models: names, files, parity settings, and architectures that
match open_clip's (shapes only: meta-device torch models against `jax.eval_shape`)."""

import os

import open_clip
import pytest
import torch

from hpjax import zoo
from hpjax.checkpoints import files
from hpjax.checkpoints.mapping import key_table, split_ignored
from hpjax.models import get_model_config

# Architectures the tower branches add (issue 9); until they are merged the shape check of
# their registry rows cannot run here.
# roberta-ViT-B-32's shapes are checked in test_hf_text.py with roberta-base's config given
# offline; open_clip.create_model would download it.
# Of the 22 SigLIP architectures, which share one key layout, two run (~5 s each): B/16 and
# SigLIP 2's B/32 (tanh GELU); test_siglip.py checks every timm tower name against timm.
_ARCHITECTURES = sorted({e.architecture for e in zoo.ENTRIES if e.architecture and not e.extra}
                        - {"roberta-ViT-B-32"}) + ["ViT-B-16-SigLIP", "ViT-B-32-SigLIP2-256"]


def test_table1_has_the_studys_35_rows_in_order_then_the_script_only_names():
  rows = [e.name for e in zoo.ENTRIES if e.table1]
  assert len(rows) == len(set(rows)) == 35
  assert rows[0] == "openai-clip:ViT-B/32" and rows[-1] == "xvlm-pretrained-16m"
  assert [e.name for e in zoo.ENTRIES if not e.table1 and not e.extra] == [
      "coco_crepe_negs_hard_pos_v2", "coco_crepe_negs_hard_pos_v2_replace_only"]
  # SigLIP entries come after the study's names and are none of its rows.
  extra = [e for e in zoo.ENTRIES if e.extra]
  assert len(extra) == 22 and zoo.ENTRIES[-22:] == tuple(extra)
  assert not any(e.table1 for e in extra)
  assert all(name in zoo.BY_NAME for name in zoo.PAPER_FIGURES)


def test_parity_modes_copy_the_authors_scoring_quirks():
  openai, negclip = zoo.get("openai-clip:ViT-B/32"), zoo.get("NegCLIP")
  roberta, laion = zoo.get("laion-clip:roberta-ViT-B-32"), zoo.get("laion-clip:ViT-H-14")
  assert openai.settings(zoo.PAPER) == zoo.Settings("quick_gelu", "float16", "float16", "clip")
  assert openai.settings(zoo.AS_TRAINED) == zoo.Settings("quick_gelu", "float32", "float32",
                                                         "clip")
  assert negclip.settings(zoo.PAPER).activation == "gelu"
  assert negclip.settings(zoo.AS_TRAINED).activation == "quick_gelu"
  assert roberta.settings(zoo.PAPER).tokenizer == "clip"
  assert roberta.settings(zoo.AS_TRAINED).tokenizer == "roberta"
  assert laion.settings(zoo.PAPER) == laion.settings(zoo.AS_TRAINED)
  # Every fine-tuned ViT-B/32 row ran with GELU; only the openai-clip rows in fp16.
  finetuned = [e for e in zoo.ENTRIES if e.architecture == "ViT-B-32-quickgelu"
               and not e.name.startswith("openai-clip")]
  assert len(finetuned) == 1 + 4 + 6 + 11 and all(
      e.settings(zoo.PAPER).activation == "gelu" for e in finetuned)
  assert {e.name for e in zoo.ENTRIES if e.paper_dtype == "float16"} == {
      e.name for e in zoo.ENTRIES if e.name.startswith("openai-clip:")}
  with pytest.raises(ValueError, match="parity mode 'exact'"):
    openai.settings("exact")


def test_unknown_name_lists_close_matches_and_missing_file_names_model_file_source(tmp_path):
  with pytest.raises(KeyError, match=r"'openai-clip:ViT-B/32'"):
    zoo.get("openai-clip:ViT-B32")
  with pytest.raises(KeyError, match=r"dac_llm"):
    zoo.get("dac-llm")
  with pytest.raises(FileNotFoundError,
                     match=r"NegCLIP: no weights file; expected .*negclip.pth; published at: "
                           r"NegCLIP release"):
    zoo.weights_path(zoo.get("NegCLIP"), str(tmp_path))


def test_command_prints_the_table_and_which_files_are_present(tmp_path, capsys):
  (tmp_path / "negclip.pth").write_bytes(b"x")
  os.makedirs(tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K")
  (tmp_path / "CLIP-ViT-H-14-laion2B-s32B-b79K" / "open_clip_pytorch_model.bin").write_bytes(b"")
  assert zoo.main([f"--weights_dir={tmp_path}"]) == 0
  out = capsys.readouterr().out
  rows = {line.split(" | ")[1]: line for line in out.splitlines() if line.startswith("| ")}
  assert rows["NegCLIP"].endswith("| negclip.pth |")
  assert rows["laion-clip:ViT-H-14"].endswith(
      "| CLIP-ViT-H-14-laion2B-s32B-b79K/open_clip_pytorch_model.bin |")
  assert rows["dac_llm"].endswith("| missing |")
  assert "2 of 59 models have a file" in out
  assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in rows["laion-clip:ViT-H-14"]
  assert "configs/hnhp.py:hn_frac=0.25" in rows["coco_crepe_negs_hard_pos_25"]


def _openclip_shapes(architecture: str) -> dict:
  """OpenCLIP's state dict shapes (parameters and BatchNorm statistics; not the step counters),
  keyed as hpjax's loader normalises them. Built on the meta device: no memory, no init
  (create_model alone would init on the CPU first)."""
  with torch.device("meta"):
    model = open_clip.create_model(architecture, device="meta")
  shapes = {k: tuple(p.shape) for k, p in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}
  return files.normalize_keys(shapes, f"open_clip {architecture}")


# Tracing these takes 10-60 s each on a shared 2-core CPU.
_LARGE = ("ViT-L-14", "ViT-L-14-quickgelu", "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "RN50x64")


@pytest.mark.parametrize("architecture", [
    pytest.param(a, marks=[pytest.mark.slow] if a in _LARGE else [])
    for a in _ARCHITECTURES])
def test_every_registry_architecture_has_open_clips_parameter_shapes(architecture):
  config = get_model_config(architecture)
  want, _ = split_ignored(_openclip_shapes(architecture), config)  # not CoCa's decoder
  assert {k: e.torch_shape for k, e in key_table(config).items()} == want
  for entry in (e for e in zoo.ENTRIES if e.architecture == architecture):
    assert entry.image_size == config.vision.image_size, entry.name
    if entry.openclip_tag:  # the activation open_clip uses for these weights
      arch, tag = entry.openclip_tag.split(":")
      quick = (open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False)
               or open_clip.get_model_config(arch).get("quick_gelu", False))
      assert (entry.activation == "quick_gelu") == quick, entry.name


def test_siglip_entries_are_open_clips_webli_weights():
  for entry in (e for e in zoo.ENTRIES if e.extra):
    config = get_model_config(entry.architecture)
    pretrained = open_clip.get_pretrained_cfg(entry.architecture, "webli")
    assert pretrained["hf_hub"].rstrip("/") == entry.hf_hub, entry.name
    assert entry.image_size == config.vision.image_size and config.vision.timm is not None
    # SigLIP's SentencePiece vocabulary (32k) or SigLIP 2's Gemma one (256k).
    assert config.text.vocab_size == {"siglip": 32000, "gemma": 256000}[entry.tokenizer]
    assert entry.settings(zoo.PAPER) == entry.settings(zoo.AS_TRAINED)
