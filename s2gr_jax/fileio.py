"""Run files on the local disk or in Google Cloud Storage (``gs://bucket/dir``).

Everything a run writes into its workdir goes through here (or through Orbax, which
writes checkpoints with tensorstore's own GCS driver), so a workdir may be a local path
or a ``gs://`` URL; the latter needs ``gcsfs`` (``pip install 's2gr_jax[gcs]'``) and the
machine's Google credentials (on a TPU VM, its service account).

Cloud Storage is an object store: it has no directories and no appends. So ``makedirs``
does nothing there (a missing bucket is an error when the first file is written; it is
never created), and the metrics writer rewrites ``metrics.jsonl`` whole instead of
appending (see ``metric_writer``).

Tests run these paths against a local fake GCS server (``tests/test_gcs.py``): gcsfs
reads ``STORAGE_EMULATOR_HOST`` and tensorstore ``TENSORSTORE_GCS_HTTP_URL``.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Any

from etils import epath

REMOTE_PREFIX = "gs://"
# Bucket names: 3-63 characters (dotted names up to 222), lowercase letters, digits,
# dashes, underscores and dots, starting and ending with a letter or digit.
_BUCKET = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$")


def is_remote(path) -> bool:
  return str(path).startswith(REMOTE_PREFIX)


def check_run_dir(what: str, path) -> None:
  """A workdir is a local path or ``gs://bucket[/dir]``; anything else is refused here,
  before anything is written, with the reason."""
  text = str(path)
  if not text:
    raise ValueError(f"{what} is empty")
  if "://" not in text:
    return
  if not is_remote(text):
    raise ValueError(f"{what}={text!r}: only local paths and gs:// URLs are supported "
                     "for run directories")
  if not _BUCKET.match(text):
    raise ValueError(f"{what}={text!r}: not a valid gs://BUCKET/PATH URL (bucket names "
                     "are 3-63 lowercase letters, digits, '-', '_' and '.')")
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(f"{what}={text!r} needs gcsfs to read and write Cloud Storage: "
                      "pip install 's2gr_jax[gcs]' (or pip install gcsfs)") from e


def path(p) -> epath.Path:
  """``p`` as an ``epath.Path`` (local paths with ``~`` expanded)."""
  if isinstance(p, epath.Path):
    return p
  return epath.Path(p if is_remote(p) else os.path.expanduser(str(p)))


def join(base, *parts) -> epath.Path:
  return path(base).joinpath(*parts)


def absolute(p) -> str:
  """An absolute local path, or the URL unchanged."""
  return str(p) if is_remote(p) else os.path.abspath(os.path.expanduser(str(p)))


def makedirs(p) -> None:
  """Creates a local directory and its parents; nothing to do in an object store."""
  if not is_remote(p):
    path(p).mkdir(parents=True, exist_ok=True)


def exists(p) -> bool:
  return path(p).exists()


def read_text(p) -> str:
  return path(p).read_text()


def write_text(p, text: str) -> None:
  path(p).write_text(text)


def read_json(p) -> Any:
  """A JSON file; a damaged one (not UTF-8, not JSON) is an ``errors.DataError`` that
  names it and the line."""
  from s2gr_jax import errors  # pylint: disable=g-import-not-at-top
  data = read_bytes(p)
  try:
    return json.loads(errors.decode_utf8(data, str(p)))
  except json.JSONDecodeError as e:
    raise errors.DataError(f"{p}:{e.lineno}: not valid JSON ({e.msg}); the file is "
                           "damaged (a run killed while writing it?)") from None


def write_json(p, obj, **kwargs) -> None:
  write_text(p, json.dumps(obj, **kwargs))


def read_bytes(p) -> bytes:
  return path(p).read_bytes()


def write_bytes(p, data: bytes) -> None:
  path(p).write_bytes(data)


def save_npz(p, **arrays) -> None:
  """``np.savez`` to a local or remote file (built in memory, written in one go)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(p, buf.getvalue())


def load_npz(p):
  """``np.load`` of an ``.npz`` file, local or remote (use it as a context manager)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.load(io.BytesIO(read_bytes(p)))


def save_figure(fig, p, **kwargs) -> None:
  """``fig.savefig`` as PNG to a local or remote file."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", **kwargs)
  write_bytes(p, buf.getvalue())


def copy(src, dst) -> None:
  """Copies a (small) file, also between the local disk and Cloud Storage."""
  write_bytes(dst, read_bytes(src))
