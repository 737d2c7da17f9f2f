"""The trainer's `export_hf`: a Hugging Face CLIPModel (SigLIP: SiglipModel) folder of the kept
model, through the HF writer (`checkpoints.hf`). Checked before any training, so that neither a
folder in the way nor an architecture the writer cannot express is found after the run."""

from __future__ import annotations

from absl import logging
import numpy as np

from hpjax.checkpoints import files, hf, loading, mapping
from hpjax.models.config import CLIPConfig

FIELD = "export_hf"


def check(path: str, config: CLIPConfig) -> None:
  """Raises, naming the field, when `path` exists or model `config` has no HF equivalent (its
  config fields, then every weight key, run through the writer's rules on shapes alone)."""
  try:
    files.check_destination(path)
    hf.hf_config(config)
    shapes = {key: np.broadcast_to(np.float32(0), entry.torch_shape)
              for key, entry in mapping.key_table(config).items()}
    hf.openclip_to_hf(shapes, f"model {config.name!r}",
                      hf.SIGLIP_MODEL if hf.is_siglip(config) else hf.CLIP_MODEL)
  except (ValueError, FileExistsError) as e:
    raise type(e)(f"{FIELD}={path!r}: {e}") from e


def write(params, config: CLIPConfig, path: str, tokenizer) -> None:
  """Writes the folder (aside, then renamed); a SigLIP folder with the run's SentencePiece
  model (CLIP folders get hpjax's BPE vocabulary)."""
  spiece = getattr(tokenizer, "model_file", None) if hf.is_siglip(config) else None
  if hf.is_siglip(config) and spiece is None:
    logging.warning("%s: the run's tokenizer is no SentencePiece model file; the folder holds "
                    "no tokenizer files", FIELD)
  loading.export_hf(params, config, path, spiece)
