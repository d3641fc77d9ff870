"""Recall@K and NDCG@K over the full catalogue, one target per user (SPEC §0).

With one relevant item, Recall@K = HR@K = [rank < K] and NDCG@K = 1 / log2(rank + 2)
when rank < K (rank 0-based), else 0. ``rank_metric_sums`` returns weighted sums so
batches (and hosts) add up; ``finalize`` divides by the number of users.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (1, 5, 10, 20)


def rank_metric_sums(ranked, target, weight, ks: Sequence[int] = DEFAULT_KS):
  """Weighted sums of Recall@K / NDCG@K for ranked lists.

  Args:
    ranked: int[B, N] item ids, best first (N >= max(ks); 0 = empty slot).
    target: int[B] the true next item.
    weight: float[B] 1 for real users, 0 for padding rows.
  Returns:
    dict ``recall@k`` / ``ndcg@k`` → weighted sum, plus ``count`` (sum of weights).
  """
  xp = jnp if not isinstance(ranked, np.ndarray) else np
  if ranked.shape[1] < max(ks):
    raise ValueError(f"ranked lists of length {ranked.shape[1]} cannot give @{max(ks)}")
  hit = ranked == target[:, None]
  found = hit.any(axis=1)
  rank = xp.where(found, hit.argmax(axis=1), ranked.shape[1])
  gain = xp.where(found, 1.0 / xp.log2(rank + 2.0), 0.0)
  out = {"count": weight.sum()}
  for k in ks:
    within = rank < k
    out[f"recall@{k}"] = (within * weight).sum()
    out[f"ndcg@{k}"] = (within * gain * weight).sum()
  return out


def finalize(sums: dict) -> dict[str, float]:
  count = float(sums["count"])
  if count == 0:
    raise ValueError("no users were evaluated")
  return {k: float(v) / count for k, v in sums.items() if k != "count"}


def add(a: dict | None, b: dict) -> dict:
  if a is None:
    return {k: np.asarray(v, np.float64) for k, v in b.items()}
  return {k: a[k] + np.asarray(b[k], np.float64) for k in a}


# The columns of every results table (stages, the SIDReasoner evaluation).
TABLE_COLUMNS = ("recall@1", "ndcg@1", "recall@5", "ndcg@5", "recall@10", "ndcg@10",
                 "recall@20", "ndcg@20")


def results_table(rows: dict[str, dict[str, float]]) -> str:
  head = "| model | " + " | ".join(
      c.replace("recall", "R").replace("ndcg", "N") for c in TABLE_COLUMNS) + " |"
  lines = [head, "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
  for name, m in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in TABLE_COLUMNS) + " |")
  return "\n".join(lines)
