"""Pretrained weights by name: OpenCLIP's tags, `hf-hub:` repositories, Hugging Face
transformers repositories and any path or URL, resolved to a local file, converted once.

  create_model("ViT-B-32", pretrained="openai")              # a tag of OpenCLIP's table
  create_model("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")  # architecture from the repo
  create_model(None, pretrained="google/siglip-base-patch16-224")  # a transformers repo
  create_model("ViT-B-16-SigLIP", pretrained="gs://bucket/siglip.npz")

The table of tags is data (assets/openclip_pretrained.json, written by
tools/pretrained_table.py from the installed open_clip's table). Files come through
checkpoints/download.py (huggingface_hub's cache, checksums, locks); the converted Flax params
are cached beside them (checkpoints/converted.py), so a second load reads no PyTorch file.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import pathlib
import re

from hpjax.checkpoints import converted, download, loading
from hpjax.models.config import CLIPConfig, get_model_config

TABLE_PATH = pathlib.Path(__file__).parents[1] / "assets" / "openclip_pretrained.json"
HF_HUB_PREFIX = "hf-hub:"
# An OpenCLIP hub repository: its config, then its weights (safetensors first, as OpenCLIP).
OPENCLIP_CONFIG = "open_clip_config.json"
OPENCLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# A transformers repository: what `save_pretrained` writes (loading.is_hf_folder).
HF_FILES = ("config.json", "model.safetensors")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".json")
_TAG = re.compile(r"^[A-Za-z0-9_-]+$")  # OpenCLIP's tags: no dots, no slashes


@dataclasses.dataclass(frozen=True)
class Row:
  """One (architecture, tag) of OpenCLIP's pretrained table."""
  architecture: str
  tag: str
  hub: str | None = None  # 'org/repo'
  file: str | None = None  # the file OpenCLIP names in `hub`
  url: str | None = None  # where the file is published outside a hub
  url_sha256: str | None = None  # the URL's published SHA-256 (or its leading digits)

  @property
  def name(self) -> str:
    return f"{self.architecture}:{self.tag}"

  def hub_files(self) -> tuple[str, ...]:
    """The hub files to try, in order: a `.safetensors` twin first (as OpenCLIP prefers)."""
    stem, ext = os.path.splitext(self.file)
    twin = (OPENCLIP_WEIGHTS[0] if self.file == OPENCLIP_WEIGHTS[1]
            else stem + ".safetensors" if ext in (".bin", ".pth") else None)
    return (twin, self.file) if twin else (self.file,)


@functools.cache
def rows() -> tuple[Row, ...]:
  return tuple(Row(**row) for row in json.loads(TABLE_PATH.read_text())["rows"])


def list_pretrained(as_str: bool = False) -> list:
  """(architecture, tag) pairs hpjax can fetch, as OpenCLIP's `list_pretrained()`; with as_str,
  'architecture:tag' strings."""
  return [row.name if as_str else (row.architecture, row.tag) for row in rows()]


def list_pretrained_tags_by_model(architecture: str) -> list[str]:
  return [row.tag for row in rows() if row.architecture == architecture]


def clean_tag(tag: str) -> str:
  """Tags compare as OpenCLIP compares them: lower case, '-' as '_'."""
  return tag.lower().replace("-", "_")


def get_row(architecture: str, tag: str) -> Row:
  """The row of (architecture, tag); an unknown tag lists the architecture's tags and close
  matches, or names the architectures a tag of another one belongs to."""
  tag = clean_tag(tag)
  for row in rows():
    if row.architecture == architecture and row.tag == tag:
      return row
  tags = list_pretrained_tags_by_model(architecture)
  elsewhere = sorted({row.architecture for row in rows() if row.tag == tag})
  if elsewhere:
    hint = (f"it is a tag of {', '.join(elsewhere)}: "
            f"create_model({elsewhere[0]!r}, pretrained={tag!r})")
  else:
    close = difflib.get_close_matches(tag, sorted({row.tag for row in rows()}), n=4, cutoff=0.6)
    hint = f"close matches: {close}" if close else "no close match"
  known = f"its tags: {tags}" if tags else "it has no pretrained tags in hpjax's table"
  raise ValueError(f"pretrained={tag!r} is not a tag of {architecture!r} ({known}); {hint}; "
                   "see hpjax.list_pretrained()")


def row_by_name(name: str) -> Row:
  """The row called 'architecture:tag' (the evaluator's and the zoo's spelling)."""
  architecture, sep, tag = name.rpartition(":")
  if not sep:
    raise ValueError(f"{name!r} is not 'architecture:tag' (see hpjax.list_pretrained())")
  return get_row(architecture, tag)


def is_hub_repo(text: str) -> bool:
  """'org/repo' that is not a local path nor a checkpoint file's name: a Hugging Face
  repository."""
  parts = text.split("/")
  return (len(parts) == 2 and all(parts) and "://" not in text and not text.startswith(".")
          and not text.endswith(_FILE_SUFFIXES) and not os.path.exists(text))


def is_row_name(text: str) -> bool:
  """'architecture:tag' of an architecture in the table (the evaluator's spelling)."""
  architecture, sep, tag = text.rpartition(":")
  return (bool(sep) and _TAG.match(tag) is not None
          and any(row.architecture == architecture for row in rows()))


def is_name(pretrained) -> bool:
  """Whether `pretrained` names weights this module resolves (a tag, 'architecture:tag',
  `hf-hub:`, a hub repo or a URL) rather than a local path."""
  if not isinstance(pretrained, str) or os.path.exists(pretrained):
    return False
  return (pretrained.startswith(HF_HUB_PREFIX) or "://" in pretrained
          or is_hub_repo(pretrained) or _TAG.match(pretrained) is not None
          or is_row_name(pretrained))


def hub_model_config(repo: str) -> CLIPConfig:
  """The architecture of an OpenCLIP hub repository, from its open_clip_config.json."""
  path = download.hub_file(repo, (OPENCLIP_CONFIG,))
  config = json.loads(pathlib.Path(path).read_text())
  if "model_cfg" not in config:
    raise ValueError(f"{path} ({repo}/{OPENCLIP_CONFIG}) has no 'model_cfg'")
  return CLIPConfig.from_dict(config["model_cfg"], name=f"{HF_HUB_PREFIX}{repo}")


def fetch(config: CLIPConfig | None, pretrained: str, verify: bool = True) -> pathlib.Path:
  """The local file or folder that `pretrained` names, downloaded if it is not cached; with
  `verify`, checked against its checksum (a corrupt cached file is fetched again)."""
  if pretrained.startswith(HF_HUB_PREFIX) or is_hub_repo(pretrained):
    return fetch_repo(pretrained.removeprefix(HF_HUB_PREFIX), verify)
  if "://" in pretrained:
    return download.url_file(pretrained, verify=verify)
  if is_row_name(pretrained):  # another row's file, converted into `config`
    return fetch_row(row_by_name(pretrained), verify)
  if config is None:
    raise ValueError(f"pretrained={pretrained!r} is a tag; it needs a model name "
                     "(see hpjax.list_pretrained())")
  return fetch_row(get_row(config.name, pretrained), verify)


def fetch_row(row: Row, verify: bool = True) -> pathlib.Path:
  """A row's file: from its hub repository, else from its URL (checked against its digest)."""
  if row.hub:
    return download.hub_file(row.hub, row.hub_files(), verify=verify)
  return download.url_file(row.url, row.url_sha256, verify=verify)


def fetch_repo(repo: str, verify: bool = True) -> pathlib.Path:
  """An OpenCLIP repository's weights file, else a transformers repository's folder."""
  try:
    return download.hub_file(repo, OPENCLIP_WEIGHTS, verify=verify)
  except download.NotInRepoError:
    pass
  for name in HF_FILES:
    path = download.hub_file(repo, (name,), verify=verify)
  return path.parent


def load(name: str | CLIPConfig | None, pretrained: str | None,
         lora_rank: int | None = None, lora_alpha: float = 1.0) -> tuple[CLIPConfig, dict]:
  """(config, float32 params) for a model name (None: the architecture from a transformers
  repository; 'hf-hub:org/repo': from the repository's open_clip_config.json) and a pretrained
  name (None with an 'hf-hub:' name: that repository's weights; 'architecture:tag': that row's
  file, converted into the model named, as the evaluator builds a registry row's activation).

  The converted params are cached (checkpoints/converted.py), keyed by the fetched file's
  checksum: a second load reads neither the PyTorch file nor the network (offline, the cached
  file is found by name). A cache miss checks the fetched file's checksum before converting.
  """
  if isinstance(name, str) and name.startswith(HF_HUB_PREFIX):
    pretrained, name = pretrained or name, hub_model_config(name.removeprefix(HF_HUB_PREFIX))
  elif name is None and pretrained.startswith(HF_HUB_PREFIX):
    try:  # An OpenCLIP repository names its architecture; a transformers one is inferred.
      name = hub_model_config(pretrained.removeprefix(HF_HUB_PREFIX))
    except download.NotInRepoError:
      pass
  elif name is None and is_row_name(pretrained):
    name = pretrained.rpartition(":")[0]
  config = name if name is None or isinstance(name, CLIPConfig) else get_model_config(name)
  path = fetch(config, pretrained, verify=False)
  digest = download.source_digest(path)
  entry = converted.key(digest, config, (lora_rank, lora_alpha) if lora_rank else None)
  hit = converted.lookup(entry)
  if hit is not None:  # The caller's config as given (the key holds all of it).
    return config or hit[0], hit[1]
  path = fetch(config, pretrained, verify=True)
  if config is None:
    if not loading.is_hf_folder(path):
      raise ValueError(f"pretrained={pretrained!r} is not a transformers repository; name its "
                       "architecture: create_model(NAME, pretrained=...)")
    config, params = loading.load_hf(path)
  else:
    params = loading.load_params(path, config, lora_rank=lora_rank, lora_alpha=lora_alpha)
  converted.store(entry, digest, config, params)
  return config, params
