"""MPQ: REG4Rec's MoE-based parallel quantization (``tokenizer.kind='mpq'``).

REG4Rec (arXiv 2508.15308, Figure 2a) gives every item M tokens from M parallel,
**unordered** codebooks instead of a residual hierarchy: M expert encoders each map the
item vector to a latent that is snapped to its own codebook of D codes, a router weighs
the experts, and one shared decoder reconstructs the item from the weighted sum of the
chosen codewords:

  e_r = E_r(x),  c_r = argmin_j ‖e_r − z_{r,j}‖²,  q = Σ_r h_r(x) · z_{r,c_r},
  h = softmax(W_h x),  x̂ = Dec(q).

Loss (all squared errors are means over elements):

  ‖x − x̂‖² + M · (‖sg(e_r) − z_r‖² + β ‖e_r − sg(z_r)‖²) + λ · orth,
  orth = mean over items and expert pairs r ≠ s of cos²(e_r, e_s)

with straight-through gradients (x̂ = Dec(Σ_r h_r (e_r + sg(z_r − e_r)))), so the
router is trained by the reconstruction and each encoder by its commitment, the
reconstruction and the orthogonality term that keeps the experts' outputs apart (the
paper's "orthogonality regularisation"; its exact form is not public, the squared cosine
is ours). Codebooks start from k-means of each expert's encodings; load balancing and
dead-code restarts are CoBa's (``rqvae.balanced_distances``, ``rqvae.update_usage``,
``rqvae.restart_dead_codes``), applied per codebook.

``codebook_sizes`` (ours; one per expert, e.g. (16, 64, 256, 256)) gives the parallel
codebooks different sizes: coarse ones whose code is easy to predict first and fine ones
that tell items apart, still unordered (the search picks the order). Codebooks are kept
padded to the largest size; a padded code is never chosen and its usage is held at its
codebook's mean, so balancing and restarts act on the real codes only.

Output: ``QuantizedItems`` with ``ordered=False`` and one level per expert; the SID
table adds the de-duplication token to items that share all M tokens. The history holds
per-codebook utilisation and perplexity, collisions, reconstruction error, the router's
mean weights and the mean |cos| between the experts' outputs (``expert_correlation``,
an M × M matrix at the end).

Two switches of ours for the failure the paper's form (``combine='sum'``,
``independence_weight=0``) shows on real item vectors: the experts learn nearly the same
partition (on Amazon Scientific's MiniLM vectors a third of the items share all four
tokens with another item, 0.348, and the share grows during training from 0.20). Under
``sum`` the straight-through gradient that reaches every encoder is the same vector
h_r · ∂L/∂q, so the experts move together.

* ``combine='concat'``: the decoder reads [h_1 z_1, …, h_M z_M] (M · latent wide), so
  each expert gets its own block of the reconstruction gradient.
* ``independence_weight`` λ_I: adds λ_I · mean over expert pairs of the mutual
  information between their soft code assignments (softmax of −distance / τ over the
  batch; ``independence_temperature`` τ relative to the mean distance), which is zero
  when the experts' partitions are independent and log D when they coincide.

Scientific, M = 4, 3,000 steps (docs/results.md): the paper's form 0.348 collisions,
recon MSE 0.371; ``concat`` 0.320; λ_I 0.3 / **1.0** / 3.0: 0.154 / **0.105** / 0.166
(MSE 0.406 / 0.434 / 0.445). But independent partitions follow the item categories
less (token purity 42–49 % at λ_I 1 against 60–65 %), and REG4Rec on them is worse on
validation (N@10 0.0497 against 0.0559, seed 0), so the default is the paper's form,
λ_I = 0.
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

from s2gr_jax.sid import clustering
from s2gr_jax.sid import diagnostics
from s2gr_jax.sid import rqvae
from s2gr_jax.sid.interface import QuantizedItems

log = logging.getLogger(__name__)


def _unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def expert_cosines(e):
  """cos(e_r, e_s) per item: [B, M, M] from expert outputs [M, B, D]."""
  u = _unit(e)
  return jnp.einsum("mbd,nbd->bmn", u, u)


def orthogonality(e):
  """Mean over items and expert pairs r ≠ s of cos²(e_r, e_s)."""
  m = e.shape[0]
  off = 1.0 - jnp.eye(m)
  return ((expert_cosines(e) ** 2) * off).sum((1, 2)).mean() / (m * (m - 1))


def assignment_information(d, temperature: float):
  """Mean over expert pairs r < s of the mutual information (nats) between their soft
  code assignments over the batch, from squared distances ``d`` [M, B, K]."""
  m, b, _ = d.shape
  scale = jax.lax.stop_gradient(d.mean((1, 2), keepdims=True)) * temperature
  p = jax.nn.softmax(-d / jnp.maximum(scale, 1e-9), axis=-1)  # [M, B, K]
  marg = p.mean(1)  # [M, K]
  total = 0.0
  for r in range(m):
    for s in range(r + 1, m):
      joint = p[r].T @ p[s] / b  # [K, K]
      outer = marg[r][:, None] * marg[s][None, :]
      total += (joint * (jnp.log(joint + 1e-12) - jnp.log(outer + 1e-12))).sum()
  return total / (m * (m - 1) / 2)


COMBINES = ("sum", "concat")


class MPQModel(nnx.Module):
  """M expert encoders, a router, M codebooks [M, D, latent] and one decoder."""

  def __init__(self, in_dim: int, hidden: tuple[int, ...], latent_dim: int, experts: int,
               codebook_size: int | tuple[int, ...], *, rngs: nnx.Rngs,
               combine: str = "sum"):
    if combine not in COMBINES:
      raise ValueError(f"tokenizer.mpq.combine={combine!r}: expected one of {COMBINES}")
    self.combine = combine
    # One size per codebook (an int: the same for all). Codebooks are stored padded to
    # the largest; the padded rows are never chosen (``valid``) and their usage is held
    # at the mean of the real codes, so balancing and restarts see only real codes.
    sizes = ((int(codebook_size),) * experts if np.ndim(codebook_size) == 0
             else tuple(int(k) for k in codebook_size))
    self.sizes = sizes
    width = max(sizes)
    codebook_size = width
    dims = (in_dim,) + tuple(hidden) + (latent_dim,)
    self.experts = nnx.List([
        nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims, dims[1:])])
        for _ in range(experts)])
    self.router = nnx.Linear(in_dim, experts, rngs=rngs)
    back = ((latent_dim * experts if combine == "concat" else latent_dim),) + dims[-2::-1]
    self.decoder = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(back, back[1:])])
    self.codebooks = nnx.Param(jnp.zeros((experts, codebook_size, latent_dim)))
    self.usage = rqvae.CodeUsage(
        jnp.asarray([[1.0 / k] * width for k in sizes], jnp.float32))

  def encode(self, x):
    """Expert outputs [M, B, latent]."""
    return jnp.stack([rqvae.mlp(expert, x) for expert in self.experts])

  def route(self, x):
    """Router weights [B, M] (softmax over experts)."""
    return jax.nn.softmax(self.router(x), axis=-1)

  def decode(self, x, z):
    """x̂ from the router weights of ``x`` [B, in] and the codewords ``z`` [M, B, latent]:
    the decoder reads their weighted sum (``combine='sum'``, the paper's) or the weighted
    codewords side by side (``'concat'``)."""
    h = self.route(x)
    if self.combine == "sum":
      q = jnp.einsum("bm,mbd->bd", h, z)
    else:
      q = jnp.einsum("bm,mbd->bmd", h, z).reshape(x.shape[0], -1)
    return rqvae.mlp(self.decoder, q)

  def distances(self, e):
    """Squared distances [M, B, K] of each expert's outputs to its own codebook (padded
    codes of a smaller codebook at a distance no real code reaches)."""
    dist = jax.vmap(clustering.sq_dists)(e, self.codebooks[...])
    return self.mask(dist)

  @property
  def valid(self):
    """bool[M, K]: which rows of the padded codebooks are real codes."""
    return jnp.asarray(np.arange(max(self.sizes))[None, :]
                       < np.asarray(self.sizes)[:, None])

  def mask(self, dist):
    """``dist`` [M, B, K] with the padded codes pushed out of reach."""
    if len(set(self.sizes)) == 1:
      return dist
    far = jax.lax.stop_gradient(dist.max()) * 4.0 + 1.0
    return jnp.where(self.valid[:, None, :], dist, far)

  def hold_padding(self, usage):
    """Usage [M, K] with each padded code's entry set to the mean of its codebook's real
    codes (never dead, ratio 1 under balancing)."""
    if len(set(self.sizes)) == 1:
      return usage
    valid = self.valid.astype(usage.dtype)
    mean = (usage * valid).sum(1, keepdims=True) / valid.sum(1, keepdims=True)
    return jnp.where(self.valid, usage, mean)

  def quantize(self, e, gamma: float, eps: float):
    """Nearest code of each expert's own codebook (CoBa's balancing when γ > 0): codes
    int32[B, M] and the chosen codewords [M, B, latent]."""
    codebooks = self.codebooks[...]
    usage = jax.lax.stop_gradient(self.usage[...])
    dist = jax.vmap(clustering.sq_dists)(jax.lax.stop_gradient(e), codebooks)  # [M,B,K]
    dist = jax.vmap(lambda d, u: rqvae.balanced_distances(d, u, gamma, eps))(dist, usage)
    idx = self.mask(dist).argmin(-1).astype(jnp.int32)  # [M, B]
    chosen = jax.vmap(lambda book, i: book[i])(codebooks, idx)
    return idx.T, chosen

  def reconstruct(self, x, codes):
    """x̂ from the router weights and the codewords of ``codes`` int[B, M]."""
    chosen = jax.vmap(lambda book, i: book[i])(self.codebooks[...], codes.T)
    return self.decode(x, chosen)


@dataclasses.dataclass
class MPQ:
  """The MPQ quantizer (``fit(x) -> QuantizedItems``, unordered); see module docstring."""

  experts: int = 4
  codebook_size: int = 256
  # Codes per codebook, one entry per expert (e.g. (16, 64, 256, 256): coarse and fine
  # parallel codebooks); empty: ``codebook_size`` for every codebook.
  codebook_sizes: tuple[int, ...] = ()
  latent_dim: int = 32
  hidden: tuple[int, ...] = (256, 128)
  steps: int = 3000
  batch_size: int = 1024
  lr: float = 1e-3
  commitment: float = 0.25
  orthogonality_weight: float = 0.1
  combine: str = "sum"
  independence_weight: float = 0.0
  independence_temperature: float = 0.1
  kmeans_iters: int = 50
  init_items: int = 20_000
  balance_gamma: float = 0.5
  balance_eps: float = 0.2
  usage_decay: float = 0.99
  restart_every: int = 100
  restart_threshold: float = 0.03
  log_every: int = 250
  seed: int = 0
  mesh: Any = None
  callback: Callable[[int, dict], None] | None = None

  def loss(self, model: MPQModel, x):
    e = model.encode(x)
    codes, chosen = model.quantize(e, self.balance_gamma, self.balance_eps)
    codebook_loss = ((jax.lax.stop_gradient(e) - chosen) ** 2).mean()
    commit_loss = ((e - jax.lax.stop_gradient(chosen)) ** 2).mean()
    straight = e + jax.lax.stop_gradient(chosen - e)
    x_hat = model.decode(x, straight)
    recon = ((x - x_hat) ** 2).mean()
    orth = orthogonality(e)
    loss = (recon + self.experts * (codebook_loss + self.commitment * commit_loss)
            + self.orthogonality_weight * orth)
    parts = {"loss": loss, "recon": recon, "codebook": codebook_loss,
             "commit": commit_loss, "orthogonality": orth}
    if self.independence_weight > 0:
      info = assignment_information(model.distances(e), self.independence_temperature)
      loss = loss + self.independence_weight * info
      parts.update(loss=loss, assignment_information=info)
    return loss, (parts, codes, e)

  def _make_step(self, graphdef):
    def step(state, x, key, restart):
      model, opt = nnx.merge(graphdef, state)
      grad_fn = nnx.value_and_grad(lambda m: self.loss(m, x), has_aux=True)
      (_, (parts, codes, e)), grads = grad_fn(model)
      opt.update(model, grads)
      usage = model.hold_padding(
          rqvae.update_usage(model.usage[...], codes, self.usage_decay))
      if self.restart_every > 0:  # dead codes jump onto this batch's encodings
        model.codebooks[...], usage, parts["restarted"] = rqvae.restart_dead_codes(
            model.codebooks[...], usage, e, key, self.restart_threshold, restart)
      model.usage[...] = usage
      return nnx.split((model, opt))[1], parts

    return jax.jit(step, donate_argnums=0)

  def _init_codebooks(self, model: MPQModel, x: np.ndarray, key) -> None:
    """k-means of each expert's encodings of a large first batch."""
    rng = np.random.default_rng(self.seed)
    e = model.encode(jnp.asarray(x[rng.permutation(len(x))[:self.init_items]]))
    width = max(self.sizes)
    books = []
    for r, k in enumerate(self.sizes):
      book = clustering.kmeans(e[r], jax.random.fold_in(key, r), k=k,
                               iters=self.kmeans_iters)[0]
      books.append(jnp.pad(book, ((0, width - k), (0, 0))))
    model.codebooks[...] = jnp.stack(books)

  @property
  def sizes(self) -> tuple[int, ...]:
    """Codes per codebook."""
    if not self.codebook_sizes:
      return (int(self.codebook_size),) * self.experts
    return tuple(int(k) for k in self.codebook_sizes)

  def assign_all(self, model: MPQModel, x: np.ndarray):
    """Codes int[N, M], reconstruction MSE, mean router weights, mean |cos| [M, M]."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def assign(state, xb):
      m = nnx.merge(graphdef, state)
      e = m.encode(xb)
      codes, _ = m.quantize(e, self.balance_gamma, self.balance_eps)
      err = ((xb - m.reconstruct(xb, codes)) ** 2).mean(1)
      return codes, err, m.route(xb).sum(0), jnp.abs(expert_cosines(e)).sum(0)

    outs = [assign(state, jnp.asarray(x[i:i + 8192])) for i in range(0, len(x), 8192)]
    codes = np.concatenate([np.asarray(o[0]) for o in outs])
    mse = float(np.concatenate([np.asarray(o[1]) for o in outs]).mean())
    router = (sum(np.asarray(o[2]) for o in outs) / len(x)).tolist()
    corr = (sum(np.asarray(o[3]) for o in outs) / len(x)).tolist()
    return codes, mse, router, corr

  def fit(self, x: np.ndarray, graph=None) -> QuantizedItems:
    del graph  # MPQ reads the item vectors only
    from s2gr_jax import parallel  # pylint: disable=g-import-not-at-top
    n = x.shape[0]
    if self.experts < 2:
      raise ValueError(f"tokenizer.mpq.experts={self.experts}: MPQ needs at least 2")
    if self.codebook_sizes and len(self.codebook_sizes) != self.experts:
      raise ValueError(f"tokenizer.mpq.codebook_sizes={tuple(self.codebook_sizes)}: "
                       f"expected one size per expert ({self.experts})")
    if min(self.sizes) < 2:
      raise ValueError(f"tokenizer.mpq.codebook_sizes={self.sizes}: every codebook needs "
                       "at least 2 codes")
    if n < max(self.sizes):
      raise ValueError(f"{n} items are fewer than the {max(self.sizes)} codes of the "
                       "largest codebook (tokenizer.codebook_size / "
                       "tokenizer.mpq.codebook_sizes)")
    x = rqvae.standardize(x)
    batch = min(self.batch_size, n)
    if self.mesh is not None:
      batch -= batch % self.mesh.shape["data"]
    key = jax.random.key(self.seed)
    model = MPQModel(x.shape[1], self.hidden, self.latent_dim, self.experts,
                     self.sizes, rngs=nnx.Rngs(self.seed), combine=self.combine)
    self._init_codebooks(model, x, jax.random.fold_in(key, 1))
    opt = nnx.Optimizer(model, optax.adam(self.lr), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    if self.mesh is not None:
      state = jax.device_put(state, parallel.replicated(self.mesh))
    step_fn = self._make_step(graphdef)
    history: dict[str, list] = {"step": [], "utilization": [], "perplexity": [],
                                "collision_rate": [], "recon_mse": [], "loss": [],
                                "orthogonality": [], "router_mean": []}
    t0, window = time.time(), []
    for step, xb in rqvae.minibatches(x, batch, self.steps, self.seed, self.mesh):
      restart = self.restart_every > 0 and step % self.restart_every == 0
      state, parts = step_fn(state, xb, jax.random.fold_in(key, step), jnp.asarray(restart))
      window.append(parts)
      if step % self.log_every == 0 or step == self.steps:
        model, _ = nnx.merge(graphdef, state)
        codes, mse, router, _ = self.assign_all(model, x)
        stats = diagnostics.code_stats(codes, self.sizes)
        means = {k: float(np.mean([float(w[k]) for w in window])) for k in window[0]}
        window = []
        for k, v in (("step", step), ("utilization", stats["utilization"]),
                     ("perplexity", stats["perplexity"]),
                     ("collision_rate", stats["collision_rate"]), ("recon_mse", mse),
                     ("loss", means["loss"]), ("orthogonality", means["orthogonality"]),
                     ("router_mean", router)):
          history[k].append(v)
        log.info("tokenizer step %d/%d | loss %.4f | recon %.4f | orth %.4f | "
                 "utilisation %s | collisions %.3f | %.1f steps/s", step, self.steps,
                 means["loss"], mse, means["orthogonality"],
                 [round(u, 3) for u in stats["utilization"]], stats["collision_rate"],
                 step / (time.time() - t0))
        if self.callback is not None:
          scalars = {**means, "recon_mse": mse, "collision_rate": stats["collision_rate"]}
          for r in range(self.experts):
            scalars[f"utilization_c{r}"] = stats["utilization"][r]
            scalars[f"perplexity_c{r}"] = stats["perplexity"][r]
          self.callback(step, scalars)
    model, _ = nnx.merge(graphdef, state)
    codes, mse, router, corr = self.assign_all(model, x)
    history.update(final_recon_mse=mse, router_mean_final=router, expert_correlation=corr)
    return QuantizedItems(codes=codes.astype(np.int32),
                          codebook_sizes=self.sizes,
                          codebooks=[np.asarray(book[:k]) for book, k in
                                     zip(model.codebooks[...], self.sizes)],
                          ordered=False,
                          history=history)
