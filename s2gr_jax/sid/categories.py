"""Token categories: the category each SID token stands for (REG4Rec's CORP and rewards).

REG4Rec scores and prunes reasoning paths by the categories of their steps (Figure 2b/c:
category-hit, step-consistency, "is consistent?"). A step is a token, so every token
gets a category: the one most of the items that carry the token belong to.

* ``item_categories(dataset, depth)``: one category id per item, from ``item_text.json``
  (the ``depth``-th name of the item's first category path; ``depth`` 1 skips the
  dataset's own top-level name, as the S3-Rec attributes do) or, without text, from
  ``item2attributes.json`` (the item's first attribute id). Items without either get
  ``-1`` (no category), counted in the log.
* ``token_categories(table, item_category)``: per semantic level, int[codebook size],
  the majority category of the items carrying each code (ties: the smaller id; -1 for an
  unused code or one whose items have no category).
"""

from __future__ import annotations

import ast
import logging
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

NO_CATEGORY = -1


def category_paths(record: dict[str, Any] | None) -> list[list[str]]:
  """The category paths of an item text record: a list of paths, one comma-separated
  path, or the string of a Python list of paths (Beauty's ``item_text.json``)."""
  cats = (record or {}).get("categories")
  if not cats:
    return []
  if isinstance(cats, str):
    text = cats.strip()
    if text.startswith("["):
      try:
        cats = ast.literal_eval(text)
      except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return [[c.strip() for c in text.strip("[]").split(",") if c.strip()]]
    else:
      return [[c.strip() for c in text.split(",") if c.strip()]]
  if isinstance(cats, (list, tuple)) and cats and all(isinstance(c, str) for c in cats):
    return [list(cats)]
  return [[str(c) for c in path] for path in cats if isinstance(path, (list, tuple))]


def item_categories(item_text: Sequence[dict] | None,
                    item_attributes: Sequence[Sequence[int]] | None,
                    num_items: int, depth: int = 1) -> tuple[np.ndarray, list[str]]:
  """int[num_items] category ids (row i = item i + 1, -1 none) and the category names."""
  out = np.full(num_items, NO_CATEGORY, np.int64)
  names: dict[str, int] = {}
  if item_text is not None:
    for i, record in enumerate(item_text):
      paths = [p for p in category_paths(record) if p]
      if paths:
        path = paths[0]
        name = " > ".join(path[1:depth + 1] if len(path) > depth else path)
        out[i] = names.setdefault(name, len(names))
  elif item_attributes is not None:
    for i, attrs in enumerate(item_attributes):
      if attrs:
        out[i] = names.setdefault(f"attribute {int(attrs[0])}", len(names))
  missing = int((out == NO_CATEGORY).sum())
  if missing:
    log.info("Token categories: %d of %d items have no category", missing, num_items)
  return out, list(names)


def token_categories(codes: np.ndarray, codebook_sizes: Sequence[int],
                     item_category: np.ndarray) -> list[np.ndarray]:
  """Per level: int[size] the majority category of the items carrying each code."""
  codes = np.asarray(codes)
  known = item_category >= 0
  num_cats = int(item_category.max()) + 1 if known.any() else 0
  out = []
  for level, size in enumerate(codebook_sizes):
    result = np.full(int(size), NO_CATEGORY, np.int64)
    if num_cats:
      counts = np.zeros((int(size), num_cats), np.int64)
      np.add.at(counts, (codes[known, level], item_category[known]), 1)
      used = counts.sum(1) > 0
      result[used] = counts[used].argmax(1)  # argmax breaks ties by the smaller id
    out.append(result)
  return out
