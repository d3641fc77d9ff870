"""Constrained beam search against brute-force scoring; cached decoding vs teacher forcing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2gr_jax import decoding
import factories


@pytest.fixture(scope="module")
def setup():
  table = factories.sid_table(num_items=40, codebook=4, levels=3)
  model = factories.tiny_tiger(table, seed=1)
  return table, model, factories.batch(table, batch_size=3), table.prefix_index()


def run_beam(model, batch, index, beam):
  fn = jax.jit(lambda b, trie: decoding.beam_search(model, b, trie, beam=beam))
  items, scores = fn(batch, decoding.PrefixTrie.from_index(index))
  return np.asarray(items), np.asarray(scores)


def test_wide_beam_equals_brute_force(setup):
  table, model, batch, index = setup
  brute = np.asarray(decoding.score_all_items(model, batch, table.codes))  # [B, items]
  beam = max(index.num_nodes)  # wide enough to never prune: exact search
  items, scores = run_beam(model, batch, index, beam)
  order = np.argsort(-brute, axis=1, kind="stable")
  np.testing.assert_array_equal(items[:, :table.num_items], order + 1)
  np.testing.assert_allclose(scores[:, :table.num_items],
                             np.take_along_axis(brute, order, 1), rtol=1e-5, atol=1e-5)
  assert (items[:, table.num_items:] == 0).all()  # more beams than items: empty slots
  assert np.isneginf(scores[:, table.num_items:]).all()


def test_narrow_beam_returns_valid_distinct_items_with_true_scores(setup):
  table, model, batch, index = setup
  brute = np.asarray(decoding.score_all_items(model, batch, table.codes))
  items, scores = run_beam(model, batch, index, beam=7)
  for row_items, row_scores, row_brute in zip(items, scores, brute):
    assert len(set(row_items.tolist())) == 7 and row_items.min() >= 1
    np.testing.assert_allclose(row_scores, row_brute[row_items - 1], rtol=1e-5, atol=1e-5)
    assert (np.diff(row_scores) <= 1e-6).all()  # best first
    # Pruning can only miss items: the i-th beam never beats the i-th best item.
    assert (row_scores <= np.sort(row_brute)[::-1][:7] + 1e-5).all()


def test_bfloat16_search_scores_match_float32_scoring(setup):
  # Same parameters (float32 storage), bf16 compute with float32 accumulation: the wide
  # beam still returns every item once, with the float32 model's scores to bf16 accuracy.
  table, model, batch, index = setup
  low = factories.tiny_tiger(table, seed=1, dtype="bfloat16")
  brute = np.asarray(decoding.score_all_items(model, batch, table.codes))
  items, scores = run_beam(low, batch, index, beam=max(index.num_nodes))
  n = table.num_items
  assert (np.sort(items[:, :n], axis=1) == np.arange(1, n + 1)).all()
  np.testing.assert_allclose(scores[:, :n], np.take_along_axis(brute, items[:, :n] - 1, 1),
                             atol=0.05)
  assert np.abs(scores[:, :n] - np.take_along_axis(brute, items[:, :n] - 1, 1)).max() > 0


def test_only_catalogue_sids_come_out():
  # A sparse catalogue: 6 items over 4^3 possible SIDs; every output must be one of them.
  table = factories.sid_table(num_items=6, codebook=4, levels=3, seed=3)
  model = factories.tiny_tiger(table, seed=2)
  index = table.prefix_index()
  items, scores = run_beam(model, factories.batch(table, 4), index, beam=10)
  assert set(items[np.isfinite(scores)].tolist()) <= set(range(1, 7))
  assert (np.isfinite(scores).sum(1) == 6).all()


def test_cached_decoding_reproduces_teacher_forced_logits(setup):
  table, model, batch, _ = setup
  beam = 2
  logits = model.teacher_forced_logits(batch)
  state = model.start_decoding(batch, beam)
  codes = None
  for level in range(table.num_levels):
    log_probs, state = model.decode_level(state, codes, level)
    expected = jax.nn.log_softmax(logits[level], -1)
    np.testing.assert_allclose(np.asarray(log_probs[:, 0]), np.asarray(expected),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(log_probs[:, 1]), np.asarray(expected),
                               rtol=1e-5, atol=1e-5)
    codes = jnp.repeat(batch["target_codes"][:, level:level + 1], beam, axis=1)
