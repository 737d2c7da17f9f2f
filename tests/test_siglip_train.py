"""SigLIP finetuning from the front door: configs/hnhp.py:model=...,loss=sigmoid on the synthetic
world (its own SentencePiece model), checkpoint and evaluation; two processes train to the same
parameters as one."""

import json
import math
import os

import numpy as np
import pytest

from configs import coco_control, hn, hnhp, hp
from helpers import assert_two_processes_match_one, train_args
from hpjax import tokenizer as tokenizer_lib
from hpjax.data import world_tokenizer
from hpjax.models.config import CONFIG_DIR
from hpjax.train import run_config, trainer

MODEL = "hpjax-tiny-siglip"
STEPS = 3


@pytest.mark.parametrize("recipe", [hnhp, hn, hp, coco_control])
def test_every_variant_takes_a_siglip_model_and_the_sigmoid_loss(recipe):
  config = recipe.get_config("model=ViT-B-16-SigLIP,loss=sigmoid,hn_weight=2.0")
  assert (config.model.name, config.loss.kind, config.loss.hard_negative_weight) == (
      "ViT-B-16-SigLIP", "sigmoid", 2.0)
  run_config.check_values(config, num_devices=8, process_count=1)
  built = trainer.model_config(config.model.name, config.loss.kind)
  assert (built.init_logit_scale, built.init_logit_bias) == (math.log(10.0), -10.0)
  assert not built.text.causal_eot_pooled  # trained at full context length, not packed


def test_the_world_tokenizer_is_a_siglip_sentencepiece_model(train_source, tmp_path):
  path = world_tokenizer.train_sentencepiece(world_tokenizer.jsonl_texts(train_source),
                                             str(tmp_path / "spiece.model"), 200)
  tok = tokenizer_lib.SentencePieceTokenizer(path, context_length=12)
  assert (tok.pad_token_id, tok.eot_token_id) == (1, 1) and tok.vocab_size <= 200
  ids = tok(["A red block, on the LEFT", "on the left there is a red block"])
  assert 2 not in ids  # every word of the fixture's texts is in the vocabulary (2 is unk)
  # canonicalised: case and punctuation do not change the ids
  np.testing.assert_array_equal(ids[0], tok(["a red block on the left"])[0])


def test_a_tokenizer_with_more_ids_than_the_text_tower_stops_the_run(train_source, tmp_path):
  config = json.loads((CONFIG_DIR / "hpjax-tiny.json").read_text())
  config["text_cfg"]["vocab_size"] = 1000
  path = tmp_path / "small-vocab.json"
  path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="Tokenizer has 49408 ids, more than the text tower's "
                                       "vocab_size 1000"):
    trainer.run(hnhp.get_config(train_args(train_source, model=str(path))), str(tmp_path / "w"))


@pytest.mark.slow
def test_siglip_runs_from_the_front_door_and_two_processes_match_one(tmp_path):
  # Attention key biases get a zero gradient (softmax ignores a shift) plus rounding noise,
  # which Adam's first steps turn into moves of +-lr of either sign; eps = 1e-3 keeps a noise
  # gradient's move at ~lr * 1e-6 while real gradients (>> 1e-3) still move their weights by ~lr.
  args = train_args("synthetic", model=MODEL, loss="sigmoid", hn_weight=2.0, total_steps=STEPS,
                    **{"optim.eps": 1e-3, "checkpoint.every_steps": STEPS, "eval.every_steps": STEPS,
                       "eval.hard_positive": True, "eval.batch_size": 16, "data.val_size": 16,
                       "data.synthetic.num_train": 64, "data.synthetic.num_eval": 8})
  one = tmp_path / "one"
  metrics = trainer.run(hnhp.get_config(args + ",mesh.num_devices=4"), str(one))
  assert 0 <= metrics["retrieval/mean_recall@1"] <= 100 and "replace/augmented" in metrics
  assert (one / "reports" / "results.json").is_file()
  steps = [json.loads(l) for l in open(one / "metrics.jsonl") if '"loss"' in l]
  assert [l["step"] for l in steps] == list(range(1, STEPS + 1))
  assert steps[0]["logit_bias"] == -10.0 and steps[0]["logit_scale"] == pytest.approx(10.0)
  assert steps[0]["loss/own_hard_negatives"] > 0

  two = tmp_path / "two"
  params_one = assert_two_processes_match_one(args, one, two, STEPS)
  assert params_one["logit_bias"] != -10.0, "the bias is a trained parameter"
  assert os.path.getsize(one / world_tokenizer.FILE) == os.path.getsize(two / world_tokenizer.FILE)


def test_siglip_training_without_a_tokenizer_names_the_field_the_trainer_takes(train_source,
                                                                            tmp_path):
  from hpjax import config_fields  # pylint: disable=g-import-not-at-top
  config = hnhp.get_config(train_args(train_source, model=MODEL, loss="sigmoid"))
  with pytest.raises(ValueError, match=r"pass model\.tokenizer=, its SentencePiece model") as e:
    trainer.run(config, str(tmp_path / "w"))
  assert "tokenizer_dir" not in str(e.value)
  assert config_fields.field_error(config, "model.tokenizer") is None  # advice that can be taken


def test_an_own_siglip_model_in_evaluation_reads_tokenizer_dir(tmp_path):
  """Beside an own CLIP model, which keeps the CLIP BPE tokenizer."""
  from configs import eval_hp  # pylint: disable=g-import-not-at-top
  from helpers import train_sentencepiece  # pylint: disable=g-import-not-at-top
  from hpjax.evaluate import runner  # pylint: disable=g-import-not-at-top
  spiece = train_sentencepiece(tmp_path / "tok", "t5")
  models = f"{MODEL}=random+hpjax-tiny=random"
  siglip, clip = runner.model_specs(eval_hp.get_config(f"models={models},tokenizer_dir={spiece}"))
  got = runner._tokenizer(siglip, siglip.model_config, str(spiece))
  assert isinstance(got, tokenizer_lib.SentencePieceTokenizer) and got.model_file == spiece
  assert type(runner._tokenizer(clip, clip.model_config, str(spiece))) is tokenizer_lib.Tokenizer
  with pytest.raises(ValueError, match=r"pass tokenizer_dir="):
    runner._tokenizer(siglip, siglip.model_config, None)
