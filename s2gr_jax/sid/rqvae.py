"""RQ-VAE tokenizers: plain (TIGER) and CoBa (S²GR's collaborative + balanced RQ-VAE).

One model, one training loop; CoBa is the plain RQ-VAE with four switches on (SPEC §2):

1. collaborative input: item vectors propagated over the co-occurrence graph
   (``propagation_hops`` > 0, see ``graph.py``);
2. uniformity: a hinge that pushes apart codes of one level closer than δ_l, the
   ``uniformity_percentile``-th percentile of that level's pairwise distances at init
   (``uniformity_weight``);
3. load balancing: assignment by d'_j = d_j · clip((u_j/ū)^γ, 1-ε, 1+ε) with u an EMA of
   code usage (``balance_gamma`` > 0), so over-used codes look farther away;
4. dead-code restart: codes whose usage EMA falls under ``restart_threshold`` × mean are
   moved onto residuals of the current batch (``restart_every`` > 0).

Model: MLP encoder d → hidden → latent, L residual codebooks of K codes initialised by
residual k-means on a large first batch, MLP decoder back to d; loss
‖x − x̂‖² + Σ_l ‖sg(r_l) − e_l‖² + β‖r_l − sg(e_l)‖² (+ uniformity), straight-through
gradients to the encoder. All squared errors are means over elements.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2gr_jax.sid import diagnostics
from s2gr_jax.sid import graph as graph_lib
from s2gr_jax.sid import clustering
from s2gr_jax.sid.interface import QuantizedItems

log = logging.getLogger(__name__)


class CodeUsage(nnx.Variable):
  """Running statistics of the codebooks; not trained by the optimizer."""


def mlp(layers, x):
  """Linear layers with ReLU between them (none after the last)."""
  for i, layer in enumerate(layers):
    x = layer(x)
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x


def standardize(x: np.ndarray) -> np.ndarray:
  """Per-dimension zero mean, unit variance: the tokenizers' learning rates and k-means
  seeding see unit-scale inputs."""
  return ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)


def minibatches(x: np.ndarray, batch: int, steps: int, seed: int, mesh=None):
  """Yields (step, batch of rows of ``x``) for steps 1..``steps``: a fresh permutation
  each epoch (seeded), on the mesh's batch axes when there is one."""
  from s2gr_jax import parallel  # pylint: disable=g-import-not-at-top
  n = len(x)
  rng = np.random.default_rng(seed)
  order, pos = rng.permutation(n), 0
  for step in range(1, steps + 1):
    if pos + batch > n:
      order, pos = rng.permutation(n), 0
    xb = x[order[pos:pos + batch]]
    pos += batch
    yield step, (parallel.shard_batch({"x": xb}, mesh)["x"] if mesh is not None
                 else jnp.asarray(xb))


def balanced_distances(dist, usage, gamma: float, eps: float):
  """CoBa's load balancing: d'_j = d_j · clip((u_j/ū)^γ, 1-ε, 1+ε) for distances
  [..., K] to the codes of one codebook whose usage EMA is ``usage`` [K]; γ = 0 is off."""
  if gamma <= 0:
    return dist
  ratio = usage / usage.mean()
  return dist * jnp.clip(ratio ** gamma, 1.0 - eps, 1.0 + eps)


def update_usage(usage, codes, decay: float):
  """The usage EMA [C, K] of C codebooks after a batch of their codes int[B, C]."""
  k = usage.shape[1]
  counts = jax.vmap(lambda c: jnp.bincount(c, length=k))(codes.T) / codes.shape[0]
  return decay * usage + (1.0 - decay) * counts


def restart_dead_codes(codebooks, usage, candidates, key, threshold: float, enabled):
  """CoBa's dead-code restart: the codes of each codebook [C, K, D] whose usage EMA is
  under ``threshold`` × its mean jump onto rows of ``candidates`` [C, B, D] (a different
  random row for each; residuals or encodings of the batch) when ``enabled``; their
  usage is reset to the mean. Returns (codebooks, usage, number restarted)."""
  c, k = usage.shape
  dead = (usage < threshold * usage.mean(1, keepdims=True)) & enabled
  rows = jax.random.randint(key, (c, k), 0, candidates.shape[1])
  fresh = jnp.take_along_axis(candidates, rows[..., None], axis=1)
  codebooks = jnp.where(dead[..., None], fresh, codebooks)
  usage = jnp.where(dead, usage.mean(1, keepdims=True), usage)
  return codebooks, usage, dead.sum()


class RQVAEModel(nnx.Module):
  """Encoder, residual codebooks [L, K, latent] and decoder."""

  def __init__(self, in_dim: int, hidden: tuple[int, ...], latent_dim: int, levels: int,
               codebook_size: int, *, rngs: nnx.Rngs):
    dims = (in_dim,) + tuple(hidden) + (latent_dim,)
    self.encoder = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims, dims[1:])])
    back = dims[::-1]
    self.decoder = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(back, back[1:])])
    self.codebooks = nnx.Param(jnp.zeros((levels, codebook_size, latent_dim)))
    self.usage = CodeUsage(jnp.full((levels, codebook_size), 1.0 / codebook_size))
    self.min_distance = CodeUsage(jnp.zeros((levels,)))  # δ_l of the uniformity hinge

  def encode(self, x):
    return mlp(self.encoder, x)

  def decode(self, z):
    return mlp(self.decoder, z)

  def quantize(self, z, gamma: float, eps: float):
    """Residual assignment; returns codes int32[B, L] and per-level residuals [L, B, D]."""
    codebooks = self.codebooks[...]
    usage = jax.lax.stop_gradient(self.usage[...])
    residual, codes, residuals = z, [], []
    for level in range(codebooks.shape[0]):
      dist = clustering.sq_dists(jax.lax.stop_gradient(residual), codebooks[level])
      dist = balanced_distances(dist, usage[level], gamma, eps)
      idx = dist.argmin(-1).astype(jnp.int32)
      residuals.append(residual)
      codes.append(idx)
      residual = residual - codebooks[level][idx]
    return jnp.stack(codes, 1), jnp.stack(residuals)


@dataclasses.dataclass
class RQVAE:
  """The RQ-VAE quantizer (``fit(x, graph) -> QuantizedItems``); see module docstring."""

  levels: int = 3
  codebook_size: int = 256
  latent_dim: int = 32
  hidden: tuple[int, ...] = (512, 256, 128)
  steps: int = 3000
  batch_size: int = 1024
  lr: float = 1e-3
  commitment: float = 0.25
  kmeans_iters: int = 50
  init_items: int = 20_000
  log_every: int = 250
  seed: int = 0
  # CoBa switches (all off: the plain RQ-VAE of TIGER).
  propagation_hops: int = 0
  propagation_alpha: float = 0.2
  uniformity_weight: float = 0.0
  uniformity_percentile: float = 10.0
  balance_gamma: float = 0.0
  balance_eps: float = 0.2
  usage_decay: float = 0.99
  restart_every: int = 0
  restart_threshold: float = 0.03
  sinkhorn_last_level: bool = False
  # Runtime: a mesh to split batches over, a callback(step, scalars) for metrics.
  mesh: Any = None
  callback: Callable[[int, dict], None] | None = None

  # --- input -------------------------------------------------------------------------

  def _prepare_input(self, x: np.ndarray, graph) -> np.ndarray:
    if self.propagation_hops > 0:
      if graph is None:
        raise ValueError("CoBa propagation needs the co-occurrence graph (training "
                         "histories); set tokenizer.coba.propagation_hops=0 to skip it")
      a_hat = graph_lib.normalized_adjacency(graph)
      x = graph_lib.propagate(x, a_hat, self.propagation_alpha, self.propagation_hops)
    return standardize(x)

  # --- one training step -------------------------------------------------------------

  def _loss(self, model: RQVAEModel, x):
    z = model.encode(x)
    codes, residuals = model.quantize(z, self.balance_gamma, self.balance_eps)
    codebooks = model.codebooks[...]
    chosen = jnp.stack([codebooks[l][codes[:, l]] for l in range(self.levels)])
    # ‖sg(r_l) − e_l‖² trains the codes; β‖r_l − sg(e_l)‖² keeps the encoder near them.
    codebook_loss = ((jax.lax.stop_gradient(residuals) - chosen) ** 2).mean()
    commit_loss = ((residuals - jax.lax.stop_gradient(chosen)) ** 2).mean()
    z_q = chosen.sum(0)
    x_hat = model.decode(z + jax.lax.stop_gradient(z_q - z))  # straight-through
    recon = ((x - x_hat) ** 2).mean()
    loss = recon + self.levels * (codebook_loss + self.commitment * commit_loss)
    parts = {"recon": recon, "codebook": codebook_loss, "commit": commit_loss}
    if self.uniformity_weight > 0:
      d = jnp.sqrt(jax.vmap(clustering.sq_dists)(codebooks, codebooks) + 1e-12)
      off_diag = 1.0 - jnp.eye(self.codebook_size)
      delta = model.min_distance[...][:, None, None]
      hinge = (jax.nn.relu(delta - d) * off_diag).sum((1, 2)) / off_diag.sum()
      uniformity = hinge.sum()
      loss = loss + self.uniformity_weight * uniformity
      parts["uniformity"] = uniformity
    parts["loss"] = loss
    return loss, (parts, codes, residuals)

  def _make_step(self, graphdef, tx):
    def step(state, x, key, restart):
      model, opt = nnx.merge(graphdef, state)
      grad_fn = nnx.value_and_grad(lambda m: self._loss(m, x), has_aux=True)
      (_, (parts, codes, residuals)), grads = grad_fn(model)
      opt.update(model, grads)
      usage = update_usage(model.usage[...], codes, self.usage_decay)
      if self.restart_every > 0:
        # Dead codes jump onto residuals of this batch (a different row for each).
        model.codebooks[...], usage, parts["restarted"] = restart_dead_codes(
            model.codebooks[...], usage, residuals, key, self.restart_threshold, restart)
      model.usage[...] = usage
      return nnx.split((model, opt))[1], parts

    return jax.jit(step, donate_argnums=0)

  # --- initialisation and final assignment -------------------------------------------

  def _init_codebooks(self, model: RQVAEModel, x: np.ndarray, key) -> None:
    """Residual k-means on the encodings of a large first batch; δ_l from the result."""
    rng = np.random.default_rng(self.seed)
    sample = x[rng.permutation(len(x))[:self.init_items]]
    residual = model.encode(jnp.asarray(sample))
    codebooks, deltas = [], []
    for level in range(self.levels):
      centers, assign, _ = clustering.kmeans(residual, jax.random.fold_in(key, level),
                                             k=self.codebook_size, iters=self.kmeans_iters)
      residual = residual - centers[assign]
      codebooks.append(centers)
      d = np.sqrt(np.asarray(clustering.sq_dists(centers, centers)))
      deltas.append(np.percentile(d[~np.eye(len(d), dtype=bool)],
                                  self.uniformity_percentile))
    model.codebooks[...] = jnp.stack(codebooks)
    model.min_distance[...] = jnp.asarray(deltas, jnp.float32)

  def _assign_all(self, model: RQVAEModel, x: np.ndarray):
    """Codes of every item (with the balancing rule), residuals, reconstruction MSE."""
    @jax.jit
    def assign(state, xb):
      m = nnx.merge(graphdef, state)
      z = m.encode(xb)
      codes, residuals = m.quantize(z, self.balance_gamma, self.balance_eps)
      cb = m.codebooks[...]
      z_q = sum(cb[l][codes[:, l]] for l in range(self.levels))
      err = ((xb - m.decode(z_q)) ** 2).mean(1)
      return codes, residuals[-1], err

    graphdef, state = nnx.split(model)
    outs = [assign(state, jnp.asarray(x[i:i + 8192])) for i in range(0, len(x), 8192)]
    codes = np.concatenate([np.asarray(o[0]) for o in outs])
    last_residual = np.concatenate([np.asarray(o[1]) for o in outs])
    mse = float(np.concatenate([np.asarray(o[2]) for o in outs]).mean())
    return codes, last_residual, mse

  # --- fit ---------------------------------------------------------------------------

  def fit(self, x: np.ndarray, graph=None) -> QuantizedItems:
    from s2gr_jax import parallel  # pylint: disable=g-import-not-at-top
    n = x.shape[0]
    if n < self.codebook_size:
      raise ValueError(f"{n} items are fewer than tokenizer.codebook_size="
                       f"{self.codebook_size} codes per level")
    x = self._prepare_input(x, graph)
    batch = min(self.batch_size, n)
    if self.mesh is not None:
      batch -= batch % self.mesh.shape["data"]
    key = jax.random.key(self.seed)
    model = RQVAEModel(x.shape[1], self.hidden, self.latent_dim, self.levels,
                       self.codebook_size, rngs=nnx.Rngs(self.seed))
    self._init_codebooks(model, x, jax.random.fold_in(key, 1))
    tx = optax.adam(self.lr)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    if self.mesh is not None:
      state = jax.device_put(state, parallel.replicated(self.mesh))
    step_fn = self._make_step(graphdef, tx)

    history: dict[str, list] = {"step": [], "utilization": [], "perplexity": [],
                                "collision_rate": [], "recon_mse": [], "loss": []}
    t0, window = time.time(), []
    for step, xb in minibatches(x, batch, self.steps, self.seed, self.mesh):
      restart = self.restart_every > 0 and step % self.restart_every == 0
      state, parts = step_fn(state, xb, jax.random.fold_in(key, step), jnp.asarray(restart))
      window.append(parts)
      if step % self.log_every == 0 or step == self.steps:
        model, _ = nnx.merge(graphdef, state)
        scalars = self._diagnose(model, x, history, step, window)
        window = []
        log.info("tokenizer step %d/%d | loss %.4f | recon %.4f | utilisation %s | "
                 "collisions %.3f | %.1f steps/s", step, self.steps, scalars["loss"],
                 scalars["recon_mse"], [round(u, 3) for u in history["utilization"][-1]],
                 scalars["collision_rate"], step / (time.time() - t0))
        if self.callback is not None:
          self.callback(step, scalars)
    model, _ = nnx.merge(graphdef, state)
    codes, last_residual, mse = self._assign_all(model, x)
    codebooks = np.asarray(model.codebooks[...])
    if self.sinkhorn_last_level:
      codes[:, -1] = clustering.sinkhorn_codes(last_residual, codebooks[-1])
    history["final_recon_mse"] = mse
    return QuantizedItems(
        codes=codes.astype(np.int32), codebook_sizes=(self.codebook_size,) * self.levels,
        codebooks=list(codebooks), history=history)

  def _diagnose(self, model, x, history, step, window) -> dict:
    codes, _, mse = self._assign_all(model, x)
    stats = diagnostics.code_stats(codes, self.codebook_size)
    history["step"].append(step)
    history["utilization"].append(stats["utilization"])
    history["perplexity"].append(stats["perplexity"])
    history["collision_rate"].append(stats["collision_rate"])
    history["recon_mse"].append(mse)
    means = {k: float(np.mean([float(w[k]) for w in window])) for k in window[0]}
    history["loss"].append(means["loss"])
    scalars = {**means, "recon_mse": mse, "collision_rate": stats["collision_rate"]}
    for level in range(self.levels):
      scalars[f"utilization_l{level}"] = stats["utilization"][level]
      scalars[f"perplexity_l{level}"] = stats["perplexity"][level]
    return scalars
