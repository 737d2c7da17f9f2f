"""The embedded default's pretraining stage (hpjax/train/pretrain.py): trained once, reused by
every variant (which all start from its byte-identical params), rebuilt when its config
changes, never left looking complete after a failure, and resumable in both stages.

One small study in this module: a pretraining run that crashes after its step-2 save and is
resumed, then two variants finetuned from it (trainer.run in this process, spied on).
"""

import importlib
import json
import os

import numpy as np
import pytest

from helpers import assert_same_tree, final_params, train_args
from hpjax import factory
from hpjax.data import synthetic
from hpjax.data import training as data_lib
from hpjax.train import checkpointing, pretrain, trainer

STEPS = 4
REAL_RUN = trainer.run


def _config(variant="hnhp", **overrides):
  args = train_args("synthetic", **{
      "pretrain.steps": STEPS, "pretrain.batch_size": 8, "pretrain.warmup_steps": 1,
      "data.synthetic.num_train": 40, "data.synthetic.num_eval": 8, "total_steps": STEPS,
      "eval.every_steps": 0, "eval.reports": False, "checkpoint.best_metric": "",
      **overrides})
  return importlib.import_module(f"configs.{variant}").get_config(args)


class _Spy:
  """Records the trainer runs the pretraining stage starts (the tests call REAL_RUN) and each
  run's starting params."""

  def __init__(self, monkeypatch):
    self.stage_runs, self.start_params, self.sources = [], [], []
    real_create = factory.create_model
    real_open = data_lib.open_source

    def open_source(paths, *args, **kwargs):
      self.sources.append([os.path.basename(p) for p in paths])
      return real_open(paths, *args, **kwargs)

    def run(config, workdir):
      self.stage_runs.append(workdir)
      return REAL_RUN(config, workdir)

    def create_model(*args, **kwargs):
      model, params = real_create(*args, **kwargs)
      self.start_params.append((kwargs.get("pretrained"), _numpy(params)))
      return model, params

    monkeypatch.setattr(trainer, "run", run)
    monkeypatch.setattr(data_lib, "open_source", open_source)
    monkeypatch.setattr(factory, "create_model", create_model)


def _numpy(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _crash_after_saving(monkeypatch, at_step):
  real = checkpointing.Checkpointer.maybe_save

  def maybe_save(self, step, *args, **kwargs):
    saved = real(self, step, *args, **kwargs)
    if step == at_step:
      raise RuntimeError(f"injected crash after the step-{at_step} save")
    return saved

  monkeypatch.setattr(checkpointing.Checkpointer, "maybe_save", maybe_save)


def _trained_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [row["step"] for row in map(json.loads, f) if "loss" in row]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  root = tmp_path_factory.mktemp("study")
  cache = str(root / "cache")
  out = {"cache": cache}
  with pytest.MonkeyPatch.context() as mp:
    spy = _Spy(mp)
    with pytest.MonkeyPatch.context() as crash:
      _crash_after_saving(crash, 2)
      with pytest.raises(RuntimeError, match="injected crash"):
        REAL_RUN(_config(**{"pretrain.cache_dir": cache}), str(root / "hnhp"))
    (stage,) = os.listdir(cache)
    stage = os.path.join(cache, stage)
    out["after_crash"] = (sorted(os.listdir(stage)), pretrain.complete(stage))
    REAL_RUN(_config(**{"pretrain.cache_dir": cache}), str(root / "hnhp"))
    out["params_mtime"] = os.stat(os.path.join(stage, pretrain.PARAMS)).st_mtime_ns
    REAL_RUN(_config("coco_control", **{"pretrain.cache_dir": cache}), str(root / "control"))
    out.update(stage=stage, root=root, stage_runs=list(spy.stage_runs),
               start_params=list(spy.start_params), sources=list(spy.sources))
  return out


def test_a_crashed_pretraining_leaves_nothing_that_looks_complete_and_resumes(study):
  files, complete = study["after_crash"]
  assert not complete
  assert pretrain.PARAMS not in files and pretrain.MANIFEST not in files, files
  assert pretrain.complete(study["stage"])
  run_dir = os.path.join(study["stage"], "run")
  # Resumed from its step-2 checkpoint: steps 1-4 trained once each, not 1, 2, 1, 2, 3, 4.
  assert _trained_steps(run_dir) == [1, 2, 3, 4]
  assert study["stage_runs"] == [run_dir, run_dir]


def test_pretraining_reads_the_web_corpus_and_finetuning_the_coco_style_one(study):
  # The hnhp run opens its finetuning data, then its stage the web corpus (crashed); the same on
  # the resume; then coco_control opens its finetuning data and reuses the stage.
  assert study["sources"] == [["train.jsonl"], ["pretrain.jsonl"]] * 2 + [["train.jsonl"]]


def test_the_second_variant_reuses_the_pretrained_model(study):
  assert len(study["stage_runs"]) == 2  # the crashed run and its resume; none for coco_control
  params = os.path.join(study["stage"], pretrain.PARAMS)
  assert os.stat(params).st_mtime_ns == study["params_mtime"]
  assert [p for p, _ in study["start_params"][2:]] == [params, params]


def test_every_variant_starts_from_the_pretrained_params_byte_for_byte(study):
  # create_model calls: stage (random init) twice, then the hnhp and control finetunes.
  (_, init), (_, init_again), (hnhp_from, hnhp), (control_from, control) = study["start_params"]
  params_file = os.path.join(study["stage"], pretrain.PARAMS)
  assert hnhp_from == control_from == params_file
  assert_same_tree(hnhp, control)
  _, pretrained = final_params(os.path.join(study["stage"], "run"))
  assert_same_tree(hnhp, pretrained)  # the pretrained model's last step, not a random init
  assert not np.array_equal(hnhp["logit_scale"], init["logit_scale"])
  assert_same_tree(init, init_again)


def test_a_changed_pretraining_config_is_another_stage_trained_anew(study, monkeypatch):
  config = _config(**{"pretrain.cache_dir": study["cache"], "pretrain.lr": 5e-4})
  world = synthetic.write_world(os.path.join(study["root"], "hnhp", "world"),
                                **config.data.synthetic)  # (the first run's, reused)
  directory = pretrain.stage_dir(config, str(study["root"]), world)
  assert directory != study["stage"]
  spy = _Spy(monkeypatch)
  params = trainer.ensure_pretrained(config, directory, world)
  assert spy.stage_runs == [os.path.join(directory, "run")]
  assert pretrain.complete(directory) and pretrain.complete(study["stage"])
  with open(params, "rb") as new, open(os.path.join(study["stage"], pretrain.PARAMS), "rb") as old:
    assert new.read() != old.read()


def test_the_key_follows_what_shapes_the_params_only():
  config = _config()
  same = _config(**{"checkpoint.every_steps": 1, "log_every_steps": 3, "eval.every_steps": 2,
                    "total_steps": 9, "lr": 1e-5, "pretrain.cache_dir": "/elsewhere"})
  assert pretrain.key(config, "w") == pretrain.key(same, "w")
  assert pretrain.key(config, "w") == pretrain.key(_config("coco_control"), "w")
  for changed in ({"pretrain.seed": 1}, {"pretrain.steps": 5}, {"pretrain.lr": 1e-2},
                  {"data.synthetic.num_train": 41}, {"model.dtype": "bfloat16"}):
    assert pretrain.key(_config(**changed), "w") != pretrain.key(config, "w"), changed
  assert pretrain.key(config, "w") != pretrain.key(config, "another world")


def test_an_interrupted_finetune_resumes_from_its_checkpoint_not_the_pretrain(study, monkeypatch):
  workdir = str(study["root"] / "hnhp_interrupted")
  spy = _Spy(monkeypatch)
  with pytest.MonkeyPatch.context() as crash:
    _crash_after_saving(crash, 2)
    with pytest.raises(RuntimeError, match="injected crash"):
      REAL_RUN(_config(**{"pretrain.cache_dir": study["cache"]}), workdir)
  REAL_RUN(_config(**{"pretrain.cache_dir": study["cache"]}), workdir)
  assert spy.stage_runs == []
  assert _trained_steps(workdir) == [1, 2, 3, 4]
  assert_same_tree(final_params(workdir)[1], final_params(study["root"] / "hnhp")[1])


def test_pretraining_is_refused_with_a_dataset():
  from hpjax.train import run_config  # pylint: disable=g-import-not-at-top
  config = _config(**{"data.source": "/data/coco.jsonl", "pretrain.steps": 3})
  with pytest.raises(ValueError, match=r"pretrain.steps=3: the pretraining stage is the synthetic"):
    run_config.check_values(config, 8, 1)


def test_each_field_the_pretrained_params_depend_on_changes_the_key():
  """One field at a time over the whole config: a change that reaches the stage's config under
  KEY_FIELDS (or its schedule: steps, batch size, seed) is another stage; any other is not."""
  from helpers import other_value, with_field  # pylint: disable=g-import-not-at-top
  from hpjax.train import run_config  # pylint: disable=g-import-not-at-top
  config = _config()
  stage = run_config.flatten(pretrain.stage_config(config))
  schedule = ("pretrain.steps", "pretrain.batch_size", "pretrain.seed")
  keyed = unkeyed = 0
  for field, value in run_config.flatten(config).items():
    changed = other_value(value if not isinstance(value, list) else tuple(value))
    if changed is None:
      continue
    other = with_field(config, field, changed)
    other_stage = run_config.flatten(pretrain.stage_config(other))
    shapes_params = field in schedule or any(
        stage[k] != other_stage[k] for k in stage
        if any(k == f or k.startswith(f + ".") for f in pretrain.KEY_FIELDS))
    if shapes_params:
      keyed += 1
      assert pretrain.key(other, "w") != pretrain.key(config, "w"), field
    else:
      unkeyed += 1
      assert pretrain.key(other, "w") == pretrain.key(config, "w"), field
  assert keyed > 10 and unkeyed > 10
