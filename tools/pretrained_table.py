"""Writes hpjax/assets/openclip_pretrained.json from the installed open_clip's pretrained table.

  .venv/bin/python tools/pretrained_table.py            # rewrite the asset
  .venv/bin/python tools/pretrained_table.py --check    # fail if the asset is out of date

The table is a published fact (which weights exist for which architecture, and where), so it is
shipped as data: one row per (architecture, tag) of OpenCLIP's table whose architecture hpjax
ships (`hpjax.list_models()`), with the hub repository and file, the URL of rows published
outside a hub, and the SHA-256 (or its prefix) where the URL publishes one.
"""

import argparse
import json
import pathlib
import re
import sys

import open_clip
from open_clip import pretrained as openclip_pretrained

from hpjax.checkpoints import pretrained
from hpjax.models.config import list_models

# OpenCLIP's default hub file when a row names a repository only (a trailing slash).
_HUB_DEFAULT_FILE = "open_clip_pytorch_model.bin"
# Published checksums in URLs: OpenAI's folder name, OpenCLIP's release file-name suffix.
_SHA_IN_URL = (re.compile(r"openaipublic\.azureedge\.net/clip/models/([0-9a-f]{64})/"),
               re.compile(r"mlfoundations/open_clip/releases/download/.*-([0-9a-f]{8,64})\.pt$"))


def rows() -> list[dict]:
  shipped = set(list_models())
  out = []
  for arch, tag in openclip_pretrained.list_pretrained():
    if arch not in shipped:
      continue
    cfg = openclip_pretrained.get_pretrained_cfg(arch, tag)
    row = {"architecture": arch, "tag": tag}
    if cfg.get("hf_hub"):
      # 'org/repo/' (the default file) or 'org/repo/file'.
      org, repo, *file = cfg["hf_hub"].split("/")
      row["hub"] = f"{org}/{repo}"
      row["file"] = "/".join(file) or _HUB_DEFAULT_FILE
    if cfg.get("url"):
      row["url"] = cfg["url"]
      for pattern in _SHA_IN_URL:
        match = pattern.search(cfg["url"])
        if match:
          row["url_sha256"] = match.group(1)
    if "hub" not in row and "url" not in row:
      continue  # A row without any source (none today): nothing to fetch.
    out.append(row)
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true", help="compare instead of writing")
  args = parser.parse_args()
  table = {"source": f"open_clip_torch {open_clip.__version__} pretrained table",
           "rows": rows()}
  text = json.dumps(table, indent=1) + "\n"
  path = pathlib.Path(pretrained.TABLE_PATH)
  if args.check:
    if path.read_text() != text:
      print(f"{path} differs from the installed open_clip's table; rerun without --check")
      return 1
    return 0
  path.write_text(text)
  print(f"{path}: {len(table['rows'])} rows")
  return 0


if __name__ == "__main__":
  sys.exit(main())
