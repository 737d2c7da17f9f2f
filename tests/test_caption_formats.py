"""CLIP_benchmark's retrieval annotation files as its builder downloads them: COCO's
`coco_{split}_karpathy.json` (the COCO captions format, written by
mehdidc/retrieval_annotations' build_coco_splits.py) and `flickr30k_{split}_karpathy.txt` (an
`image,caption` CSV written by pandas in build_flickr30k_splits.py). The files themselves are
GitHub release assets, not repository files (see tests/data/README.md): these fixtures rebuild
their structure, and each must read as the Karpathy split file of the same content does."""

import pytest

from hpjax.data import captions as captions_lib
from helpers import write_json

CAPTIONS = {"COCO_val2014_000000391895.jpg": ["A man with a red helmet on a small moped .",
                                              "Man riding a motor bike on a dirt road ."],
            "COCO_val2014_000000060623.jpg": ["A young girl inhales with the intent of blowing "
                                              "out a candle .", "A girl, smiling, eats cake ."]}


def _karpathy(tmp_path):
  """The same images and captions as Karpathy's split file gives them."""
  write_json(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
      {"filepath": "val2014", "filename": name, "split": "test", "imgid": i,
       "sentences": [{"raw": c, "tokens": c.split(), "imgid": i} for c in captions]}
      for i, (name, captions) in enumerate(CAPTIONS.items())]})
  return captions_lib.load_caption_set(str(tmp_path / "dataset_coco.json"), "/coco")


def _coco_file(path, annotations):
  """captions_val2014.json's keys (info, licenses, images with COCO's fields, annotations)."""
  write_json(path, {
      "info": {"description": "fixture", "version": "1.0", "year": 2014},
      "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
                    "name": "Attribution-NonCommercial-ShareAlike License"}],
      "images": [{"license": 1, "file_name": name, "coco_url": "", "height": 480, "width": 640,
                  "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": image_id}
                 for image_id, name in ((391895, list(CAPTIONS)[0]), (60623, list(CAPTIONS)[1]))],
      "annotations": annotations})


def test_coco_captions_format_reads_as_the_karpathy_file(tmp_path):
  (first, second), ids = CAPTIONS.values(), (391895, 60623)
  # COCO lists annotations in no image order: interleaved here.
  annotations = [{"image_id": ids[k % 2], "id": 100 + k, "caption": (first, second)[k % 2][k // 2]}
                 for k in range(4)]
  _coco_file(tmp_path / "coco_test_karpathy.json", annotations)
  got = captions_lib.load_caption_set(str(tmp_path / "coco_test_karpathy.json"), "/coco/val2014")
  want = _karpathy(tmp_path)
  assert (got.images, got.captions) == (want.images, want.captions)
  assert got.caption_image.tolist() == want.caption_image.tolist() == [0, 0, 1, 1]

  _coco_file(tmp_path / "bad.json", annotations + [{"image_id": 7, "id": 9, "caption": "x"}])
  with pytest.raises(ValueError, match=r"bad.json annotation 4: names image_id 7, which is not"):
    captions_lib.load_caption_set(str(tmp_path / "bad.json"))
  _coco_file(tmp_path / "bare.json", annotations[:1])
  with pytest.raises(ValueError, match=r"bare.json image id 60623: no caption \(1 such images\)"):
    captions_lib.load_caption_set(str(tmp_path / "bare.json"))


def test_clip_benchmark_flickr_csv_reads_as_the_karpathy_file(tmp_path):
  # pandas' to_csv(sep=",", index=False): a header, minimal quoting, '"' doubled inside quotes.
  lines = ["image,caption"] + [f"{name},{caption}" if "," not in caption
                               else f'{name},"{caption}"'
                               for name, captions in CAPTIONS.items() for caption in captions]
  (tmp_path / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
  got = captions_lib.load_caption_set(str(tmp_path / "flickr30k_test_karpathy.txt"),
                                      "/coco/val2014")
  want = _karpathy(tmp_path)
  assert (got.images, got.captions) == (want.images, want.captions)
  assert got.captions[-1] == "A girl, smiling, eats cake ."  # quotes are the CSV's, not text

  (tmp_path / "quoted.csv").write_text('image,caption\na.jpg,"a ""b"", c"\n')
  assert captions_lib.load_caption_set(str(tmp_path / "quoted.csv")).captions == ('a "b", c',)
  (tmp_path / "headless.txt").write_text("a.jpg,a caption\n")
  with pytest.raises(ValueError, match=r"headless.txt: the CSV header must name the columns "
                     r"\['image', 'caption'\]"):
    captions_lib.load_caption_set(str(tmp_path / "headless.txt"))
  (tmp_path / "empty.txt").write_text("image,caption\na.jpg,a\nb.jpg,\n")
  with pytest.raises(ValueError, match=r"empty.txt line 3: an empty image or caption"):
    captions_lib.load_caption_set(str(tmp_path / "empty.txt"))
