"""The authors' evaluation loop (run_eval.py) in PyTorch OpenCLIP: the reference the benchmark
tools time and check hpjax's scorer against (tools/bench_eval.py, tools/bench_accelerator.py).
Needs torch and open_clip (the `test` extra).

Batches of 16 records; every record's image and both of its captions are encoded, the data/
pass (c_n, c) and the swapped_data/ pass (c_n, c_p) run separately.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def reference_pass(model, preprocess, tokenizer, records, image_root, true_role, device="cpu"):
  """One of run_eval.py's passes: per batch of 16 records, scores of [c_n, true caption]."""
  import torch  # pylint: disable=g-import-not-at-top
  out = np.zeros((len(records), 2), np.float32)
  with torch.no_grad():
    for start in range(0, len(records), 16):
      batch = records[start:start + 16]
      images = torch.stack([preprocess(Image.open(os.path.join(image_root, r.image))
                                       .convert("RGB")) for r in batch]).to(device)
      texts = tokenizer([t for r in batch for t in (r.caption("c_n"), r.caption(true_role))])
      image_feats = model.encode_image(images, normalize=True)
      text_feats = model.encode_text(texts.to(device), normalize=True).reshape(len(batch), 2, -1)
      out[start:start + len(batch)] = torch.einsum(
          "bd,bkd->bk", image_feats, text_feats).float().cpu().numpy()
  return out


def reference_scores(model, preprocess, tokenizer, records, image_root, device="cpu"):
  """(N, 3) scores in (c, c_n, c_p) order from the two separate passes."""
  orig = reference_pass(model, preprocess, tokenizer, records, image_root, "c", device)
  swapped = reference_pass(model, preprocess, tokenizer, records, image_root, "c_p", device)
  return np.stack([orig[:, 1], orig[:, 0], swapped[:, 1]], axis=1)
