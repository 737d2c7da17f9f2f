"""Evaluation runs over several models: mixed architectures in shared decode passes, the
checkpoint pre-check, per-model report writes, the parity modes and the plug-in scorer."""

import collections
import json
import os

import jax
import numpy as np
import open_clip
import pytest
import torch

from configs import eval_hp
from helpers import write_fixture_suites
from hpjax import checkpoints
from hpjax import tokenizer as tokenizer_lib
from hpjax.evaluate import benchmarks
from hpjax.evaluate import metrics
from hpjax.evaluate import plugin
from hpjax.evaluate import runner
from hpjax.evaluate import scorer as scorer_lib
from hpjax.models import CLIP, get_model_config
from openclip_reference import openclip_model, state_dict_numpy

# A second small architecture: another width, depth, patch grid, image size and activation.
SMALL = {"embed_dim": 32, "vision_cfg": {"image_size": 48, "layers": 1, "width": 32,
                                         "head_width": 16, "patch_size": 12},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                      "layers": 1}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Suites + stand-in images, two tiny checkpoints and one of the small architecture."""
  root = str(tmp_path_factory.mktemp("world"))
  write_fixture_suites(root)
  small_json = os.path.join(root, "small.json")
  with open(small_json, "w") as f:
    json.dump(SMALL, f)
  open_clip.add_model_config(small_json)
  paths = {}
  for name, arch, seed in (("tiny0", "hpjax-tiny", 0), ("tiny1", "hpjax-tiny", 1),
                           ("small", "small", 2)):
    paths[name] = os.path.join(root, f"{name}.pt")
    torch.save(openclip_model(arch, seed).state_dict(), paths[name])
  return root, small_json, paths


def _config(root, **fields):
  args = f"suite_root={root},image_root={root}/images,batch_size=8,gallery_size=0"
  return eval_hp.get_config(",".join([args] + [f"{k}={v}" for k, v in fields.items()]))


def _count_decodes(monkeypatch) -> collections.Counter:
  counts = collections.Counter()
  load = scorer_lib.preprocess.load_cropped

  def counting(path, crop_box=None):
    counts[(os.fspath(path), crop_box)] += 1
    return load(path, crop_box=crop_box)

  monkeypatch.setattr(scorer_lib.preprocess, "load_cropped", counting)
  return counts


def _scores(workdir, label):
  return {suite: [json.loads(line)["scores"] for line in
                  open(os.path.join(workdir, "scores", label, f"{suite}.jsonl"))]
          for suite in ("replace_attributes", "replace_relations", "swap")}


def test_mixed_architectures_equal_separate_runs_and_decode_once_per_preprocessing(
    world, tmp_path, monkeypatch):
  root, small_json, paths = world
  models = f"hpjax-tiny={paths['tiny0']}+{small_json}={paths['small']}+hpjax-tiny={paths['tiny1']}"
  counts = _count_decodes(monkeypatch)
  mixed = runner.run(_config(root, models=models), str(tmp_path / "mixed"))
  distinct = 4 + 10  # REPLACE images + SWAP crops of the fixture
  assert len(counts) == distinct and set(counts.values()) == {2}  # two preprocessings
  with open(tmp_path / "mixed" / "results.json") as f:
    results = json.load(f)
  assert [(p["models"], p["images_decoded"]) for p in results["decode_passes"]] == [
      (["tiny0.pt", "tiny1.pt"], distinct), (["small.pt"], distinct)]
  assert [m["label"] for m in results["models"]] == ["tiny0.pt", "small.pt", "tiny1.pt"]
  assert all(m["parity"] == "as_trained" for m in results["models"])

  counts.clear()
  separate = runner.run(_config(root, models=models, models_per_pass=1),
                        str(tmp_path / "separate"))
  assert set(counts.values()) == {3}  # one pass per model
  assert list(separate) == list(mixed)
  for label in mixed:
    figures = [k for k in mixed[label] if not k.startswith("eval/")]
    assert {k: mixed[label][k] for k in figures} == {k: separate[label][k] for k in figures}
    for suite, rows in _scores(tmp_path / "mixed", label).items():
      np.testing.assert_array_equal(rows, _scores(tmp_path / "separate", label)[suite])
  # Different architectures and weights: really three models.
  assert len({json.dumps(_scores(tmp_path / "mixed", label)) for label in mixed}) == 3


def test_each_config_is_parsed_once_and_each_checkpoint_read_once(world, tmp_path, monkeypatch):
  """The pre-check reads headers only; each file's tensors are read once, by its pass."""
  root, small_json, paths = world
  reads = collections.Counter()
  for reader in ("read_state_dict", "read_stand_ins"):
    read = getattr(checkpoints.files, reader)
    monkeypatch.setattr(checkpoints.files, reader, lambda path, _read=read, _name=reader: (
        reads.update([(_name, os.fspath(path))]) or _read(path)))
  parsed = collections.Counter()
  parse = runner.config_lib.get_model_config
  monkeypatch.setattr(runner.config_lib, "get_model_config",
                      lambda name: parsed.update([name]) or parse(name))
  models = f"hpjax-tiny={paths['tiny0']}+{small_json}={paths['small']}+hpjax-tiny={paths['tiny1']}"
  runner.run(_config(root, models=models, models_per_pass=1), str(tmp_path / "w"))
  assert parsed == {"hpjax-tiny": 2, small_json: 1}  # once per model
  assert reads == {(reader, path): 1 for path in paths.values()
                   for reader in ("read_state_dict", "read_stand_ins")}


def test_a_bad_later_checkpoint_fails_before_anything_is_scored(world, tmp_path, monkeypatch):
  root, small_json, paths = world
  counts = _count_decodes(monkeypatch)
  # The small architecture's file given as hpjax-tiny: every key mis-shaped.
  models = f"hpjax-tiny={paths['tiny0']}+hpjax-tiny={paths['small']}"
  with pytest.raises(ValueError, match=r"1 of 2 checkpoints cannot be used; nothing was scored"
                                       r"[\s\S]*small.pt[\s\S]*mis-?shaped"):
    runner.run(_config(root, models=models), str(tmp_path / "w"))
  assert not counts and not os.path.exists(tmp_path / "w" / "results.json")
  del small_json


def test_each_models_results_are_written_as_it_finishes_beside_the_last_whole_reports(
    world, tmp_path):
  """A run that fails on a later model keeps what it scored (results.partial.*) and leaves the
  previous evaluation's reports, gallery and plot whole and in agreement."""
  root, _, paths = world

  def broken(images, captions):
    raise RuntimeError("the plug-in model crashed")

  workdir = str(tmp_path / "w")
  runner.run(_config(root, models=f"hpjax-tiny={paths['tiny1']}"), workdir)
  before = {name: open(os.path.join(workdir, name), "rb").read()
            for name in ("results.json", "results.md", "gallery.html", "ordering.png")}
  with pytest.raises(RuntimeError, match="crashed"):
    runner.run(_config(root, models=f"hpjax-tiny={paths['tiny0']}"), workdir,
               plugins={"broken-itm": broken})
  assert before == {name: open(os.path.join(workdir, name), "rb").read() for name in before}
  with open(os.path.join(workdir, "results.partial.json")) as f:
    kept = json.load(f)["models"]
  assert [m["label"] for m in kept] == ["tiny0.pt"]
  assert np.isfinite(kept[0]["metrics"]["replace/augmented"])
  with open(os.path.join(workdir, "scores.partial", "tiny0.pt", "swap.jsonl")) as f:
    assert len(f.readlines()) == 10
  assert "| tiny0.pt | as_trained |" in open(os.path.join(workdir, "results.partial.md")).read()
  runner.run(_config(root, models=f"hpjax-tiny={paths['tiny0']}"), workdir)  # cleans up
  assert not any("partial" in name for name in os.listdir(workdir))
  with open(os.path.join(workdir, "results.json")) as f:
    assert [m["label"] for m in json.load(f)["models"]] == ["tiny0.pt"]


def test_registry_names_resolve_against_weights_dir_with_their_parity(tmp_path, monkeypatch):
  for name in ("ViT-B-32.pt", "negclip.pth", "dac_llm.pt"):
    (tmp_path / name).write_bytes(b"")
  os.makedirs(tmp_path / "CLIP-ViT-B-32-roberta-base-laion2B-s12B-b32k")
  (tmp_path / "CLIP-ViT-B-32-roberta-base-laion2B-s12B-b32k" /
   "open_clip_model.safetensors").write_bytes(b"")
  names = "openai-clip:ViT-B/32+NegCLIP+laion-clip:roberta-ViT-B-32+dac_llm"
  paper = runner.model_specs(eval_hp.get_config(f"models={names},weights_dir={tmp_path}"))
  assert [s.parity for s in paper] == ["paper"] * 4
  assert [(s.settings.activation, s.settings.score_dtype, s.settings.tokenizer)
          for s in paper] == [("quick_gelu", "float16", "clip"), ("gelu", "float32", "clip"),
                              ("quick_gelu", "float32", "clip"), ("gelu", "float32", "clip")]
  assert paper[1].checkpoint == str(tmp_path / "negclip.pth")
  assert paper[3].lora == {"lora_rank": 4, "lora_alpha": 1.0} and paper[0].lora == {}
  trained = runner.model_specs(eval_hp.get_config(
      f"models={names},weights_dir={tmp_path},parity=as_trained"))
  assert [s.settings.activation for s in trained][:2] == ["quick_gelu", "quick_gelu"]
  assert trained[2].settings.tokenizer == "roberta"
  # Which tokenizer each mode hands the RoBERTa row: CLIP BPE (77 ids) or the HF folder's.
  asked = []
  monkeypatch.setattr(runner.tokenizer_lib, "get_tokenizer",
                      lambda config=None, **kw: asked.append((config, kw)) or "tok")
  roberta = trained[2].model_config
  runner._tokenizer(paper[2], roberta, "/tok")
  runner._tokenizer(trained[2], roberta, "/tok")
  assert asked == [(None, {}), (roberta, {"tokenizer_dir": "/tok"})]
  with pytest.raises(FileNotFoundError, match=r"crepe_ft_all: no weights file; expected "
                                              r".*crepe_ft_all.pt; published at: SugarCrepe"):
    runner.model_specs(eval_hp.get_config(f"models=crepe_ft_all,weights_dir={tmp_path}"))
  with pytest.raises(KeyError, match="close matches.*'NegCLIP'"):
    runner.model_specs(eval_hp.get_config(f"models=negclip,weights_dir={tmp_path}"))
  with pytest.raises(ValueError, match="plug-in callable"):
    runner.model_specs(eval_hp.get_config(f"models=xvlm-pretrained-16m,weights_dir={tmp_path}"))


@pytest.mark.slow  # a ViT-B/32 forward: ~30 s on a shared 2-core CPU
def test_paper_mode_builds_negclip_with_gelu_as_open_clips_vit_b_32(tmp_path):
  """The fine-tuned rows' quirk: a QuickGELU fine-tune built as open_clip's `ViT-B-32`."""
  (tmp_path / "negclip.pth").write_bytes(b"")
  torch_model = openclip_model("ViT-B-32", seed=3)
  state = state_dict_numpy(torch_model)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
  tokens = tokenizer_lib.get_tokenizer()(["a white dog", "a dog on a red sofa"])
  with torch.no_grad():
    want = [torch_model.encode_image(torch.from_numpy(images)).numpy(),
            torch_model.encode_text(torch.from_numpy(tokens).long()).numpy()]
  features = {}
  for parity in ("paper", "as_trained"):
    spec, = runner.model_specs(eval_hp.get_config(
        f"models=NegCLIP,weights_dir={tmp_path},parity={parity}"))
    config = spec.model_config
    model = CLIP(config)
    params = checkpoints.openclip_to_params(state, config)
    with jax.default_matmul_precision("highest"):
      features[parity] = [
          np.asarray(model.apply({"params": params}, images.transpose(0, 2, 3, 1),
                                 method="encode_image")),
          np.asarray(model.apply({"params": params}, tokens, method="encode_text"))]
  for got, ref in zip(features["paper"], want):
    np.testing.assert_allclose(got, ref, atol=1e-4)
  assert np.abs(features["as_trained"][0] - want[0]).max() > 1e-3  # QuickGELU differs


def _word_id(word):
  return int(tokenizer_lib.get_tokenizer()([word])[0, 1])


def test_fp16_mode_equals_fp16_pytorch_and_keeps_its_ties(world, tmp_path):
  """'dog' and 'cat' get embedding rows that differ by a tenth of an fp16 step: distinct in
  fp32, one and the same in fp16, so the fp16 row scores c and c_n as an exact tie."""
  root, _, _ = world
  torch_model = openclip_model("hpjax-tiny", seed=4)
  with torch.no_grad():
    table = torch_model.token_embedding.weight
    dog = table[_word_id("dog")].half().float()
    table[_word_id("dog")] = dog
    table[_word_id("cat")] = dog + 0.1 * torch.from_numpy(
        np.spacing(dog.numpy().astype(np.float16)).astype(np.float32))
  config = get_model_config("hpjax-tiny")
  params = checkpoints.openclip_to_params(state_dict_numpy(torch_model), config)
  suites = benchmarks.load_hard_positive(root)
  records = [r for s in suites.values() for r in s.records][:12]
  records[0] = type(records[0])(image=records[0].image, captions=(
      "a photo of a dog", "a photo of a cat", "a picture of a dog"), roles=records[0].roles,
      source="tie.json", index=0, crop=records[0].crop)
  image_root = os.path.join(root, "images")
  kw = dict(image_root=image_root, image_batch_size=8, text_batch_size=8, num_workers=2)
  tok = tokenizer_lib.get_tokenizer()
  half = scorer_lib.Scorer(CLIP(config, dtype=jax.numpy.float16), tok, score_dtype="float16",
                           **kw).score(params, records)
  with jax.default_matmul_precision("highest"):
    full = scorer_lib.Scorer(CLIP(config), tok, **kw).score(params, records)

  # The fp16 computation as the authors ran it: fp16 towers, numpy fp16 normalisation + einsum.
  torch_half = torch_model.half()
  pixels = np.stack([scorer_lib.load_pixels(os.path.join(image_root, r.image), r.crop,
                                            scorer_lib.preprocess.eval_transform(64), "")[0]
                     for r in records])
  with torch.no_grad():
    img = torch_half.encode_image(torch.from_numpy(pixels.transpose(0, 3, 1, 2)).half()).numpy()
    txt = torch_half.encode_text(torch.from_numpy(
        tok([c for r in records for c in r.captions])).long()).numpy()
  img = img / np.linalg.norm(img, axis=-1, keepdims=True)
  txt = (txt / np.linalg.norm(txt, axis=-1, keepdims=True)).reshape(len(records), 3, -1)
  want = np.einsum("rd,rkd->rk", img, txt).astype(np.float32)
  np.testing.assert_allclose(half.scores, want, atol=2e-3)
  assert half.scores.dtype == np.float32 and np.array_equal(
      half.scores, half.scores.astype(np.float16).astype(np.float32))  # fp16 values

  assert want[0, 0] == want[0, 1] and half.scores[0, 0] == half.scores[0, 1]
  assert full.scores[0, 0] != full.scores[0, 1]
  tie = metrics.order_masks(*half.scores[:1].T)
  assert tie["ties"][0] and not (half.scores[0, 0] > half.scores[0, 1])  # strict: wrong


def test_plugin_callable_scores_deduplicated_pairs_like_the_dual_encoder(world, tmp_path):
  """An open_clip model wrapped as (images, captions) -> scores, through the runner."""
  root, _, paths = world
  torch_model = openclip_model("hpjax-tiny", 0)  # the weights of tiny0.pt
  tokenize = open_clip.get_tokenizer("ViT-B-32")
  seen = []

  def itm(images, captions):
    seen.extend(captions)
    with torch.no_grad():
      img = torch_model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                                     normalize=True)
      txt = torch_model.encode_text(tokenize(captions), normalize=True)
    return (img * txt).sum(-1).numpy()

  workdir = str(tmp_path / "w")
  wrapped = plugin.PluginScorer(itm, image_root=os.path.join(root, "images"), image_size=64,
                                batch_size=16)
  out = runner.run(_config(root, models=f"hpjax-tiny={paths['tiny0']}"), workdir,
                   plugins={"torch-itm": wrapped})
  assert list(out) == ["tiny0.pt", "torch-itm"]
  suites = benchmarks.load_hard_positive(root)
  pairs = {((r.image, r.crop), c) for s in suites.values() for r in s.records for c in r.captions}
  assert len(seen) == len(pairs)  # every distinct (image, crop, caption) scored once
  for suite, rows in _scores(workdir, "torch-itm").items():
    np.testing.assert_allclose(rows, _scores(workdir, "tiny0.pt")[suite], atol=1e-4)
  with open(os.path.join(workdir, "results.json")) as f:
    models = {m["label"]: m for m in json.load(f)["models"]}
  assert models["torch-itm"]["checkpoint_digest"] == "plug-in"
  assert models["torch-itm"]["timings"]["distinct_pairs"] == len(pairs)
  assert np.isfinite(models["torch-itm"]["metrics"]["swap/augmented"])
