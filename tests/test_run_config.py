"""Config values checked before any work; a resume must be the same run (run_config.json)."""

import json
import logging
import os
import re

import numpy as np
import pytest
from PIL import Image

from configs import hnhp
from hpjax import config_fields
from hpjax.data import synthetic, train_builders
from hpjax.train import run_config, trainer


@pytest.mark.parametrize("arg,message", [
    ("hn_frac=1.5", r"data.hn_frac=1.5 must be a fraction in \[0, 1\]"),
    ("hp_frac=-0.25", r"data.hp_frac=-0.25 must be a fraction in \[0, 1\]"),
    ("total_steps=0", "total_steps=0 must be a positive integer"),
    ("checkpoint.every_steps=-5", "checkpoint.every_steps=-5 must be a positive integer"),
    ("eval.every_steps=-1", "eval.every_steps=-1 must be an integer >= 0"),
    ("batch_size=12", "batch_size=12 must be a multiple of the 8 data-parallel devices"),
    ("batch_size=10,mesh.model_parallel=2", "batch_size=10 must be a multiple of the 4 data"),
    ("mesh.model_parallel=3", "mesh.model_parallel=3 must divide the 8 devices"),
    ("model.dtype='float16'", r"model.dtype='float16' must be one of \['float32', 'bfloat16'\]"),
    ("positives='all'", "loss.positives='all' must be one of"),
    ("optim.lr=-0.1", "optim.lr=-0.1 must be >= 0"),
    ("loss=hinge", r"loss.kind='hinge' must be one of \['contrastive', 'sigmoid'\]"),
    ("loss=sigmoid,positives='per_positive'",
     "loss.positives='per_positive' is an option of loss.kind='contrastive'"),
    ("loss=sigmoid,local_weight=0.5", "loss.local_weight=0.5 is an option of loss.kind='contr"),
    ("hn_weight=2.0", "loss.hard_negative_weight=2.0 is an option of loss.kind='sigmoid'"),
    ("loss=sigmoid,hn_weight=-1.0", "loss.hard_negative_weight=-1.0 must be >= 0"),
    ("model=no-such-model", "model.name: unknown model 'no-such-model'"),
])
def test_a_bad_value_stops_the_run_before_any_work(arg, message, tmp_path):
  config = hnhp.get_config(arg)
  with pytest.raises(ValueError, match=message):
    run_config.check_values(config, num_devices=8, process_count=1)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message):
    trainer.run(config, str(workdir))
  assert not workdir.exists()


def test_every_bad_value_is_named_at_once_and_good_configs_pass():
  config = hnhp.get_config("hn_frac=2.0,total_steps=0")
  with pytest.raises(ValueError, match="total_steps=0 .*; data.hn_frac=2.0 "):
    run_config.check_values(config, num_devices=8, process_count=1)
  for arg in ("", "hn_frac=0.0,hp_frac=1.0,batch_size=16", "source=/d/a.array_record"):
    run_config.check_values(hnhp.get_config(arg), num_devices=8, process_count=1)
  with pytest.raises(ValueError, match="batch_size=4 must be a multiple of the 8 hosts"):
    run_config.check_values(hnhp.get_config("batch_size=4,mesh.num_devices=4"), 8, 8)
  config = hnhp.get_config()
  config.data.crop_scale = (0.9, 0.5)
  with pytest.raises(ValueError, match=r"data.crop_scale=\[0.9, 0.5\] must be \(low, high\)"):
    run_config.check_values(config, num_devices=8, process_count=1)


def test_config_argument_errors_name_the_field():
  with pytest.raises(KeyError, match=r"no field 'data.nope': 'data' has \['allow_paths_outside_root', 'crop_scale'"):
    hnhp.get_config("data.nope=1")
  with pytest.raises(KeyError, match="no field 'dat.hn_frac': the config has"):
    hnhp.get_config("dat.hn_frac=1")
  with pytest.raises(ValueError, match="config field 'batch_size': 'abc' is not of type int"):
    hnhp.get_config("batch_size=abc")
  assert config_fields.field_error(hnhp.get_config(), "data.synthetic.seed") is None
  assert "group of fields" in config_fields.field_error(hnhp.get_config(), "data.synthetic")


def test_several_array_record_files_in_the_config_argument(tmp_path):
  """'+' separates files inside the comma-separated config argument; the trainer reads all."""
  paths = []
  for part in ("a", "b"):
    records = []
    for i in range(3):
      image = tmp_path / f"{part}{i}.png"
      Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(image)
      records.append({"image": str(image), "caption": f"{part} {i}", "hard_negatives": [],
                      "hard_positives": []})
    paths.append(str(tmp_path / f"{part}.array_record"))
    train_builders.write_array_record(records, paths[-1])
  config = hnhp.get_config(f"source={'+'.join(paths)},hn_frac=0.5,data.val_size=2")
  assert config.data.source == "+".join(paths) and config.data.hn_frac == 0.5
  source, val, _, _ = trainer._training_data(config, None)
  assert len(source) == 4 and [r["caption"] for r in val] == ["b 1", "b 2"]


def _same_run(config, workdir, has_checkpoints=True):
  run_config.check_same_run(config, str(workdir), has_checkpoints=has_checkpoints)


def test_a_resume_that_changes_the_run_stops_naming_the_fields(tmp_path, caplog):
  _same_run(hnhp.get_config(), tmp_path, has_checkpoints=False)
  saved = json.loads((tmp_path / run_config.FILE).read_text())
  assert saved["batch_size"] == 64 and saved["hosts"] == 1 and saved["data.hn_frac"] == 1.0
  _same_run(hnhp.get_config(), tmp_path)  # the same run resumes
  changed = hnhp.get_config("batch_size=32,hn_frac=0.5,data.synthetic.num_train=100")
  with pytest.raises(ValueError, match=r"run_config.json: .*other values of batch_size \(64 -> 32\)"
                     r", data.hn_frac \(1.0 -> 0.5\), data.synthetic.num_train \(10000 -> 100\);"
                     r".*resume_overrides=batch_size\+data.hn_frac\+data.synthetic.num_train"):
    _same_run(changed, tmp_path)
  assert json.loads((tmp_path / run_config.FILE).read_text()) == saved  # kept as it was
  for arg in ("model='ViT-B-32'", "seed=1", "source=/d/x.jsonl"):
    with pytest.raises(ValueError, match="other values of"):
      _same_run(hnhp.get_config(arg), tmp_path)
  # Fields that do not change what a checkpoint means resume with a warning.
  with caplog.at_level(logging.WARNING):
    _same_run(hnhp.get_config("total_steps=600,lr=1e-4,data.worker_count=2"), tmp_path)
  assert "resuming with changed fields: data.worker_count 0 -> 2" in caplog.text


def test_an_explicit_override_allows_the_named_changes_only(tmp_path):
  _same_run(hnhp.get_config(), tmp_path, has_checkpoints=False)
  with pytest.raises(ValueError, match=r"data.hn_frac \(1.0 -> 0.5\)") as error:
    _same_run(hnhp.get_config("batch_size=32,hn_frac=0.5,resume_overrides='batch_size'"),
              tmp_path)
  assert "batch_size (" not in str(error.value)
  _same_run(hnhp.get_config("batch_size=32,hn_frac=0.5,resume_overrides='batch_size+data'"),
            tmp_path)
  assert json.loads((tmp_path / run_config.FILE).read_text())["batch_size"] == 32
  _same_run(hnhp.get_config("batch_size=32,hn_frac=0.5"), tmp_path)  # now the run's values
  with pytest.raises(ValueError, match=r"resume_overrides: \['batchsize'\] name no config field"):
    _same_run(hnhp.get_config("resume_overrides='batchsize'"), tmp_path)
  # The synthetic world may be written anew only when an override touches its parameters.
  for overrides, rebuild in (("data", True), ("data.synthetic.seed", True), ("batch_size", False),
                             ("data.hn_frac", False), ("", False)):
    config = hnhp.get_config(f"resume_overrides={overrides!r}")
    assert run_config.allowed(config, "data.synthetic") == rebuild, overrides


def test_another_host_count_stops_unless_allowed(tmp_path):
  _same_run(hnhp.get_config(), tmp_path, has_checkpoints=False)
  path = tmp_path / run_config.FILE
  path.write_text(json.dumps({**json.loads(path.read_text()), "hosts": 2}))
  with pytest.raises(ValueError, match=r"hosts \(2 -> 1\)"):
    _same_run(hnhp.get_config(), tmp_path)
  _same_run(hnhp.get_config("resume_overrides='hosts'"), tmp_path)


def test_without_checkpoints_a_changed_config_simply_starts_the_run(tmp_path):
  _same_run(hnhp.get_config(), tmp_path, has_checkpoints=False)
  _same_run(hnhp.get_config("batch_size=32"), tmp_path, has_checkpoints=False)
  assert json.loads((tmp_path / run_config.FILE).read_text())["batch_size"] == 32


def test_the_synthetic_world_is_never_rebuilt_under_a_runs_checkpoints(tmp_path):
  """A resume with other world parameters stops before the world is touched; with the same
  parameters, a missing or changed world stops instead of being written anew."""
  args = "data.synthetic.num_train=8,data.synthetic.num_eval=2"
  _same_run(hnhp.get_config(args), tmp_path, has_checkpoints=False)
  os.makedirs(tmp_path / "checkpoints" / "2")  # a run's checkpoint (its contents do not matter)
  with pytest.raises(ValueError, match=r"data.synthetic.num_train \(8 -> 400\)"):
    trainer.run(hnhp.get_config("data.synthetic.num_train=400,data.synthetic.num_eval=2"),
                str(tmp_path))
  world = tmp_path / "world"
  assert not world.exists()
  with pytest.raises(ValueError, match="world holds no synthetic world; not rebuilt .*"
                     "resume_overrides=data.synthetic"):
    trainer.run(hnhp.get_config(args), str(tmp_path))
  assert not world.exists()
  synthetic.write_world(str(world), **hnhp.get_config(args).data.synthetic)
  with open(world / "train.jsonl", "a") as f:
    f.write("\n")
  changed = (world / "train.jsonl").read_text()
  with pytest.raises(ValueError, match="world has files changed since the world was written"):
    trainer.run(hnhp.get_config(args), str(tmp_path))
  assert (world / "train.jsonl").read_text() == changed


def test_each_field_of_the_same_run_check_alone_stops_a_resume_and_the_others_do_not(tmp_path):
  """One field at a time, over every field of the config: a check that compared only some of
  its fields (or matched prefixes wrongly) lets one through."""
  from helpers import other_value, with_field  # pylint: disable=g-import-not-at-top
  config = hnhp.get_config()
  _same_run(config, tmp_path, has_checkpoints=False)
  saved = (tmp_path / run_config.FILE).read_text()
  guarded = free = 0
  for field, value in run_config.flatten(config).items():
    changed = other_value(config_fields.get(config, field))
    if changed is None or field.startswith(run_config._PER_LAUNCH):
      continue
    config_changed = with_field(config, field, changed)
    if run_config._matches(field, run_config.SAME_RUN) and not run_config._matches(
        field, run_config.FREE):
      guarded += 1
      with pytest.raises(ValueError, match=rf"other values of {re.escape(field)} \("):
        _same_run(config_changed, tmp_path)
    else:
      free += 1
      _same_run(config_changed, tmp_path)
    (tmp_path / run_config.FILE).write_text(saved)
  assert guarded > 20 and free > 20  # (both kinds reached; not a count to keep in step)
