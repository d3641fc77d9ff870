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


def test_history_transitions_by_hand():
  # Transitions (gap weights 1, .5, .25): from 1: 2 (1), 3 (.5 + 1) → total 2.5;
  # from 2: 3 (1), 4 (1) → total 2; nothing follows 3 or 4.
  histories = [np.array([1, 2, 3]), np.array([1, 3]), np.array([2, 4])]
  b = baselines.Baselines(histories, num_items=5)
  r25, r2 = np.sqrt(2.5), np.sqrt(2.0)
  assert b.normalized[1, 2] == pytest.approx(1 / r25)
  assert b.normalized[1, 3] == pytest.approx(1.5 / r25)
  assert b.normalized[2, 4] == pytest.approx(1 / r2)
  # History [1, 2] (2 most recent): 3 → 1/√2 + .6·1.5/√2.5 = 1.276, 4 → .707,
  # 2 → .6/√2.5 = .379; then popularity (1, 2, 3 twice; ties by lower id): 1, then 5.
  items = np.array([[1, 2, 0], [1, 4, 0], [2, 1, 0]])
  mask = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0]], bool)
  last = np.array([2, 4, 1])
  ranked = b.rank("history_transitions", last, 5, histories=items, mask=mask).tolist()
  assert ranked[0] == [3, 4, 2, 1, 5]
  # History [1, 4]: nothing follows 4, so the older 1 decides: 3 (.569), 2 (.379);
  # the last-item floor has only popularity here.
  assert ranked[1] == [3, 2, 1, 4, 5]
  assert b.rank("last_item", np.array([4]), 5)[0].tolist() == [1, 2, 3, 4, 5]
  # History [2, 1]: 3 → 1.5/√2.5 + .6/√2 = 1.373, 2 → 1/√2.5 = .632, 4 → .6/√2 = .424.
  assert ranked[2] == [3, 2, 4, 1, 5]
  # Decay 0 reads only the last item: the last-item floor's ranking.
  b0 = baselines.Baselines(histories, num_items=5, history_decay=0.0)
  for row, last_item in zip(b0.rank("history_transitions", last, 5, histories=items,
                                    mask=mask), last):
    assert row.tolist() == b0.rank("last_item", np.array([last_item]), 5)[0].tolist()
  out = b.evaluate([{"history_items": items, "history_mask": mask,
                     "target_item": np.array([5, 2, 2]), "weight": np.ones(3)}], ks=(1, 2))
  assert out["history_transitions"]["recall@2"] == pytest.approx(2 / 3)  # users 1 and 2
  assert out["history_transitions"]["recall@1"] == 0.0
  with pytest.raises(ValueError, match="history_decay"):
    baselines.Baselines(histories, num_items=5, history_decay=1.5)
