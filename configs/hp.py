"""Hard positives only (the ablation's "HP only")."""
from configs import common


def get_config(arg=None):
  return common.get_config(arg, hn_frac=0.0, hp_frac=1.0, num_hard_negatives=0)
