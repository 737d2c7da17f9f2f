"""The paper's recipe: hard negatives and hard positives (one each per caption).

Default: the synthetic world and the tiny model (minutes on a CPU). The paper's run:
  --config=configs/hnhp.py:source=/data/coco_hnhp.array_record,pretrained=/ckpt/openai_b32.pt
Ablation: configs/hnhp.py:hn_frac=0.25 (0.25 / 0.5 / 0.75 of the records keep their negative).
"""
from configs import common


def get_config(arg=None):
  return common.get_config(arg, hn_frac=1.0, hp_frac=1.0)
