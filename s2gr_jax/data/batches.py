"""The batch schema: what every model, search and step reads, built in one place.

A batch is a dict of arrays with a leading batch axis ``B`` (one example drops it):

  history_items  int32[B, H]          item ids, left-aligned, 0 = padding
  history_codes  int32[B, H, levels]  their Semantic IDs (0 at padding)
  history_mask   bool[B, H]
  user_bucket    int32[B]             hashed user id in [0, user_buckets)
  target_item    int32[B]             0 when unknown (serving)
  target_codes   int32[B, levels]
  weight         float32[B]           1, or 0 for rows that only pad an evaluation batch

``H`` is static per compiled shape (a length bucket of the pipeline, or
``data.max_history`` when serving); ``levels`` is the SID table's. Models that address
items directly (SASRec) see the identity table (one level, the item itself).

The Grain pipeline (``pipeline.py``), the exported recommender (``export.py``), the
benchmarks and the tests all build batches here, with numpy on the host or ``jax.numpy``
inside a traced function (``xp``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Batch = dict[str, Any]

FIELDS = ("history_items", "history_codes", "history_mask", "user_bucket",
          "target_item", "target_codes", "weight")

_KNUTH = 2654435761  # the multiplicative hash constant (2^32 / golden ratio)


def hash_users(user_ids, num_buckets: int, xp=np):
  """A fixed multiplicative (Knuth) hash of user ids into ``[0, num_buckets)``, int32.

  Arithmetic is modulo 2^32 (uint32 wrap-around), the same under numpy and JAX, so the
  exported function hashes a user exactly as the training pipeline did.
  """
  ids = xp.asarray(user_ids).astype(xp.uint32)
  h = xp.multiply(xp.atleast_1d(ids), xp.uint32(_KNUTH)).reshape(ids.shape)
  return (h % xp.uint32(num_buckets)).astype(xp.int32)


def from_histories(history_items, lookup, user_bucket, target_items=None, weight=None,
                   xp=np) -> Batch:
  """A batch from padded histories int[B, H] and hashed users int[B].

  ``lookup`` is ``SidTable.lookup()`` (int32[num_items + 1, levels], row 0 = padding);
  ``target_items`` (optional, else 0) fills the target fields; ``weight`` defaults to 1.
  """
  items = xp.asarray(history_items).astype(xp.int32)
  lookup = xp.asarray(lookup)
  b = items.shape[0]
  target = (xp.zeros(b, xp.int32) if target_items is None
            else xp.asarray(target_items).astype(xp.int32))
  return {
      "history_items": items,
      "history_codes": lookup[items],
      "history_mask": items > 0,
      "user_bucket": xp.asarray(user_bucket).astype(xp.int32),
      "target_item": target,
      "target_codes": lookup[target],
      "weight": (xp.ones(b, xp.float32) if weight is None
                 else xp.asarray(weight).astype(xp.float32)),
  }


def example(items: np.ndarray, pos: int, lookup: np.ndarray, user_bucket,
            max_history: int, pad_to: int) -> Batch:
  """The training/evaluation example of one user: target ``items[pos]``, history the
  ``max_history`` items before it, padded to ``pad_to`` (numpy, no batch axis)."""
  history = items[max(0, pos - max_history):pos]
  padded = np.zeros(pad_to, np.int32)
  padded[:len(history)] = history
  target = items[pos]
  return {
      "history_items": padded,
      "history_codes": lookup[padded],
      "history_mask": padded > 0,
      "user_bucket": user_bucket,
      "target_item": target,
      "target_codes": lookup[target],
      "weight": np.float32(1.0),
  }


def stack(examples: list[Batch], batch_size: int, filler: Batch) -> Batch:
  """Examples → one batch of ``batch_size`` rows, padded with weight-0 copies of
  ``filler``."""
  pad = dict(filler, weight=np.float32(0.0))
  rows = examples + [pad] * (batch_size - len(examples))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def pad_histories(histories: Sequence[Sequence[int]], max_history: int) -> np.ndarray:
  """Lists of item ids (oldest first) → int32[B, max_history], the last items kept."""
  rows = np.zeros((len(histories), max_history), np.int32)
  for i, hist in enumerate(histories):
    hist = list(hist)[-max_history:]
    rows[i, :len(hist)] = hist
  return rows


def batch_size(batch: Batch) -> int:
  """``B`` of a batch (a language model's prompt batch has ``prompt_tokens``)."""
  if "user_bucket" in batch:
    return batch["user_bucket"].shape[0]
  return batch["prompt_tokens"].shape[0]


def history_length(batch: Batch) -> int:
  """``H`` of a batch (its length bucket)."""
  return batch["history_items"].shape[1]


def shapes(batch: Batch) -> tuple:
  """The static shapes of a batch: one compiled program per distinct value."""
  return tuple(tuple(batch[k].shape) for k in sorted(batch))
