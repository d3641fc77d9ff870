"""The item co-occurrence graph and the propagation CoBa feeds its RQ-VAE (SPEC §2.1-2).

Built from the training part of each user's history only, so validation and test
targets never leak into the Semantic IDs. Rows and columns are ``item_id - 1``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp


def cooccurrence(histories: Sequence[np.ndarray], num_items: int,
                 window: int = 3) -> sp.csr_matrix:
  """Symmetric counts: ``A[i, j]`` = times items i+1 and j+1 sat 1..window positions apart.

  Raises:
    ValueError: when no history has two items within the window (an empty graph).
  """
  if window < 1:
    raise ValueError(f"co-occurrence window must be >= 1, got {window}")
  rows, cols = [], []
  for h in histories:
    h = np.asarray(h, np.int64) - 1
    for gap in range(1, window + 1):
      if len(h) > gap:
        rows.append(h[:-gap])
        cols.append(h[gap:])
  if not rows:
    raise ValueError("the co-occurrence graph is empty: no training history holds two "
                     f"items within {window} positions")
  r, c = np.concatenate(rows), np.concatenate(cols)
  if r.min() < 0 or max(r.max(), c.max()) >= num_items:
    raise ValueError(f"history item ids must be in 1..{num_items}")
  keep = r != c  # an item next to itself (repeat purchases) is not an edge
  r, c = r[keep], c[keep]
  a = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(num_items, num_items))
  a = (a + a.T).tocsr()
  a.sum_duplicates()
  return a


def normalized_adjacency(a: sp.spmatrix) -> sp.csr_matrix:
  """Â = D^-1/2 (A + I) D^-1/2, with D the degrees of A + I (never zero)."""
  a = a + sp.identity(a.shape[0], format="csr")
  d = 1.0 / np.sqrt(np.asarray(a.sum(axis=1)).ravel())
  return (sp.diags(d) @ a @ sp.diags(d)).tocsr()


def propagation_weights(alpha: float, hops: int) -> np.ndarray:
  """β_k ∝ α(1-α)^k for k = 0..hops, summing to 1."""
  beta = alpha * (1.0 - alpha) ** np.arange(hops + 1)
  return beta / beta.sum()


def propagate(x: np.ndarray, a_hat: sp.spmatrix, alpha: float, hops: int) -> np.ndarray:
  """Σ_k β_k H_k with H_0 = X and H_k = (1-α) Â H_{k-1} + α X (personalised PageRank).

  Items with no neighbour keep their content vector (their Â row is the self-loop).
  """
  if not 0.0 < alpha <= 1.0:
    raise ValueError(f"propagation alpha must be in (0, 1], got {alpha}")
  x = np.asarray(x, np.float64)
  beta = propagation_weights(alpha, hops)
  h, out = x, beta[0] * x
  for k in range(1, hops + 1):
    h = (1.0 - alpha) * (a_hat @ h) + alpha * x
    out = out + beta[k] * h
  return out.astype(np.float32)
