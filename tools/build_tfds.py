"""Prepares one of hpjax's TFDS datasets (hpjax.data.tfds_builders) as array_record files.

  # REPLACE + SWAP: manual_dir is the authors' repository with the Visual Genome images in it
  python tools/build_tfds.py --name=hard_positives --manual_dir=/data/hard_positives_repo \
      --data_dir=/data/tfds
  # SWAP images elsewhere (relative to manual_dir, or absolute): a named config
  python tools/build_tfds.py --name=hard_positives --config_name=vg --swap_image_dir=/data/vg \
      --manual_dir=/data/hard_positives_repo --data_dir=gs://bucket/tfds
  # COCO 2017 captions + line-aligned hard texts, or NegCLIP's TSVs
  python tools/build_tfds.py --name=coco_hard_texts/coco2017 --manual_dir=/data/coco --data_dir=/data/tfds
  python tools/build_tfds.py --name=coco_hard_texts/negclip --manual_dir=/data/negclip --data_dir=/data/tfds
  # the synthetic world (no manual_dir): training records and suites
  python tools/build_tfds.py --name=synthetic_world/train --data_dir=/data/tfds
  python tools/build_tfds.py --name=synthetic_world/suites --data_dir=/data/tfds

Then train with `data.source=tfds:coco_hard_texts/coco2017:train,data.tfds_data_dir=/data/tfds`
or evaluate with `suite_root=tfds:hard_positives,tfds_data_dir=/data/tfds`.
"""

from absl import app, flags

from hpjax import errors
from hpjax.data import tfds_builders

_NAME = flags.DEFINE_string("name", None, "dataset[/config]", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's own)")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "the source files (see each builder)")
_CONFIG_NAME = flags.DEFINE_string("config_name", None,
                                   "hard_positives only: name of a config with image folders")
_IMAGE_DIR = flags.DEFINE_string("image_dir", "", "hard_positives: REPLACE image folder")
_SWAP_IMAGE_DIR = flags.DEFINE_string("swap_image_dir", "", "hard_positives: SWAP image folder")


def main(argv):
  del argv
  config = None
  if _CONFIG_NAME.value:
    if _NAME.value != "hard_positives":
      raise app.UsageError("--config_name goes with --name=hard_positives")
    config = tfds_builders.HardPositivesConfig(name=_CONFIG_NAME.value, image_dir=_IMAGE_DIR.value,
                                               swap_image_dir=_SWAP_IMAGE_DIR.value)
  elif _IMAGE_DIR.value or _SWAP_IMAGE_DIR.value:
    raise app.UsageError("--image_dir/--swap_image_dir need --config_name (a named config)")
  builder = tfds_builders.build(_NAME.value, _DATA_DIR.value, _MANUAL_DIR.value, config)
  print(f"{builder.data_dir}: " + ", ".join(
      f"{split} {info.num_examples}" for split, info in builder.info.splits.items()))


if __name__ == "__main__":
  app.run(errors.reported(main))
