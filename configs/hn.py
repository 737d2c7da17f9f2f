"""NegCLIP-like: captions and hard negatives, no hard positives."""
from configs import common


def get_config(arg=None):
  return common.get_config(arg, hn_frac=1.0, hp_frac=0.0, num_hard_positives=0)
