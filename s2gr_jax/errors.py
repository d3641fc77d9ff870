"""The project's errors for bad input: one message that names the file, line or key.

Every reader of user input (prepared datasets, raw Amazon files, item vectors, SID tables,
workdir files read back on resume) and every download raises one of these, so that a
caller (``s2gr_jax.main``, ``s2gr_jax.tune``) can end a run with a single clear line
instead of a traceback, and tests can require that nothing else escapes a reader.

* ``InputError``: the base (a ``ValueError``).
* ``DataError``: a malformed or inconsistent file; the message starts with
  ``path:line:`` where there is a line, else ``path:`` (and names the key).
* ``MissingFileError``: a file that should exist does not; the message says what was
  looked for, and where. Also a ``FileNotFoundError``.
* ``DownloadError``: a fetch that failed (offline, HTTP error) or whose bytes do not
  match the checksum recorded in the code; the bad file has been deleted.
"""

from __future__ import annotations

import os


class InputError(ValueError):
  """Bad input given to the project; the message names where it is."""


class DataError(InputError):
  """Malformed or inconsistent input data; the message names file and line or key."""


class MissingFileError(InputError, FileNotFoundError):
  """A required file is missing; the message says what was looked for and where."""

  def __str__(self) -> str:  # FileNotFoundError's own formatting wants (errno, text)
    return str(self.args[0]) if self.args else ""


class DownloadError(InputError):
  """A download failed or did not match its recorded checksum."""


def line_of_offset(data: bytes, offset: int) -> int:
  """The 1-based line number holding byte ``offset`` of ``data``."""
  return data.count(b"\n", 0, max(offset, 0)) + 1


def read_file_bytes(path: str | os.PathLike[str], what: str = "file") -> bytes:
  """The bytes of a local file; a missing or unreadable file is a named error."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise MissingFileError(f"missing {what}: {path}")
  if not os.path.isfile(path):
    raise DataError(f"{path}: expected a file, found a directory or special file")
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def decode_utf8(data: bytes, path: str | os.PathLike[str]) -> str:
  """UTF-8 text of ``data`` (a leading byte-order mark is allowed); bytes that are not
  UTF-8 are a ``DataError`` naming the line and column."""
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    lineno = line_of_offset(data, e.start)
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise DataError(f"{os.fspath(path)}:{lineno}: not UTF-8 text (byte "
                    f"0x{data[e.start]:02x} at column {column}); is the file damaged or "
                    "binary?") from None
