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


@pytest.mark.parametrize("expand", ["best_codebook", "all_codebooks"])
def test_compacted_search_equals_the_plain_one(expand):
  # 400 items over 3 codebooks of 8: posting lists of ~50, pairs of ~6
  table = unordered_table(num_items=400, codebook=8, m=3, seed=2)
  index = sets.CodeSets.from_table(table)
  plain = sets.CodeSets.from_table(table, compact=False)
  codes = table.codes[:, :3]
  counts = [np.unique(codes[:, r] * 8 + codes[:, s], return_counts=True)[1].max()
            for r, s in ((0, 1), (0, 2), (1, 2))]
  assert index.pair_width == max(counts) < index.posting.shape[1]
  pairs = np.asarray(index.pairs)  # token a of codebook 0 and b of codebook 2 together
  assert pairs[codes[0, 0], 16 + codes[0, 2]] and pairs[16 + codes[0, 2], codes[0, 0]]
  assert not pairs[0, 1]  # two codes of one codebook never go together
  # the run of pair_items for two tokens is exactly the items that carry both
  for item in (0, 7, 123):
    run = np.asarray(index.pair_run(jnp.asarray(16 + codes[item, 2]),
                                    jnp.asarray(codes[item, 0])))
    both = np.flatnonzero((codes[:, 0] == codes[item, 0]) & (codes[:, 2] == codes[item, 2]))
    assert sorted(run[run >= 0].tolist()) == both.tolist() and item in both
  model = tiny_reg4rec(table, seed=1, expand=expand, corp=False)
  batch = factories.batch(table, batch_size=3)
  for beam in (10, 60):
    a = search(model, batch, index, beam)
    b = search(model, batch, plain, beam)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), rtol=1e-5, atol=1e-5)
    assert (np.asarray(a[0]) >= 1).all()


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
  enc, enc_mask = model.encode(batch)  # user token, then <SEP> + L tokens per item
  _, hist, levels = batch["history_codes"].shape
  assert enc.shape[1] == enc_mask.shape[1] == 1 + hist * (levels + 1)
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


def test_reg4rec_on_mpq_ids_through_a_run(tmp_path):
  from s2gr_jax import run  # pylint: disable=g-import-not-at-top
  import test_run  # pylint: disable=g-import-not-at-top
  config = test_run.tiny_config(**{
      "model.name": "reg4rec", "tokenizer.kind": "mpq", "tokenizer.mpq.steps": 40,
      "tokenizer.mpq.log_every": 20, "tokenizer.mpq.hidden": (32,),
      "tokenizer.mpq.latent_dim": 8, "train.num_steps": 20, "train.eval_every": 20,
      "train.checkpoint_every": 20})
  results = run.run(config, str(tmp_path))
  assert 0 <= results["test/recall@10"] <= 1 and 0 <= results["val/ndcg@10"] <= 1
  for row in ("popularity", "last_item", "history_transitions"):  # the table's rows
    assert f"baselines/{row}/test/recall@10" in results
  table = table_lib.SidTable.load(tmp_path / "sid")
  assert not table.ordered


@pytest.mark.parametrize("corp", [True, False])
def test_corp_prunes_exactly_the_inconsistent_paths(corp):
  # Two categories, A (code 0) and B (code 1) in every codebook; in fixed order the
  # check after M - 1 = 2 steps compares the first two steps' categories.
  codes = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 1, 0]])
  table = table_lib.SidTable.from_semantic_codes(codes, (2, 2, 2), ordered=False)
  index = sets.CodeSets.from_table(table, item_category=np.array([0, 1, 0, 1, 0, 1]))
  index = index.replace(token_category=jnp.asarray([0, 1, 0, 1, 0, 1], jnp.int32))
  model = tiny_reg4rec(table, order="fixed", corp=corp)
  batch = factories.batch(table, batch_size=2)
  items, scores, _ = search(model, batch, index, 6)
  for row, score in zip(np.asarray(items), np.asarray(scores)):
    kept = set(row[np.isfinite(score)].tolist())
    if corp:  # items 3 (A, B, ..) and 4 (B, A, ..) are pruned, the rest kept
      assert kept == {1, 2, 5, 6}
    else:
      assert kept == {1, 2, 3, 4, 5, 6}
  assert float(sets.consistency(jnp.asarray([0, 0, 1]))) == pytest.approx(0.5)
  assert float(sets.consistency(jnp.asarray([0, -1, 1]))) == pytest.approx(1.0)


def test_merge_sets_on_a_hand_made_case():
  # paths 0 and 2 hold the same set {c0: 1, c1: 3} (reached in two orders)
  codes = jnp.asarray([[[1, 3, -1], [1, 2, -1], [1, 3, -1], [0, 3, -1]]])
  scores = jnp.asarray([[-1.0, -2.0, -1.5, -jnp.inf]])
  got = np.asarray(sets.merge_sets(codes, scores, "logsumexp"))[0]
  np.testing.assert_allclose(got[:2], [np.logaddexp(-1.0, -1.5), -2.0], rtol=1e-6)
  assert np.isneginf(got[2:]).all()  # the duplicate and the dead path
  got = np.asarray(sets.merge_sets(codes, scores, "max"))[0]
  np.testing.assert_allclose(got[:2], [-1.0, -2.0])


@pytest.mark.parametrize("merge", ["logsumexp", "max"])
def test_all_codebooks_variant_merges_orders_into_one_item(merge):
  table = unordered_table()
  model = tiny_reg4rec(table, expand="all_codebooks", merge=merge)
  batch = factories.batch(table, batch_size=2)
  items, scores, _ = search(model, batch, sets.CodeSets.from_table(table), 12)
  for row, score in zip(np.asarray(items), np.asarray(scores)):
    found = row[np.isfinite(score)]
    assert len(found) == len(set(found.tolist())) == 12  # every slot, no item twice
    assert found.min() >= 1 and found.max() <= table.num_items
    assert np.all(np.diff(score[np.isfinite(score)]) <= 1e-6)


def test_corp_prunes_are_counted_in_the_evaluation():
  from s2gr_jax import evaluate  # pylint: disable=g-import-not-at-top
  from s2gr_jax import parallel  # pylint: disable=g-import-not-at-top
  codes = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 1, 0]])
  table = table_lib.SidTable.from_semantic_codes(codes, (2, 2, 2), ordered=False)
  index = sets.CodeSets.from_table(table).replace(
      token_category=jnp.asarray([0, 1, 0, 1, 0, 1], jnp.int32))
  model = tiny_reg4rec(table, order="fixed")
  from s2gr_jax import config_lib  # pylint: disable=g-import-not-at-top
  mesh_cfg = config_lib.base_config().mesh
  mesh_cfg.update(data=1, fsdp=1, tensor=1)
  mesh = parallel.make_mesh(mesh_cfg)
  graphdef, state = nnx.split(model)
  step = evaluate.make_eval_step(graphdef, mesh, beam=6, ks=(1, 5))
  batch = factories.batch(table, batch_size=2)
  got = evaluate.evaluate(step, state, [dict(batch)], index, mesh)
  assert got["search/corp_pruned"] == pytest.approx(2.0)  # items 3 and 4, every user


def test_token_category_given_directly_and_checked():
  table = unordered_table()
  cats = np.arange(12) % 3
  index = sets.CodeSets.from_table(table, token_category=cats)
  assert np.asarray(index.token_category).tolist() == cats.tolist()
  with pytest.raises(ValueError, match="12 semantic tokens"):
    sets.CodeSets.from_table(table, token_category=np.zeros(5))


def test_next_targets_train_only_the_codebook_each_position_emits():
  table = unordered_table()
  batch = factories.batch(table, batch_size=4)
  both = {t: tiny_reg4rec(table, order="fixed", targets=t) for t in ("remaining", "next")}
  _, rem = both["remaining"].loss(batch)
  _, nxt = both["next"].loss(batch)
  model = both["next"]  # same seed, same parameters: compare with hand-computed terms
  m = table.semantic_levels
  orders = model.orders(4, None)
  lp = model.all_log_probs(model.ordered_hidden(batch, orders)[:, :m])
  flat = np.asarray(model.flat_targets(batch["target_codes"]))
  gold = np.take_along_axis(np.asarray(lp), flat[:, None, :].repeat(m, 1), axis=2)
  w = np.asarray(batch["weight"])
  for t in range(m):  # fixed order: position t emits codebook t
    want_next = -(gold[:, t, t] * w).sum() / max(w.sum(), 1.0)
    want_rem = -(gold[:, t, t:].mean(1) * w).sum() / max(w.sum(), 1.0)
    np.testing.assert_allclose(float(nxt[f"ce_step{t}"]), want_next, rtol=1e-5)
    np.testing.assert_allclose(float(rem[f"ce_step{t}"]), want_rem, rtol=1e-5)
  with pytest.raises(ValueError, match="targets='all'"):
    tiny_reg4rec(table, targets="all")
