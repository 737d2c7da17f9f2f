"""Zero-shot classification as OpenAI's notebook and CLIP_benchmark compute it.

The classifier has one row per class (by position): the mean of the class's L2-normalised
template embeddings, normalised again; it is built once per model and `run`. An image's logits
are its normalised feature dotted with every row. Figures, named `<name>/<figure>`:
`top1`, `top5` (the true class among the k highest logits) and `mean_per_class_recall` (top-1
recall averaged over the classes that have images, sklearn's balanced accuracy as
CLIP_benchmark reports it), in percent, and `n`. Classes are ranked as `torch.topk` /
`argmax` rank them: by logit, an exact tie going to the lower class index (two ImageNet names
repeat, so their rows are identical: the first of each pair wins).
"""

from __future__ import annotations

import numpy as np

from hpjax.data import classification
from hpjax.evaluate import scorer as scorer_lib

FIGURES = ("top1", "top5", "mean_per_class_recall")


def class_texts(class_set: classification.ClassSet) -> list[str]:
  """Every (class, template) prompt, class-major."""
  return [t.format(name) for name in class_set.names for t in class_set.templates]


def classifier_weights(text_features: np.ndarray, num_classes: int) -> np.ndarray:
  """(classes * templates, D) prompt features, class-major -> (classes, D) classifier rows."""
  feats = text_features.astype(np.float32).reshape(num_classes, -1, text_features.shape[-1])
  feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
  mean = feats.mean(axis=1)
  return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def true_class_rank(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """0-based rank of each row's true class: classes with a higher logit, plus tied classes
  with a lower index."""
  own = logits[np.arange(len(labels)), labels][:, None]
  lower = np.arange(logits.shape[1])[None, :] < labels[:, None]
  return np.sum((logits > own) | ((logits == own) & lower), axis=1)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """top-1, top-5 and mean per-class recall (%) of (N, classes) logits."""
  rank = true_class_rank(logits, labels)
  top1 = rank == 0
  present = np.unique(labels)
  per_class = [top1[labels == c].mean() for c in present]
  return {"top1": float(top1.mean() * 100), "top5": float((rank < 5).mean() * 100),
          "mean_per_class_recall": float(np.mean(per_class) * 100), "n": float(len(labels))}


class ZeroShotEvaluator:
  """Zero-shot figures of a class set over labelled images.

  Args:
    model: an `hpjax.models.CLIP`, or None (then `scorer`, or a scorer passed to each run).
    class_set: `classification.ClassSet`; images: `classification.LabelledImages`.
    name: the figures' prefix.
    tokenizer: default `hpjax.tokenizer.get_tokenizer(model.config)`.
    scorer: a ready `scorer.Scorer` (its batching, sharding and skip_missing_images apply).
    **scorer_kwargs: as `scorer.Scorer` takes them.
  """

  def __init__(self, model, class_set: classification.ClassSet,
               images: classification.LabelledImages, name: str = "imagenet1k", *,
               tokenizer=None, scorer=None, **scorer_kwargs):
    if int(images.labels.max(initial=-1)) >= len(class_set.names):
      raise ValueError(f"{images.source}: labels reach {int(images.labels.max())}, but "
                       f"{class_set.source} has {len(class_set.names)} classes")
    if not len(images.images):
      raise ValueError(f"{images.source}: no image")
    self.class_set, self.images, self.name = class_set, images, name
    self.scorer = scorer_lib.scorer_for(model, tokenizer, scorer, **scorer_kwargs)

  def classifier(self, params, scorer=None) -> np.ndarray:
    """(classes, D) classifier rows for `params`."""
    scorer = scorer or self.scorer
    feats = scorer_lib.text_features(scorer, params, class_texts(self.class_set))
    return classifier_weights(feats, len(self.class_set.names))

  def run_models(self, models) -> list[dict[str, float]]:
    """`run` for each (scorer, params) of `models` sharing a preprocessing, each image decoded
    once for all of them."""
    feats, valid = scorer_lib.image_features(models, self.images.images, self.images.source)
    out = []
    for image_feats, (scorer, params) in zip(feats, models):
      logits = image_feats[valid].astype(np.float32) @ self.classifier(params, scorer).T
      figures = classification_metrics(logits, self.images.labels[valid])
      figures["skipped_images"] = float((~valid).sum())
      figures["skipped_classes"] = float(self.images.skipped)
      out.append({f"{self.name}/{k}": v for k, v in figures.items()})
    return out

  def run(self, params, scorer=None) -> dict[str, float]:
    """`<name>/<figure>` for `params` (with `scorer`, e.g. another model's, if given)."""
    return self.run_models([(scorer or self.scorer, params)])[0]
