"""Verified downloads: every file the project fetches is checked against a checksum
recorded in the code before it is used.

An ``Artifact`` names a file, the URLs it may be fetched from (tried in order; https
first where the host serves it), its SHA-256 and its size. ``fetch`` puts it into a
cache folder once: it streams into ``NAME.part``, hashes on the way, and renames only
when the bytes match, so an interrupted fetch never leaves a file that looks complete.
A file already in the cache is checked again before every use. A mismatch, at either
point, deletes the file and raises ``errors.DownloadError`` (rerunning fetches it
again); a failed fetch (offline, HTTP error) raises it with the URL and the cause, in
one line.

The same rule holds for every artifact the project adds (text encoders, language-model
weights): record its checksum here or beside its loader, and fetch it through
``fetch`` or check it with ``verify``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import socket
import urllib.error
import urllib.request
from typing import Callable

from s2gr_jax import errors

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Artifact:
  """A file the project downloads, and what its bytes must hash to."""

  name: str
  urls: tuple[str, ...]
  sha256: str
  size: int | None = None

  def __post_init__(self):
    if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
      raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")


def sha256_of(path: str | os.PathLike[str]) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      h.update(chunk)
  return h.hexdigest()


def verify(path: str | os.PathLike[str], sha256: str, size: int | None = None,
           what: str | None = None) -> None:
  """Checks a file's size and SHA-256; on a mismatch deletes it and raises."""
  path = os.fspath(path)
  what = what or os.path.basename(path)
  actual_size = os.path.getsize(path)
  problem = None
  if size is not None and actual_size != size:
    problem = f"{actual_size:,} bytes, expected {size:,}"
  else:
    digest = sha256_of(path)
    if digest != sha256:
      problem = f"sha256 {digest}, expected {sha256}"
  if problem is not None:
    os.remove(path)
    raise errors.DownloadError(
        f"{path}: {what} does not match the checksum recorded in s2gr_jax ({problem}); "
        "the file was deleted, rerun to fetch it again")


def _describe(e: BaseException) -> str:
  if isinstance(e, urllib.error.HTTPError):
    return f"HTTP {e.code} {e.reason}"
  if isinstance(e, urllib.error.URLError):
    return f"{e.reason} (no network?)"
  if isinstance(e, (socket.timeout, TimeoutError)):
    return "timed out (no network?)"
  return f"{type(e).__name__}: {e}"


Opener = Callable[..., object]


def fetch(artifact: Artifact, folder: str | os.PathLike[str], *,
          opener: Opener | None = None, timeout: float = 60.0) -> str:
  """The verified local path of ``artifact`` in ``folder``, downloading it if needed.

  ``opener`` is ``urllib.request.urlopen`` unless given (tests pass a fake server).
  """
  folder = os.fspath(folder)
  path = os.path.join(folder, artifact.name)
  if os.path.isfile(path):
    verify(path, artifact.sha256, artifact.size, artifact.name)
    return path
  os.makedirs(folder, exist_ok=True)
  opener = opener or urllib.request.urlopen
  failures = []
  for url in artifact.urls:
    log.info("Fetching %s from %s into %s", artifact.name, url, folder)
    part = path + ".part"
    try:
      h = hashlib.sha256()
      with opener(url, timeout=timeout) as response, open(part, "wb") as out:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
          h.update(chunk)
          out.write(chunk)
    except (OSError, urllib.error.URLError, ValueError) as e:
      if os.path.exists(part):
        os.remove(part)
      failures.append(f"{url}: {_describe(e)}")
      continue
    size = os.path.getsize(part)
    if h.hexdigest() != artifact.sha256 or (artifact.size is not None
                                             and size != artifact.size):
      os.remove(part)
      raise errors.DownloadError(
          f"{artifact.name} fetched from {url} does not match the checksum recorded in "
          f"s2gr_jax (sha256 {h.hexdigest()}, {size:,} bytes; expected "
          f"{artifact.sha256}" + (f", {artifact.size:,} bytes" if artifact.size else "")
          + "); the file was deleted")
    shutil.move(part, path)
    return path
  raise errors.DownloadError(f"could not fetch {artifact.name} into {folder}: "
                             + "; ".join(failures))
