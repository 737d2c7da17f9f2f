"""The training program on a small fixture: loss goes down, logs, checkpoints, NaN stop, configs."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs import coco_control, hn, hnhp, hp
from hpjax import factory, sharding
from hpjax.train import optim, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220),
           "yellow": (230, 220, 20)}


def write_fixture(folder, num=40, seed=0) -> str:
  """A tiny learnable world: one coloured block on the left or right of a grey image."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  names = list(COLOURS)
  lines = []
  for i in range(num):
    colour, other = rng.choice(names, 2, replace=False)
    side = ["left", "right"][i % 2]
    pixels = np.full((64, 64, 3), 128, np.uint8)
    pixels[16:48, (4 if side == "left" else 36):(28 if side == "left" else 60)] = COLOURS[colour]
    Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
    other_side = "right" if side == "left" else "left"
    lines.append(json.dumps({
        "image": f"{i}.png", "caption": f"a {colour} block on the {side}",
        "hard_negatives": [f"a {other} block on the {side}", f"a {colour} block on the {other_side}"],
        "hard_positives": [f"on the {side} there is a {colour} block"]}))
  path = os.path.join(folder, "train.jsonl")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "hpjax_test_compilation_cache")


def fixture_args(source, **overrides) -> str:
  """The config argument of a small, fast run on `source` (compiled programs cached on disk,
  so the runs after the first one skip most of the CPU's compile time)."""
  args = {"source": source, "compilation_cache_dir": CACHE, "model": "hpjax-tiny", "model.dtype": "float32", "batch_size": 8,
          "lr": 1e-3, "optim.warmup_steps": 2, "total_steps": 6, "log_every_steps": 1,
          "data.val_size": 8, "eval.every_steps": 0, "eval.hard_positive": False,
          "checkpoint.every_steps": 2, "checkpoint.best_metric": "",
          "checkpoint.async_save": False, **overrides}
  return ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in args.items())


def final_params(workdir):
  """(latest step, its params as numpy), whatever topology wrote them."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  return step, state["params"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  return write_fixture(str(tmp_path_factory.mktemp("fixture")))


@pytest.fixture(scope="module")
def trained(source, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = hnhp.get_config(fixture_args(source, **{
      "total_steps": 30, "log_every_steps": 5, "checkpoint.every_steps": 10,
      "eval.every_steps": 30}))
  metrics = trainer.run(config, workdir)
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
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30"]


def test_a_finished_run_resumes_as_finished(trained):
  workdir, _ = trained
  step, params = final_params(workdir)
  assert step == 30 and np.all(np.isfinite(params["logit_scale"]))


@pytest.mark.slow
def test_non_finite_update_stops_without_a_poisoned_checkpoint(source, tmp_path):
  workdir = str(tmp_path)
  trainer.run(hnhp.get_config(fixture_args(source, total_steps=4)), workdir)
  poisoned = hnhp.get_config(fixture_args(source, total_steps=8))
  poisoned.optim.lr = float("inf")
  with pytest.raises(trainer.NonFiniteLossError, match="step 5: .*not finite"):
    trainer.run(poisoned, workdir)
  step, params = final_params(workdir)
  assert step == 4
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
  config = hnhp.get_config("lr=0.1").optim
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
def test_main_runs_a_config_file(source, tmp_path):
  """The documented command line, with a --config.x=y override."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  result = subprocess.run(
      [sys.executable, "-m", "hpjax.main",
       f"--config=configs/hn.py:{fixture_args(source, total_steps=2)}",
       "--config.log_every_steps=1", f"--workdir={tmp_path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 2/2" in result.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


@pytest.mark.slow
def test_synthetic_world_run_moves_replace_swap_metrics_and_keeps_the_best(tmp_path):
  """The default data path end to end on a small world: REPLACE/SWAP evaluation, keep-best,
  reports and the OpenCLIP export; hard positives + negatives raise augmented accuracy."""
  config = hnhp.get_config(
      "total_steps=60,batch_size=32,log_every_steps=20,eval.every_steps=30,"
      "checkpoint.every_steps=30,checkpoint.best_metric='replace/augmented',"
      "data.val_size=32,data.synthetic.num_train=400,data.synthetic.num_eval=40,"
      f"compilation_cache_dir={CACHE!r},export_openclip={str(tmp_path / 'openclip.pt')!r}")
  metrics = trainer.run(config, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  evals = {l["step"]: l for l in lines if "replace/augmented" in l}
  assert sorted(evals) == [0, 30, 60]
  assert evals[60]["replace/augmented"] > evals[0]["replace/augmented"]
  assert metrics["replace/augmented"] == evals[60]["replace/augmented"]
  best = max((30, 60), key=lambda s: evals[s]["replace/augmented"])
  assert os.listdir(tmp_path / "best") == [str(best)]
  assert os.path.exists(tmp_path / "reports" / "results.json")
  import torch  # pylint: disable=g-import-not-at-top (test-only dependency)
  exported = torch.load(tmp_path / "openclip.pt", weights_only=True)
  np.testing.assert_allclose(exported["logit_scale"].numpy(),
                             final_params(str(tmp_path))[1]["logit_scale"], rtol=1e-6)


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
def test_model_parallel_and_remat_train_like_data_parallel(source, tmp_path):
  def losses(extra):
    workdir = tmp_path / extra.replace("=", "_")
    trainer.run(hnhp.get_config(fixture_args(source, total_steps=3) + "," + extra), str(workdir))
    return [json.loads(l)["loss"] for l in open(workdir / "metrics.jsonl") if "loss" in l]

  baseline = losses("mesh.model_parallel=1")
  np.testing.assert_allclose(losses("mesh.model_parallel=2"), baseline, rtol=1e-5)
  np.testing.assert_allclose(losses("model.remat=True"), baseline, rtol=1e-5)


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
