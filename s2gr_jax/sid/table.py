"""SidTable: every item's Semantic ID, the de-duplication level and the prefix index.

Everything downstream of the tokenizer reads only this table. Items whose semantic codes
collide get one more level that numbers them within their group (0, 1, 2, ..., as TIGER
does), so every item has a unique SID; that level exists only when there are collisions.

The prefix index is the trie of all SIDs stored as flat arrays (memory linear in the
number of items, never in codes^levels): nodes of each depth sorted lexicographically,
so a node's children are one contiguous range of the next depth.
"""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np

from s2gr_jax import errors
from s2gr_jax import fileio

TABLE_FILE = "sid_table.npz"


def dedup_level(codes: np.ndarray) -> np.ndarray:
  """int32[num_items]: each item's rank among the items sharing all of its codes."""
  order = np.lexsort(codes.T[::-1])
  sorted_codes = codes[order]
  new_group = np.ones(len(codes), bool)
  new_group[1:] = (sorted_codes[1:] != sorted_codes[:-1]).any(1)
  group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(codes)), 0))
  rank = np.empty(len(codes), np.int32)
  rank[order] = np.arange(len(codes)) - group_start
  return rank


@dataclasses.dataclass(frozen=True)
class PrefixIndex:
  """The SID trie as arrays; depth ``d`` nodes are the distinct prefixes of length d.

  Attributes:
    child_start: per depth ``d < L``, int32[nodes_d]: first child (a depth ``d+1`` node).
    child_count: per depth ``d < L``, int32[nodes_d]: number of children.
    node_code: per depth ``d < L``, int32[nodes_{d+1}]: the code that a depth ``d+1``
      node appends to its parent's prefix.
    leaf_item: int32[nodes_L]: the item id of each complete SID.
    max_children: per depth, the largest number of children (static beam widths).
  """

  child_start: tuple[np.ndarray, ...]
  child_count: tuple[np.ndarray, ...]
  node_code: tuple[np.ndarray, ...]
  leaf_item: np.ndarray
  max_children: tuple[int, ...]

  @property
  def num_nodes(self) -> tuple[int, ...]:
    return (1,) + tuple(len(c) for c in self.node_code)


def build_prefix_index(codes: np.ndarray, item_ids: np.ndarray) -> PrefixIndex:
  """Builds the trie arrays from unique SIDs ``codes[i]`` of items ``item_ids[i]``."""
  n, levels = codes.shape
  order = np.lexsort(codes.T[::-1])
  sorted_codes = codes[order]
  node_of_item = np.zeros(n, np.int64)  # depth-0 node (the root) of every item
  starts, counts, node_codes, widths = [], [], [], []
  for depth in range(1, levels + 1):
    new = np.ones(n, bool)
    new[1:] = (sorted_codes[1:, :depth] != sorted_codes[:-1, :depth]).any(1)
    first = np.flatnonzero(new)
    parents = node_of_item[first]  # non-decreasing because the rows are sorted
    num_parents = int(node_of_item.max()) + 1
    count = np.bincount(parents, minlength=num_parents)
    starts.append(np.searchsorted(parents, np.arange(num_parents)).astype(np.int32))
    counts.append(count.astype(np.int32))
    node_codes.append(sorted_codes[first, depth - 1].astype(np.int32))
    widths.append(int(count.max()))
    node_of_item = np.cumsum(new) - 1
  if len(np.unique(node_of_item)) != n:
    raise ValueError("SIDs are not unique; add the de-duplication level first")
  leaf_item = np.empty(n, np.int32)
  leaf_item[node_of_item] = item_ids[order]
  return PrefixIndex(tuple(starts), tuple(counts), tuple(node_codes), leaf_item,
                     tuple(widths))


@dataclasses.dataclass(frozen=True)
class SidTable:
  """Semantic IDs of the catalogue.

  Attributes:
    codes: int32[num_items, levels]; row ``i`` is item ``i + 1``. Includes the
      de-duplication level when there is one.
    codebook_sizes: codes per level (the de-dup level's size is its largest group).
    semantic_levels: levels that come from the quantizer (the rest is de-dup).
    ordered: False for parallel, unordered codebooks (REG4Rec).
    codebooks: the quantizer's code vectors per semantic level, float32[size, dim], when
      it has them (S²GR clusters them to supervise its thoughts).
  """

  codes: np.ndarray
  codebook_sizes: tuple[int, ...]
  semantic_levels: int
  ordered: bool = True
  codebooks: tuple[np.ndarray, ...] | None = None

  @classmethod
  def from_semantic_codes(cls, codes: np.ndarray, codebook_sizes: tuple[int, ...],
                          ordered: bool = True,
                          codebooks=None) -> "SidTable":
    codes = np.asarray(codes, np.int32)
    if codes.ndim != 2 or codes.shape[1] != len(codebook_sizes):
      raise ValueError(f"codes shape {codes.shape} does not match "
                       f"{len(codebook_sizes)} codebooks")
    if (codes < 0).any() or (codes >= np.asarray(codebook_sizes)[None]).any():
      raise ValueError("codes out of range of their codebooks")
    rank = dedup_level(codes)
    sizes = tuple(int(s) for s in codebook_sizes)
    if rank.max() > 0:
      codes = np.concatenate([codes, rank[:, None]], axis=1)
      sizes = sizes + (int(rank.max()) + 1,)
    if codebooks is not None:
      codebooks = tuple(np.asarray(c, np.float32) for c in codebooks)
      if [len(c) for c in codebooks] != list(codebook_sizes):
        raise ValueError("codebooks do not match the codebook sizes")
    return cls(codes=codes, codebook_sizes=sizes, semantic_levels=len(codebook_sizes),
               ordered=ordered, codebooks=codebooks)

  @classmethod
  def identity(cls, num_items: int) -> "SidTable":
    """One level whose code is the item itself: for models that address items directly."""
    return cls(codes=np.arange(num_items, dtype=np.int32)[:, None],
               codebook_sizes=(num_items,), semantic_levels=1)

  @property
  def num_items(self) -> int:
    return self.codes.shape[0]

  @property
  def num_levels(self) -> int:
    return self.codes.shape[1]

  @property
  def item_ids(self) -> np.ndarray:
    return np.arange(1, self.num_items + 1, dtype=np.int32)

  def lookup(self) -> np.ndarray:
    """int32[num_items + 1, levels] indexed by item id; row 0 (padding) is zeros."""
    return np.concatenate([np.zeros((1, self.num_levels), np.int32), self.codes])

  def prefix_index(self) -> PrefixIndex:
    return build_prefix_index(self.codes, self.item_ids)

  def save(self, folder) -> None:
    """Writes ``folder/sid_table.npz`` (a local path or a gs:// URL)."""
    fileio.makedirs(folder)
    books = {f"codebook_{l}": c for l, c in enumerate(self.codebooks or ())}
    fileio.save_npz(fileio.join(folder, TABLE_FILE), codes=self.codes,
             item_ids=self.item_ids, codebook_sizes=np.asarray(self.codebook_sizes),
             semantic_levels=self.semantic_levels, ordered=self.ordered, **books)

  @classmethod
  def load(cls, folder, num_items: int | None = None) -> "SidTable":
    """Reads ``folder/sid_table.npz`` and checks it (shapes, ranges, unique SIDs, and
    ``num_items`` when given); a damaged or inconsistent table is an
    ``errors.DataError`` naming the file."""
    path = fileio.join(folder, TABLE_FILE)
    if not fileio.exists(path):
      raise errors.MissingFileError(f"missing Semantic-ID table: {path}")
    try:
      with fileio.load_npz(path) as f:
        arrays = {k: np.asarray(f[k]) for k in f.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
      raise errors.DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: "
                             f"{e}); delete it to rebuild the Semantic IDs") from None
    missing = [k for k in ("codes", "codebook_sizes", "semantic_levels", "ordered")
               if k not in arrays]
    if missing:
      raise errors.DataError(f"{path}: missing arrays {missing}")
    codes, sizes = arrays["codes"], arrays["codebook_sizes"]

    def bad(why: str):
      return errors.DataError(f"{path}: {why}; delete it to rebuild the Semantic IDs")

    if codes.ndim != 2 or codes.shape[0] == 0 or not np.issubdtype(codes.dtype, np.integer):
      raise bad(f"'codes' must be a non-empty 2-D integer array, got {codes.dtype} "
                f"{codes.shape}")
    if sizes.shape != (codes.shape[1],) or not np.issubdtype(sizes.dtype, np.integer):
      raise bad(f"'codebook_sizes' {sizes.tolist()} does not match {codes.shape[1]} levels")
    for key in ("semantic_levels", "ordered"):
      if arrays[key].shape != () or not (np.issubdtype(arrays[key].dtype, np.integer)
                                         or arrays[key].dtype == np.bool_):
        raise bad(f"'{key}' must be one integer or boolean, got {arrays[key].dtype} "
                  f"{arrays[key].shape}")
    levels = int(arrays["semantic_levels"])
    if not 1 <= levels <= codes.shape[1]:
      raise bad(f"semantic_levels={levels} is not in 1..{codes.shape[1]}")
    if (codes < 0).any() or (codes >= sizes[None]).any():
      level = int(np.flatnonzero(((codes < 0) | (codes >= sizes[None])).any(0))[0])
      raise bad(f"codes of level {level} are outside 0..{int(sizes[level]) - 1}")
    if len(np.unique(codes, axis=0)) != len(codes):
      raise bad("two items have the same Semantic ID")
    if num_items is not None and codes.shape[0] != num_items:
      raise bad(f"{codes.shape[0]} items, but the dataset has {num_items}")
    books = None
    if "codebook_0" in arrays:
      books = tuple(np.asarray(arrays.get(f"codebook_{l}"), np.float32)
                    for l in range(levels))
      for l, book in enumerate(books):
        if book.ndim != 2 or len(book) != int(sizes[l]) or not np.isfinite(book).all():
          raise bad(f"codebook_{l} must be a finite [{int(sizes[l])}, dim] matrix, got "
                    f"shape {book.shape}")
    return cls(codes=codes.astype(np.int32), codebook_sizes=tuple(int(s) for s in sizes),
               semantic_levels=levels, ordered=bool(arrays["ordered"]), codebooks=books)
