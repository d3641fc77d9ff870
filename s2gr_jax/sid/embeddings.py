"""Item vectors for the tokenizer: ``float32[num_items, d]``, row ``i`` = item ``i + 1``.

Sources (``config.tokenizer.embedding``):

* ``attributes``: a TF-IDF bag of each item's attribute ids (``item2attributes.json``),
  reduced by a truncated SVD.
* ``text_tfidf``: the same over tokens of the item text (brand, each category level,
  title words), for datasets with ``item_text.json``.
* ``text``: a sentence encoder (all-MiniLM-L6-v2 in Flax, ``text_encoder.py``) over
  each item's title, brand and categories, what TIGER embedded; cached per dataset and
  encoder under ``~/.cache/s2gr_jax/embeddings`` because it is the slow source.
* ``npy``: a user-supplied matrix (``config.tokenizer.embedding_path``), e.g. sentence
  embeddings computed elsewhere.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from s2gr_jax import errors

log = logging.getLogger(__name__)

SOURCES = ("attributes", "text_tfidf", "text", "npy")


def text_tokens(record: dict[str, Any] | None) -> list[str]:
  """Attribute-like tokens from an item text record: brand, categories, title words."""
  if not record:
    return []
  tokens = []
  if record.get("brand"):
    tokens.append("brand:" + str(record["brand"]).strip().lower())
  categories = record.get("categories") or []
  if isinstance(categories, str):
    categories = [categories.split(",")]
  for path in categories:
    for depth, name in enumerate(path[1:] if len(path) > 1 else path):
      tokens.append(f"cat{depth}:{str(name).strip().lower()}")
  for word in re.findall(r"[a-z0-9]+", str(record.get("title") or "").lower()):
    if len(word) > 2:
      tokens.append("w:" + word)
  return sorted(set(tokens))


# Part of the embedding cache key: bump it when ``item_sentence`` changes.
SENTENCE_TEMPLATE = "t1"


def item_sentence(record: dict[str, Any] | None) -> str:
  """The text a sentence encoder sees for one item: title, brand, categories."""
  if not record:
    return ""
  parts = []
  if record.get("title"):
    parts.append(f"Title: {record['title']}")
  if record.get("brand"):
    parts.append(f"Brand: {record['brand']}")
  categories = record.get("categories") or []
  if isinstance(categories, str):
    categories = [categories.split(",")]
  paths = [" > ".join(str(c) for c in path) for path in categories if path]
  if paths:
    parts.append("Categories: " + "; ".join(paths))
  return ". ".join(parts)


def text_embeddings(dataset, encoder_dir: str, cache_dir: str) -> np.ndarray:
  """Sentence-encoder vectors of the item text, computed once per dataset and encoder."""
  from s2gr_jax.sid import text_encoder  # pylint: disable=g-import-not-at-top
  folder = encoder_dir or text_encoder.default_checkpoint_dir()
  name = os.path.basename(os.path.normpath(folder))
  path = os.path.join(cache_dir, f"{dataset.fingerprint}-{name}-{SENTENCE_TEMPLATE}.npy")
  if os.path.exists(path):
    try:
      x = validate(read_matrix(path), len(dataset.item_text), path)
      log.info("Item text embeddings: reusing %s", path)
      return x
    except errors.DataError as e:  # a cache: recompute it
      log.warning("Item text embeddings: the cache is damaged (%s); recomputing", e)
      os.remove(path)
  if not encoder_dir:
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
      log.info("Fetching the all-MiniLM-L6-v2 checkpoint into %s", folder)
    text_encoder.fetch_minilm(folder)  # fetches, or checks what it fetched before
  encoder = text_encoder.SentenceEncoder.from_pretrained(folder)
  t0 = time.time()
  x = encoder.encode([item_sentence(r) for r in dataset.item_text])
  log.info("Item text embeddings: %d items × %d in %.1f s (%s)", x.shape[0], x.shape[1],
           time.time() - t0, folder)
  os.makedirs(cache_dir, exist_ok=True)
  part = f"{path}.{os.getpid()}.part"  # never a half-written cache under the name,
  with open(part, "wb") as f:           # and runs started together do not collide
    np.save(f, x)
  os.replace(part, path)
  return x


def _vocabulary(bags: Sequence[Sequence[Any]]) -> sp.csr_matrix:
  vocab: dict[Any, int] = {}
  rows, cols = [], []
  for i, bag in enumerate(bags):
    for token in set(bag):
      rows.append(i)
      cols.append(vocab.setdefault(token, len(vocab)))
  return sp.csr_matrix((np.ones(len(rows), np.float64), (rows, cols)),
                       shape=(len(bags), max(len(vocab), 1)))


def tfidf_svd(bags: Sequence[Sequence[Any]], dim: int, seed: int = 0) -> np.ndarray:
  """TF-IDF (binary tf, smoothed idf, L2 rows) of token bags, then a truncated SVD.

  Returns ``float32[len(bags), dim']`` with ``dim' = min(dim, vocab - 1)``: the items'
  coordinates ``U * S`` in the top singular directions.
  """
  x = _vocabulary(bags)
  n, v = x.shape
  df = np.asarray((x > 0).sum(axis=0)).ravel()
  idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
  x = x.multiply(idf[None, :]).tocsr()
  norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
  x = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x
  k = max(1, min(dim, min(n, v) - 1))
  if min(n, v) <= 2000:
    u, s, _ = np.linalg.svd(x.toarray(), full_matrices=False)
    u, s = u[:, :k], s[:k]
  else:
    rng = np.random.default_rng(seed)
    u, s, _ = spla.svds(x, k=k, v0=rng.standard_normal(min(n, v)))
    order = np.argsort(-s)
    u, s = u[:, order], s[order]
  # Fix each direction's sign so results do not depend on the LAPACK build.
  signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
  return (u * s * signs).astype(np.float32)


def read_matrix(path: str) -> np.ndarray:
  """A ``.npy`` matrix from disk; an unreadable or non-numeric file is a ``DataError``."""
  if not os.path.exists(path):
    raise errors.MissingFileError(f"item embedding file not found: {path}")
  try:
    x = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:  # truncated, not .npy, pickled objects
    raise errors.DataError(f"{path}: not a readable .npy array ({e}); write it with "
                           "numpy.save(path, float32 matrix)") from None
  if not isinstance(x, np.ndarray):
    raise errors.DataError(f"{path}: holds several arrays (.npz); give one .npy matrix")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise errors.DataError(f"{path}: item embeddings must be real numbers, got dtype "
                           f"{x.dtype}")
  return x


def load_npy(path: str, num_items: int) -> np.ndarray:
  if not path:
    raise ValueError("tokenizer.embedding='npy' needs tokenizer.embedding_path")
  return validate(read_matrix(path), num_items, path)


def validate(x: np.ndarray, num_items: int, where: str) -> np.ndarray:
  """Checks an item matrix: 2-D, one row per catalogue item, finite."""
  if x.ndim != 2:
    raise errors.DataError(f"{where}: item embeddings must be 2-D [num_items, d], got "
                           f"shape {x.shape}")
  if x.shape[0] != num_items:
    raise errors.DataError(f"{where}: {x.shape[0]} rows but the catalogue has "
                           f"{num_items} items (row i must be item i + 1)")
  if x.shape[1] == 0:
    raise errors.DataError(f"{where}: item embeddings have no columns (shape {x.shape})")
  with np.errstate(over="ignore"):
    x = np.asarray(x, np.float32)  # float64 beyond float32's range becomes inf: caught
  bad = ~np.isfinite(x).all(axis=1)
  if bad.any():
    raise errors.DataError(f"{where}: {int(bad.sum())} rows hold NaN or infinite values "
                           f"(first: item {int(np.flatnonzero(bad)[0]) + 1})")
  return x


def item_embeddings(tcfg, dataset) -> np.ndarray:
  """The configured item vectors for ``dataset`` (a ``SequenceDataset``)."""
  if tcfg.embedding == "attributes":
    if dataset.item_attributes is None:
      raise ValueError(f"dataset '{dataset.name}' has no item2attributes.json; use "
                       "tokenizer.embedding='text_tfidf' (item text) or 'npy'")
    x = tfidf_svd(dataset.item_attributes, tcfg.embedding_dim, seed=tcfg.seed)
  elif tcfg.embedding == "text_tfidf":
    if dataset.item_text is None:
      raise ValueError(f"dataset '{dataset.name}' has no item_text.json; use "
                       "tokenizer.embedding='attributes' or 'npy'")
    bags = [text_tokens(r) for r in dataset.item_text]
    x = tfidf_svd(bags, tcfg.embedding_dim, seed=tcfg.seed)
  elif tcfg.embedding == "text":
    if dataset.item_text is None:
      raise ValueError(f"dataset '{dataset.name}' has no item_text.json; use "
                       "tokenizer.embedding='attributes' or 'npy'")
    x = text_embeddings(dataset, tcfg.text_encoder_dir, os.path.join(
        os.path.expanduser("~"), ".cache", "s2gr_jax", "embeddings"))
  elif tcfg.embedding == "npy":
    x = load_npy(tcfg.embedding_path, dataset.num_items)
  else:
    raise ValueError(f"unknown tokenizer.embedding {tcfg.embedding!r}; choose one of "
                     f"{SOURCES}")
  return validate(x, dataset.num_items, f"tokenizer.embedding={tcfg.embedding}")
