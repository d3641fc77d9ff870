"""TIGER: shapes, the loss going down, dropout only with rngs, encoder causality of masks."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2gr_jax.models import layers
import factories


def test_shapes_and_loss_parts():
  table = factories.sid_table()
  model = factories.tiny_tiger(table)
  batch = factories.batch(table, batch_size=4, history=6)
  enc, mask = model.encode(batch)
  assert enc.shape == (4, 1 + 6 * table.num_levels, 32) and mask.shape == enc.shape[:2]
  logits = model.teacher_forced_logits(batch)
  assert [lg.shape for lg in logits] == [(4, s) for s in table.codebook_sizes]
  loss, parts = model.loss(batch)
  expected = np.mean([float(parts[f"ce_l{l}"]) for l in range(table.num_levels)])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_padding_does_not_change_the_encoding():
  table = factories.sid_table()
  model = factories.tiny_tiger(table)
  batch = factories.batch(table, batch_size=2, history=4)
  longer = dict(batch)
  pad = jnp.zeros((2, 3), jnp.int32)
  longer["history_items"] = jnp.concatenate([batch["history_items"], pad], 1)
  longer["history_mask"] = jnp.concatenate([batch["history_mask"], pad > 0], 1)
  longer["history_codes"] = jnp.concatenate(
      [batch["history_codes"], jnp.full((2, 3, table.num_levels), 2, jnp.int32)], 1)
  a = model.teacher_forced_logits(batch)
  b = model.teacher_forced_logits(longer)
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-5)


def test_loss_decreases_when_fitting_a_batch():
  table = factories.sid_table()
  model = factories.tiny_tiger(table, dropout=0.1)
  batch = factories.batch(table, batch_size=8, history=5)
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, key):
    loss, grads = nnx.value_and_grad(
        lambda m: m.loss(batch, nnx.Rngs(dropout=key))[0])(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt, jax.random.key(i))) for i in range(60)]
  assert losses[-1] < 0.3 * losses[0]


def test_dropout_only_with_rngs_and_rate_rounding():
  drop = layers.Dropout(0.1)
  x = jnp.ones((64, 256))
  np.testing.assert_array_equal(np.asarray(drop(x)), np.asarray(x))
  y = np.asarray(drop(x, nnx.Rngs(dropout=0)))
  kept = y != 0
  assert abs(kept.mean() - (1 - 26 / 256)) < 0.01
  np.testing.assert_allclose(y[kept], 256 / 230)  # inverted dropout keeps the mean
  z = np.asarray(drop(x, nnx.Rngs(dropout=0)))
  np.testing.assert_array_equal(y, z)  # same key, same mask
  assert (np.asarray(drop(x, nnx.Rngs(dropout=1))) != y).any()


def test_relative_position_buckets():
  rel = jnp.arange(-200, 201)
  bi = np.asarray(layers.relative_position_buckets(rel, True, 32, 128))
  uni = np.asarray(layers.relative_position_buckets(rel, False, 32, 128))
  assert bi.min() == 0 and bi.max() == 31 and uni.max() == 31
  assert (uni[rel > 0] == 0).all()  # causal: future positions share bucket 0
  assert len(set(bi[(rel >= -7) & (rel <= 7)].tolist())) == 15  # exact near 0
