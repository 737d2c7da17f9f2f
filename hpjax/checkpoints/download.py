"""Fetching checkpoint files: Hugging Face hub files through `huggingface_hub`, any other URL or
`etils.epath` path (gs://, https://) into the same cache, each checked against its checksum.

Hub files use huggingface_hub's cache and protocol: resumed after a dropped connection,
revalidated by ETag, `HF_TOKEN`, `HF_HUB_OFFLINE`, `HF_HOME`, `HF_HUB_CACHE` and `HF_ENDPOINT`
honoured (read when a file is fetched, not when Python started). A hub file's ETag is its
SHA-256 (git-lfs) or its git blob id: a file that does not hash to it is removed from the cache
and fetched once more, and refused if it still does not. Other URLs are copied to
`<hub cache>/hpjax-urls/<hash of the URL>/<file name>`, written aside and renamed under a file
lock, with their SHA-256 beside them.

Several processes (the hosts of a multi-host job on a shared file system, or the processes of
one host) fetching the same file: one downloads under a file lock, the others wait and read the
finished file; a partial download never has the final name. A dropped connection is resumed
within the run (huggingface_hub's retries, with a Range request); a killed process's partial
file is not resumed by the next run, which fetches the file whole and removes the partial.
A full disk fails naming the cache folder and keeps nothing of the file.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import pathlib
import re
import tempfile
from typing import Sequence

from absl import logging
from etils import epath
import filelock

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 1 << 22
_TRUE = ("1", "on", "yes", "true")
# The HTTP clients huggingface_hub versions use: their errors are a dropped connection.
_HTTP_CLIENTS = ("httpx", "httpx2", "requests", "urllib3")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class NotInRepoError(FileNotFoundError):
  """None of the files asked for exists in a (reachable) hub repository."""


def offline() -> bool:
  return (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
          or "").strip().lower() in _TRUE


def cache_root() -> pathlib.Path:
  """huggingface_hub's cache folder, as the environment names it now."""
  if os.environ.get("HF_HUB_CACHE"):
    return pathlib.Path(os.environ["HF_HUB_CACHE"]).expanduser()
  if os.environ.get("HF_HOME"):
    return pathlib.Path(os.environ["HF_HOME"]).expanduser() / "hub"
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  return pathlib.Path(constants.HF_HUB_CACHE)


def hub_file(repo: str, filenames: Sequence[str], revision: str | None = None,
             verify: bool = True) -> pathlib.Path:
  """The cached path of the first of `filenames` that repository `repo` holds, downloaded if it
  is not cached (a progress bar while it downloads); with `verify`, checked against its ETag.

  Raises NotInRepoError when the repository holds none of them, ConnectionError offline with
  nothing cached (naming the repository, the files and the cache folder), PermissionError for a
  gated or private repository.
  """
  from huggingface_hub import errors  # pylint: disable=g-import-not-at-top  (fetching only)
  missing, unreachable = [], None
  for filename in filenames:
    try:
      path = pathlib.Path(_hub_download(repo, filename, revision))
    except errors.LocalEntryNotFoundError as e:  # Not cached, and the hub did not answer.
      cause = e.__cause__
      if isinstance(cause, errors.HfHubHTTPError) and _status(cause) in (401, 403):
        raise _gated(repo, cause) from e
      unreachable = e
      continue
    except (errors.RemoteEntryNotFoundError, errors.RevisionNotFoundError):
      missing.append(filename)
      continue
    except errors.HfHubHTTPError as e:
      if _status(e) in (401, 403):
        raise _gated(repo, e) from e
      if _status(e) == 404:
        raise NotInRepoError(f"hub repository {repo!r} does not exist (404 from "
                             f"{_endpoint()}); check the name") from e
      raise
    if verify:
      path = _verified_hub_file(repo, filename, revision, path)
    _remove_killed_partials(repo, path)
    return path
  if unreachable is not None:
    how = "HF_HUB_OFFLINE is set" if offline() else f"{_endpoint()} cannot be reached"
    raise ConnectionError(
        f"{repo}: {how} and {' / '.join(filenames)} is not in the cache "
        f"{cache_root()}; fetch it once online (python -m hpjax.zoo --download ...), or point "
        "HF_HOME / HF_HUB_CACHE at a cache that holds it") from unreachable
  raise NotInRepoError(f"hub repository {repo!r} holds none of {list(missing)}")


def _hub_download(repo: str, filename: str, revision: str | None, force: bool = False) -> str:
  """hf_hub_download with the environment read now; a connection that keeps dropping (after
  huggingface_hub's retries, each resuming where the last whole chunk ended) is a
  ConnectionError naming the file: the partial download is not kept."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  try:
    return huggingface_hub.hf_hub_download(
        repo, filename, revision=revision, cache_dir=cache_root(), endpoint=_endpoint(),
        token=os.environ.get("HF_TOKEN") or None, local_files_only=offline(),
        force_download=force, library_name="hpjax")
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless a transport error)
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
      raise OSError(e.errno, f"{repo}/{filename}: writing to the cache {cache_root()} failed "
                    f"({e.strerror}); nothing of the file was kept") from e
    if type(e).__module__.split(".")[0] not in _HTTP_CLIENTS:
      raise
    raise ConnectionError(f"{repo}/{filename}: the download from {_endpoint()} failed ({e}); "
                          "nothing was kept under its name; run again to fetch it") from e


def _remove_killed_partials(repo: str, path: pathlib.Path) -> None:
  """Removes the partial downloads (`<etag>.<id>.incomplete`) of a cached hub file that killed
  processes left: huggingface_hub neither resumes nor removes them. Under its lock of that
  file, so no live download's partial is touched."""
  blob = path.resolve()
  if etag(blob) is None or not any(blob.parent.glob(f"{blob.name}.*.incomplete")):
    return  # (no lock taken: a read-only cache stays readable)
  lock = cache_root() / ".locks" / f"models--{repo.replace('/', '--')}" / f"{blob.name}.lock"
  with filelock.FileLock(str(lock)):
    for partial in blob.parent.glob(f"{blob.name}.*.incomplete"):
      logging.info("removing %s, the partial download of a killed process", partial)
      partial.unlink(missing_ok=True)


def _endpoint() -> str:
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _status(error) -> int | None:
  response = getattr(error, "response", None)
  return getattr(response, "status_code", None)


def _gated(repo: str, error) -> PermissionError:
  return PermissionError(
      f"hub repository {repo!r} answered {_status(error)}: it is gated or private; accept its "
      f"terms on its page and pass a token (export HF_TOKEN=hf_..., or `hf auth login`)")


def _verified_hub_file(repo, filename, revision, path: pathlib.Path) -> pathlib.Path:
  """`path`, or a fresh download of it when it does not match its ETag; a second mismatch
  removes it from the cache and is refused."""
  for attempt in range(2):
    if matches_etag(path):
      return path
    blob = path.resolve()
    logging.warning("%s/%s: the cached file %s does not match its checksum %s; %s", repo,
                    filename, blob, blob.name, "fetching it again" if attempt == 0 else "removed")
    blob.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    if attempt == 0 and not offline():
      path = pathlib.Path(_hub_download(repo, filename, revision, force=True))
    else:
      break
  raise ValueError(f"{repo}/{filename}: the downloaded file does not match its published "
                   f"checksum {blob.name}; it was not kept in the cache {cache_root()}")


def etag(path) -> str | None:
  """The checksum a cached hub file is stored under (its blob's name), if it is one."""
  name = pathlib.Path(path).resolve().name
  return name if _SHA256.match(name) or _GIT_SHA1.match(name) else None


def matches_etag(path) -> bool:
  """Whether a cached hub file hashes to its ETag (SHA-256, or git's blob SHA-1); True for a
  file stored under another name (no checksum to check)."""
  expected = etag(path)
  if expected is None:
    return True
  if _SHA256.match(expected):
    return sha256(path) == expected
  digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
  return _hash_into(digest, path) == expected


def sha256(path) -> str:
  return _hash_into(hashlib.sha256(), path)


def _hash_into(digest, path) -> str:
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def url_file(url: str, expected_sha256: str | None = None, verify: bool = True
             ) -> pathlib.Path:
  """The cached copy of a file at `url` (https://, gs://, any epath URL), copied once: written
  aside and renamed under a file lock, refused (and not kept) when its SHA-256 does not start
  with `expected_sha256`. Its SHA-256 is kept in `<file>.sha256`; with `verify`, a cached copy
  that no longer hashes to it is removed and copied again."""
  folder = cache_root() / "hpjax-urls" / hashlib.sha256(url.encode()).hexdigest()[:16]
  path = folder / url.rstrip("/").rsplit("/", 1)[-1]
  if _cached_copy(path, verify, expected_sha256):
    return path
  if offline():
    raise ConnectionError(f"{url}: HF_HUB_OFFLINE is set and the file is not in the cache "
                          f"{folder}")
  folder.mkdir(parents=True, exist_ok=True)
  with filelock.FileLock(str(path) + ".lock"):
    if _cached_copy(path, verify, expected_sha256):  # Another process fetched it meanwhile.
      return path
    for partial in folder.glob(f"{glob.escape(path.name)}.*.incomplete"):  # a killed process's
      partial.unlink()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name + ".", suffix=".incomplete")
    try:
      with os.fdopen(fd, "wb") as out:
        _copy_url(url, out)
      digest = sha256(tmp)
      if expected_sha256 and not digest.startswith(expected_sha256):
        raise ValueError(f"{url}: the downloaded file's SHA-256 {digest} does not match the "
                         f"published {expected_sha256}; it was not kept")
      os.replace(tmp, path)
      _write_aside(pathlib.Path(str(path) + ".sha256"), digest + "\n")
    except OSError as e:
      raise OSError(f"{url}: copying to {folder} failed: {e}") from e
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  return path


def _cached_copy(path: pathlib.Path, verify: bool, expected_sha256: str | None = None) -> bool:
  """Whether `url_file` has a good copy at `path`; a corrupt one is removed. A copy of another
  published checksum (the file was republished) is not good: the URL is fetched again."""
  recorded = recorded_sha256(path)
  if recorded is None:
    return False
  if expected_sha256 and not recorded.startswith(expected_sha256):
    logging.warning("%s was fetched with SHA-256 %s, not the published %s; fetching it again",
                    path, recorded, expected_sha256)
    return False
  if not verify or sha256(path) == recorded:
    return True
  logging.warning("%s does not match its checksum %s; fetching it again", path, recorded)
  path.unlink()
  return False


def recorded_sha256(path) -> str | None:
  """The SHA-256 recorded beside a file `url_file` fetched (None: not fetched, or incomplete)."""
  record = pathlib.Path(str(path) + ".sha256")
  if not (record.is_file() and pathlib.Path(path).is_file()):
    return None
  return record.read_text().strip() or None


def _copy_url(url: str, out) -> None:
  """Streams `url` into `out` with a progress bar: http(s) through huggingface_hub, other
  schemes through etils.epath."""
  if url.startswith(("http://", "https://")):
    from huggingface_hub import file_download  # pylint: disable=g-import-not-at-top
    file_download.http_get(url, out, displayed_filename=url.rsplit("/", 1)[-1])
    return
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  source = epath.Path(url)
  with source.open("rb") as f, tqdm.tqdm(total=source.stat().length, unit="B",
                                         unit_scale=True, desc=source.name) as bar:
    while chunk := f.read(_CHUNK):
      out.write(chunk)
      bar.update(len(chunk))


def _write_aside(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def source_digest(path) -> str:
  """A fetched file's checksum, the key of its converted params: the hub's ETag, the SHA-256
  recorded beside a URL's copy, else the file's SHA-256 (a transformers folder: its weights')."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "model.safetensors"
  return etag(path) or recorded_sha256(path) or sha256(path)
