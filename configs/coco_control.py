"""The control: plain contrastive finetuning on the captions, no hard negatives or positives."""
from configs import common


def get_config(arg=None):
  return common.get_config(arg, hn_frac=0.0, hp_frac=0.0, num_hard_negatives=0,
                           num_hard_positives=0)
