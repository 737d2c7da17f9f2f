"""OpenCLIP's model trained on hpjax's loss over the same hard texts, in PyTorch: the reference
that the benchmark tools time hpjax's step against (tools/bench_train.py,
tools/bench_accelerator.py). Needs torch and open_clip (the `test` extra).

The loss is spelled out here in torch for a batch whose every hard text is present (no masks):
the contrastive loss (multi-positive image->text, caption and hard-positive rows text->image,
the temperature clamped at 100) or SigLIP's sigmoid loss; AdamW as `hpjax.train.optim` (0.9,
0.98, 1e-6, weight decay 0.2 on matrices).
"""

from __future__ import annotations

import contextlib

import numpy as np

from hpjax.models.config import CONFIG_DIR
from hpjax.train import losses


def openclip_model(name: str, sigmoid: bool = False):
  """open_clip.create_model(name), random init (SigLIP's t, b with the sigmoid loss); a name
  that only hpjax ships (hpjax-tiny) is registered with open_clip from hpjax's JSON first."""
  import open_clip  # pylint: disable=g-import-not-at-top
  if name not in open_clip.list_models() and (CONFIG_DIR / f"{name}.json").exists():
    open_clip.add_model_config(str(CONFIG_DIR / f"{name}.json"))
  return open_clip.create_model(
      name, **(dict(init_logit_scale=np.log(10), init_logit_bias=-10) if sigmoid else {}))


def make_step(model, images, captions, hard_negatives, hard_positives, *, sigmoid: bool = False,
              amp_dtype=None):
  """A function running one training step of `model` (in train mode) on the batch and returning
  the loss: images (B, 3, H, W), token tensors captions (B, L), hard_negatives (B*K_n, L) and
  hard_positives (B*K_p, L), example-major. amp_dtype (e.g. torch.bfloat16) runs the forward
  pass under autocast, as OpenCLIP's --precision amp_bf16."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  b = len(images)
  k_p = len(hard_positives) // b
  texts = torch.cat([captions, hard_positives, hard_negatives])
  model.train()
  decays = lambda n, p: p.ndim >= 2 and "logit_scale" not in n and "logit_bias" not in n
  decay = [p for n, p in model.named_parameters() if decays(n, p)]
  no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
  owner_hp = torch.arange(b, device=images.device).repeat_interleave(k_p)
  positive = torch.zeros((b, len(texts)), dtype=torch.bool, device=images.device)
  positive[torch.arange(b), torch.arange(b)] = True
  positive[owner_hp, b + torch.arange(b * k_p, device=images.device)] = True
  labels = torch.cat([torch.arange(b, device=images.device), owner_hp])
  autocast = (lambda: torch.autocast(images.device.type, dtype=amp_dtype)) if amp_dtype else (
      contextlib.nullcontext)

  def step() -> float:
    with autocast():
      img = F.normalize(model.encode_image(images), dim=-1)
      txt = F.normalize(model.encode_text(texts), dim=-1)
    img, txt = img.float(), txt.float()
    if sigmoid:  # every (image, text) a binary term, summed over texts, mean over images
      logits = model.logit_scale.exp() * img @ txt.T + model.logit_bias
      loss = -F.logsigmoid(torch.where(positive, logits, -logits)).sum() / b
    else:
      scale = model.logit_scale.clamp(max=losses.MAX_LOGIT_SCALE).exp()
      logits = scale * img @ txt.T  # (B, B(1 + K_p + K_n))
      i2t = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, -1e9), 1)
      loss = 0.5 * (i2t.mean() + F.cross_entropy(logits[:, :b * (1 + k_p)].T, labels))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if not sigmoid:
      with torch.no_grad():
        model.logit_scale.clamp_(0, losses.MAX_LOGIT_SCALE)
    return float(loss.detach())

  return step
