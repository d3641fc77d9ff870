"""S²GR: thought recurrence, causality, losses, the anchor's stop-gradient, decoding;
and the SASRec baseline."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from s2gr_jax import decoding
from s2gr_jax.models import s2gr
from s2gr_jax.models import sasrec
import factories


def make_s2gr(table, **kw):
  rng = np.random.default_rng(0)
  books = [rng.normal(size=(s, 5)).astype(np.float32) for s in table.codebook_sizes[:3]]
  centres, assign = s2gr.cluster_codebooks(books, 2)
  cfg = dict(codebook_sizes=table.codebook_sizes, user_buckets=10, d_model=32, num_heads=2,
             head_dim=16, d_ff=64, encoder_layers=2, decoder_layers=2, dropout=0.0,
             num_clusters=2, anchor_layers=1)
  cfg.update(kw)
  return s2gr.S2gr(s2gr.S2grConfig(**cfg), centres=centres, code_cluster=assign,
                   rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def setup():
  table = factories.sid_table(num_items=40, codebook=4, levels=3)
  return table, make_s2gr(table), factories.batch(table, batch_size=3)


def reference_recurrence(model, batch):
  """An independent path: full decoder passes over ever longer inputs, no cache."""
  enc, mask = model.encode(batch)
  target = batch["target_codes"]
  m, levels = model.cfg.thoughts_per_level, model.cfg.num_levels
  inputs, thoughts = [], []
  for level in range(levels):
    inputs.append(model.bos((target.shape[0],)) if level == 0
                  else model.embed_codes(target[:, level - 1], level - 1))
    for j in range(m):
      h = model.decode(jnp.stack(inputs, 1), enc, mask)[:, -1]
      inputs.append(h + model.thought_pos[...][level, j])
      thoughts.append(inputs[-1])
  hidden = model.decode(jnp.stack(inputs, 1), enc, mask)
  logits = [model.level_logits(hidden[:, (l + 1) * (1 + m) - 1], l) for l in range(levels)]
  return logits, thoughts


def test_recurrence_shapes_causality_and_reference(setup):
  table, model, batch = setup
  logits, thoughts, _, _ = model.recurrence(batch)
  levels = table.num_levels
  assert len(thoughts) == levels and thoughts[0][0].shape == (3, 32)
  assert [lg.shape for lg in logits] == [(3, s) for s in table.codebook_sizes]
  ref_logits, ref_thoughts = reference_recurrence(model, batch)
  for a, b in zip(logits, ref_logits):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
  for a, b in zip([t for level in thoughts for t in level], ref_thoughts):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
  # Changing the code of level 2 leaves the thoughts of levels 0..2 untouched and
  # changes the thought of level 3 (which reads s_2).
  changed = dict(batch, target_codes=batch["target_codes"].at[:, 2].set(
      (batch["target_codes"][:, 2] + 1) % table.codebook_sizes[2]))
  _, thoughts2, _, _ = model.recurrence(changed)
  for level in range(3):
    np.testing.assert_array_equal(np.asarray(thoughts[level][0]),
                                  np.asarray(thoughts2[level][0]))
  assert not np.allclose(np.asarray(thoughts[3][0]), np.asarray(thoughts2[3][0]))


def test_more_thoughts_per_level():
  table = factories.sid_table(num_items=40, codebook=4, levels=3)
  model = make_s2gr(table, thoughts_per_level=2)
  batch = factories.batch(table)
  assert model.decode_positions() == 3 * table.num_levels
  logits = model.teacher_forced_logits(batch)
  ref_logits, _ = reference_recurrence(model, batch)
  state = model.start_decoding(batch, 1)
  codes = None
  for level in range(table.num_levels):
    log_probs, state = model.decode_level(state, codes, level)
    np.testing.assert_allclose(np.asarray(log_probs[:, 0]),
                               np.asarray(jax.nn.log_softmax(logits[level])), atol=2e-5)
    np.testing.assert_allclose(np.asarray(logits[level]), np.asarray(ref_logits[level]),
                               atol=2e-5)
    codes = batch["target_codes"][:, level:level + 1]


def test_cluster_infonce_known_answer():
  centres = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  z = jnp.array([[2.0, 0.0], [0.0, 3.0]])
  ce, predicted = s2gr.cluster_infonce(z, centres, jnp.array([0, 0]), 0.1)
  # Row 0: cosines (1, 0, -1) / 0.1 → CE of class 0 = log(1 + e^-10 + e^-20).
  np.testing.assert_allclose(float(ce[0]), np.log1p(np.exp(-10) + np.exp(-20)), atol=1e-6)
  # Row 1: cosines (0, 1, 0) / 0.1 → CE of class 0 = log(2 + e^10) - 0.
  np.testing.assert_allclose(float(ce[1]), np.log(2 + np.exp(10)), rtol=1e-5)
  assert predicted.tolist() == [0, 1]


def test_anchor_regulariser_does_not_train_the_anchor(setup):
  _, model, batch = setup
  grads = nnx.grad(lambda m: m.loss(batch)[1]["reg"])(model)
  anchor_grads = jax.tree.leaves(nnx.state(grads.anchor))
  assert anchor_grads and all(float(jnp.abs(g).max()) == 0.0 for g in anchor_grads)
  assert float(jnp.abs(grads.thought_pos[...]).max()) > 0  # it does move the thought
  nce_grads = nnx.grad(lambda m: m.loss(batch)[1]["nce"])(model)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(nnx.state(nce_grads.anchor)))


def test_cached_decoding_matches_teacher_forcing_and_brute_force(setup):
  table, model, batch = setup
  logits = model.teacher_forced_logits(batch)
  state = model.start_decoding(batch, 2)
  codes = None
  for level in range(table.num_levels):
    log_probs, state = model.decode_level(state, codes, level)
    for beam in range(2):
      np.testing.assert_allclose(np.asarray(log_probs[:, beam]),
                                 np.asarray(jax.nn.log_softmax(logits[level])), atol=2e-5)
    codes = jnp.repeat(batch["target_codes"][:, level:level + 1], 2, axis=1)
  index = table.prefix_index()
  brute = np.asarray(decoding.score_all_items(model, batch, table.codes))
  items, scores = decoding.beam_search(model, batch, decoding.PrefixTrie.from_index(index),
                                       beam=max(index.num_nodes))
  np.testing.assert_array_equal(np.asarray(items)[:, :40], np.argsort(-brute, 1) + 1)
  np.testing.assert_allclose(np.asarray(scores)[:, :40], -np.sort(-brute, 1), atol=2e-5)


def test_loss_parts_and_ablations(setup):
  table, model, batch = setup
  _, parts = model.loss(batch)
  expected = (parts["rec"] + parts["align"] + parts["nce"] + 0.1 * parts["reg"])
  np.testing.assert_allclose(float(parts["loss"]), float(expected), rtol=1e-5)
  no_align = make_s2gr(table, align_weight=0.0)
  assert "align" not in no_align.loss(batch)[1]
  no_anchor = make_s2gr(table, anchor_layers=0)
  assert "nce" not in no_anchor.loss(batch)[1] and no_anchor.anchor is None
  tiger_like = make_s2gr(table, thoughts_per_level=0)
  assert tiger_like.decode_positions() == table.num_levels
  assert set(tiger_like.loss(batch)[1]) == {f"{m}_l{l}" for m in ("ce", "acc")
                                            for l in range(4)} | {"rec", "loss"}


def test_s2gr_learns_a_batch(setup):
  table, _, batch = setup
  model = make_s2gr(table, dropout=0.1)
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, key):
    (loss, parts), grads = nnx.value_and_grad(
        lambda m: m.loss(batch, nnx.Rngs(dropout=key)), has_aux=True)(model)
    opt.update(model, grads)
    return parts["rec"]

  rec = [float(step(model, opt, jax.random.key(i))) for i in range(60)]
  assert rec[-1] < 0.3 * rec[0]


@pytest.mark.parametrize("kind", ["tiger", "s2gr"])
def test_unlikelihood_of_recent_history_items_by_brute_force(kind):
  """The variant's term is −log(1 − P) of each user's k most recent history items other
  than the target, P from brute-force scoring of every catalogue item."""
  table = factories.sid_table(num_items=40, codebook=4, levels=3)
  batch = factories.batch(table, batch_size=4, history=6, seed=3)
  # user 0's target is also its most recent item: that one is never penalised
  items = np.asarray(batch["history_items"])
  last0 = int(items[0, int(np.asarray(batch["history_mask"])[0].sum()) - 1])
  batch = dict(batch, target_item=batch["target_item"].at[0].set(last0),
               target_codes=batch["target_codes"].at[0].set(
                   jnp.asarray(table.codes[last0 - 1])))
  kw = dict(unlikelihood_weight=0.5, unlikelihood_items=3)
  model = factories.tiny_tiger(table, **kw) if kind == "tiger" else make_s2gr(table, **kw)
  _, metrics = model.loss(batch)
  log_p = np.asarray(decoding.score_all_items(model, batch, table.codes))
  terms, probs = [], []
  mask, target = np.asarray(batch["history_mask"]), np.asarray(batch["target_item"])
  for u in range(4):
    recent = items[u, :mask[u].sum()][::-1][:3]
    for item in recent:
      if item != target[u]:
        p = np.exp(log_p[u, item - 1])
        terms.append(-np.log1p(-p))
        probs.append(p)
  np.testing.assert_allclose(float(metrics["unlikelihood"]), np.mean(terms), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["seen_prob"]), np.mean(probs), rtol=1e-4)
  plain = (factories.tiny_tiger(table) if kind == "tiger" else make_s2gr(table))
  np.testing.assert_allclose(float(model.loss(batch)[0]),
                             float(plain.loss(batch)[0]) + 0.5 * np.mean(terms), rtol=1e-4)


@pytest.mark.parametrize("positions", ["from_end", "from_start"])
def test_sasrec_scores_and_ranks(positions):
  table = factories.sid_table(num_items=40)
  batch = factories.batch(table, batch_size=4, history=6)
  model = sasrec.Sasrec(sasrec.SasrecConfig(num_items=40, max_history=9, d_model=16,
                                            num_heads=2, head_dim=8, d_ff=32,
                                            positions=positions),
                        rngs=nnx.Rngs(0))
  scores = model.item_scores(batch)
  assert scores.shape == (4, 40)
  items, top = model.rank(batch, 10)
  np.testing.assert_array_equal(np.asarray(items), np.argsort(-np.asarray(scores), 1)[:, :10] + 1)
  # Only real history positions matter: padding the history further changes nothing.
  longer = dict(batch, history_items=jnp.pad(batch["history_items"], ((0, 0), (0, 3))),
                history_mask=jnp.pad(batch["history_mask"], ((0, 0), (0, 3))))
  np.testing.assert_allclose(np.asarray(model.item_scores(longer)), np.asarray(scores),
                             atol=1e-6)
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  losses = []
  for _ in range(40):
    loss, grads = nnx.value_and_grad(lambda m: m.loss(batch)[0])(model)
    opt.update(model, grads)
    losses.append(float(loss))
  assert losses[-1] < 0.2 * losses[0]
