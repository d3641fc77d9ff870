"""Quantizers: item vectors → per-level discrete codes.

Every quantizer has ``fit(x, graph=None) -> QuantizedItems``: residual k-means
(RQ-KMeans) here, the RQ-VAE family (plain and CoBa, which uses ``graph``) in
``rqvae.py``; REG4Rec's parallel codebooks (``ordered=False``) fit the same call.
Shared pieces live here: squared distances, k-means, Sinkhorn-balanced assignment.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class QuantizedItems:
  """A quantizer's output.

  Attributes:
    codes: int32[num_items, levels], row ``i`` = item ``i + 1``.
    codebook_sizes: codes per level.
    codebooks: per level ``float32[size, d]`` code vectors (None if not meaningful).
    ordered: False when the levels are parallel, unordered codebooks (REG4Rec).
    history: per-level training curves or diagnostics to log.
  """

  codes: np.ndarray
  codebook_sizes: tuple[int, ...]
  codebooks: list[np.ndarray] | None = None
  ordered: bool = True
  history: dict[str, Any] = dataclasses.field(default_factory=dict)


class Quantizer(Protocol):

  def fit(self, x: np.ndarray, graph: Any = None) -> QuantizedItems:
    ...


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


@dataclasses.dataclass
class ResidualKMeans:
  """RQ-KMeans: k-means on the residuals of the previous levels."""

  levels: int = 3
  codebook_size: int = 256
  iters: int = 50
  seed: int = 0
  sinkhorn_last_level: bool = False

  def fit(self, x: np.ndarray, graph: Any = None) -> QuantizedItems:
    del graph  # RQ-KMeans uses content only.
    n = x.shape[0]
    if n < self.codebook_size:
      raise ValueError(f"{n} items are fewer than tokenizer.codebook_size="
                       f"{self.codebook_size} codes per level")
    # Centre and scale so that the k-means++ seeding sees comparable spreads.
    residual = jnp.asarray((x - x.mean(0)) / (x.std() + 1e-8), jnp.float32)
    key = jax.random.key(self.seed)
    codes, codebooks, inertia = [], [], []
    for level in range(self.levels):
      centers, assign, err = kmeans(residual, jax.random.fold_in(key, level),
                                    k=self.codebook_size, iters=self.iters)
      if self.sinkhorn_last_level and level == self.levels - 1:
        assign = jnp.asarray(sinkhorn_codes(residual, centers))
      residual = residual - centers[assign]
      codes.append(np.asarray(assign))
      codebooks.append(np.asarray(centers))
      inertia.append(float(err))
    # Per element of the (scaled) input, like the RQ-VAE's reconstruction error.
    final = float(np.mean(np.asarray(residual) ** 2))
    return QuantizedItems(codes=np.stack(codes, 1).astype(np.int32),
                          codebook_sizes=(self.codebook_size,) * self.levels,
                          codebooks=codebooks,
                          history={"residual_mse": inertia, "final_recon_mse": final})


KINDS = ("rqkmeans", "rqvae", "coba")


def make_quantizer(tcfg, *, mesh=None, callback=None) -> Quantizer:
  """The quantizer ``config.tokenizer.kind`` with its settings.

  ``rqvae`` is TIGER's RQ-VAE; ``coba`` is the same model with S²GR's switches from
  ``tokenizer.coba`` (graph propagation, uniformity, load balancing, dead-code restart).
  """
  if tcfg.kind == "rqkmeans":
    return ResidualKMeans(levels=tcfg.levels, codebook_size=tcfg.codebook_size,
                          iters=tcfg.kmeans_iters, seed=tcfg.seed,
                          sinkhorn_last_level=tcfg.sinkhorn_last_level)
  if tcfg.kind in ("rqvae", "coba"):
    from s2gr_jax.sid import rqvae  # pylint: disable=g-import-not-at-top
    settings = dict(tcfg.rqvae.to_dict(), hidden=tuple(tcfg.rqvae.hidden))
    if tcfg.kind == "coba":
      settings.update({k: v for k, v in tcfg.coba.to_dict().items() if k != "window"})
    return rqvae.RQVAE(levels=tcfg.levels, codebook_size=tcfg.codebook_size,
                       kmeans_iters=tcfg.kmeans_iters, seed=tcfg.seed,
                       sinkhorn_last_level=tcfg.sinkhorn_last_level, mesh=mesh,
                       callback=callback, **settings)
  raise ValueError(f"unknown tokenizer.kind {tcfg.kind!r}; available: {list(KINDS)}")
