"""Training records, builders (NegCLIP TSV, COCO + hard-text files, array_record), the pipeline."""

import json
import multiprocessing
import os

import numpy as np
import pytest
from absl import flags

from helpers import example_transform, training_batches, write_random_image
from hpjax.data import records as records_lib
from hpjax.data import train_builders, training
from hpjax.tokenizer import get_tokenizer

@pytest.fixture
def jsonl(tmp_path):
  records = []
  for i in range(12):
    write_random_image(tmp_path / f"im{i}.png", i)
    records.append({"image": f"im{i}.png", "caption": f"a shape number {i}",
                    "hard_negatives": [f"negative {i} one", f"negative {i} two"],
                    "hard_positives": [f"positive {i}"] if i % 3 else []})
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _captions(batch, tokenizer_texts):
  """Token rows -> the caption strings they came from (via a lookup of known texts)."""
  table = {tuple(row): t for t, row in zip(tokenizer_texts, get_tokenizer()(tokenizer_texts))}
  return [table[tuple(row)] for row in batch["caption"]]


CAPTIONS = [f"a shape number {i}" for i in range(12)]


def test_jsonl_records_resolve_images_and_keep_texts(jsonl):
  records = records_lib.read_jsonl(jsonl)
  assert len(records) == 12
  assert records[1]["image"] == os.path.join(os.path.dirname(jsonl), "im1.png")
  assert records[1]["hard_positives"] == ["positive 1"] and records[0]["hard_positives"] == []


@pytest.mark.parametrize("line,message", [
    ('{"image": "a.png", "caption": "  "}', "non-empty string"),
    ('{"image": "a.png"}', "missing key"),
    ('{"image": "a.png", "caption": "x", "hard_negatives": "not a list"}', "list of non-empty"),
    ('{"image": "a.png", "caption": "x", "extra": 1}', "unknown key"),
    ("{not json", "not valid JSON"),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"image": "a.png", "caption": "fine"}\n' + line + "\n")
  with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{message}"):
    records_lib.read_jsonl(str(path))


def test_batches_have_fixed_shapes_and_masks(jsonl):
  batch = training_batches(training.open_source(jsonl), 1)[0]
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["caption"].shape == (4, 77)
  assert batch["hard_negatives"].shape == (4, 2, 77)
  assert batch["hard_positives"].shape == (4, 1, 77)
  assert batch["hard_negative_mask"].all()
  has_hp = [int(c.split()[-1]) % 3 != 0 for c in _captions(batch, CAPTIONS)]
  np.testing.assert_array_equal(batch["hard_positive_mask"][:, 0], has_hp)
  # Empty slots hold the tokens of "" (a valid EOT), so bucketing works on every row.
  empty = get_tokenizer()([""])[0]
  assert all((row == empty).all() for row, keep in
             zip(batch["hard_positives"][:, 0], has_hp) if not keep)


def test_fraction_of_records_keeping_hard_negatives_is_fixed_per_record(jsonl):
  source = training.open_source(jsonl)
  kept = {}
  for batch in training_batches(source, 9, transform=example_transform(hn_frac=0.5)):  # 3 epochs
    for caption, mask in zip(_captions(batch, CAPTIONS), batch["hard_negative_mask"]):
      assert mask.all() or not mask.any()
      kept.setdefault(caption, set()).add(bool(mask.any()))
  assert all(len(v) == 1 for v in kept.values()), "a record changed its hard negatives"
  frac = np.mean([v.pop() for v in kept.values()])
  assert 0.1 < frac < 0.9


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.75])
def test_hn_frac_and_hp_frac_keep_that_share_of_records_each_its_own(jsonl, fraction):
  """At 0.25 / 0.75 a flipped comparison keeps the complement (at 0.5 it keeps as many)."""
  for kind in (0, 1):
    share = np.mean([training.keeps(0, i, kind, fraction) for i in range(4000)])
    assert share == pytest.approx(fraction, abs=0.03)
  hn_and_hp = [training.keeps(0, i, 0, 0.25) and training.keeps(0, i, 1, 0.75)
               for i in range(4000)]  # the two kinds decide independently
  assert np.mean(hn_and_hp) == pytest.approx(0.25 * 0.75, abs=0.03)
  transform = example_transform(hn_frac=fraction, hp_frac=1.0 - fraction)
  for batch in training_batches(training.open_source(jsonl), 3, transform=transform):
    for caption, hn, hp in zip(_captions(batch, CAPTIONS), batch["hard_negative_mask"],
                               batch["hard_positive_mask"]):
      i = int(caption.split()[-1])
      assert hn.all() == hn.any() == training.keeps(0, i, 0, fraction)
      assert hp[0] == (training.keeps(0, i, 1, 1.0 - fraction) and i % 3 != 0)


def test_a_batch_larger_than_the_training_set_is_refused(jsonl):
  """Copies of a record in one batch would be each other's negatives."""
  source = training.open_source(jsonl)
  with pytest.raises(ValueError, match=r"batch of 16 .* 12 records"):
    training.make_dataset(source, global_batch_size=16, seed=0, transform=example_transform())
  assert len(training_batches(source, 1, global_batch_size=12)[0]["caption"]) == 12


def test_global_shuffle_and_host_shards_cover_the_global_batch(jsonl):
  source = training.open_source(jsonl)
  one_host = training_batches(source, 3)
  hosts = [training_batches(source, 3, global_batch_size=4, process_index=i, process_count=2)
           for i in range(2)]
  for step in range(3):
    assert hosts[0][step]["caption"].shape[0] == 2
    together = np.concatenate([hosts[0][step]["image"], hosts[1][step]["image"]])
    assert sorted(map(bytes, together)) == sorted(map(bytes, one_host[step]["image"]))
  epoch = [c for b in training_batches(source, 3) for c in _captions(b, CAPTIONS)]
  assert sorted(epoch) == sorted(CAPTIONS)
  assert epoch != CAPTIONS
  other_seed = [c for b in training_batches(source, 3, seed=7) for c in _captions(b, CAPTIONS)]
  assert other_seed != epoch


def test_iterator_state_resumes_the_same_batches(jsonl):
  source = training.open_source(jsonl)
  dataset = training.make_dataset(source, global_batch_size=4, seed=3, transform=example_transform())
  it = iter(dataset)
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = iter(dataset)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_worker_processes_give_the_same_batches(jsonl):
  flags.FLAGS.mark_as_parsed()
  source = training.open_source(jsonl)
  plain = training_batches(source, 2)
  before = {p.pid for p in multiprocessing.active_children()}
  it = iter(training.make_dataset(source, global_batch_size=4, seed=1, transform=example_transform(),
                                  worker_count=2))
  workers = [next(it) for _ in range(2)]
  # The mechanism: two worker processes started (without them the comparison is plain vs plain).
  assert len({p.pid for p in multiprocessing.active_children()} - before) == 2
  for a, b in zip(plain, workers):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_undecodable_image_is_an_error_or_a_counted_skip(jsonl):
  broken = os.path.join(os.path.dirname(jsonl), "im5.png")
  with open(broken, "wb") as f:
    f.write(b"not an image")
  source = training.open_source(jsonl)
  with pytest.raises(ValueError, match="im5.png"):
    training_batches(source, 3)
  dataset = training.make_dataset(source, global_batch_size=4, seed=1,
                                  transform=example_transform(skip_bad_images=True))
  it = iter(dataset)
  seen = [c for _ in range(3) for c in _captions(next(it), CAPTIONS)]
  assert "a shape number 5" not in seen[:11] and len(set(seen[:11])) == 11
  assert dataset.skips.skipped == 1


def test_negclip_tsv_fixture_with_newlines_in_quoted_fields(tmp_path):
  path = tmp_path / "neg.tsv"
  path.write_text('\ttitle\tfilepath\tneg_caption\tneg_image\n'
                  '0\t"A cat\non a mat."\tcoco/a.jpg\t"[\'A mat on a cat.\', \'A dog on a mat.\']"'
                  '\t[1]\n'
                  '1\tTwo dogs.\tcoco/b.jpg\t[\'Two cats.\']\t[0]\n')
  records = list(train_builders.negclip_tsv(str(path), "/images"))
  assert [r["caption"] for r in records] == ["A cat\non a mat.", "Two dogs."]
  assert records[0]["hard_negatives"] == ["A mat on a cat.", "A dog on a mat."]
  assert records[1]["image"] == "/images/coco/b.jpg"
  path.write_text('\ttitle\tfilepath\tneg_caption\tneg_image\n0\tA cat.\ta.jpg\t[unclosed\t[]\n')
  with pytest.raises(ValueError, match="neg.tsv: row 1 .*neg_caption"):
    list(train_builders.negclip_tsv(str(path), "/images"))


def test_real_negclip_validation_tsv(hard_positives):
  tsv = os.path.join(hard_positives, "temp_data", "valid_neg_clip.tsv")
  records = list(train_builders.negclip_tsv(tsv, "/coco"))
  assert len(records) == 4839
  assert sum("\n" in r["caption"] or any("\n" in n for n in r["hard_negatives"])
             for r in records) > 0
  assert all(1 <= len(r["hard_negatives"]) <= 5 for r in records)
  assert records[0]["caption"] == "A child holding a flowered umbrella and petting a yak."
  assert records[0]["image"] == "/coco/coco/val2014/COCO_val2014_000000184613.jpg"


@pytest.fixture
def coco(tmp_path):
  images = [{"id": 7, "file_name": "000007.jpg"}, {"id": 9, "file_name": "000009.jpg"}]
  annotations = [{"image_id": 7, "id": 1, "caption": "a dog and a cat"},
                 {"image_id": 9, "id": 2, "caption": "a red bus"},
                 {"image_id": 7, "id": 3, "caption": "a cat and a dog on grass"}]
  (tmp_path / "captions.json").write_text(json.dumps({"images": images,
                                                      "annotations": annotations}))
  (tmp_path / "swap_hp.jsonl").write_text('"a cat and a dog"\nNone\n"a dog and a cat on grass"\n')
  (tmp_path / "replace_hp.jsonl").write_text('"a puppy and a cat"\n"a crimson bus"\nNone\n')
  (tmp_path / "hn.jsonl").write_text('["a dog and a bird"]\n["a blue bus"]\n[]\n')
  return tmp_path


def test_coco_with_line_aligned_hard_texts(coco):
  records = list(train_builders.coco_with_hard_texts(
      str(coco / "captions.json"), "/coco/train2017",
      hard_positive_files=[str(coco / "swap_hp.jsonl"), str(coco / "replace_hp.jsonl")],
      hard_negative_files=[str(coco / "hn.jsonl")]))
  assert [r["image"] for r in records] == ["/coco/train2017/000007.jpg",
                                           "/coco/train2017/000009.jpg",
                                           "/coco/train2017/000007.jpg"]
  assert records[0]["hard_positives"] == ["a cat and a dog", "a puppy and a cat"]
  assert records[1]["hard_positives"] == ["a crimson bus"]
  assert records[2]["hard_negatives"] == [] and records[1]["hard_negatives"] == ["a blue bus"]


def test_hard_text_file_with_wrong_line_count_is_an_error(coco):
  (coco / "swap_hp.jsonl").write_text('"a cat and a dog"\nNone\n')
  with pytest.raises(ValueError, match="swap_hp.jsonl has 2 lines but .*captions.json has 3"):
    list(train_builders.coco_with_hard_texts(
        str(coco / "captions.json"), "/x", hard_positive_files=[str(coco / "swap_hp.jsonl")]))


def test_empty_coco_caption_is_an_error(coco):
  data = json.loads((coco / "captions.json").read_text())
  data["annotations"][1]["caption"] = ""
  (coco / "captions.json").write_text(json.dumps(data))
  with pytest.raises(ValueError, match="annotation 1 .*non-empty string"):
    list(train_builders.coco_with_hard_texts(str(coco / "captions.json"), "/x"))


def test_array_record_matches_jsonl_pipeline(jsonl, tmp_path):
  out = str(tmp_path / "train.array_record")
  counts = train_builders.write_array_record(records_lib.read_jsonl(jsonl), out)
  assert counts == {"written": 12, "skipped": 0}
  from_jsonl = training_batches(training.open_source(jsonl), 2)
  from_records = training_batches(training.open_source(out), 2)
  for a, b in zip(from_jsonl, from_records):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_array_record_writer_missing_image(jsonl, tmp_path):
  records = records_lib.read_jsonl(jsonl)
  os.remove(records[3]["image"])
  with pytest.raises(OSError, match="record 3: cannot read image .*im3.png"):
    train_builders.write_array_record(records, str(tmp_path / "a.array_record"))
  assert not os.path.exists(tmp_path / "a.array_record")
  counts = train_builders.write_array_record(records, str(tmp_path / "b.array_record"),
                                             skip_bad_images=True)
  assert counts == {"written": 11, "skipped": 1}
  assert len(training.open_source(str(tmp_path / "b.array_record"))) == 11


def _stored(path):
  source = training.open_source(path, allow_outside=True)  # (out/ is beside the images)
  return [source[i] for i in range(len(source))]


@pytest.mark.parametrize("suffix", [".array_record", ".jsonl"])
def test_a_failed_build_leaves_the_old_output_as_it_was(jsonl, tmp_path, suffix):
  """An undecodable image (record 5) or an error from the records' reader (after record 4)
  stops the build; the good file built before is untouched and no partial file is left."""
  out = str(tmp_path / "out" / f"train{suffix}")
  os.makedirs(os.path.dirname(out))
  write = (train_builders.write_jsonl if suffix == ".jsonl"
           else train_builders.write_array_record)
  records = records_lib.read_jsonl(jsonl)
  assert write(records, out) == {"written": 12, "skipped": 0}
  good = _stored(out)
  with open(records[5]["image"], "wb") as f:
    f.write(b"not an image")
  with pytest.raises(OSError, match="record 5: cannot read image .*im5.png"):
    write(records, out)

  def failing_reader():
    yield from records[:4]
    raise ValueError("captions.json: annotation 4 is broken")

  with pytest.raises(ValueError, match="annotation 4"):
    write(failing_reader(), out)
  assert os.listdir(os.path.dirname(out)) == [f"train{suffix}"]
  assert _stored(out) == good
  counts = write(records, out, skip_bad_images=True)
  assert counts == {"written": 11, "skipped": 1} and len(_stored(out)) == 11
  with pytest.raises(ValueError, match="no record to write"):
    write(records[5:6], out, skip_bad_images=True)
  assert len(_stored(out)) == 11


def test_training_refuses_a_builders_temporary_file(tmp_path):
  partial = str(tmp_path / ".train.array_record.x1y2.partial")
  with pytest.raises(ValueError, match="expected one .jsonl file or .array_record files"):
    training.open_source(partial)
  with pytest.raises(ValueError, match="expected one .jsonl"):
    training.open_source([str(tmp_path / "a.array_record"), partial])


def test_a_truncated_array_record_file_is_one_error_naming_it(jsonl, tmp_path):
  path = str(tmp_path / "train.array_record")
  train_builders.write_array_record(records_lib.read_jsonl(jsonl), path)
  data = open(path, "rb").read()
  cut = tmp_path / "cut.array_record"
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"cut.array_record: not a readable array_record file"):
    training.open_source(str(cut))


def test_a_killed_builds_temporary_file_is_removed_by_the_next_build(jsonl, tmp_path, caplog):
  from test_writers import dead_pid  # pylint: disable=g-import-not-at-top
  from hpjax import leftovers  # pylint: disable=g-import-not-at-top
  host = leftovers.name("").rsplit("-", 2)[0]
  out = tmp_path / "out"
  os.makedirs(out)
  left = out / f".train.jsonl.partial-{host}-{dead_pid()}-0123abcd.partial"
  left.write_text("half")
  train_builders.write_jsonl(records_lib.read_jsonl(jsonl), str(out / "train.jsonl"))
  assert sorted(os.listdir(out)) == ["train.jsonl"]
  assert f"removed {left}" in caplog.text


def test_written_jsonl_names_images_under_its_folder_relatively(tmp_path):
  """An image under the JSONL's folder is written relative (and read back without allowing
  paths outside); one elsewhere is written absolute, which reading must be allowed."""
  inner, outer = tmp_path / "data" / "images" / "a.png", tmp_path / "elsewhere.png"
  inner.parent.mkdir(parents=True)
  for image in (inner, outer):
    write_random_image(str(image), 0)
  record = {"caption": "c", "hard_negatives": [], "hard_positives": []}
  relative = records_lib.relative_to(str(tmp_path / "data"),
                                 {**record, "image": str(inner), "negative_images": [str(inner)]})
  assert relative["image"] == relative["negative_images"][0] == os.path.join("images", "a.png")
  assert records_lib.relative_to(str(tmp_path / "data"), {**record, "image": str(outer)})["image"] \
      == str(outer)
  path = tmp_path / "data" / "train.jsonl"
  train_builders.write_jsonl([{**record, "image": str(inner)}], str(path))
  assert records_lib.read_jsonl(str(path))[0]["image"] == str(inner)
  train_builders.write_jsonl([{**record, "image": str(outer)}], str(tmp_path / "data" / "o.jsonl"))
  with pytest.raises(ValueError, match="outside"):
    records_lib.read_jsonl(str(tmp_path / "data" / "o.jsonl"))

