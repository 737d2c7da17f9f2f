"""The training program on a small fixture: loss goes down, logs, checkpoints, NaN stop, configs."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import coco_control, hn, hnhp, hp
from helpers import (COMPILATION_CACHE, REPO, assert_same_tree, final_params, nan_backward,
                     traced_operations, train_args)
from hpjax import factory, sharding
from hpjax.data import synthetic
from hpjax.evaluate import runner
from hpjax.train import optim, summary, trainer
from hpjax.train import step as step_lib

TRAINED = {"total_steps": 12, "log_every_steps": 2, "checkpoint.every_steps": 4,
           "eval.every_steps": 12}


@pytest.fixture(scope="module")
def trained(train_source, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  metrics = trainer.run(hnhp.get_config(train_args(train_source, **TRAINED)), workdir)
  return workdir, metrics


def test_loss_goes_down_and_everything_is_logged(trained):
  workdir, metrics = trained
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [l["loss"] for l in lines if "loss" in l]
  assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
  assert {"examples_per_second", "learning_rate", "grad_norm", "loss/image_to_text",
          "loss/text_to_image"} <= set(lines[-2])
  assert "retrieval/mean_recall@1" in metrics and metrics == {
      k: v for k, v in lines[-1].items() if k != "step"}
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "4", "8"]


def test_a_finished_run_resumes_as_finished(trained, train_source):
  """Rerunning the finished command restores step 12 and trains no further."""
  workdir, _ = trained
  log = os.path.join(workdir, "metrics.jsonl")
  before = open(log).read(), sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  step, params = final_params(workdir)
  assert step == TRAINED["total_steps"]
  trainer.run(hnhp.get_config(train_args(train_source, **TRAINED)), workdir)
  assert (open(log).read(), sorted(os.listdir(os.path.join(workdir, "checkpoints")))) == before
  again_step, again = final_params(workdir)
  assert again_step == step
  assert_same_tree(again, params)


@pytest.mark.slow
def test_non_finite_loss_gradient_or_update_stops_without_a_poisoned_checkpoint(
    train_source, tmp_path, monkeypatch):
  """Each way a step goes non-finite, from step 5 of a run saved at step 4: the run stops with
  the step named and the step-4 checkpoint stays the latest. Logging only at the last step
  leaves the checks to the trainer's one-step-late check and its check before each save."""
  workdir = str(tmp_path)
  trainer.run(hnhp.get_config(train_args(train_source, total_steps=4)), workdir)
  put_batch, loss_fn = sharding.put_batch, step_lib.loss_fn
  poisons = {
      "loss": lambda: monkeypatch.setattr(sharding, "put_batch", lambda batch, mesh: put_batch(
          {**batch, "image": np.full_like(batch["image"], np.nan)}, mesh)),
      "gradient": lambda: monkeypatch.setattr(step_lib, "loss_fn", lambda params, *args: loss_fn(
          jax.tree.map(nan_backward, params), *args)),
      "update": lambda: None,
  }
  for what, poison in poisons.items():
    poison()
    config = hnhp.get_config(train_args(train_source, total_steps=8, log_every_steps=100))
    if what == "update":
      config.optim.lr = float("inf")
    with pytest.raises(trainer.NonFiniteLossError, match="step 5: .*not finite") as error:
      trainer.run(config, workdir)
    loss = float(re.search(r"the loss \((\S+)\)", str(error.value)).group(1))
    assert np.isfinite(loss) == (what != "loss"), (what, error.value)
    monkeypatch.undo()
    step, params = final_params(workdir)
    assert step == 4, what
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_weight_decay_mask_follows_openclip():
  _, params = factory.create_model("hpjax-tiny")
  mask = optim.decay_mask(params)
  assert mask["visual"]["transformer"]["resblocks_0"]["attn"]["in_proj"]["kernel"]
  assert mask["token_embedding"]["embedding"] and mask["text_projection"]
  assert not mask["logit_scale"] and not mask["ln_final"]["scale"]
  assert not mask["visual"]["transformer"]["resblocks_0"]["mlp"]["c_fc"]["bias"]
  assert not mask["visual"]["class_embedding"]


def test_schedule_warms_up_then_decays():
  config = hnhp.get_config("lr=0.1,optim.warmup_steps=30").optim
  schedule = optim.learning_rate_schedule(config, total_steps=100)
  values = [float(schedule(s)) for s in (0, 15, 30, 65, 100)]
  assert values[0] == 0 and values[1] == pytest.approx(0.05) and values[2] == pytest.approx(0.1)
  assert values[2] > values[3] > values[4] and values[4] == pytest.approx(0.0, abs=1e-9)


def test_recipe_configs():
  assert (hnhp.get_config().data.hn_frac, hnhp.get_config().data.hp_frac) == (1.0, 1.0)
  assert hn.get_config().data.num_hard_positives == 0
  assert hp.get_config().data.num_hard_negatives == 0
  control = coco_control.get_config()
  assert control.data.num_hard_negatives == control.data.num_hard_positives == 0
  assert hnhp.get_config("hn_frac=0.25").data.hn_frac == 0.25
  assert hnhp.get_config().data.source == "synthetic"
  assert hnhp.get_config().model.name == "hpjax-tiny"
  paper = hnhp.get_config("source=/data/coco.array_record,lr=2e-6")
  assert paper.model.name == "ViT-B-32-quickgelu" and paper.batch_size == 256
  assert paper.optim.lr == 2e-6 and paper.optim.warmup_steps == 50
  with pytest.raises(KeyError, match="no field 'nope'"):
    hnhp.get_config("nope=1")


@pytest.mark.slow
def test_main_runs_a_config_file(train_source, tmp_path):
  """The documented command line, with a --config.x=y override."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  result = subprocess.run(
      [sys.executable, "-m", "hpjax.main",
       f"--config=configs/hn.py:{train_args(train_source, total_steps=2)}",
       "--config.log_every_steps=1", f"--workdir={tmp_path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 2/2" in result.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


@pytest.mark.slow
def test_synthetic_world_run_moves_replace_swap_metrics_and_keeps_the_best(tmp_path):
  """The default data path end to end on a small world: REPLACE/SWAP evaluation, keep-best,
  reports and the OpenCLIP export; hard positives + negatives raise augmented accuracy (on the
  world of edits, whose synonym positives teach REPLACE's c_p words within 60 steps; the rule
  route's effect is measured by tools/run_variants.py, not asserted here)."""
  config = hnhp.get_config(
      "total_steps=60,batch_size=32,log_every_steps=20,eval.every_steps=30,pretrain.steps=0,"
      "checkpoint.every_steps=30,checkpoint.best_metric='replace/augmented',"
      "data.val_size=32,data.synthetic.num_train=400,data.synthetic.num_eval=40,"
      "data.synthetic.hard_texts='edits',"
      f"compilation_cache_dir={COMPILATION_CACHE!r},export_openclip={str(tmp_path / 'openclip.pt')!r}")
  metrics = trainer.run(config, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  evals = {l["step"]: l for l in lines if "replace/augmented" in l}
  assert sorted(evals) == [0, 30, 60]
  assert evals[60]["replace/augmented"] > evals[0]["replace/augmented"]
  assert metrics["replace/augmented"] == evals[60]["replace/augmented"]
  best = max((30, 60), key=lambda s: evals[s]["replace/augmented"])
  assert os.listdir(tmp_path / "best") == [str(best)]
  # The reports and the export are the kept model's: the best step's, as the paper keeps.
  with open(tmp_path / "reports" / "results.json") as f:
    (reported,) = json.load(f)["models"]
  kept = os.path.join("best", str(best)) if best != 60 else os.path.join("checkpoints", "60")
  assert reported["checkpoint"].endswith(kept), reported["checkpoint"]
  for key in ("replace/augmented", "swap/original"):
    assert reported["metrics"][key] == pytest.approx(evals[best][key], abs=1e-9), key
  import torch  # pylint: disable=g-import-not-at-top (test-only dependency)
  exported = torch.load(tmp_path / "openclip.pt", weights_only=True)
  step, params = final_params(str(tmp_path), "best")
  assert step == best
  np.testing.assert_allclose(exported["logit_scale"].numpy(), params["logit_scale"], rtol=1e-6)


def test_param_sharding_splits_large_matrices_over_the_model_axis():
  mesh = sharding.make_mesh(model_parallel=2)
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  shapes = {"big": jax.ShapeDtypeStruct((49408, 64), jnp.float32),
            "odd": jax.ShapeDtypeStruct((4097, 129), jnp.float32),
            "small": jax.ShapeDtypeStruct((64, 64), jnp.float32),
            "vector": jax.ShapeDtypeStruct((1 << 20,), jnp.float32)}
  specs = {k: tuple(v.spec) for k, v in sharding.param_sharding(mesh, shapes).items()}
  assert specs == {"big": ("model", None), "odd": (), "small": (), "vector": ()}


@pytest.mark.slow
def test_model_parallel_and_remat_train_like_data_parallel(train_source, tmp_path, monkeypatch):
  """Same losses with the token embedding split over the `model` axis, or with remat; the spy
  on the trainer's jitted step shows each flag took effect (else each run is the baseline)."""
  jit_train_step = step_lib.jit_train_step
  seen = {}

  def spy(model, tx, schedule, state_shardings, *args, **kwargs):
    step = jit_train_step(model, tx, schedule, state_shardings, *args, **kwargs)

    def run(state, batch):
      seen.setdefault("embedding", state.params["token_embedding"]["embedding"].sharding)
      seen.setdefault("model", model)
      return step(state, batch)
    return run

  monkeypatch.setattr(step_lib, "jit_train_step", spy)

  def losses(extra):
    seen.clear()
    workdir = tmp_path / extra.replace("=", "_")
    trainer.run(hnhp.get_config(train_args(train_source, total_steps=3) + "," + extra),
                str(workdir))
    embedding = seen["embedding"]
    images = np.zeros((1, 64, 64, 3), np.float32)
    names = {name for name, _ in traced_operations(
        lambda p: seen["model"].apply({"params": p}, images, method="encode_image"),
        final_params(workdir)[1])}
    mechanisms = {"model_parallel": dict(embedding.mesh.shape).get("model", 1) == 2
                                    and embedding.spec[0] == "model",
                  "remat": any(n.startswith(("remat", "checkpoint")) for n in names)}
    return [json.loads(l)["loss"] for l in open(workdir / "metrics.jsonl") if "loss" in l], mechanisms

  baseline, mechanisms = losses("mesh.model_parallel=1")
  assert mechanisms == {"model_parallel": False, "remat": False}
  split, mechanisms = losses("mesh.model_parallel=2")
  assert mechanisms == {"model_parallel": True, "remat": False}
  np.testing.assert_allclose(split, baseline, rtol=1e-5)
  rematerialised, mechanisms = losses("model.remat=True")
  assert mechanisms == {"model_parallel": False, "remat": True}
  np.testing.assert_allclose(rematerialised, baseline, rtol=1e-5)


def test_the_evaluation_line_shows_the_headline_figures_only():
  """The log line names the paper's Table 1 figures and R@1; metrics.jsonl keeps all ~30."""
  metrics = {f"{suite}/{name}": 50.0 + i for i, (suite, name) in enumerate(
      (s, n) for s in ("replace", "replace_attributes", "replace_relations", "swap")
      for n in ("original", "augmented", "brittleness", "hard_positive", "n"))}
  metrics.update({f"swap/count/{c}": 3.0 for c in ("ties", "cn_above_c_and_cp")})
  metrics.update({"retrieval/mean_recall@1": 12.345, "retrieval/image_to_text_recall@5": 40.0})
  assert trainer._headline(metrics) == (
      "REPLACE original 50.0, augmented 51.0, brittleness 52.0 | "
      "SWAP original 65.0, augmented 66.0, brittleness 67.0 | retrieval R@1 12.3")
  assert trainer._headline({"retrieval/mean_recall@1": 1.0}) == "retrieval R@1 1.0"


WORLD_COLUMNS = ("world_objects/top1", "world_5cap/image_to_text_R@1",
                 "world_5cap/text_to_image_R@1")


def _table_rows(path) -> dict[str, dict[str, str]]:
  """spectrum.md's rows: label -> column -> cell."""
  header, _, *rows = open(path).read().split("\n\n")[0].splitlines()
  columns = [c.strip() for c in header.strip("|").split("|")][1:]
  out = {}
  for row in rows:
    label, *cells = [c.strip() for c in row.strip("|").split("|")]
    out[label] = dict(zip(columns, cells))
  return out


@pytest.mark.slow
def test_the_world_run_ends_with_the_pretrained_and_finetuned_rows_of_its_metrics_log(
    tmp_path, caplog):
  """Zero-shot and retrieval on the world's probes at step 0 (the pretrained model) and at every
  evaluation; spectrum.md holds exactly the logged figures of step 0 and of the kept step, with
  the differences; a resumed run reads its pretrained row back instead of evaluating again."""
  args = lambda steps: train_args("synthetic", **{
      "total_steps": steps, "eval.every_steps": 2, "eval.hard_positive": True,
      "checkpoint.best_metric": "world_5cap/mean_R@1", "data.synthetic.num_train": 40,
      "data.synthetic.num_eval": 8, "data.synthetic.num_probe": 24,
      "data.synthetic.num_retrieval": 4, "pretrain.steps": 2, "pretrain.batch_size": 8})
  caplog.set_level("INFO")
  trainer.run(hnhp.get_config(args(4)), str(tmp_path))
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  evals = {r["step"]: r for r in logged if "world_objects/top1" in r}
  assert sorted(evals) == [0, 2, 4]
  assert all(set(WORLD_COLUMNS) <= set(r) and r["world_objects/n"] == 24 for r in evals.values())
  # The pretraining stage does not evaluate the probes (the finetune's step 0 does).
  (stage_log,) = tmp_path.glob("pretrain/*/**/metrics.jsonl")
  assert not [line for line in open(stage_log) if "world_objects" in line]

  def check_table(kept):
    rows = _table_rows(tmp_path / "reports" / "spectrum.md")
    assert set(rows) == {"pretrained (baseline)", "finetuned"}
    before, after = evals[0], evals[kept]
    compositional = runner.compositional_headlines(after)
    assert compositional and all(k.startswith(("replace", "swap")) for k in compositional)
    columns = [*compositional, "compositional", *WORLD_COLUMNS]
    assert list(rows["finetuned"]) == columns
    for figures in (before, after):
      figures["compositional"] = np.mean([figures[k] for k in compositional])
    for k in columns:
      assert rows["pretrained (baseline)"][k] == f"{before[k]:.1f}", k
      assert rows["finetuned"][k] == f"{after[k]:.1f} ({after[k] - before[k]:+.1f})", k
    return rows["pretrained (baseline)"]

  (kept,) = map(int, os.listdir(tmp_path / "best"))
  pretrained_row = check_table(kept)
  # The run's last lines (hpjax's own, as the front door shows them): the table, plot, reports.
  *_, table, plot, reports = [r.getMessage() for r in caplog.records
                              if r.pathname.startswith(os.path.dirname(trainer.__file__))]
  assert open(tmp_path / "reports" / "spectrum.md").read() in table
  assert plot == f"trade-off plot: {tmp_path / 'reports' / 'tradeoff.png'}"
  assert reports.startswith("reports: ") and str(tmp_path / "reports" / "spectrum.md") in reports

  # Resumed from step 4 to 6: no second step-0 evaluation, the same pretrained row.
  caplog.clear()
  trainer.run(hnhp.get_config(args(6)), str(tmp_path))
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  evals = {r["step"]: r for r in logged if "world_objects/top1" in r}
  assert sorted(evals) == [0, 2, 4, 6]
  assert sum(r["step"] == 0 for r in logged) == 1
  (kept,) = map(int, os.listdir(tmp_path / "best"))
  assert check_table(kept) == pretrained_row


def test_a_users_zeroshot_and_retrieval_sets_are_kept_and_the_world_fills_only_empty_ones():
  world = synthetic.WorldPaths("/w/train.jsonl", "/w/eval", "/w")
  config = hnhp.get_config("eval.zeroshot.images=/mine/classes,eval.zeroshot.name=mine")
  fields = trainer.with_world_probes(config, world)
  assert (fields.zeroshot.images, fields.zeroshot.name, fields.zeroshot.classes) == (
      "/mine/classes", "mine", "imagenet1k")
  assert (fields.retrieval.annotations, fields.retrieval.image_root, fields.retrieval.name) == (
      world.retrieval_annotations, "/w", trainer.WORLD_RETRIEVAL)
  assert config.eval.retrieval.annotations == ""  # the run's config itself is left as given
  both = trainer.with_world_probes(hnhp.get_config(), world)
  assert (both.zeroshot.images, both.zeroshot.classes, both.zeroshot.name) == (
      world.zeroshot_images, world.zeroshot_classes, trainer.WORLD_ZEROSHOT)
  off = trainer.with_world_probes(hnhp.get_config("eval.world_probes=False"), world)
  assert not off.zeroshot.images and not off.retrieval.annotations
  other_data = trainer.with_world_probes(hnhp.get_config(), None)  # data.source is not the world
  assert not other_data.zeroshot.images and not other_data.retrieval.annotations


def test_the_closing_table_says_when_metrics_log_has_no_pretrained_row(tmp_path, caplog):
  """A run resumed in a workdir whose metrics.jsonl lost step 0: the table has the finetuned
  row alone, and the log says which row is missing and why."""
  figures = {"retrieval/mean_recall@1": 10.0, "toy/top1": 42.0, "swap/augmented": 30.0}
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 0, "loss": 3.0}) + "\n")  # a training row, not an evaluation
    f.write(json.dumps({"step": 8, **figures}) + "\n")
  caplog.set_level("INFO")
  table, written = summary.write_table(str(tmp_path), str(tmp_path / "reports"), "hpjax-tiny", 8)
  assert "metrics.jsonl holds no evaluation of step 0: the closing table has no 'pretrained' row" in caplog.text
  assert _table_rows(written["spectrum.md"]) == {"finetuned": {
      "swap/augmented": "30.0", "compositional": "30.0", "toy/top1": "42.0"}}
  assert table == open(written["spectrum.md"]).read()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 9, "loss"\n')  # torn by a crash
  assert summary.write_table(str(tmp_path), str(tmp_path / "reports"), "hpjax-tiny", 8) == ("", {})
  assert f"no closing table: {tmp_path / 'metrics.jsonl'}:3: not valid JSON" in caplog.text
