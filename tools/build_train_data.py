"""Builds a training set (array_record with embedded images, or JSONL) from the paper's corpora.

  # COCO train2017 captions + the line-aligned hard positives + a hard-negative file:
  python tools/build_train_data.py --coco_captions=annotations/captions_train2017.json \
      --image_root=/data/coco/train2017 --hard_positives=swap_hp.jsonl,replace_hp.jsonl \
      --hard_negatives=hn.jsonl --out=/data/coco_hnhp.array_record
  # NegCLIP's TSV (filepaths relative to --image_root):
  python tools/build_train_data.py --negclip_tsv=train_neg_clip.tsv --image_root=/data \
      --out=/data/negclip.jsonl

Every image is decoded at build time; the output is written to a temporary file next to --out
and renamed over it only when the build succeeds, so a failed build leaves the old --out as it was.
"""

from absl import app, flags

from hpjax import errors
from hpjax.data import records as records_lib
from hpjax.data import train_builders

_TSV = flags.DEFINE_string("negclip_tsv", None, "NegCLIP TSV file")
_COCO = flags.DEFINE_string("coco_captions", None, "COCO captions_*.json")
_JSONL = flags.DEFINE_string("jsonl", None, "a training JSONL (to embed its images)")
_IMAGES = flags.DEFINE_string("image_root", "", "folder the image paths are relative to")
_HP = flags.DEFINE_list("hard_positives", [], "line-aligned hard-positive files (COCO)")
_HN = flags.DEFINE_list("hard_negatives", [], "line-aligned hard-negative files (COCO)")
_OUT = flags.DEFINE_string("out", None, "output .array_record or .jsonl", required=True)
_OUTSIDE = flags.DEFINE_bool(records_lib.OUTSIDE_ROOT_FIELD, False,
                             "read image paths that are absolute or leave --image_root (or the "
                             "--jsonl's folder) through '..'; default: such a path is an error")
_SKIP = flags.DEFINE_bool("skip_bad_images", False,
                          "skip (and count) records whose image is missing or does not decode; "
                          "default: such a record stops the build, naming it and the file")


def main(argv):
  del argv
  if sum(x is not None for x in (_TSV.value, _COCO.value, _JSONL.value)) != 1:
    raise app.UsageError("give exactly one of --negclip_tsv, --coco_captions, --jsonl")
  if not _OUT.value.endswith((".jsonl", ".array_record")):
    raise app.UsageError(f"--out={_OUT.value}: expected a name ending in .jsonl or .array_record "
                         "(the names training reads)")
  if _TSV.value:
    records = train_builders.negclip_tsv(_TSV.value, _IMAGES.value, _OUTSIDE.value)
  elif _COCO.value:
    records = train_builders.coco_with_hard_texts(
        _COCO.value, _IMAGES.value, hard_positive_files=_HP.value, hard_negative_files=_HN.value,
        allow_outside=_OUTSIDE.value)
  else:
    records = records_lib.read_jsonl(_JSONL.value, _OUTSIDE.value)
  write = (train_builders.write_jsonl if _OUT.value.endswith(".jsonl")
           else train_builders.write_array_record)
  counts = write(records, _OUT.value, skip_bad_images=_SKIP.value)
  print(f"{counts['written']} records -> {_OUT.value} ({counts['skipped']} skipped)")


if __name__ == "__main__":
  app.run(errors.reported(main))
