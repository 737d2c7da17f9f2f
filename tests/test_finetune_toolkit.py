"""The finetuning toolkit: tower locking and layer-wise learning-rate decay (one per-parameter
table), LoRA training with merged and TSVLC-layout exports, and the EMA of the weights."""

import functools
import os
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
import transformers

import hpjax
from configs import common, hnhp
from helpers import assert_same_tree, final_state, traced_operations, train_args
from hpjax import checkpoints
from hpjax.checkpoints import mapping
from hpjax.models.clip import CLIP, param_shapes
from hpjax.train import accumulation
from hpjax.train import ema as ema_lib
from hpjax.train import lora as lora_lib
from hpjax.train import optim, param_groups, pretrain, run_config, text_packing, trainer
from hpjax.train import step as step_lib
from openclip_reference import openclip_model, random_images, random_tokens

NAME = "hpjax-tiny"
EMA_DECAY, EMA_WARMUP = 0.9, 5


@pytest.fixture(scope="module")
def tiny():
  return hpjax.create_model(NAME, rng=jax.random.key(3))


def _flat(tree) -> dict[str, object]:
  return {"/".join(k.key for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _batch(seed=0, b=4):
  rng = np.random.default_rng(seed)
  tokens = lambda n: random_tokens(rng, n)
  return {"image": random_images(rng, b, 64).transpose(0, 2, 3, 1),
          "caption": tokens(b), "hard_positives": tokens(b)[:, None],
          "hard_positive_mask": np.array([True, False, True, True][:b])[:, None],
          "hard_negatives": tokens(b)[:, None], "hard_negative_mask": np.ones((b, 1), bool)}


def _optim_config(**kw):
  return ml_collections.ConfigDict({"lr": 1e-2, "warmup_steps": 0, "end_factor": 1.0, "b1": 0.9,
                                    "b2": 0.98, "eps": 1e-6, "weight_decay": 0.0,
                                    "grad_clip_norm": 0.0, **kw})


def _steps(model, state, tx, n, **kw):
  step = jax.jit(functools.partial(
      step_lib.train_step, model=model, tx=tx, schedule=optax.constant_schedule(1e-2),
      positives="multi", local_weight=0.0, **kw))
  states = [state]
  for i in range(n):
    state, metrics = step(state, _batch(i))
    assert bool(metrics["finite"])
    states.append(state)
  return states


# -- locking and layer decay ---------------------------------------------------------------------

# The hand-built table for hpjax-tiny (2 blocks a tower) with the image tower locked but its last
# 2 groups, the text tower locked but its projection, text LayerNorms left trainable, image decay
# 0.5 and text decay 0.8. Groups: [stem, block 0, block 1 + final norm, projection].
HAND_TABLE = (
    (r"logit_scale", 1.0),
    (r"visual/(conv1|class_embedding|positional_embedding|ln_pre).*", 0.0),
    (r"visual/transformer/resblocks_0/.*", 0.0),
    (r"visual/(transformer/resblocks_1/.*|ln_post/.*)", 0.5),
    (r"visual/proj", 1.0),
    (r"(token_embedding|positional_embedding).*", 0.0),
    (r"transformer/resblocks_0/ln_\d/.*", 0.8 ** 2),
    (r"transformer/resblocks_1/ln_\d/.*|ln_final/.*", 0.8),
    (r"transformer/.*", 0.0),
    (r"text_projection", 1.0),
)


def _hand_scale(path: str) -> float:
  return next(scale for pattern, scale in HAND_TABLE if re.fullmatch(pattern, path))


def test_per_parameter_learning_rates_equal_a_hand_built_table(tiny):
  model, params = tiny
  table = param_groups.build_table(
      params, lock_image=True, lock_image_unlocked_groups=2, lock_text=True,
      lock_text_unlocked_layers=1, lock_text_freeze_layer_norm=False, image_layer_decay=0.5,
      text_layer_decay=0.8)
  tx, _ = optim.make_optimizer(_optim_config(), 10, table)
  # Adam's first update of a unit gradient is -lr (up to eps): the update is each lr.
  ones = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(ones, tx.init(params), params)
  for path, update in _flat(updates).items():
    np.testing.assert_allclose(-np.asarray(update), 1e-2 * _hand_scale(path), rtol=1e-5,
                               err_msg=path)


def test_locked_parameters_match_openclip_lock(tiny):
  """requires_grad after OpenCLIP's lock_image_tower / lock_text_tower, key by key."""
  _, params = tiny
  for groups, layers in ((1, 0), (2, 1), (4, 3)):
    torch_model = openclip_model(NAME)
    torch_model.lock_image_tower(unlocked_groups=groups)
    torch_model.lock_text_tower(unlocked_layers=layers)
    want = {k: p.requires_grad for k, p in torch_model.named_parameters()}
    table = param_groups.build_table(params, lock_image=True, lock_image_unlocked_groups=groups,
                                     lock_text=True, lock_text_unlocked_layers=layers)
    got = {mapping.openclip_key(tuple(k.key for k in p), np.ndim(x))[0]: bool(t)
           for (p, x), t in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                jax.tree.leaves(table.trainable))}
    assert got == want, (groups, layers)


def _nbytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def locked_run(tiny):
  """(table, optimizer states, full finetuning's optimizer) of 3 steps with the image tower
  locked but its last group, the text tower locked, and an EMA (decay 0.9, warm-up 5)."""
  model, params = tiny
  table = param_groups.build_table(params, lock_image=True, lock_image_unlocked_groups=1,
                                   lock_text=True)
  tx, _ = optim.make_optimizer(_optim_config(weight_decay=0.2, grad_clip_norm=1.0), 10, table)
  full_tx, _ = optim.make_optimizer(_optim_config(weight_decay=0.2, grad_clip_norm=1.0), 10)
  states = _steps(model, step_lib.init_state(params, tx, ema=True), tx, 3, ema_decay=EMA_DECAY,
                  ema_warmup=EMA_WARMUP)
  return table, states, full_tx


def test_locked_parameters_do_not_change_and_hold_no_optimizer_state(tiny, locked_run):
  _, params = tiny
  table, states, full_tx = locked_run
  trainable = _flat(table.trainable)
  after = _flat(states[-1].params)
  for path, before in _flat(params).items():
    if trainable[path]:
      assert np.abs(np.asarray(after[path]) - np.asarray(before)).max() > 0, path
    else:
      np.testing.assert_array_equal(after[path], before, err_msg=path)
  trained_bytes = sum(x.nbytes for p, x in _flat(params).items() if trainable[p])
  # Adam's two moments, for the trained parameters only (+ two step counters).
  assert _nbytes(states[0].opt_state) - 8 == 2 * trained_bytes < _nbytes(full_tx.init(params)) / 5


# -- LoRA ----------------------------------------------------------------------------------------

RANK, ALPHA = 4, 2.0
TARGETS = {"image": list(lora_lib.TARGETS), "text": ["in_proj", "out_proj", "c_fc", "c_proj"]}


def _random_adapters(params, seed=0):
  """Adapters with B off zero too, so that they change the features."""
  adapters = lora_lib.init_adapters(params, lora_lib.plan(params, {"image": RANK, "text": RANK},
                                                          TARGETS), jax.random.key(seed))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape), jnp.float32), adapters)


def _features(model, params, images, tokens):
  with jax.default_matmul_precision("highest"):
    return jax.jit(model.apply)({"params": params}, images, tokens)[:2]


def test_lora_trains_only_the_adapters(tiny):
  model, params = tiny
  adapters = lora_lib.init_adapters(
      params, lora_lib.plan(params, {"image": RANK, "text": RANK}, TARGETS), jax.random.key(0))
  tx, _ = optim.make_optimizer(_optim_config(), 10)
  state = step_lib.init_state(params, tx, adapters)
  states = _steps(model, state, tx, 3, lora_alpha=ALPHA)
  assert_same_tree(states[-1].params, params)  # the base, bit-identical
  for path, before in _flat(adapters).items():
    assert np.abs(np.asarray(_flat(states[-1].adapters)[path]) - before).max() > 0, path
  # The optimizer holds the adapters' moments only: under a tenth of full finetuning's state.
  assert _nbytes(states[0].opt_state) - 8 == 2 * _nbytes(adapters)  # (+ two step counters)
  assert _nbytes(states[0].opt_state) < _nbytes(tx.init(params)) / 10


def test_merged_export_and_tsvlc_export_give_the_adapted_features(tiny, tmp_path):
  model, params = tiny
  adapters = _random_adapters(params)
  rng = np.random.default_rng(1)
  images, tokens = random_images(rng, 2, 64), random_tokens(rng, 2)
  want = _features(model, lora_lib.merge(params, adapters, ALPHA), images.transpose(0, 2, 3, 1),
                   tokens)
  base = _features(model, params, images.transpose(0, 2, 3, 1), tokens)
  assert np.abs(np.asarray(want[0]) - np.asarray(base[0])).max() > 1e-2  # the adapters matter
  # The merged OpenCLIP export, run by OpenCLIP itself.
  merged = hpjax.export_openclip(jax.device_get(lora_lib.merge(params, adapters, ALPHA)), NAME,
                                 tmp_path / "merged.safetensors")
  torch_model = openclip_model(NAME)
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in
                               checkpoints.read_state_dict(merged).items()})
  with torch.no_grad():
    got = torch_model(torch.from_numpy(images), torch.from_numpy(tokens).long())
  for g, w in zip(got[:2], want):
    np.testing.assert_allclose(g.numpy(), w, rtol=0, atol=1e-5)
  # TSVLC's layout, read back by the LoRA import.
  path = checkpoints.write_state_dict(lora_lib.tsvlc_state_dict(params, adapters, model.config),
                                      tmp_path / "tsvlc.safetensors")
  _, imported = hpjax.create_model(NAME, pretrained=path, lora_rank=RANK, lora_alpha=ALPHA)
  for g, w in zip(_features(model, imported, images.transpose(0, 2, 3, 1), tokens), want):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, per_block", [
    ("ViT-B-32", 4), ("coca_ViT-B-32", 4), ("hpjax-tiny-siglip", 4), ("roberta-ViT-B-32", 6)])
def test_lora_targets_place_adapters_in_every_tower_family(name, per_block):
  """Four targets per block (HF's query, key and value are three kernels), the patch embedding
  once, attention pools never."""
  shapes = param_shapes(CLIP(hpjax.get_model_config(name)))
  layers = lora_lib.plan(shapes, {"image": RANK, "text": RANK}, TARGETS)
  sizes = param_groups.tower_sizes(shapes)
  blocks = sum(1 for p in _flat(shapes) if re.search(r"(resblocks|blocks|layer)_\d+/", p)
               and p.endswith(("c_fc/kernel", "fc1/kernel", "intermediate/dense/kernel")))
  image_blocks = sum(1 for p in layers if p[0] == "visual" and p[-2] in ("c_fc", "fc1"))
  assert len(layers) == 4 * image_blocks + per_block * (blocks - image_blocks) + 1
  assert not [p for p in layers if "attn_pool" in p]
  assert image_blocks == sizes["image"] - 2 + (name == "hpjax-tiny-siglip")


def test_tsvlc_export_round_trips_for_a_timm_tower(tmp_path):
  name = "hpjax-tiny-siglip"
  model, params = hpjax.create_model(name, rng=jax.random.key(1))
  adapters = _random_adapters(params)
  state_dict = lora_lib.tsvlc_state_dict(params, adapters, model.config)
  assert "visual.trunk.blocks.0.attn.qkv.lora_A" in state_dict
  path = checkpoints.write_state_dict(state_dict, tmp_path / "tsvlc.safetensors")
  _, imported = hpjax.create_model(name, pretrained=path, lora_rank=RANK, lora_alpha=ALPHA)
  assert_same_tree(imported, jax.device_get(lora_lib.merge(params, adapters, ALPHA)), atol=1e-6)


def _dropout_step(model, tx, **kw):
  return jax.jit(functools.partial(
      step_lib.train_step, model=model, tx=tx, schedule=optax.constant_schedule(1e-2),
      positives="multi", local_weight=0.0, lora_alpha=ALPHA, lora_dropout=0.5, seed=1, **kw))


def test_lora_dropout_masks_follow_the_step_and_seed_and_leave_evaluation_merged(tiny):
  model, params = tiny
  tx, _ = optim.make_optimizer(_optim_config(), 10)
  state = step_lib.init_state(params, tx, _random_adapters(params))
  step = _dropout_step(model, tx)
  first, _ = step(state, _batch())
  assert_same_tree(step(state, _batch())[0].adapters, first.adapters)  # deterministic
  assert_same_tree(first.params, params)  # the base, bit-identical
  later, _ = step(state.replace(step=jnp.ones((), jnp.int32)), _batch())  # the next step's masks
  some = next(iter(_flat(first.adapters)))
  assert np.abs(_flat(later.adapters)[some] - _flat(first.adapters)[some]).max() > 1e-6
  # Without dropout the step runs the merged path, with no random numbers at all.
  random = lambda **kw: {op for op, _ in traced_operations(functools.partial(
      step_lib.train_step, model=model, tx=tx, schedule=optax.constant_schedule(1e-2),
      positives="multi", local_weight=0.0, **kw), state, _batch()) if "random" in op}
  assert not random(lora_dropout=0.0) and random(lora_dropout=0.5)
  # Evaluation sees the merged adapters: no dropout, the same features every time.
  images = random_images(np.random.default_rng(1), 2, 64).transpose(0, 2, 3, 1)
  tokens = random_tokens(np.random.default_rng(1), 2)
  weights = step_lib.model_params(first, ALPHA)
  assert_same_tree(weights, lora_lib.merge(params, first.adapters, ALPHA))
  for a, b in zip(_features(model, weights, images, tokens),
                  _features(model, weights, images, tokens)):
    np.testing.assert_array_equal(a, b)


def test_lora_dropout_masks_differ_per_device_shard():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  mask = jax.jit(lambda k: lora_lib.dropout_mask(k, ("visual", "conv1"), (8, 64), 0.5),
                 out_shardings=spec)(lora_lib.dropout_key(0, 3))
  shards = [np.asarray(s.data) for s in mask.addressable_shards]
  assert len(shards) == 2 and not np.array_equal(*shards)
  np.testing.assert_array_equal(np.concatenate(shards), lora_lib.dropout_mask(
      lora_lib.dropout_key(0, 3), ("visual", "conv1"), (8, 64), 0.5))  # one global draw


@pytest.mark.slow
def test_lora_dropout_accumulates_packed_micro_batches_with_one_mask_each(tiny):
  """accum_freq 2 over 2 data shards with packed texts: the step's gradient equals plain
  backpropagation through each micro-batch encoded unmerged with its own masks (the cached and
  the recomputed features saw the same masks)."""
  model, params = tiny
  adapters = _random_adapters(params)
  batch = text_packing.pack_batch(jax.tree.map(lambda *x: np.concatenate(x), _batch(0), _batch(1)),
                                  4, 77)
  (micro_batches, shards), key = (2, 2), lora_lib.dropout_key(1, 0)
  tx = optax.sgd(1.0)
  with jax.default_matmul_precision("highest"):
    after, _ = _dropout_step(model, tx, micro_batches=micro_batches, data_shards=shards)(
        step_lib.init_state(params, tx, adapters), batch)

    def loss(t):
      micro = accumulation.split(batch, micro_batches, shards)
      features = [step_lib.encode_batch(
          lora_lib.Unmerged(model, t, ALPHA, 0.5, jax.random.fold_in(key, j)), params,
          jax.tree.map(lambda x, j=j: x[j], micro)) for j in range(micro_batches)]
      merged = jax.tree.map(lambda *f: jnp.concatenate(f), *features)
      return step_lib.loss_of_features(params, merged, accumulation.merged(micro), "multi",
                                       0.0)[0]

    want = jax.jit(jax.grad(loss))(adapters)
  got = jax.tree.map(jnp.subtract, adapters, after.adapters)
  assert_same_tree(got, want, atol=1e-5)
  assert max(np.abs(x).max() for x in jax.tree.leaves(want)) > 1e-3


# -- EMA -----------------------------------------------------------------------------------------

def test_ema_follows_the_direct_recurrence(tiny, locked_run):
  _, params = tiny
  _, states, _ = locked_run
  want = {p: np.asarray(x, np.float64) for p, x in _flat(params).items()}
  for t, state in enumerate(states[1:], start=1):
    d = min(EMA_DECAY, (1 + t) / (EMA_WARMUP + t))
    new = _flat(state.params)
    want = {p: d * w + (1 - d) * np.asarray(new[p], np.float64) for p, w in want.items()}
    got = _flat(state.ema)
    for p, w in want.items():
      np.testing.assert_allclose(got[p], w, rtol=1e-5, atol=1e-6, err_msg=f"step {t} {p}")
  assert float(ema_lib.decay_at(1, EMA_DECAY, 0)) == pytest.approx(EMA_DECAY)


# -- the trainer: LoRA with an EMA, exported, resumed -------------------------------------------

def _lora_args(train_source, folder, exports=""):
  """The LoRA + EMA run's arguments; `exports` prefixes the export files' names (an export never
  replaces an existing file, so a rerun of the finished run names new ones)."""
  return train_args(train_source, **{
      "lora.image_rank": RANK, "lora.text_rank": RANK, "lora.alpha": ALPHA, "ema.decay": 0.8,
      "ema.warmup": 3, "checkpoint.keep": 3,
      "export_openclip": str(folder / f"{exports}merged.safetensors"),
      "export_hf": str(folder / f"{exports}hf"),
      "lora.export_adapters": str(folder / f"{exports}tsvlc.safetensors")})


@pytest.fixture(scope="module")
def lora_run(train_source, tmp_path_factory):
  folder = tmp_path_factory.mktemp("lora_run")
  trainer.run(hnhp.get_config(_lora_args(train_source, folder)), str(folder))
  return folder, final_state(folder)


@pytest.mark.slow
def test_trainer_lora_run_exports_the_ema_of_the_adapters(lora_run):
  folder, (step, state) = lora_run
  assert step == 6
  _, init = hpjax.create_model(NAME, rng=jax.random.key(0))  # the run's seed 0
  assert_same_tree(state["params"], jax.device_get(init))  # the base never moved
  assert not np.allclose(_flat(state["ema"])[next(iter(_flat(state["ema"])))],
                         _flat(state["adapters"])[next(iter(_flat(state["adapters"])))])
  want = lora_lib.merge(state["params"], state["ema"], ALPHA)
  _, merged = hpjax.create_model(NAME, pretrained=folder / "merged.safetensors")
  assert_same_tree(merged, jax.device_get(want), atol=1e-6)
  _, imported = hpjax.create_model(NAME, pretrained=folder / "tsvlc.safetensors",
                                   lora_rank=RANK, lora_alpha=ALPHA)
  assert_same_tree(imported, jax.device_get(want), atol=1e-6)
  # The HF folder: transformers' CLIPModel computes the kept model's features.
  hf_model = transformers.CLIPModel.from_pretrained(str(folder / "hf"), local_files_only=True)
  rng = np.random.default_rng(2)
  images, tokens = random_images(rng, 2, 64), random_tokens(rng, 2)
  image, text = _features(CLIP(hpjax.get_model_config(NAME)), want, images.transpose(0, 2, 3, 1),
                          tokens)
  with torch.no_grad():
    out = hf_model.eval()(input_ids=torch.from_numpy(tokens).long(),
                          pixel_values=torch.from_numpy(images))
  np.testing.assert_allclose(out.image_embeds.numpy(), image, rtol=0, atol=1e-4)
  np.testing.assert_allclose(out.text_embeds.numpy(), text, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_a_resumed_lora_ema_run_equals_the_uninterrupted_one(lora_run, train_source):
  folder, (_, uninterrupted) = lora_run
  for step in ("6", "4"):  # as if stopped after the save of step 2
    shutil.rmtree(folder / "checkpoints" / step)
  trainer.run(hnhp.get_config(_lora_args(train_source, folder, "resumed_")), str(folder))
  step, resumed = final_state(folder)
  assert step == 6
  for part in ("params", "adapters", "ema", "opt_state"):
    assert_same_tree(resumed[part], uninterrupted[part])


@pytest.mark.slow
def test_trainer_locked_run_trains_only_the_unlocked_groups(train_source, tmp_path):
  locking = {"locking.lock_image": True, "locking.lock_image_unlocked_groups": 1,
             "optim.text_layer_decay": 0.5}
  trainer.run(hnhp.get_config(train_args(train_source, total_steps=2, **locking)), str(tmp_path))
  _, state = final_state(tmp_path)
  _, init = hpjax.create_model(NAME, rng=jax.random.key(0))
  table = param_groups.build_table(init, lock_image=True, lock_image_unlocked_groups=1,
                                   text_layer_decay=0.5)
  after = _flat(state["params"])
  for path, before in _flat(jax.device_get(init)).items():
    if _flat(table.trainable)[path]:
      assert np.abs(after[path] - before).max() > 0, path
    else:
      np.testing.assert_array_equal(after[path], before, err_msg=path)


def test_the_pretraining_stage_is_shared_by_toolkit_variants():
  """The synthetic world's pretraining stage trains plainly: its cache key, and so its model,
  is the same whatever the finetune locks, adapts or averages."""
  plain = common.get_config(None)
  toolkit = common.get_config("lora.image_rank=4,ema.decay=0.9,optim.text_layer_decay=0.5")
  locked = common.get_config("locking.lock_text=True,locking.lock_text_unlocked_layers=1")
  stage = pretrain.stage_config(toolkit)
  assert (stage.lora.image_rank, stage.ema.decay, stage.optim.text_layer_decay) == (0, 0.0, 1.0)
  run_config.check_values(pretrain.stage_config(locked), 1, 1)  # a run the trainer accepts
  assert pretrain.key(toolkit, "w") == pretrain.key(plain, "w") == pretrain.key(locked, "w")


@pytest.mark.parametrize("what", ["folder", "file", "architecture"])
def test_export_hf_that_cannot_be_written_is_refused_before_training(train_source, tmp_path, what):
  destination = tmp_path / "hf"
  overrides = {"export_hf": str(destination)}
  if what == "folder":
    destination.mkdir()
  elif what == "file":
    destination.write_text("mine")
  else:  # the sigmoid loss adds a logit bias, which a CLIPModel has no place for
    overrides["loss.kind"] = "sigmoid"
  with pytest.raises((FileExistsError, ValueError)) as info:
    trainer.run(hnhp.get_config(train_args(train_source, **overrides)), str(tmp_path / "run"))
  message = str(info.value)
  assert message.startswith(f"export_hf={str(destination)!r}: ") and "\n" not in message
  assert (f"{destination} exists" if what != "architecture" else
          "model 'hpjax-tiny' cannot be exported as an HF CLIPModel: {'init_logit_bias'") in message
  assert not (tmp_path / "run").exists()  # before any work
  assert (destination.read_text() == "mine" if what == "file" else
          destination.exists() == (what == "folder"))


@pytest.mark.parametrize("field", ["export_openclip", "lora.export_adapters"])
def test_an_existing_state_dict_export_is_refused_before_training(train_source, tmp_path, field):
  destination = tmp_path / "mine.safetensors"
  destination.write_text("mine")
  with pytest.raises(FileExistsError, match="exists; remove it or choose another name"):
    trainer.run(hnhp.get_config(train_args(train_source, **{
        field: str(destination), "lora.image_rank": 4})), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # before any work
  assert destination.read_text() == "mine"


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arg, message", [
    ("lora.text_rank=4,lora.text_targets=conv1",
     "lora.text_targets: 'conv1' matches no module of the text tower"),
    ("lora.image_rank=4,lora.image_targets=qkv", "lora.image_targets: 'qkv' is not a LoRA target"),
    ("lora.text_rank=65", "lora.text_rank=65 is larger than the width 64 of transformer"),
    ("locking.lock_image=True,locking.lock_image_unlocked_groups=5",
     "locking.lock_image_unlocked_groups=5 is more than the 4 layer groups of the image tower"),
    ("locking.lock_text_unlocked_layers=1",
     "applies to a locked tower: set locking.lock_text=True"),
    ("optim.text_layer_decay=0.0", "optim.text_layer_decay=0.0 must be in (0, 1]"),
    ("ema.decay=1.0", "ema.decay=1.0 must be in [0, 1)"),
    ("lora.image_rank=4,lora.dropout=1.0", "lora.dropout=1.0 must be in [0, 1) (0 = none)"),
    ("lora.image_rank=4,lora.dropout=-0.1", "lora.dropout=-0.1 must be in [0, 1)"),
    ("lora.dropout=0.1", "lora.dropout needs LoRA training"),
    ("lora.image_rank=4,locking.lock_text=True", "locking.lock_text cannot be combined"),
])
def test_bad_toolkit_values_are_refused_before_any_work(arg, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    run_config.check_values(common.get_config(arg), 1, 1)
