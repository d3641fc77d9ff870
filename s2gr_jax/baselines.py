"""Non-learned rankers that every results table carries (SPEC §0).

* ``popularity``: items by their number of interactions in the training histories.
* ``last_item``: the last-item transition floor: items by how often they followed the
  user's last history item, 1–3 positions later, in the training histories (weights 1,
  .5, .25), popularity breaking ties. The user's own training history only ever has
  the last item at its end (items do not repeat in these datasets), so counting all
  training histories is counting the other users'.

Both see only the training part of every user (never a validation or test target) and
rank the whole catalogue, with no masking of already-seen items, like the models.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from s2gr_jax import metrics

TRANSITION_WEIGHTS = (1.0, 0.5, 0.25)


class Baselines:
  """Fitted on the training histories; ranks evaluation users."""

  def __init__(self, training_histories: Sequence[np.ndarray], num_items: int):
    self.num_items = num_items
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
    # Ties in transition weight (multiples of .25) are broken by popularity alone.
    self._tie_break = np.where(np.isfinite(pop), pop / (pop[1:].max() + 1.0) * 0.2,
                               -np.inf)
    self.transitions = sp.csr_matrix(
        (np.concatenate(vals) if vals else np.zeros(0),
         (np.concatenate(rows) if rows else np.zeros(0, int),
          np.concatenate(cols) if cols else np.zeros(0, int))),
        shape=(num_items + 1, num_items + 1))

  @staticmethod
  def _top(scores: np.ndarray, k: int) -> np.ndarray:
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)

  def rank(self, name: str, last_items: np.ndarray, k: int) -> np.ndarray:
    """int[B, k] item ids, best first, for users whose history ends in ``last_items``."""
    if name == "popularity":
      return np.repeat(self._top(self.popularity[None], k), len(last_items), axis=0)
    if name == "last_item":
      scores = self.transitions[last_items].toarray() + self._tie_break[None]
      return self._top(scores, k)
    raise ValueError(f"unknown baseline {name!r}")

  def evaluate(self, batches, ks: Sequence[int] = metrics.DEFAULT_KS) -> dict:
    """Metrics of both baselines over evaluation batches (from ``Pipelines.eval_batches``)."""
    out = {}
    for name in ("popularity", "last_item"):
      sums = None
      for batch in batches:
        mask = batch["history_mask"]
        last = batch["history_items"][np.arange(len(mask)), mask.sum(1) - 1]
        ranked = self.rank(name, last, max(ks))
        sums = metrics.add(sums, metrics.rank_metric_sums(
            ranked, batch["target_item"], batch["weight"], ks))
      out[name] = metrics.finalize(sums)
    return out
