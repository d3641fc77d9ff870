"""Recall/NDCG on hand-computed cases, and the popularity / last-item baselines."""

import jax.numpy as jnp
import numpy as np
import pytest

from s2gr_jax import baselines
from s2gr_jax import metrics


def test_rank_metrics_by_hand():
  ranked = np.array([[3, 1, 2, 0, 0],   # target 3 at rank 0
                     [5, 4, 9, 7, 8],   # target 7 at rank 3
                     [1, 2, 3, 4, 5],   # target 6 missing
                     [6, 1, 2, 3, 4]])  # padding row (weight 0)
  target = np.array([3, 7, 6, 6])
  weight = np.array([1.0, 1.0, 1.0, 0.0])
  sums = metrics.rank_metric_sums(ranked, target, weight, ks=(1, 3, 5))
  out = metrics.finalize(sums)
  assert sums["count"] == 3
  assert out["recall@1"] == pytest.approx(1 / 3)
  assert out["recall@3"] == pytest.approx(1 / 3)
  assert out["recall@5"] == pytest.approx(2 / 3)
  assert out["ndcg@1"] == pytest.approx(1 / 3)
  assert out["ndcg@5"] == pytest.approx((1.0 + 1 / np.log2(5)) / 3)
  # The jnp path gives the same numbers (used inside the jitted eval step).
  jsums = metrics.rank_metric_sums(jnp.asarray(ranked), jnp.asarray(target),
                                   jnp.asarray(weight), ks=(1, 3, 5))
  for k in sums:
    assert float(jsums[k]) == pytest.approx(float(sums[k]))
  with pytest.raises(ValueError, match="cannot give @10"):
    metrics.rank_metric_sums(ranked, target, weight, ks=(10,))
  with pytest.raises(ValueError, match="no users"):
    metrics.finalize({"count": 0.0, "recall@1": 0.0})


def test_popularity_and_transition_floor_by_hand():
  histories = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 3]), np.array([5, 1])]
  b = baselines.Baselines(histories, num_items=6)
  # Popularity: 1 and 2 (3 times), 3 (2), 4 and 5 (1), 6 (0); ties by lower id.
  assert b.rank("popularity", np.array([1, 4]), 6).tolist() == [[1, 2, 3, 4, 5, 6]] * 2
  # After item 1: 2 follows at gap 1 twice (2.0); 3 and 4 at gap 2 (0.5 each).
  # 3 beats 4 on popularity; the rest by popularity.
  ranked = b.rank("last_item", np.array([1]), 4)[0].tolist()
  assert ranked[:3] == [2, 3, 4]
  # After item 5: only 1 follows (gap 1) → 1 first, then popularity.
  assert b.rank("last_item", np.array([5]), 2)[0].tolist() == [1, 2]
  assert 0 not in b.rank("last_item", np.array([6]), 6)[0]  # padding never recommended


def test_baseline_evaluate_uses_last_history_item():
  histories = [np.array([1, 2]), np.array([1, 2]), np.array([3, 4])]
  b = baselines.Baselines(histories, num_items=4)
  batch = {"history_items": np.array([[3, 1, 0], [2, 3, 4]]),
           "history_mask": np.array([[1, 1, 0], [1, 1, 1]], bool),
           "target_item": np.array([2, 3]), "weight": np.array([1.0, 1.0])}
  out = b.evaluate([batch], ks=(1, 2))
  # User 0: last item 1 → 2 ✓. User 1: nothing follows 4 → popularity (1, 2) ✗.
  assert out["last_item"]["recall@1"] == 0.5
  assert out["popularity"]["recall@2"] == 0.5  # 1, 2 for everyone: only user 0 hits
