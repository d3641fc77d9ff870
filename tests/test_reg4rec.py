"""REG4Rec's generator and its set-constrained, confidence-ordered beam search."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2gr_jax import decoding
from s2gr_jax import models
from s2gr_jax.decoding import sets
from s2gr_jax.models import reg4rec
from s2gr_jax.sid import table as table_lib

import factories  # pylint: disable=g-bad-import-order


def unordered_table(num_items=30, codebook=4, m=3, seed=0) -> table_lib.SidTable:
  rng = np.random.default_rng(seed)
  return table_lib.SidTable.from_semantic_codes(
      rng.integers(0, codebook, (num_items, m)), (codebook,) * m, ordered=False)


def tiny_reg4rec(table, seed=0, **kw) -> reg4rec.Reg4Rec:
  cfg = dict(codebook_sizes=table.codebook_sizes, semantic_levels=table.semantic_levels,
             user_buckets=10, d_model=32, num_heads=2, head_dim=16, d_ff=64,
             encoder_layers=1, decoder_layers=2, dropout=0.0)
  cfg.update(kw)
  return reg4rec.Reg4Rec(reg4rec.Reg4RecConfig(**cfg), rngs=nnx.Rngs(seed))


def search(model, batch, index, beam):
  return jax.jit(lambda m, b: sets.crss_search(m, b, index, beam=beam, return_orders=True)
                 )(model, batch)


def test_table_has_dedup_and_the_index_covers_every_item():
  table = unordered_table()
  assert table.num_levels == 4  # 30 items over 4^3 codes collide: a de-dup level
  index = sets.CodeSets.from_table(table)
  posting = np.asarray(index.posting)
  for r in range(3):
    for c in range(4):
      holders = set(np.flatnonzero(table.codes[:, r] == c))
      row = posting[r * 4 + c]
      assert set(row[row >= 0]) == holders


@pytest.mark.parametrize("order", ["confidence", "fixed"])
def test_wide_beam_returns_every_item_once_scored_along_its_order(order):
  table = unordered_table()
  model = tiny_reg4rec(table, order=order)
  batch = factories.batch(table, batch_size=2)
  index = decoding.make_index(table, models.get("reg4rec").search)
  assert isinstance(index, sets.CodeSets)
  items, scores, orders = search(model, batch, index, table.num_items)
  items, scores, orders = map(np.asarray, (items, scores, orders))
  for u in range(2):
    assert sorted(items[u].tolist()) == list(range(1, table.num_items + 1))
    assert np.all(np.diff(scores[u]) <= 1e-6)  # best first
    for o in orders[u]:
      assert sorted(o.tolist()) == [0, 1, 2]  # every codebook once
    if order == "fixed":
      assert (orders[u] == np.arange(3)).all()
    # each score is the teacher-forced log-probability along the order taken
    tiled = {k: jnp.repeat(v[u:u + 1], table.num_items, axis=0) for k, v in batch.items()}
    tiled["target_codes"] = jnp.asarray(table.codes[items[u] - 1])
    forced = model.path_log_probs_along(tiled, jnp.asarray(orders[u]))
    np.testing.assert_allclose(np.asarray(forced), scores[u], rtol=1e-4, atol=1e-4)


def test_confidence_order_takes_the_most_probable_codebook_first():
  table = unordered_table()
  model = tiny_reg4rec(table, seed=3)
  batch = factories.batch(table, batch_size=2)
  index = sets.CodeSets.from_table(table)
  _, _, orders = search(model, batch, index, 1)
  state = model.start_decoding(batch, 1)
  lp, _ = model.decode_level(state, None, 0)
  lp = np.where(np.asarray(index.used), np.asarray(lp[:, 0]), -np.inf)
  best = lp.reshape(2, 3, 4).max(-1).argmax(-1)  # per user: most confident codebook
  assert (np.asarray(orders)[:, 0, 0] == best).all()


def test_narrow_beam_returns_only_catalogue_items():
  table = unordered_table(num_items=60, codebook=8, m=4, seed=1)
  model = tiny_reg4rec(table)
  batch = factories.batch(table, batch_size=4)
  items, scores, _ = search(model, batch, sets.CodeSets.from_table(table), 5)
  items = np.asarray(items)
  assert items.min() >= 1 and items.max() <= 60
  assert all(len(set(row)) == 5 for row in items.tolist())
  assert np.isfinite(np.asarray(scores)).all()


def test_order_agnostic_training_is_causal():
  table = unordered_table()
  model = tiny_reg4rec(table)
  batch = factories.batch(table, batch_size=3)
  orders = jnp.asarray([[2, 0, 1], [0, 1, 2], [1, 2, 0]])
  hidden = model.ordered_hidden(batch, orders)
  changed = dict(batch)
  # a different code for the codebook emitted last: only the positions after it change
  last = orders[:, -1]
  codes = np.asarray(batch["target_codes"]).copy()
  codes[np.arange(3), np.asarray(last)] = (codes[np.arange(3), np.asarray(last)] + 1) % 4
  changed["target_codes"] = jnp.asarray(codes)
  again = model.ordered_hidden(changed, orders)
  np.testing.assert_allclose(np.asarray(hidden[:, :3]), np.asarray(again[:, :3]), atol=1e-6)
  assert not np.allclose(np.asarray(hidden[:, 3]), np.asarray(again[:, 3]))


def test_loss_decreases_and_orders_are_random_when_training():
  table = unordered_table()
  model = tiny_reg4rec(table)
  batch = factories.batch(table, batch_size=8)
  a = model.orders(8, nnx.Rngs(dropout=0))
  b = model.orders(8, nnx.Rngs(dropout=1))
  assert not (np.asarray(a) == np.asarray(b)).all()
  assert (np.sort(np.asarray(a), 1) == np.arange(3)).all()
  import optax  # pylint: disable=g-import-not-at-top
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, batch, key):
    (loss, _), grads = nnx.value_and_grad(
        lambda m: m.loss(batch, nnx.Rngs(dropout=key)), has_aux=True)(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt, batch, jax.random.key(i))) for i in range(40)]
  assert losses[-1] < 0.7 * losses[0]


def test_reg4rec_rejects_tiger_only_settings():
  table = unordered_table()
  with pytest.raises(ValueError, match="unlikelihood"):
    tiny_reg4rec(table, unlikelihood_weight=1.0)
  with pytest.raises(ValueError, match="order='random'"):
    tiny_reg4rec(table, order="random")
