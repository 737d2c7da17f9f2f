"""Pretrained weights by name (hpjax.checkpoints.pretrained / download / converted), against a
hub server on 127.0.0.1 that speaks huggingface_hub's download protocol (HEAD for the commit,
ETag and size; GET with Range), serving random-initialised tiny checkpoints this test writes.
OpenCLIP loads the same served files through its own `create_model_and_transforms`."""

import collections
import errno
import hashlib
import http.server
import io
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import open_clip
from open_clip import pretrained as openclip_pretrained
import pytest
import safetensors.torch
import torch
from huggingface_hub import constants, file_download

import hpjax
from hpjax import checkpoints, zoo
from hpjax.checkpoints import big_vision, convert, converted, download, loading, pretrained
from hpjax.evaluate import runner
from hpjax.models.clip import CLIP, param_shapes
from hpjax.models.config import get_model_config, list_models
from hpjax.train import trainer
from helpers import (assert_same_tree, final_params, flax_encoders, torch_encoders,
                     train_args, write_fixture_suites)
from configs import convert as convert_config
from configs import eval_hp, hnhp
from openclip_reference import (TINY_JSON, openclip_model, perturb_all, random_images,
                                random_tokens, register_tiny_siglip)

COMMIT = "c" * 40


class Hub:
  """A hub on 127.0.0.1: `files[(repo, name)] = bytes`; `etags` overrides an ETag (a wrong
  checksum), `status` answers a repository with an HTTP error, `drops[(repo, name)]` counts the
  GETs still to cut off before their last KiB. `plain[path] = bytes` are plain URLs, answered
  after `plain_delay` seconds. A GET of a key in `hold` waits until that many HEADs of it came;
  of a key (or plain path) in `stall`, sends all but the last KiB, sets `stalled` and waits for
  the event `stall[key]`."""

  def __init__(self):
    self.files, self.etags, self.status, self.drops, self.plain = {}, {}, {}, {}, {}
    self.hold, self.stall, self.stalled, self.plain_delay = {}, {}, threading.Event(), 0.0
    self.requests, self.plain_sent = [], []
    hub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        del args

      def do_HEAD(self):
        self._answer(body=False)

      def do_GET(self):
        self._answer(body=True)

      def _answer(self, body):
        hub.requests.append((self.command, self.path, self.headers.get("Range")))
        if self.path in hub.plain:
          if body and self.path in hub.stall:
            return self._send_part_then_wait(hub.plain[self.path], {}, hub.stall[self.path])
          time.sleep(hub.plain_delay if body else 0)
          self._send(hub.plain[self.path], {}, body)
          return hub.plain_sent.append(time.time())
        parts = self.path.lstrip("/").split("/")
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        if repo in hub.status:
          return self._error(hub.status[repo], "GatedRepo" if hub.status[repo] == 401 else "")
        if not any(r == repo for r, _ in hub.files):
          return self._error(404, "RepoNotFound")
        if (repo, name) not in hub.files:
          return self._error(404, "EntryNotFound")
        data = hub.files[repo, name]
        tag = hub.etags.get((repo, name), hashlib.sha256(data).hexdigest())
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{tag}"', "Accept-Ranges": "bytes"}
        if body and (repo, name) in hub.hold:
          deadline = time.time() + 60
          while (len([r for r in hub.requests if r[:2] == ("HEAD", self.path)])
                 < hub.hold[repo, name] and time.time() < deadline):
            time.sleep(0.05)
        if body and (repo, name) in hub.stall:
          return self._send_part_then_wait(data, headers, hub.stall[repo, name])
        self._send(data, headers, body, drop=body and hub.drops.get((repo, name), 0) > 0,
                   key=(repo, name))

      def _send(self, data, headers, body, drop=False, key=None):
        start = 0
        if body and self.headers.get("Range"):
          start = int(self.headers["Range"].split("=")[1].split("-")[0])
        self.send_response(206 if start else 200)
        for k, v in headers.items():
          self.send_header(k, v)
        if start:
          self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
          return
        if drop:
          hub.drops[key] -= 1
          self.wfile.write(data[start:-1024])  # all but the last KiB
          self.wfile.flush()
          self.close_connection = True
          return
        self.wfile.write(data[start:])

      def _send_part_then_wait(self, data, headers, release):
        self.send_response(200)
        for k, v in headers.items():
          self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:-1024])
        self.wfile.flush()
        hub.stalled.set()
        release.wait(60)
        self.close_connection = True

      def _error(self, code, error_code):
        self.send_response(code)
        self.send_header("X-Repo-Commit", COMMIT)
        if error_code:
          self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()

  def stop(self):
    self.server.shutdown()
    self.server.server_close()

  def gets(self, name):
    return [r for r in self.requests if r[0] == "GET" and r[1].endswith(name)]


@pytest.fixture
def hub(tmp_path, monkeypatch):
  """A running Hub; hpjax's cache in tmp_path/hf, OpenCLIP's (through huggingface_hub's
  import-time settings) in tmp_path/openclip_cache, both pointed at the Hub."""
  server = Hub()
  monkeypatch.setenv("HF_ENDPOINT", server.url)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.delenv("HF_TOKEN", raising=False)
  # OpenCLIP passes no endpoint: huggingface_hub's URL template (built at import) is moved.
  monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                      server.url + "/{repo_id}/resolve/{revision}/{filename}")
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "openclip_cache"))
  monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
  yield server
  server.stop()


def _tiny_openclip(seed=0):
  torch_model = perturb_all(openclip_model("hpjax-tiny", seed), seed)
  return torch_model, {k: v.contiguous() for k, v in torch_model.state_dict().items()}


def _safetensors(state):
  return safetensors.torch.save(state)


def _torch_bytes(state):
  buffer = io.BytesIO()
  torch.save(state, buffer)
  return buffer.getvalue()


def _tiny_row(monkeypatch, hub_repo="test/tiny"):
  """A pretrained tag 'tinytag' of hpjax-tiny in both tables, served from `hub_repo`."""
  row = pretrained.Row("hpjax-tiny", "tinytag", hub=hub_repo, file="open_clip_pytorch_model.bin")
  table = tuple(r for r in pretrained.rows() if r.architecture != "hpjax-tiny")
  monkeypatch.setattr(pretrained, "rows", lambda: table + (row,))
  monkeypatch.setitem(openclip_pretrained._PRETRAINED, "hpjax-tiny",  # pylint: disable=protected-access
                      {"tinytag": {"url": "", "hf_hub": f"{hub_repo}/"}})


def _features(encoders, seed=0, size=64):
  rng = np.random.default_rng(seed)
  image, text = encoders
  return (image(torch.from_numpy(random_images(rng, 2, size))),
          text(torch.from_numpy(random_tokens(rng, 2))))


def _assert_same_features(model, params, torch_model):
  for got, want in zip(_features(flax_encoders(model, params)),
                       _features(torch_encoders(torch_model))):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def _no_conversion(monkeypatch):
  """Makes any read of a checkpoint file fail: a load that passes came from the converted
  cache."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"a checkpoint was read: {args[0]}")
  monkeypatch.setattr(loading, "load_params", refuse)
  monkeypatch.setattr(loading, "load_hf", refuse)


def test_tag_equals_openclip_then_cache_hit_offline(hub, monkeypatch):
  _, state = _tiny_openclip()
  hub.files["test/tiny", "open_clip_model.safetensors"] = _safetensors(state)
  _tiny_row(monkeypatch)
  open_clip.add_model_config(str(TINY_JSON))
  reference, _, _ = open_clip.create_model_and_transforms("hpjax-tiny", pretrained="tinytag")
  model, params, transform = hpjax.create_model_and_transforms("hpjax-tiny", pretrained="tinytag")
  _assert_same_features(model, params, reference.eval())
  assert transform is not None
  assert len(hub.gets("open_clip_model.safetensors")) == 2  # OpenCLIP's, then hpjax's: once

  hub.stop()
  _no_conversion(monkeypatch)
  for offline in ("", "1"):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    _, again = hpjax.create_model("hpjax-tiny", pretrained="TinyTag")  # tags compare as OpenCLIP's
    assert_same_tree(again, params)
    assert jax.tree.map(np.shape, again) == jax.tree.map(np.shape, params)  # scalars stay 0-d


def test_hf_hub_name_with_bin_equals_openclip(hub):
  torch_model, state = _tiny_openclip(seed=1)
  config = {"model_cfg": json.loads(TINY_JSON.read_text()),
            "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
  hub.files["test/tinyhub", "open_clip_config.json"] = json.dumps(config).encode()
  hub.files["test/tinyhub", "open_clip_pytorch_model.bin"] = _torch_bytes(state)
  reference, _, _ = open_clip.create_model_and_transforms("hf-hub:test/tinyhub")
  model, params, _ = hpjax.create_model_and_transforms("hf-hub:test/tinyhub")
  _assert_same_features(model, params, reference.eval())
  _assert_same_features(model, params, torch_model)
  assert model.config.name == "hf-hub:test/tinyhub"


def test_transformers_repo_and_big_vision_url(hub, tmp_path, monkeypatch):
  register_tiny_siglip()
  config = get_model_config("hpjax-tiny-siglip")
  rng = np.random.default_rng(3)  # random weights of the right shapes, with no init to compile
  params = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape)).astype(np.float32),
                        param_shapes(CLIP(config)))
  folder = hpjax.export_hf(params, "hpjax-tiny-siglip", tmp_path / "siglip_hf")
  for name in pretrained.HF_FILES:
    hub.files["test/tiny-siglip", name] = (folder / name).read_bytes()
  npz = tmp_path / "siglip.npz"
  big_vision.save(params, config, npz)
  hub.plain["/bucket/siglip.npz"] = npz.read_bytes()
  url = hub.url + "/bucket/siglip.npz"

  _, from_repo = hpjax.create_model(None, pretrained="test/tiny-siglip")
  _, from_folder = hpjax.create_model(None, pretrained=str(folder))
  assert_same_tree(from_repo, from_folder)
  _, from_url = hpjax.create_model("hpjax-tiny-siglip", pretrained=url)
  _, from_file = hpjax.create_model("hpjax-tiny-siglip", pretrained=str(npz))
  assert_same_tree(from_url, from_file)
  assert_same_tree(from_url, params)

  hub.stop()
  _no_conversion(monkeypatch)
  _, again = hpjax.create_model(None, pretrained="test/tiny-siglip")
  assert_same_tree(again, from_folder)
  _, again = hpjax.create_model("hpjax-tiny-siglip", pretrained=url)
  assert_same_tree(again, from_file)


def _blobs(tmp_path, repo="test/tiny"):
  folder = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "blobs"
  return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_dropped_connection_resumes_and_never_leaves_a_half_file(hub, tmp_path, monkeypatch):
  torch_model, state = _tiny_openclip()
  data = _safetensors(state)
  assert len(data) > constants.DOWNLOAD_CHUNK_SIZE
  hub.files["test/tiny", "open_clip_model.safetensors"] = data
  _tiny_row(monkeypatch)
  hub.drops["test/tiny", "open_clip_model.safetensors"] = 1
  model, params = hpjax.create_model("hpjax-tiny", pretrained="tinytag")
  _assert_same_features(model, params, torch_model)
  ranges = [r for _, _, r in hub.gets("open_clip_model.safetensors")]
  # Resumed where the last whole chunk huggingface_hub wrote ends.
  assert ranges[0] is None and ranges[1] == f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-"

  hub.files["test/tiny2", "open_clip_model.safetensors"] = data
  _tiny_row(monkeypatch, "test/tiny2")
  hub.drops["test/tiny2", "open_clip_model.safetensors"] = 100
  monkeypatch.setattr(file_download.time, "sleep", lambda seconds: None)  # its retries' pauses
  with pytest.raises(ConnectionError, match="test/tiny2/open_clip_model.safetensors: the "
                     "download .* failed .*nothing was kept"):
    hpjax.create_model("hpjax-tiny", pretrained="tinytag")
  assert _blobs(tmp_path, "test/tiny2") == []  # No half file kept, under any name.


def test_wrong_checksum_is_refused_and_not_cached(hub, tmp_path, monkeypatch):
  _, state = _tiny_openclip()
  hub.files["test/tiny", "open_clip_model.safetensors"] = _safetensors(state)
  hub.etags["test/tiny", "open_clip_model.safetensors"] = "0" * 64
  _tiny_row(monkeypatch)
  with pytest.raises(ValueError, match="does not match its published checksum 0000"):
    hpjax.create_model("hpjax-tiny", pretrained="tinytag")
  assert _blobs(tmp_path) == []
  assert len(hub.gets("open_clip_model.safetensors")) == 2  # fetched again once, then refused

  hub.plain["/f/x.npz"] = b"not what was published"
  with pytest.raises(ValueError, match="does not match the published 1234"):
    download.url_file(hub.url + "/f/x.npz", "1234")
  assert not any(p.suffix == ".npz" for p in (tmp_path / "hf").rglob("*"))


def test_corrupt_download_and_corrupt_converted_cache_are_fetched_again(hub, tmp_path,
                                                                        monkeypatch):
  torch_model, state = _tiny_openclip()
  hub.files["test/tiny", "open_clip_model.safetensors"] = _safetensors(state)
  _tiny_row(monkeypatch)
  model, params = hpjax.create_model("hpjax-tiny", pretrained="tinytag")
  (entry,) = converted.folder().glob("*.safetensors")
  (blob,) = (tmp_path / "hf" / "hub" / "models--test--tiny" / "blobs").iterdir()
  for path in (entry, blob):  # a flipped byte in each
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
  _, again = hpjax.create_model("hpjax-tiny", pretrained="tinytag")
  assert_same_tree(again, params)
  _assert_same_features(model, again, torch_model)
  assert len(hub.gets("open_clip_model.safetensors")) == 2
  assert download.matches_etag(blob)


def test_gated_missing_and_offline_errors(hub, tmp_path, monkeypatch):
  _tiny_row(monkeypatch, "org/gated")
  hub.status["org/gated"] = 401
  with pytest.raises(PermissionError, match="org/gated.*gated or private.*HF_TOKEN"):
    hpjax.create_model("hpjax-tiny", pretrained="tinytag")
  hub.status["org/gated"] = 403
  with pytest.raises(PermissionError, match="answered 403"):
    hpjax.create_model("hpjax-tiny", pretrained="tinytag")
  with pytest.raises(FileNotFoundError, match="'org/nothing' does not exist"):
    hpjax.create_model(None, pretrained="org/nothing")
  hub.files["test/other", "README.md"] = b"no weights"
  with pytest.raises(FileNotFoundError, match="holds none of"):
    hpjax.create_model("hpjax-tiny", pretrained="hf-hub:test/other")

  _tiny_row(monkeypatch, "test/tiny")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  cache = tmp_path / "hf" / "hub"
  with pytest.raises(ConnectionError, match=f"test/tiny: HF_HUB_OFFLINE is set and "
                     f"open_clip_model.safetensors / open_clip_pytorch_model.bin is not in the "
                     f"cache {cache}"):
    hpjax.create_model("hpjax-tiny", pretrained="tinytag")


def test_tags_resolve_as_openclip_lists_them():
  shipped = set(list_models())
  want = [(a, t) for a, t in open_clip.list_pretrained() if a in shipped]
  assert hpjax.list_pretrained() == want
  assert "ViT-B-32:openai" in hpjax.list_pretrained(as_str=True)
  assert "ViT-B-32-quickgelu:openai" in hpjax.list_pretrained(as_str=True)
  assert hpjax.list_pretrained_tags_by_model("ViT-B-32") == (
      open_clip.list_pretrained_tags_by_model("ViT-B-32"))
  row = pretrained.get_row("ViT-B-32", "laion2b-s34b-b79k")
  assert (row.hub, row.hub_files()) == ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                                        pretrained.OPENCLIP_WEIGHTS)
  with pytest.raises(ValueError, match=r"not a tag of 'ViT-B-32' \(its tags: \['openai', "
                     r".*close matches: \['laion2b_s34b_b79k'"):
    hpjax.create_model("ViT-B-32", pretrained="laion2b_s34b_b79x")
  with pytest.raises(ValueError, match="it is a tag of ViT-B-16-SigLIP.*pretrained='webli'"):
    hpjax.create_model("ViT-B-32", pretrained="webli")
  with pytest.raises(ValueError, match="'hpjax-tiny' .*has no pretrained tags"):
    hpjax.create_model("hpjax-tiny", pretrained="openai")
  # A missing local file stays a missing file, not a tag.
  with pytest.raises(FileNotFoundError):
    hpjax.create_model("hpjax-tiny", pretrained=os.path.join("no", "such.pt"))
  assert not pretrained.is_name(str(pathlib.Path(__file__)))


def _tiny_registry(hub, monkeypatch, activation, file="open_clip_model.safetensors"):
  """hpjax-tiny's 'tinytag' served as `file`, and a registry row 'tiny-registry' of it scored
  with `activation` in the paper's parity; returns the OpenCLIP model."""
  torch_model, state = _tiny_openclip()
  encode = _safetensors if file.endswith(".safetensors") else _torch_bytes
  hub.files["test/tiny", file] = encode(state)
  _tiny_row(monkeypatch)
  monkeypatch.setitem(zoo.BY_NAME, "tiny-registry", zoo.Entry(
      "tiny-registry", "hpjax-tiny", zoo.OPENCLIP, ("tiny.safetensors",), "a hub",
      activation=activation, openclip_tag="hpjax-tiny:tinytag"))
  return torch_model


def test_zoo_download_evaluator_and_convert_fetch_by_name(hub, tmp_path, monkeypatch, capsys):
  torch_model = _tiny_registry(hub, monkeypatch, "quick_gelu")

  assert zoo.main(["--download", "hpjax-tiny:tinytag", "NegCLIP"]) == 1
  lines = capsys.readouterr().out.splitlines()
  cached = lines[0].removeprefix("hpjax-tiny:tinytag: ")
  assert pathlib.Path(cached).read_bytes() == hub.files["test/tiny", "open_clip_model.safetensors"]
  assert lines[1].startswith("NegCLIP: not fetched: NegCLIP: not published on a hub; download "
                             "it from NegCLIP release") and "WEIGHTS_DIR/negclip.pth" in lines[1]

  specs = runner.model_specs(eval_hp.get_config("models=tiny-registry+hpjax-tiny:tinytag"))
  assert [(s.label, s.architecture, s.checkpoint) for s in specs] == [
      ("tiny-registry", "hpjax-tiny", cached), ("hpjax-tiny:tinytag", "hpjax-tiny", cached)]
  model, params = runner.build(specs[1])
  _assert_same_features(model, params, torch_model)
  with pytest.raises(ValueError, match="NegCLIP: not published on a hub, so it needs "
                     "config.weights_dir"):
    runner.model_specs(eval_hp.get_config("models=NegCLIP"))

  summary = convert.run(convert_config.get_config("src=tinytag,model=hpjax-tiny"), tmp_path / "c")
  assert summary["src"] == cached
  assert_same_tree(checkpoints.restore_params(summary["dst"], get_model_config("hpjax-tiny")),
                   params)
  assert len(hub.gets("open_clip_model.safetensors")) == 1


def test_second_evaluation_of_a_fetched_model_reads_no_pytorch(hub, tmp_path, monkeypatch):
  """The evaluator builds a fetched row through the converted cache: its tensors are read once
  over two runs (the pre-check reads only headers), and with the registry's activation."""
  torch_model = _tiny_registry(hub, monkeypatch, "gelu", file="open_clip_pytorch_model.bin")
  write_fixture_suites(str(tmp_path / "suites"), num=4)
  reads = collections.Counter()
  read = checkpoints.files.read_state_dict
  monkeypatch.setattr(checkpoints.files, "read_state_dict",
                      lambda path: reads.update([os.fspath(path)]) or read(path))
  config = eval_hp.get_config(
      f"models=tiny-registry+hpjax-tiny:tinytag,suite_root={tmp_path / 'suites'},"
      f"image_root={tmp_path / 'suites' / 'images'},batch_size=8,gallery_size=0")
  first = runner.run(config, str(tmp_path / "first"))
  cached = str(zoo.fetch_weights("tiny-registry"))
  # One conversion per architecture as scored: GELU (the registry row's parity) and QuickGELU
  # (hpjax-tiny's own, the pair scored as trained).
  assert reads == {cached: 2}
  assert first["tiny-registry"] != first["hpjax-tiny:tinytag"]
  second = runner.run(config, str(tmp_path / "second"))
  assert reads == {cached: 2}  # the second evaluation read the converted params alone
  figures = lambda out: {label: {k: v for k, v in m.items() if not k.startswith("eval/")}
                         for label, m in out.items()}  # (not the timings)
  assert figures(second) == figures(first)
  spec = runner.model_specs(config)[1]
  model, params = runner.build(spec)
  _assert_same_features(model, params, torch_model)
  assert spec.checkpoint == cached and spec.fetched_as == "hpjax-tiny:tinytag"


_FETCH = """
import json, sys, time
from hpjax.checkpoints import download
hub = download.hub_file("test/tiny", ["open_clip_model.safetensors"])
started = time.time()
url = download.url_file(sys.argv[1])
print(json.dumps([str(hub), download.sha256(hub), str(url), download.sha256(url), started]))
"""


def _python(code, *args, **kwargs):
  """A Python process on this checkout with the test's environment (HF_ENDPOINT, HF_HOME)."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "JAX_PLATFORMS": "cpu",
         "HF_HUB_DISABLE_XET": "1"}
  return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                          stdout=subprocess.PIPE, **kwargs)


def test_two_processes_fetch_once_and_read_the_same_whole_file(hub):
  _, state = _tiny_openclip()
  data = _safetensors(state)
  hub.files["test/tiny", "open_clip_model.safetensors"] = data
  hub.hold["test/tiny", "open_clip_model.safetensors"] = 2  # both asked before either has it
  hub.plain["/bucket/x.npz"] = b"weights" * 1000
  hub.plain_delay = 2.0
  processes = [_python(_FETCH, hub.url + "/bucket/x.npz") for _ in range(2)]
  results = [json.loads(p.communicate(timeout=120)[0]) for p in processes]
  assert [p.returncode for p in processes] == [0, 0]
  assert len(hub.gets("open_clip_model.safetensors")) == 1
  assert len(hub.gets("/bucket/x.npz")) == 1
  (sent,) = hub.plain_sent
  assert all(r[-1] < sent for r in results)  # both asked for the URL while it was being sent
  (hub_path, hub_sha, url_path, url_sha), = {tuple(r[:4]) for r in results}
  assert hub_sha == hashlib.sha256(data).hexdigest() == download.sha256(hub_path)
  assert url_sha == hashlib.sha256(hub.plain["/bucket/x.npz"]).hexdigest()
  assert pathlib.Path(url_path).read_bytes() == hub.plain["/bucket/x.npz"]


def _files(root):
  """{path: bytes} of the cache's files, the lock files aside."""
  return {p: p.read_bytes() for p in pathlib.Path(root).rglob("*")
          if p.is_file() and not p.name.endswith(".lock")}


def _disk_fills_after(monkeypatch, limit):
  """The hub's writer (file_download.http_get, for hub files and URLs) fails as a full disk does
  once `limit` bytes were written."""
  real = file_download.http_get

  class Full:
    def __init__(self, out):
      self.out, self.written = out, 0

    def write(self, chunk):
      if self.written + len(chunk) > limit:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
      self.written += len(chunk)
      return self.out.write(chunk)

    def __getattr__(self, name):
      return getattr(self.out, name)

  monkeypatch.setattr(file_download, "http_get",
                      lambda url, out, *a, **k: real(url, Full(out), *a, **k))


def test_full_disk_names_the_path_and_leaves_the_caches_as_they_were(hub, tmp_path,
                                                                     monkeypatch, caplog):
  torch_model, state = _tiny_openclip()
  data = _safetensors(state)
  hub.files["test/tiny", "open_clip_model.safetensors"] = data
  hub.files["test/tiny", "open_clip_config.json"] = b"{}"
  hub.files["test/tiny2", "open_clip_model.safetensors"] = data
  hub.plain["/bucket/x.npz"] = bytes(constants.DOWNLOAD_CHUNK_SIZE + 1000)  # fails after a chunk
  download.hub_file("test/tiny", ["open_clip_config.json"])  # a cache with something in it
  before = _files(tmp_path / "hf")

  _tiny_row(monkeypatch)
  with monkeypatch.context() as m:
    _disk_fills_after(m, constants.DOWNLOAD_CHUNK_SIZE)
    with pytest.raises(OSError, match=f"test/tiny/open_clip_model.safetensors: writing to the "
                       f"cache {tmp_path / 'hf' / 'hub'} failed \\(No space left on device\\)"):
      hpjax.create_model("hpjax-tiny", pretrained="tinytag")
    with pytest.raises(OSError, match=f"copying to {tmp_path / 'hf' / 'hub'}.*No space left"):
      download.url_file(hub.url + "/bucket/x.npz")
  assert _files(tmp_path / "hf") == before

  # The converted cache: the params are converted and used, the entry is not written.
  _tiny_row(monkeypatch, "test/tiny2")
  download.hub_file("test/tiny2", ["open_clip_model.safetensors"])
  real_write = pathlib.Path.write_text

  def full_disk(self, *args, **kwargs):
    if self.name.endswith(".json.tmp"):  # the entry's record, after its params were written
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(self, *args, **kwargs)

  before = _files(tmp_path / "hf")
  with monkeypatch.context() as m:
    m.setattr(pathlib.Path, "write_text", full_disk)
    model, params = hpjax.create_model("hpjax-tiny", pretrained="tinytag")
  _assert_same_features(model, params, torch_model)
  assert f"converted params not cached in {converted.folder()}" in caplog.text
  assert "No space left on device" in caplog.text
  assert _files(tmp_path / "hf") == before


def test_trainer_loads_a_model_named_by_tag(hub, tmp_path, monkeypatch, train_source):
  _, state = _tiny_openclip()
  hub.files["test/tiny", "open_clip_model.safetensors"] = _safetensors(state)
  _tiny_row(monkeypatch)
  _, want = hpjax.create_model("hpjax-tiny", pretrained="tinytag")
  # lr 0 and no weight decay: the saved params are the ones the run started from.
  trainer.run(hnhp.get_config(train_args(train_source, **{
      "model.pretrained": "tinytag", "lr": 0.0, "optim.weight_decay": 0.0, "total_steps": 2,
      "log_every_steps": 2})), str(tmp_path / "run"))
  _, saved = final_params(str(tmp_path / "run"))
  assert_same_tree(saved, want)
  assert len(hub.gets("open_clip_model.safetensors")) == 1


_FETCH_ONE = """
import sys
from hpjax.checkpoints import download
download.hub_file("test/tiny", ["open_clip_model.safetensors"])
download.url_file(sys.argv[1])
"""


def _kill_when_written(process, hub, folder, pattern):
  """Kills `process` once the server stalled and a partial file of at least a chunk is in
  `folder`; returns the partials' names."""
  assert hub.stalled.wait(60)
  deadline = time.time() + 60
  while not any(p.stat().st_size >= constants.DOWNLOAD_CHUNK_SIZE for p in folder.glob(pattern)):
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.05)
  process.kill()
  process.wait()
  hub.stalled.clear()
  return sorted(p.name for p in folder.glob(pattern))


def test_a_killed_download_leaves_no_half_file_and_the_rerun_completes(hub, tmp_path):
  """huggingface_hub resumes a dropped connection within a run (see the test above), not a
  killed run's partial file: the rerun fetches the whole file, and hpjax removes the partial."""
  _, state = _tiny_openclip()
  data = _safetensors(state)
  key, digest = ("test/tiny", "open_clip_model.safetensors"), hashlib.sha256(data).hexdigest()
  hub.files[key] = data
  url_data = bytes(range(256)) * (constants.DOWNLOAD_CHUNK_SIZE // 256 + 100)
  hub.plain["/bucket/x.npz"] = url_data
  url = hub.url + "/bucket/x.npz"
  blobs = tmp_path / "hf" / "hub" / "models--test--tiny" / "blobs"
  url_folder = download.cache_root() / "hpjax-urls" / hashlib.sha256(url.encode()).hexdigest()[:16]
  snapshot = blobs.parent / "snapshots" / COMMIT / key[1]

  release = hub.stall[key] = threading.Event()
  (partial,) = _kill_when_written(_python(_FETCH_ONE, url), hub, blobs, "*.incomplete")
  release.set()
  assert partial.startswith(digest) and _blobs(tmp_path) == [partial]  # nothing under its name
  assert not snapshot.exists()

  del hub.stall[key]
  release = hub.stall["/bucket/x.npz"] = threading.Event()
  # The rerun fetches the hub file whole, then is killed in the URL's download.
  (url_partial,) = _kill_when_written(_python(_FETCH_ONE, url), hub, url_folder, "*.incomplete")
  release.set()
  assert _blobs(tmp_path) == [digest] and snapshot.read_bytes() == data
  assert [r for _, _, r in hub.gets(key[1])] == [None, None]  # not resumed: fetched whole
  assert sorted(p.name for p in url_folder.iterdir()) == sorted([url_partial, "x.npz.lock"])

  del hub.stall["/bucket/x.npz"]
  assert download.url_file(url).read_bytes() == url_data
  assert sorted(p.name for p in url_folder.iterdir()) == ["x.npz", "x.npz.lock", "x.npz.sha256"]
  assert download.hub_file("test/tiny", [key[1]]).read_bytes() == data
