"""Clustering pieces the tokenizers and S²GR's thought targets share: squared
distances, k-means (k-means++ seeding, Lloyd), Sinkhorn-balanced assignment."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def sq_dists(x: jax.Array, c: jax.Array) -> jax.Array:
  """float32[n, k] squared distances, via the expansion (memory n*k, not n*k*d)."""
  return jnp.maximum((x * x).sum(1, keepdims=True) - 2 * x @ c.T + (c * c).sum(1)[None],
                     0.0)


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def kmeans(x: jax.Array, key: jax.Array, *, k: int, iters: int):
  """k-means++ seeding then Lloyd iterations; empty clusters restart at far points.

  Args:
    x: float32[n, d] points, n >= k.
    key: PRNG key.
  Returns:
    centers float32[k, d], assignment int32[n], inertia (mean squared distance).
  """
  n = x.shape[0]
  k0, key = jax.random.split(key)
  first = jax.random.randint(k0, (), 0, n)
  centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
  d2 = ((x - x[first]) ** 2).sum(1)

  def seed_step(i, carry):
    centers, d2 = carry
    logits = jnp.log(jnp.maximum(d2, 1e-30))
    logits = jnp.where(d2 > 0, logits, -jnp.inf)
    # All points already chosen (duplicates): fall back to uniform.
    logits = jnp.where(jnp.isneginf(logits).all(), 0.0, logits)
    j = jax.random.categorical(jax.random.fold_in(key, i), logits)
    centers = centers.at[i].set(x[j])
    return centers, jnp.minimum(d2, ((x - x[j]) ** 2).sum(1))

  centers, _ = jax.lax.fori_loop(1, k, seed_step, (centers, d2))

  def lloyd_step(_, centers):
    dist = sq_dists(x, centers)
    assign = dist.argmin(1)
    sums = jax.ops.segment_sum(x, assign, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones(n, x.dtype), assign, num_segments=k)
    updated = sums / jnp.maximum(counts, 1)[:, None]
    # Restart empty clusters at the points farthest from their centres.
    empty = counts == 0
    far = jnp.argsort(-dist.min(1))[:k]
    rank = jnp.cumsum(empty) - 1
    return jnp.where(empty[:, None], x[far[jnp.clip(rank, 0, k - 1)]], updated)

  centers = jax.lax.fori_loop(0, iters, lloyd_step, centers)
  dist = sq_dists(x, centers)
  assign = dist.argmin(1).astype(jnp.int32)
  return centers, assign, dist.min(1).mean()


@functools.partial(jax.jit, static_argnames=("iters",))
def _sinkhorn_assign(cost: jax.Array, epsilon: float, iters: int) -> jax.Array:
  """Argmax per row of the entropic transport plan with uniform marginals (log domain)."""
  n, k = cost.shape
  log_kernel = -cost / epsilon
  f, g = jnp.zeros(n), jnp.zeros(k)

  def body(_, fg):
    f, g = fg
    f = -jnp.log(n) - jax.nn.logsumexp(log_kernel + g[None], axis=1)
    g = -jnp.log(k) - jax.nn.logsumexp(log_kernel + f[:, None], axis=0)
    return f, g

  f, g = jax.lax.fori_loop(0, iters, body, (f, g))
  return (log_kernel + f[:, None] + g[None]).argmax(1).astype(jnp.int32)


def sinkhorn_codes(residual: np.ndarray, codebook: np.ndarray, epsilon: float = 0.05,
                   iters: int = 200) -> np.ndarray:
  """Balanced assignment of residuals [N, D] to codes [K, D] (LC-Rec's last level).

  Each code receives about N / K items, which spreads items that would collide on their
  nearest code; the cost is the squared distance, scaled to mean 1.
  """
  cost = sq_dists(jnp.asarray(residual), jnp.asarray(codebook))
  return np.asarray(_sinkhorn_assign(cost / cost.mean(), epsilon, iters))
