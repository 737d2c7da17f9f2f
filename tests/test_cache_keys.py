"""Every cache key of the package, field by field: a cache written under one key is reused under
the same key, and not reused when any one field alone changes. The fields are read from what the
code writes or hashes (a written world's manifest, a builder config's fields, a model config's
dict), so a field added later is varied here without editing this file.

Keys: the synthetic world's manifest params; a prepared TFDS dataset's source record (config
fields, manual_dir, the world's parameters); the converted params' entry (VERSION, source
checksum, architecture, LoRA); a URL's copy (URL, published checksum). The pretraining stage's
key is varied field by field in tests/test_pretrain.py.
"""

import dataclasses
import inspect
import json
import os
import shutil

import pytest
import tensorflow_datasets as tfds

from helpers import write_fixture_suites
from hpjax.checkpoints import converted, download
from hpjax.data import synthetic, tfds_builders
from hpjax.models import get_model_config

TINY_WORLD = dict(num_train=6, num_eval=3, image_size=16, web_captions=1)

# A changed value for a field whose type has no generic change below (a choice among names).
CHOICES = {"caption_words": ("plain", "any"), "hard_texts": ("rules", "edits"),
           "part": ("train", "suites")}


def _changed(field, value):
  """A valid value other than `value`, of the same kind (fails naming a field it cannot vary)."""
  if field in CHOICES:
    return next(c for c in CHOICES[field] if c != value)
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 1
  if isinstance(value, float):
    return value / 2 if value else 0.5
  if isinstance(value, list):
    return value[:-1] if len(value) > 1 else value + value
  if isinstance(value, str):
    return value + "_other"
  if value is None:
    return 1
  raise AssertionError(f"no changed value for field {field!r} = {value!r}: add it to CHOICES")


# -- the synthetic world: manifest.json's params -------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("world") / "w")
  synthetic.write_world(out, **TINY_WORLD)
  with open(os.path.join(out, "manifest.json")) as f:
    return out, json.load(f)["params"]


def test_every_write_world_argument_is_in_the_world_s_key(world):
  _, params = world
  arguments = set(inspect.signature(synthetic.write_world).parameters) - {"out_dir", "rebuild"}
  assert arguments <= set(params), f"not in manifest.json's params: {arguments - set(params)}"


def test_the_same_world_is_reused_and_each_field_alone_is_another(world, monkeypatch):
  out, params = world
  as_written = {k: v for k, v in params.items() if k != "version"}
  before = os.stat(os.path.join(out, "manifest.json")).st_mtime_ns
  assert synthetic.write_world(out, rebuild=False, **as_written).image_root == out  # reused
  assert os.stat(os.path.join(out, "manifest.json")).st_mtime_ns == before
  for field, value in params.items():
    with monkeypatch.context() as patch:
      arguments = dict(as_written)
      if field == "version":  # the generator's version, not an argument
        patch.setattr(synthetic, "VERSION", _changed(field, value))
      else:
        arguments[field] = _changed(field, value)
      with pytest.raises(ValueError, match=rf"other parameters \['{field}'\]; not rebuilt"):
        synthetic.write_world(out, rebuild=False, **arguments)


# -- converted params: hpjax-converted/<key> ------------------------------------------------------

def _leaves(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, prefix + (k,))
  else:
    yield prefix, tree


def _with_leaf(tree, path, value):
  out = dict(tree)
  out[path[0]] = value if len(path) == 1 else _with_leaf(tree[path[0]], path[1:], value)
  return out


def test_the_converted_params_key_holds_every_field_of_the_architecture_and_settings(
    monkeypatch):
  config = get_model_config("hpjax-tiny")
  digest, lora = "sha256:" + "ab" * 32, (4, 2.5)
  key = converted.key(digest, config, lora)
  assert converted.key(digest, get_model_config("hpjax-tiny"), (4, 2.5)) == key  # reused
  others = {"source digest": converted.key("sha256:" + "cd" * 32, config, lora),
            "lora rank": converted.key(digest, config, (8, 2.5)),
            "lora alpha": converted.key(digest, config, (4, 1.0)),
            "no lora": converted.key(digest, config, None),
            "architecture inferred": converted.key(digest, None, lora),
            "model name": converted.key(digest, dataclasses.replace(config, name="other"), lora)}
  with monkeypatch.context() as patch:
    patch.setattr(converted, "VERSION", converted.VERSION + 1)
    others["VERSION"] = converted.key(digest, config, lora)
  described = config.to_dict()
  varied = 0
  for path, value in _leaves(described):
    changed = type(config).from_dict(_with_leaf(described, path, _changed(path[-1], value)),
                                     name=config.name)
    others["/".join(path)] = converted.key(digest, changed, lora)
    varied += 1
  assert varied >= 10, described
  assert all(other != key for other in others.values()), [
      name for name, other in others.items() if other == key]
  assert len(set(others.values())) == len(others)


# -- a URL's copy: hpjax-urls/<hash of the URL>/<file> --------------------------------------------

@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  source = tmp_path / "served"
  source.mkdir()
  return source


def test_a_url_s_copy_is_reused_by_url_and_checksum_and_not_across_them(hub_cache):
  first, second = hub_cache / "a" / "w.bin", hub_cache / "b" / "w.bin"
  for path, data in ((first, b"weights one"), (second, b"weights two")):
    path.parent.mkdir()
    path.write_bytes(data)
  old = download.sha256(first)
  download.url_file(str(first), old)
  first.write_bytes(b"weights one, republished")
  assert download.url_file(str(first), old).read_bytes() == b"weights one"  # reused
  assert download.url_file(str(second)).read_bytes() == b"weights two"  # another URL
  # The same URL under another published checksum: the cached copy is not taken for it.
  new = download.sha256(first)
  assert download.url_file(str(first), new).read_bytes() == b"weights one, republished"
  assert download.recorded_sha256(download.url_file(str(first), new)) == new


# -- prepared TFDS datasets: <data_dir>/<name>/<config>/<version> + what they were built from ----

def _files(folder):
  return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_prepared_tfds_dataset_is_reused_only_for_the_same_config_fields(tmp_path, monkeypatch):
  config = tfds_builders.SyntheticWorldConfig(name="tiny", part="suites", num_train=2,
                                              num_eval=2, image_size=16, seed=0)
  data_dir = tmp_path / "tfds"
  builder = tfds_builders.build("synthetic_world", str(data_dir), config=config)
  built = _files(data_dir)
  assert tfds_builders.build("synthetic_world", str(data_dir), config=dataclasses.replace(
      config)).data_dir == builder.data_dir  # reused
  own = [f.name for f in dataclasses.fields(config)
         if f.name not in {g.name for g in dataclasses.fields(tfds.core.BuilderConfig)}]
  assert len(own) >= 5, own
  for field in own:
    other = dataclasses.replace(config, **{field: _changed(field, getattr(config, field))})
    with pytest.raises(ValueError, match=rf"built from other {field} \("):
      tfds_builders.build("synthetic_world", str(data_dir), config=other)
  # The world's other parameters (write_world's defaults) and its generator's version.
  with monkeypatch.context() as patch:
    patch.setattr(synthetic, "VERSION", synthetic.VERSION + 1)
    with pytest.raises(ValueError, match=r"built from other world.version \("):
      tfds_builders.build("synthetic_world", str(data_dir), config=config)
  assert _files(data_dir) == built  # nothing rebuilt over it


def test_a_prepared_tfds_dataset_of_another_manual_dir_is_not_reused(tmp_path):
  manual = tmp_path / "manual"
  write_fixture_suites(str(manual), num=2)
  config = tfds_builders.HardPositivesConfig(name="fixture", image_dir="images")
  data_dir = str(tmp_path / "tfds")
  tfds_builders.build("hard_positives", data_dir, str(manual), config)
  tfds_builders.build("hard_positives", data_dir, str(manual), config)  # reused
  moved = tmp_path / "elsewhere"
  shutil.copytree(manual, moved)
  with pytest.raises(ValueError, match=r"built from other manual_dir \("):
    tfds_builders.build("hard_positives", data_dir, str(moved), config)
  with pytest.raises(ValueError, match=r"built from other swap_image_dir \("):
    tfds_builders.build("hard_positives", data_dir, str(manual),
                        dataclasses.replace(config, swap_image_dir="images"))
