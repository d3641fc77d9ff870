"""``kernels="cpu"`` (the XLA:CPU speed pieces) and ``"plain"`` (textbook code, autodiff)
give the same values and gradients; plain dropout has exactly its rate."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2gr_jax.models import layers
from s2gr_jax.models import s2gr
import factories
import test_s2gr


def loss_and_grads(model, batch):
  (loss, parts), grads = nnx.value_and_grad(lambda m: m.loss(batch), has_aux=True)(model)
  return float(loss), parts, jax.tree.leaves(nnx.state(grads, nnx.Param))


def assert_same_function(cpu, plain, batch, tol=2e-5):
  l_cpu, parts_cpu, g_cpu = loss_and_grads(cpu, batch)
  l_plain, parts_plain, g_plain = loss_and_grads(plain, batch)
  assert l_cpu == pytest.approx(l_plain, rel=tol, abs=tol)
  assert set(parts_cpu) == set(parts_plain)
  assert len(g_cpu) == len(g_plain)
  for a, b in zip(g_cpu, g_plain):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=tol)
  # Cached decoding (the beam search's path) agrees too.
  for model in (cpu, plain):
    state = model.start_decoding(batch, 2)
    model.decode_level(state, None, 0)
  return l_cpu


def test_tiger_cpu_and_plain_kernels_agree():
  table = factories.sid_table()
  batch = factories.batch(table, batch_size=4, history=6)
  cpu = factories.tiny_tiger(table, seed=3, kernels="cpu")
  plain = factories.tiny_tiger(table, seed=3, kernels="plain")
  assert_same_function(cpu, plain, batch)
  for a, b in zip(cpu.teacher_forced_logits(batch), plain.teacher_forced_logits(batch)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_s2gr_cpu_and_plain_kernels_agree():
  # The thought recurrence reads the encoder through ``attend_source`` with the CPU
  # kernels and through projected keys/values with the plain ones.
  table = factories.sid_table(num_items=40, codebook=4, levels=3)
  batch = factories.batch(table, batch_size=3)
  cpu = test_s2gr.make_s2gr(table, kernels="cpu")
  plain = test_s2gr.make_s2gr(table, kernels="plain")
  assert isinstance(cpu, s2gr.S2gr)
  assert_same_function(cpu, plain, batch)


def test_layers_cpu_and_plain_pieces_agree():
  key = jax.random.key(0)
  x = jax.random.normal(key, (2, 5, 8))
  src = jax.random.normal(jax.random.fold_in(key, 1), (2, 7, 8))
  mask = jnp.arange(7)[None, None, None, :] < jnp.array([7, 4])[:, None, None, None]
  outs = {}
  for kernels in layers.KERNELS:
    attn = layers.Attention(8, 2, 4, dtype=jnp.float32, rngs=nnx.Rngs(1), kernels=kernels)
    f = lambda a, s: attn.attend_source(a, s, mask=mask).sum()
    outs[kernels] = (attn.attend_source(x, src, mask=mask),
                     jax.grad(f, argnums=(0, 1))(x, src))
  np.testing.assert_allclose(np.asarray(outs["cpu"][0]), np.asarray(outs["plain"][0]),
                             rtol=1e-5, atol=1e-5)
  for a, b in zip(outs["cpu"][1], outs["plain"][1]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_plain_dropout_has_the_exact_rate():
  drop = layers.Dropout(0.1)  # plain is the default
  assert drop.kernels == "plain"
  x = jnp.ones((400, 500))
  np.testing.assert_array_equal(np.asarray(drop(x)), np.asarray(x))  # no rngs: identity
  y = np.asarray(drop(x, nnx.Rngs(dropout=0)))
  kept = y != 0
  # 200,000 draws: the kept share is 0.9 ± 0.00067 (one standard error); the CPU masks
  # keep 1 - 26/256 = 0.8984, 2.3 standard errors away, so 5 s.e. would not tell them
  # apart: the scale of the kept values does, exactly.
  assert abs(kept.mean() - 0.9) < 5 * np.sqrt(0.09 / kept.size)
  np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
  cpu = np.asarray(layers.Dropout(0.1, "cpu")(x, nnx.Rngs(dropout=0)))
  np.testing.assert_allclose(cpu[cpu != 0], 256 / 230, rtol=1e-6)
  with pytest.raises(ValueError, match="kernels='gpu'"):
    layers.Dropout(0.1, "gpu")
