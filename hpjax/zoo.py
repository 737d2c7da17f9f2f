"""The study's models: every row of the paper's Table 1 (and the authors' script-only names), and
SigLIP / SigLIP 2 models hpjax scores beside them (marked `extra`: not rows of the study).

Each entry says how to build the model in hpjax (an hpjax config name), where its weights are
published and what file a `weights_dir` should hold, and how the authors' evaluation (Kamath
et al., ECCV 2024, arXiv 2409.17958, and its released code) built and scored it: the
activation, the score dtype and the tokenizer. Two parity modes pick the settings of a row:

  paper        what the authors' code did: exact GELU for the fine-tuned ViT-B/32 rows (built as
               `ViT-B-32` + file), fp16 towers, normalisation and dot products for the six
               openai-clip rows, CLIP BPE ids for the RoBERTa-text row;
  as_trained   the activation the weights were trained with, fp32, the model's own tokenizer.

  python -m hpjax.zoo                       # the table
  python -m hpjax.zoo --weights_dir=/ckpt   # plus which files are present
  python -m hpjax.zoo --download openai-clip:ViT-B/32 ViT-B-32:laion2b_s34b_b79k  # fetch, cache
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from typing import Sequence

PAPER, AS_TRAINED = "paper", "as_trained"
PARITY_MODES = (PAPER, AS_TRAINED)

# Formats of the weight files.
OPENCLIP, OPENAI_TORCHSCRIPT, LORA, HPJAX, ITM = (
    "openclip", "openai-torchscript", "lora", "hpjax", "itm")
LORA_RANK = 4  # TSVLC / DAC: rank 4, lora_alpha 1 (scale 1/4).


@dataclasses.dataclass(frozen=True)
class Settings:
  """How one row is built and scored in one parity mode."""
  activation: str  # 'quick_gelu' | 'gelu' (the towers' MLP activation)
  dtype: str  # compute dtype of the towers
  score_dtype: str  # dtype of normalisation and dot products
  tokenizer: str  # 'clip' (OpenAI's BPE, 77 ids) | 'roberta' | 'siglip' | 'gemma' (the model's
  # own tokenizer, from a local tokenizer folder)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One model of the study.

  Attributes:
    name: the authors' name (`run_eval.py` choices).
    architecture: hpjax config name (None for a plug-in scorer, `format == ITM`).
    format: openclip | openai-torchscript | lora | hpjax | itm.
    files: names a weights_dir may hold for it, the first present one is used.
    source: where the file is published (or how hpjax trains it).
    activation: what the weights were trained with.
    paper_activation / paper_dtype / paper_tokenizer: what the authors' evaluation used.
    tokenizer: the model's own tokenizer.
    image_size: eval resolution.
    openclip_tag / hf_hub: OpenCLIP pretrained tag and HF hub repository, for public weights.
    recipe: `configs/<recipe>.py[:args]` for the rows hpjax trains itself.
    table1: a row of Table 1 (False: only in the authors' script, or extra).
    extra: not a model of the study (SigLIP).
  """
  name: str
  architecture: str | None
  format: str
  files: tuple[str, ...]
  source: str
  activation: str = "gelu"
  paper_activation: str | None = None
  paper_dtype: str = "float32"
  tokenizer: str = "clip"
  paper_tokenizer: str = "clip"
  image_size: int = 224
  openclip_tag: str | None = None
  hf_hub: str | None = None
  recipe: str | None = None
  table1: bool = True
  extra: bool = False

  def settings(self, mode: str) -> Settings:
    if mode == PAPER:
      return Settings(self.paper_activation or self.activation, self.paper_dtype,
                      self.paper_dtype, self.paper_tokenizer)
    if mode == AS_TRAINED:
      return Settings(self.activation, "float32", "float32", self.tokenizer)
    raise ValueError(f"parity mode {mode!r}: expected one of {PARITY_MODES}")

  def find(self, weights_dir: str) -> str | None:
    """The first of `files` present under `weights_dir`, else None."""
    for name in self.files:
      path = os.path.join(weights_dir, name)
      if os.path.exists(path):
        return path
    return None


def _openai(name: str, arch: str, archive: str, tag_arch: str, size: int = 224) -> Entry:
  return Entry(name, arch, OPENAI_TORCHSCRIPT, (archive,),
               f"OpenAI CLIP release: https://openaipublic.azureedge.net/clip/models/.../{archive} "
               f"(clip.available_models(); also open_clip tag {tag_arch}:openai)",
               activation="quick_gelu", paper_dtype="float16", image_size=size,
               openclip_tag=f"{tag_arch}:openai")


def _laion(name: str, arch: str, tag_arch: str, tag: str, hub: str, **kw) -> Entry:
  folder = hub.split("/")[1]
  return Entry(name, arch, OPENCLIP,
               (f"{folder}/open_clip_model.safetensors", f"{folder}/open_clip_pytorch_model.bin"),
               f"https://huggingface.co/{hub} (open_clip tag {tag_arch}:{tag})",
               openclip_tag=f"{tag_arch}:{tag}", hf_hub=hub, **kw)


def _finetuned(name: str, fmt: str, file: str, source: str, **kw) -> Entry:
  """A ViT-B/32 fine-tuned from OpenAI weights (QuickGELU) that the authors built as
  `ViT-B-32` + file, i.e. with exact GELU."""
  return Entry(name, "ViT-B-32-quickgelu", fmt, (file,), source, activation="quick_gelu",
               paper_activation="gelu", **kw)


def _coco(name: str, recipe: str, note: str = "", table1: bool = True) -> Entry:
  return _finetuned(name, HPJAX, name,
                    f"not released; train with configs/{recipe}{note} (WORKDIR/checkpoints, "
                    f"or an exported {name}.pt)", recipe=recipe, table1=table1)


def _siglip(arch: str, size: int, hub: str | None = None) -> Entry:
  """An OpenCLIP SigLIP model (its `webli` tag; weights in the timm/ hub repository), scored as
  trained in both parity modes: the authors never scored it."""
  tokenizer = "gemma" if "SigLIP2" in arch else "siglip"
  return _laion(f"siglip:{arch}", arch, arch, "webli", f"timm/{hub or arch}", image_size=size,
                tokenizer=tokenizer, paper_tokenizer=tokenizer, table1=False, extra=True)


_NEGCLIP = ("NegCLIP release (ARO repository, Google Drive id 1ooVVPxB-tvptgmHlIMMFGV3Cg-IrhbRZ); "
            "an OpenCLIP training checkpoint")
_CREPE = "SugarCrepe's released NegCLIP-style fine-tunes (most likely; inferred)"
_TSVLC = "TSVLC release (github.com/SivanDoveh/TSVLC); LoRA rank 4"
_DAC = "DAC release (github.com/SivanDoveh/DAC); LoRA rank 4"

# Table 1 in the study's order, then the script-only names.
ENTRIES: tuple[Entry, ...] = (
    _openai("openai-clip:ViT-B/32", "ViT-B-32-quickgelu", "ViT-B-32.pt", "ViT-B-32"),
    _openai("openai-clip:ViT-B/16", "ViT-B-16-quickgelu", "ViT-B-16.pt", "ViT-B-16"),
    _openai("openai-clip:ViT-L/14", "ViT-L-14-quickgelu", "ViT-L-14.pt", "ViT-L-14"),
    _openai("openai-clip:RN101", "RN101", "RN101.pt", "RN101"),
    _openai("openai-clip:RN50x16", "RN50x16", "RN50x16.pt", "RN50x16", 384),
    _openai("openai-clip:RN50x64", "RN50x64", "RN50x64.pt", "RN50x64", 448),
    _laion("laion-clip:ViT-H-14", "ViT-H-14", "ViT-H-14", "laion2b_s32b_b79k",
           "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    _laion("laion-clip:ViT-g-14", "ViT-g-14", "ViT-g-14", "laion2b_s34b_b88k",
           "laion/CLIP-ViT-g-14-laion2B-s34B-b88K"),
    _laion("laion-clip:ViT-bigG-14", "ViT-bigG-14", "ViT-bigG-14", "laion2b_s39b_b160k",
           "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
    _laion("laion-clip:dc-ViT-B-32", "ViT-B-32", "ViT-B-32", "datacomp_xl_s13b_b90k",
           "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"),
    _laion("laion-clip:dc-ViT-B-16", "ViT-B-16", "ViT-B-16", "datacomp_xl_s13b_b90k",
           "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K"),
    _laion("laion-clip:dc-ViT-L-14", "ViT-L-14", "ViT-L-14", "datacomp_xl_s13b_b90k",
           "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"),
    # The vision tower is a QuickGELU ViT-B/32; the authors fed it CLIP BPE ids.
    _laion("laion-clip:roberta-ViT-B-32", "roberta-ViT-B-32", "roberta-ViT-B-32",
           "laion2b_s12b_b32k", "laion/CLIP-ViT-B-32-roberta-base-laion2B-s12B-b32k",
           activation="quick_gelu", tokenizer="roberta"),
    _laion("laion-clip:coca_ViT-B-32", "coca_ViT-B-32", "coca_ViT-B-32", "laion2b_s13b_b90k",
           "laion/CoCa-ViT-B-32-laion2B-s13B-b90k"),
    _finetuned("NegCLIP", OPENCLIP, "negclip.pth", _NEGCLIP),
    _finetuned("crepe_ft_swap", OPENCLIP, "crepe_ft_swap.pt", _CREPE),
    _finetuned("crepe_ft_replace", OPENCLIP, "crepe_ft_replace.pt", _CREPE),
    _finetuned("crepe_ft_negate", OPENCLIP, "crepe_ft_negate.pt", _CREPE),
    _finetuned("crepe_ft_all", OPENCLIP, "crepe_ft_all.pt", _CREPE),
    _finetuned("svlc_pos", LORA, "svlc_pos.pt", _TSVLC + " (not public)"),
    _finetuned("svlc_rb_neg", LORA, "svlc_rb_neg.pt", _TSVLC + " (not public)"),
    _finetuned("svlc_llm_and_rb_negs", LORA, "svlc_llm_and_rb_negs.pt", _TSVLC + " (not public)"),
    _finetuned("svlc_llm_and_rb_negs_pos", LORA, "svlc_llm_and_rb_negs_pos.pt",
               _TSVLC + " (the public SVLC model)"),
    _finetuned("dac_llm", LORA, "dac_llm.pt", _DAC),
    _finetuned("dac_sam", LORA, "dac_sam.pt", _DAC),
    _coco("coco_crepe_negs_hard_pos", "hnhp.py"),
    _coco("coco_crepe_negs", "hn.py"),
    _coco("coco_crepe_pos", "hp.py"),
    _coco("coco_crepe_negs_hard_pos_swap_only", "hnhp.py", " on a file built with SWAP hard "
          "positives only"),
    _coco("coco_crepe_negs_hard_pos_replace_only", "hnhp.py", " on a file built with REPLACE "
          "hard positives only"),
    _coco("coco_control", "coco_control.py"),
    _coco("coco_crepe_negs_hard_pos_25", "hnhp.py:hn_frac=0.25"),
    _coco("coco_crepe_negs_hard_pos_50", "hnhp.py:hn_frac=0.5"),
    _coco("coco_crepe_negs_hard_pos_75", "hnhp.py:hn_frac=0.75"),
    Entry("xvlm-pretrained-16m", None, ITM, ("16m_base_model_state_step_199999.th",),
          "X-VLM release (github.com/zengyan-97/X-VLM, 16M pretrained); scored through a "
          "plug-in callable: ITM logit[:, 1] (+ ITC cosine in the authors' wrapper)"),
    _coco("coco_crepe_negs_hard_pos_v2", "hnhp.py", table1=False),
    _coco("coco_crepe_negs_hard_pos_v2_replace_only", "hnhp.py", " on a file built with REPLACE "
          "hard positives only", table1=False),
    # Not in the study: SigLIP and SigLIP 2 (OpenCLIP's names; the i18n and gopt ones are not
    # ported). OpenCLIP's So400m/14-378 config loads the 384 px weights.
    *(_siglip(f"ViT-B-16-SigLIP{v}{f'-{s}' if s != 224 else ''}", s)
      for v in ("", "2") for s in (224, 256, 384, 512)),
    _siglip("ViT-B-32-SigLIP2-256", 256),
    *(_siglip(f"ViT-L-16-SigLIP-{s}", s) for s in (256, 384)),
    *(_siglip(f"ViT-L-16-SigLIP2-{s}", s) for s in (256, 384, 512)),
    _siglip("ViT-SO400M-14-SigLIP", 224),
    _siglip("ViT-SO400M-14-SigLIP-378", 378, hub="ViT-SO400M-14-SigLIP-384"),
    _siglip("ViT-SO400M-14-SigLIP-384", 384),
    _siglip("ViT-SO400M-14-SigLIP2", 224),
    _siglip("ViT-SO400M-14-SigLIP2-378", 378),
    *(_siglip(f"ViT-SO400M-16-SigLIP2-{s}", s) for s in (256, 384, 512)),
)
BY_NAME = {e.name: e for e in ENTRIES}
ORDER = {e.name: i for i, e in enumerate(ENTRIES)}

# The paper's published figures (Kamath et al., ECCV 2024, arXiv 2409.17958; transcribed, may be
# off by rounding), keyed by registry name, then as hpjax names its figures ("suite/metric").
PAPER_FIGURES: dict[str, dict[str, float]] = {
    "openai-clip:ViT-B/32": {"replace/original": 61.6, "replace/augmented": 46.8,
                             "replace/brittleness": 23.2, "swap/augmented": 49.6},
    "NegCLIP": {"replace/original": 68.6, "replace/augmented": 52.1},
    "dac_llm": {"replace/original": 87.6, "replace/augmented": 48.9,
                "replace/brittleness": 40.1},
    "coco_crepe_negs_hard_pos": {"replace/original": 69.0, "replace/augmented": 58.0,
                                 "replace/brittleness": 16.9, "swap/augmented": 61.1},
    "coco_crepe_pos": {"replace/augmented": 49.8, "replace/brittleness": 15.8},
    "coco_crepe_negs_hard_pos_25": {"replace/augmented": 55.5, "replace/brittleness": 16.6},
    "coco_crepe_negs_hard_pos_50": {"replace/augmented": 56.9, "replace/brittleness": 16.4},
    "coco_crepe_negs": {"replace/augmented": 55.7, "replace/brittleness": 21.0},
}


def get(name: str) -> Entry:
  """The entry called `name`; an unknown name lists the close matches."""
  if name in BY_NAME:
    return BY_NAME[name]
  lower = {n.lower(): n for n in BY_NAME}  # 'negclip' is close to 'NegCLIP'
  close = [lower[n] for n in difflib.get_close_matches(name.lower(), lower, n=5, cutoff=0.5)]
  hint = f"close matches: {close}" if close else f"known: {list(BY_NAME)}"
  raise KeyError(f"unknown model {name!r} in the registry (hpjax.zoo); {hint}")


def weights_path(entry: Entry, weights_dir: str) -> str:
  """The entry's file under `weights_dir`; a missing one names the model, the file(s) expected
  and where they are published."""
  path = entry.find(weights_dir)
  if path is None:
    expected = " or ".join(os.path.join(weights_dir, f) for f in entry.files)
    raise FileNotFoundError(f"{entry.name}: no weights file; expected {expected}; published at: "
                            f"{entry.source}")
  return path


def has_public_weights(entry: Entry) -> bool:
  """Whether the entry's weights are a row of OpenCLIP's table (fetched by name)."""
  return entry.openclip_tag is not None


def fetch_weights(name: str, verify: bool = True) -> str:
  """The local path of a registry entry's or an 'architecture:tag' pair's weights, downloaded
  once into the Hugging Face cache (hpjax.checkpoints.pretrained); an entry published elsewhere
  names its source and the file a weights_dir needs."""
  from hpjax.checkpoints import pretrained  # pylint: disable=g-import-not-at-top  (jax-free CLI)
  if name in BY_NAME:
    entry = BY_NAME[name]
    if not has_public_weights(entry):
      raise FileNotFoundError(f"{name}: not published on a hub; download it from {entry.source} "
                              f"and place it as WEIGHTS_DIR/{entry.files[0]} (weights_dir=...)")
    name = entry.openclip_tag
  return str(pretrained.fetch_row(pretrained.row_by_name(name), verify=verify))


def table(weights_dir: str | None = None, entries: Sequence[Entry] = ENTRIES) -> str:
  """The registry as a markdown table; with `weights_dir`, which files are present."""
  header = ["#", "name", "architecture", "format", "activation (paper)", "score dtype (paper)",
            "tokenizer (paper)", "image", "weights", "file"]
  if weights_dir:
    header.append("present")
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for i, e in enumerate(entries, 1):
    paper = e.settings(PAPER)
    weights = (e.hf_hub or (e.openclip_tag and f"open_clip tag {e.openclip_tag}")
               or (e.recipe and f"configs/{e.recipe}") or e.source)
    row = [str(i) if e.table1 else "script", e.name, e.architecture or "plug-in", e.format,
           f"{e.activation} ({paper.activation})", f"float32 ({paper.score_dtype})",
           f"{e.tokenizer} ({paper.tokenizer})", str(e.image_size), weights, e.files[0]]
    if weights_dir:
      found = e.find(weights_dir)
      row.append(os.path.relpath(found, weights_dir) if found else "missing")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
  import argparse  # pylint: disable=g-import-not-at-top  (only the command needs it)
  parser = argparse.ArgumentParser(prog="python -m hpjax.zoo", description=__doc__.split("\n")[0])
  parser.add_argument("--weights_dir", default=None, help="show which files this folder holds")
  parser.add_argument("--download", nargs="+", metavar="NAME",
                      help="fetch these registry names or architecture:tag pairs into the "
                      "Hugging Face cache (HF_HOME) and print their paths")
  args = parser.parse_args(argv)
  if args.weights_dir and not os.path.isdir(args.weights_dir):
    parser.error(f"--weights_dir {args.weights_dir}: not a directory")
  if args.download:
    return download(args.download)
  sys.stdout.write(table(args.weights_dir))
  if args.weights_dir:
    present = sum(e.find(args.weights_dir) is not None for e in ENTRIES)
    sys.stdout.write(f"\n{present} of {len(ENTRIES)} models have a file in {args.weights_dir}\n")
  return 0


def download(names: Sequence[str]) -> int:
  """`--download`: one line per name, its cached path or why it was not fetched; 1 if any was
  not."""
  failed = 0
  for name in names:
    try:
      sys.stdout.write(f"{name}: {fetch_weights(name)}\n")
    except (ValueError, OSError) as e:
      failed += 1
      sys.stdout.write(f"{name}: not fetched: {e}\n")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
