"""The generate program: outputs the trainer reads, resume after kill -9, several processes,
bad input named by file and line or counted when skipping was asked for."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from configs import generate as generate_config
from hpjax.data import training
from hpjax.generate import run as generate_run
from hpjax.generate import shards, sources

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "coco_captions.tsv"
CAPTIONS = [c.text.strip() for c in sources.read(str(FIXTURE))]


def _config(path, **overrides):
  arg = ",".join([f"input={path}"] + [f"{k}={v}" for k, v in overrides.items()])
  return generate_config.get_config(arg)


def _outputs(workdir):
  """The run's outputs (not its shards' bookkeeping) as bytes by name."""
  return {name: (pathlib.Path(workdir) / name).read_bytes()
          for name in ("train.jsonl", "hard_texts.jsonl", "summary.json", "samples.html",
                       "manifest.json") if (pathlib.Path(workdir) / name).exists()}


def _coco(tmp_path, repeat=1):
  """COCO caption annotations over three small images (the fixture's captions)."""
  images = tmp_path / "images"
  images.mkdir(exist_ok=True)
  for i, colour in enumerate(("red", "green", "blue")):
    Image.new("RGB", (8, 8), colour).save(images / f"{i}.jpg")
  annotations = [{"id": n, "image_id": n % 3, "caption": text}
                 for n, text in enumerate(CAPTIONS * repeat)]
  path = tmp_path / "captions.json"
  path.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(3)],
                              "annotations": annotations}))
  return path, images


def test_coco_in_training_records_out_that_the_trainer_reads(tmp_path):
  path, images = _coco(tmp_path)
  config = _config(path, image_root=images, **{"output.shard_size": 16,
                                                "output.formats": "jsonl+array_record"})
  generate_run.run(config, str(tmp_path / "out"))
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="outside"):  # the images are not under out/
    training.open_source(str(out / "train.jsonl"))
  jsonl = training.open_source(str(out / "train.jsonl"), allow_outside=True)
  assert len(jsonl) == 40
  record = jsonl[0]
  assert record["caption"] == CAPTIONS[0] and record["image"] == str(images / "0.jpg")
  assert record["hard_negatives"] and record["hard_positives"] == [
      "A kid holding a flowered umbrella and petting a yak."]
  arrays = sorted(str(p) for p in out.glob("train.array_record-*"))
  assert [os.path.basename(p) for p in arrays] == [
      f"train.array_record-0000{i}-of-00003" for i in range(3)]
  arrays = training.open_source(arrays)
  assert len(arrays) == 40 and arrays[39]["caption"] == jsonl[39]["caption"]
  assert arrays[39]["hard_negatives"] == jsonl[39]["hard_negatives"]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["captions"] == summary["used"] == 40 and summary["skipped"] == {}
  made = sum(n for families in summary["hard_texts"].values() for n in families.values())
  assert made == sum(len(r["hard_negatives"]) + len(r["hard_positives"]) for r in jsonl)
  assert summary["captions_without"]["hard_positives"] == sum(
      not r["hard_positives"] for r in jsonl) > 0
  assert summary["rejections"]["swap_and"]["no_and"] >= 10
  assert sum(summary["rules"]["swap_and"].values()) == summary["hard_texts"]["hard_positive"][
      "swap_and"]
  page = (out / "samples.html").read_text()
  assert page.count("<tr>") == 40 and "<mark>" in page and "no output: " in page
  # every record of the shards names family, rule and changed span
  for record in [r for shard in range(3) for r in shards.read(str(out), shard)]:
    for h in record["hard_texts"]:
      assert h["rule"].startswith(h["family"] + ":") and h["span"][0] < h["span"][1]


def test_same_seed_same_output_another_seed_another(tmp_path):
  runs = {}
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    generate_run.run(_config(FIXTURE, seed=seed), str(tmp_path / name))
    runs[name] = (tmp_path / name / "train.jsonl").read_bytes()
  assert runs["a"] == runs["b"] != runs["c"]


def test_a_run_killed_mid_commit_resumes_to_the_same_output(tmp_path):
  config = _config(FIXTURE, **{"output.shard_size": 7})
  generate_run.run(config, str(tmp_path / "whole"))
  expected = _outputs(tmp_path / "whole")
  work = tmp_path / "resumed"
  generate_run.run(config, str(work))
  # what kill -9 can leave: a shard without its .done, a shard whose .done does not match, a
  # temporary file, no final outputs
  (work / "shards" / "shard-00002.done").unlink()
  with open(work / "shards" / "shard-00004.jsonl", "r+b") as f:
    f.truncate(100)
  (work / "shards" / ".shard-00004.jsonl.x1y2.partial").write_text("half a shard")
  for name in ("train.jsonl", "summary.json", "samples.html"):
    (work / name).unlink()
  assert [shards.is_done(str(work), s) for s in range(6)] == [True, True, False, True, False,
                                                              True]
  generate_run.run(config, str(work))
  assert _outputs(work) == expected
  assert not list(work.rglob("*.partial"))


def test_two_processes_make_what_one_makes(tmp_path):
  generate_run.run(_config(FIXTURE, **{"output.shard_size": 6}), str(tmp_path / "one"))
  for index in (1, 0):
    generate_run.run(_config(FIXTURE, process_index=index, process_count=2,
                             **{"output.shard_size": 6}), str(tmp_path / "two"))
    if index == 1:  # the odd shards only, and no outputs before every shard is done
      assert sorted(p.name for p in (tmp_path / "two" / "shards").glob("*.done")) == [
          f"shard-0000{s}.done" for s in (1, 3, 5)]
      assert not (tmp_path / "two" / "train.jsonl").exists()
  assert _outputs(tmp_path / "two") == _outputs(tmp_path / "one")


def _cli(workdir, arg, **kwargs):
  return subprocess.Popen(
      [sys.executable, "-m", "hpjax.generate", f"--config={REPO}/configs/generate.py:{arg}",
       f"--workdir={workdir}"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run_and_processes_run_at_once(tmp_path):
  path, images = _coco(tmp_path, repeat=25)  # 1,000 captions in 20 shards
  arg = f"input={path},image_root={images},output.shard_size=50"
  generate_run.run(_config(path, image_root=images, **{"output.shard_size": 50}),
                   str(tmp_path / "whole"))
  killed = _cli(tmp_path / "killed", arg)
  first = tmp_path / "killed" / "shards" / "shard-00003.done"
  deadline = time.monotonic() + 120
  while not first.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  done = len(list((tmp_path / "killed" / "shards").glob("*.done")))
  assert 4 <= done < 20, f"the kill came at {done} of 20 shards"
  assert not (tmp_path / "killed" / "train.jsonl").exists()
  rerun = _cli(tmp_path / "killed", arg)
  assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
  assert f"has {20 - done} shard(s) to do" in rerun.stderr.read()
  assert _outputs(tmp_path / "killed") == _outputs(tmp_path / "whole")
  both = [_cli(tmp_path / "two", f"{arg},process_index={i},process_count=2") for i in (0, 1)]
  assert [p.wait(timeout=300) for p in both] == [0, 0]
  assert _outputs(tmp_path / "two") == _outputs(tmp_path / "whole")


def _bad_input(tmp_path, line: bytes):
  path = tmp_path / "captions.txt"
  path.write_bytes(b"a dog and a cat on a bed\n" + line + b"\na man riding a horse\n")
  return path


@pytest.mark.parametrize("line,reason,message", [
    (b"", "empty", "captions.txt:2: the caption is empty"),
    (b"a red \xff\xfe bus", "not_utf8", "captions.txt:2: byte 0xff at character 6 is not UTF-8"),
    (b"word " * 10_000, "too_long",
     "captions.txt:2: the caption has 10000 words; input.max_words is 100"),
])
def test_bad_input_is_named_or_a_counted_skip(tmp_path, line, reason, message):
  path = _bad_input(tmp_path, line)
  with pytest.raises(ValueError, match=message.replace(".", "\\.")):
    generate_run.run(_config(path), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()  # nothing written for an input that fails
  generate_run.run(_config(path, **{"input.skip_bad": True}), str(tmp_path / "skip"))
  summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
  assert summary["skipped"] == {reason: 1} and summary["used"] == 2
  texts = [json.loads(l) for l in (tmp_path / "skip" / "hard_texts.jsonl").read_text().splitlines()]
  assert [t["caption"] for t in texts] == ["a dog and a cat on a bed", "a man riding a horse"]
  assert texts[0]["hard_positives"] == ["a cat and a dog on a bed"]


def test_a_folder_holding_another_run_or_other_files_is_refused(tmp_path):
  generate_run.run(_config(FIXTURE), str(tmp_path / "run"))
  with pytest.raises(ValueError, match=r"manifest.json: this folder holds another run \(seed "
                                       r"was 0, now 5\)"):
    generate_run.run(_config(FIXTURE, seed=5), str(tmp_path / "run"))
  with pytest.raises(ValueError, match=r"holds another run \(40 captions in shards of 10000, "
                                       r"now 40 in 8\)"):
    generate_run.run(_config(FIXTURE, **{"output.shard_size": 8}), str(tmp_path / "run"))
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="other: holds other files \\(notes.txt\\) and no "
                                       "manifest.json"):
    generate_run.run(_config(FIXTURE), str(tmp_path / "other"))


def test_config_errors_are_one_line(tmp_path):
  cli = _cli(tmp_path / "out", f"input={FIXTURE},families=swap_everything")
  assert cli.wait(timeout=120) == 1 and not (tmp_path / "out").exists()
  assert cli.stderr.read().strip().splitlines()[-1] == (
      "error: generate.families: unknown ['swap_everything']; expected some of "
      "['replace_attribute', 'replace_relation', 'replace_synonym', 'swap_and', "
      "'swap_attributes', 'swap_objects', 'swap_relations']")
  with pytest.raises(ValueError, match="captions without images cannot make array_record"):
    generate_run.run(_config(_bad_input(tmp_path, b"a cat"), **{"output.formats": "array_record"}),
                     str(tmp_path / "x"))
  with pytest.raises(ValueError, match="process_index 2 is not in \\[0, process_count=2\\)"):
    generate_run.run(_config(FIXTURE, process_index=2, process_count=2), str(tmp_path / "y"))


def test_every_input_format_gives_the_same_hard_texts(tmp_path):
  coco, images = _coco(tmp_path)
  jsonl = tmp_path / "captions.jsonl"
  jsonl.write_text("".join(json.dumps({"image": f"{n % 3}.jpg", "caption": t}) + "\n"
                           for n, t in enumerate(CAPTIONS)))
  text = tmp_path / "captions.txt"
  text.write_text("".join(f"{n % 3}.jpg\t{t}\n" for n, t in enumerate(CAPTIONS)))
  outputs = []
  for path in (coco, jsonl, text):
    generate_run.run(_config(path, image_root=images), str(tmp_path / path.suffix[1:]))
    outputs.append((tmp_path / path.suffix[1:] / "train.jsonl").read_text())
  assert outputs[0] == outputs[1] == outputs[2]
  assert sources.read(str(jsonl))[1].where == f"{jsonl}:2"


def test_input_image_paths_stay_under_the_image_root_unless_allowed(tmp_path):
  path = tmp_path / "captions.jsonl"
  path.write_text(json.dumps({"image": "../secret.jpg", "caption": CAPTIONS[0]}) + "\n")
  with pytest.raises(ValueError, match=rf"{path}:1: image path '../secret.jpg' is outside"):
    sources.read(str(path), image_root=str(tmp_path / "images"))
  allowed = sources.read(str(path), image_root=str(tmp_path / "images"), allow_outside=True)
  assert allowed[0].image == str(tmp_path / "images" / "../secret.jpg")
  path.write_text("\n{not json\n")
  with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON"):
    sources.read(str(path))

