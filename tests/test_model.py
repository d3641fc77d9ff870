"""TIGER: shapes, the loss going down, dropout only with rngs, encoder causality of masks."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


VARIANTS = {"paper": {}, "recency+items": dict(recency_embeddings=True,
                                                 item_embeddings=True, num_items=40)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_the_encoding(variant):
  table = factories.sid_table()
  model = factories.tiny_tiger(table, **VARIANTS[variant])
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


@pytest.mark.parametrize("dtype,variant", [("float32", "paper"), ("bfloat16", "paper"),
                                           ("float32", "recency+items")])
def test_loss_decreases_when_fitting_a_batch(dtype, variant):
  table = factories.sid_table()
  model = factories.tiny_tiger(table, dropout=0.1, dtype=dtype, **VARIANTS[variant])
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


def test_history_age_counts_back_from_the_most_recent_item():
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(np.asarray(layers.history_age(mask, 20)),
                                [[2, 1, 0, 0, 0], [0, 0, 0, 0, 0], [4, 3, 2, 1, 0]])
  np.testing.assert_array_equal(np.asarray(layers.history_age(mask, 3))[2], [2, 2, 2, 1, 0])


def test_item_embeddings_read_item_identity_beside_the_codes():
  """The paper's encoder reads only SID tokens; the variant also reads which item."""
  table = factories.sid_table()
  batch = factories.batch(table, batch_size=2, history=4)
  other = dict(batch, history_items=jnp.where(batch["history_mask"],
                                              batch["history_items"] % 40 + 1, 0))
  for kw, same in (({}, True), (dict(item_embeddings=True, num_items=40), False)):
    model = factories.tiny_tiger(table, **kw)
    a, b = np.asarray(model.encode(batch)[0]), np.asarray(model.encode(other)[0])
    assert np.allclose(a, b) == same, kw


def test_dropout_only_with_rngs_and_rate_rounding():
  drop = layers.Dropout(0.1, kernels="cpu")
  x = jnp.ones((64, 256))
  np.testing.assert_array_equal(np.asarray(drop(x)), np.asarray(x))
  y = np.asarray(drop(x, nnx.Rngs(dropout=0)))
  kept = y != 0
  assert abs(kept.mean() - (1 - 26 / 256)) < 0.01
  np.testing.assert_allclose(y[kept], 256 / 230)  # inverted dropout keeps the mean
  z = np.asarray(drop(x, nnx.Rngs(dropout=0)))
  np.testing.assert_array_equal(y, z)  # same key, same mask
  assert (np.asarray(drop(x, nnx.Rngs(dropout=1))) != y).any()


def test_dropout_masks_are_independent_across_keys_and_positions():
  drop = layers.Dropout(0.5, kernels="cpu")  # threshold 128: each draw is a fair coin
  x = jnp.ones((200_000,))
  a = np.asarray(drop(x, nnx.Rngs(dropout=0))) != 0
  b = np.asarray(drop(x, nnx.Rngs(dropout=1))) != 0
  n = a.size
  # Agreement of two independent fair coins is 1/2 ± 1/(2√n); 5 standard errors.
  assert abs((a == b).mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
  # Neighbouring draws come from the same 32-bit word; they must not move together.
  assert abs((a[:-1] == a[1:]).mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
  assert abs((a[:-4] == a[4:]).mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
  # Each of the 256 byte values is equally likely (chi-square, 255 dof; p ≈ 1e-6 cut).
  words = np.asarray(layers.hash_bits(jax.random.key(3), 100_000))
  counts = np.bincount(words.view(np.uint8), minlength=256)
  expected = words.size * 4 / 256
  assert ((counts - expected) ** 2 / expected).sum() < 255 + 5 * np.sqrt(2 * 255)


def test_dense_matches_autodiff_of_matmul():
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  for shape_x, shape_w in (((3, 5, 8), (8, 32)), ((3, 5, 32), (32, 8))):  # both branches
    x = jax.random.normal(kx, shape_x)
    w = jax.random.normal(kw, shape_w)
    g = jax.random.normal(kg, shape_x[:-1] + shape_w[-1:])
    ours = jax.vjp(layers.dense, x, w)
    ref = jax.vjp(lambda x, w: x @ w, x, w)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    for a, b in zip(ours[1](g), ref[1](g)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_source_attention_matches_autodiff():
  qk = jax.random.normal(jax.random.key(0), (3, 4, 8))
  src = jax.random.normal(jax.random.key(1), (3, 6, 8))
  keep = (jnp.arange(6)[None, None, :] < jnp.array([6, 4, 1])[:, None, None])
  g = jax.random.normal(jax.random.key(2), (3, 4, 8))

  def plain(qk, src):
    scores = jnp.where(keep, qk @ jnp.swapaxes(src, 1, 2), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1) @ src

  ours = jax.vjp(lambda a, b: layers.source_attention(a, b, keep), qk, src)
  ref = jax.vjp(plain, qk, src)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-6)
  for x, y in zip(ours[1](g), ref[1](g)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_add_batch_bias_gradient_sums_over_the_batch():
  s = jax.random.normal(jax.random.key(0), (4, 2, 3, 3))
  bias = jax.random.normal(jax.random.key(1), (1, 2, 3, 3))
  g = jax.random.normal(jax.random.key(2), s.shape)
  ours = jax.vjp(layers.add_batch_bias, s, bias)
  ref = jax.vjp(lambda s, b: s + b, s, bias)
  np.testing.assert_allclose(ours[0], ref[0])
  for a, b in zip(ours[1](g), ref[1](g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_attend_source_equals_attention_over_projected_keys_and_values():
  attn = layers.Attention(16, 3, 8, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 4, 16))
  src = jax.random.normal(jax.random.key(2), (2, 7, 16))
  mask = (jnp.arange(7)[None, :] < jnp.array([[7], [5]]))[:, None, None, :]
  ref = attn.attend(x, *attn.project_kv(src), mask=mask, bias=None)
  np.testing.assert_allclose(attn.attend_source(x, src, mask=mask), ref, rtol=1e-5,
                             atol=1e-5)
  # Keys and values cached heads-first (beam search) give the same attention.
  k, v = attn.project_kv(src, heads_first=True)
  assert k.shape == v.shape == (2, 3, 7, 8)
  np.testing.assert_allclose(attn.attend(x, k, v, mask=mask, bias=None, heads_first=True),
                             ref, rtol=1e-6, atol=1e-6)
  g = jax.random.normal(jax.random.key(3), ref.shape)  # and the same gradients
  grads = [jax.grad(lambda a, s: (f(a, s) * g).sum(), argnums=(0, 1))(x, src) for f in (
      lambda a, s: attn.attend_source(a, s, mask=mask),
      lambda a, s: attn.attend(a, *attn.project_kv(s), mask=mask, bias=None))]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_relative_position_buckets():
  rel = jnp.arange(-200, 201)
  bi = np.asarray(layers.relative_position_buckets(rel, True, 32, 128))
  uni = np.asarray(layers.relative_position_buckets(rel, False, 32, 128))
  assert bi.min() == 0 and bi.max() == 31 and uni.max() == 31
  assert (uni[rel > 0] == 0).all()  # causal: future positions share bucket 0
  assert len(set(bi[(rel >= -7) & (rel <= 7)].tolist())) == 15  # exact near 0
