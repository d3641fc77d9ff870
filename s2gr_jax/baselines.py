"""Non-learned rankers that every results table carries (SPEC §0).

* ``popularity``: items by their number of interactions in the training histories.
* ``last_item``: the last-item transition floor: items by how often they followed the
  user's last history item, 1–3 positions later, in the training histories (weights 1,
  .5, .25), popularity breaking ties. The user's own training history only ever has
  the last item at its end (items do not repeat in these datasets), so counting all
  training histories is counting the other users'.
* ``history_transitions``: the whole history instead of its last item (SPEC §0):
  score(j) = Σ_p d^p · T[h_p, j] over the history h, p = 0 for the most recent item
  (``HISTORY_DECAY`` d = 0.6), where T holds the same 1–3-step transition weights with
  each row divided by the square root of its total (a popular source item does not
  drown the others); popularity breaking ties. The bar a history-reading model clears.

All three see only the training part of every user (never a validation or test target) and
rank the whole catalogue, with no masking of already-seen items, like the models.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from s2gr_jax import metrics

TRANSITION_WEIGHTS = (1.0, 0.5, 0.25)
HISTORY_DECAY = 0.6
NAMES = ("popularity", "last_item", "history_transitions")


class Baselines:
  """Fitted on the training histories; ranks evaluation users."""

  def __init__(self, training_histories: Sequence[np.ndarray], num_items: int,
               history_decay: float = HISTORY_DECAY):
    if not 0.0 <= history_decay <= 1.0:
      raise ValueError(f"history_decay must be in [0, 1], got {history_decay}")
    self.num_items = num_items
    self.history_decay = history_decay
    pop = np.zeros(num_items + 1)
    rows, cols, vals = [], [], []
    for h in training_histories:
      np.add.at(pop, h, 1.0)
      for gap, w in enumerate(TRANSITION_WEIGHTS, start=1):
        if len(h) > gap:
          rows.append(h[:-gap])
          cols.append(h[gap:])
          vals.append(np.full(len(h) - gap, w))
    # Equal counts rank the lower item id first (deterministic; the gap between
    # counts is 1, far above the 1e-9 * id offset).
    pop = pop - np.arange(num_items + 1) * 1e-9
    pop[0] = -np.inf  # padding is never recommended
    self.popularity = pop
    self._by_popularity = np.argsort(-pop, kind="stable")[:num_items]  # no padding
    self._popularity_rank = np.empty(num_items + 1, np.int64)
    self._popularity_rank[np.argsort(-pop, kind="stable")] = np.arange(num_items + 1)
    # Ties in transition weight (multiples of .25) are broken by popularity alone.
    self._tie_break = np.where(np.isfinite(pop), pop / (pop[1:].max() + 1.0) * 0.2,
                               -np.inf)
    self.transitions = sp.csr_matrix(
        (np.concatenate(vals) if vals else np.zeros(0),
         (np.concatenate(rows) if rows else np.zeros(0, int),
          np.concatenate(cols) if cols else np.zeros(0, int))),
        shape=(num_items + 1, num_items + 1))
    self.transitions.sum_duplicates()
    totals = np.asarray(self.transitions.sum(axis=1)).ravel()
    scale = np.where(totals > 0, 1.0 / np.sqrt(np.maximum(totals, 1e-30)), 0.0)
    self.normalized = sp.csr_matrix(sp.diags(scale) @ self.transitions)

  @staticmethod
  def _top(scores: np.ndarray, k: int) -> np.ndarray:
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)

  def _top_sparse(self, scores: sp.csr_matrix, k: int) -> np.ndarray:
    """Top k of each row by (score, then popularity), exactly: the items with a positive
    score first, then the most popular of the rest."""
    scores = sp.csr_matrix(scores)
    out = np.empty((scores.shape[0], k), np.int64)
    for i in range(scores.shape[0]):
      lo, hi = scores.indptr[i], scores.indptr[i + 1]
      idx, val = scores.indices[lo:hi], scores.data[lo:hi]
      idx, val = idx[val > 0], val[val > 0]
      top = idx[np.lexsort((self._popularity_rank[idx], -val))][:k]
      if len(top) < k:
        fill = self._by_popularity[:k + len(top)]
        fill = fill[~np.isin(fill, top)][:k - len(top)]
        top = np.concatenate([top, fill])
      out[i] = top
    return out

  def history_weights(self, histories: np.ndarray, mask: np.ndarray) -> sp.csr_matrix:
    """[B, num_items + 1] sparse: d^p on each history item (p = 0 for the most recent).

    ``histories`` int[B, L] is left-aligned (``mask`` marks the real items); an item that
    occurs twice adds both weights.
    """
    b, length = histories.shape
    n = mask.sum(1, keepdims=True)
    age = n - 1 - np.arange(length)[None]  # 0 for the most recent item
    weights = np.where(mask, self.history_decay ** np.maximum(age, 0), 0.0)
    rows = np.repeat(np.arange(b), length)
    return sp.csr_matrix((weights.ravel(), (rows, histories.ravel())),
                         shape=(b, self.num_items + 1))

  def rank(self, name: str, last_items: np.ndarray, k: int,
           histories: np.ndarray | None = None,
           mask: np.ndarray | None = None) -> np.ndarray:
    """int[B, k] item ids, best first, for users whose history ends in ``last_items``
    (``history_transitions`` reads the whole ``histories`` under ``mask`` instead)."""
    if name == "popularity":
      return np.repeat(self._top(self.popularity[None], k), len(last_items), axis=0)
    if name == "last_item":
      scores = self.transitions[last_items].toarray() + self._tie_break[None]
      return self._top(scores, k)
    if name == "history_transitions":
      if histories is None or mask is None:
        raise ValueError("history_transitions ranks from the whole history: pass "
                         "histories and mask")
      return self._top_sparse(self.history_weights(histories, mask) @ self.normalized, k)
    raise ValueError(f"unknown baseline {name!r}; available: {NAMES}")

  def evaluate(self, batches, ks: Sequence[int] = metrics.DEFAULT_KS) -> dict:
    """Metrics of every baseline over evaluation batches (``Pipelines.eval_batches``)."""
    out = {}
    for name in NAMES:
      sums = None
      for batch in batches:
        mask = np.asarray(batch["history_mask"], bool)
        items = np.asarray(batch["history_items"])
        last = items[np.arange(len(mask)), mask.sum(1) - 1]
        ranked = self.rank(name, last, max(ks), histories=items, mask=mask)
        sums = metrics.add(sums, metrics.rank_metric_sums(
            ranked, batch["target_item"], batch["weight"], ks))
      out[name] = metrics.finalize(sums)
    return out
