"""Image-text retrieval in the standard protocol: recall@1/5/10 in both directions.

Every caption is scored against every image of the set (COCO 5k: 25,010 captions x 5,000
images). text->image: a caption's hit@K when its image ranks among the K best images;
image->text: an image's hit@K when one of its own captions (5 in Karpathy's splits) ranks among
the K best captions. A tie counts against the model, as in the compositional suites: an item's
rank is the number of wrong items scoring *at least* as high as the best right one.
CLIP_benchmark's `topk` breaks exact ties by position instead (whichever index torch returns
first), so the two differ only on exactly equal scores (a duplicate caption of another image,
a duplicate image). Figures, named `<name>/<figure>`: `image_to_text_R@K`, `text_to_image_R@K`,
`mean_R@K` (their mean), in percent; `images`, `captions` and `skipped_images`.
"""

from __future__ import annotations

import numpy as np

from hpjax.data import captions as captions_lib
from hpjax.evaluate import scorer as scorer_lib

KS = (1, 5, 10)


def text_to_image_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
  """(captions, images) scores -> each caption's rank: other images scoring >= its own."""
  own = scores[np.arange(len(caption_image)), caption_image]
  return np.sum(scores >= own[:, None], axis=1) - 1


def image_to_text_ranks(scores: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
  """(captions, images) scores -> each image's rank: other images' captions scoring >= the
  best of its own captions (an image without captions gets rank = captions)."""
  num_images = scores.shape[1]
  own = scores[np.arange(len(caption_image)), caption_image]
  best = np.full(num_images, np.inf, np.float32)
  np.minimum.at(best, caption_image, -own)
  best = -best
  at_least = np.sum(scores >= best[None, :], axis=0)
  own_at_least = np.bincount(caption_image, own >= best[caption_image], minlength=num_images)
  return np.where(np.isfinite(best), at_least - own_at_least, len(caption_image))


def recall_metrics(scores: np.ndarray, caption_image: np.ndarray, ks=KS) -> dict[str, float]:
  """R@K (%) in both directions and their mean, for (captions, images) scores."""
  t2i = text_to_image_ranks(scores, caption_image)
  i2t = image_to_text_ranks(scores, caption_image)
  out = {}
  for k in ks:
    out[f"image_to_text_R@{k}"] = float(np.mean(i2t < k) * 100)
    out[f"text_to_image_R@{k}"] = float(np.mean(t2i < k) * 100)
    out[f"mean_R@{k}"] = (out[f"image_to_text_R@{k}"] + out[f"text_to_image_R@{k}"]) / 2
  return out


class RetrievalEvaluator:
  """Standard-protocol retrieval figures of a `captions.CaptionSet`.

  Args as `zeroshot.ZeroShotEvaluator`: `model` (None with `scorer`), the set, the figures'
  `name`, `tokenizer`, `scorer`, `**scorer_kwargs`. With skip_missing_images, a skipped image
  leaves the set with its captions (counted in `skipped_images`).
  """

  def __init__(self, model, caption_set: captions_lib.CaptionSet, name: str = "coco5k", *,
               tokenizer=None, scorer=None, **scorer_kwargs):
    self.caption_set, self.name = caption_set, name
    self.scorer = scorer_lib.scorer_for(model, tokenizer, scorer, **scorer_kwargs)

  def scores_of_models(self, models) -> tuple[list[np.ndarray], np.ndarray]:
    """Per (scorer, params) of `models` (sharing a preprocessing; each image decoded once for
    all), the (captions, images) fp32 scores; and which images were read."""
    data = self.caption_set
    image_feats, valid = scorer_lib.image_features(models, data.images, data.source)
    return [scorer_lib.text_features(scorer, params, data.captions).astype(np.float32)
            @ feats.astype(np.float32).T
            for feats, (scorer, params) in zip(image_feats, models)], valid

  def scores(self, params, scorer=None) -> np.ndarray:
    """(captions, images) fp32 scores of one model."""
    return self.scores_of_models([(scorer or self.scorer, params)])[0][0]

  def run_models(self, models) -> list[dict[str, float]]:
    """`run` for each (scorer, params) of `models`, each image decoded once for all."""
    all_scores, valid = self.scores_of_models(models)
    caption_image = self.caption_set.caption_image
    kept = valid[caption_image]
    new_index = np.cumsum(valid) - 1
    out = []
    for scores in all_scores:
      figures = recall_metrics(scores[kept][:, valid], new_index[caption_image[kept]])
      figures.update(images=float(valid.sum()), captions=float(kept.sum()),
                     skipped_images=float((~valid).sum()))
      out.append({f"{self.name}/{k}": v for k, v in figures.items()})
    return out

  def run(self, params, scorer=None) -> dict[str, float]:
    """`<name>/<figure>` for `params` (with `scorer`, e.g. another model's, if given)."""
    return self.run_models([(scorer or self.scorer, params)])[0]
