"""T5-style transformer pieces: relative position bias, attention with a KV cache, MLP.

Pre-norm (RMSNorm) residual blocks, no biases, ReLU MLP, as T5 v1.0 and TIGER. Dropout
is active only when the caller passes ``rngs`` (training); evaluation passes none.
Attention is written as two heads-first batched matmuls with an explicit float32
softmax (the T5 relative bias and the masks enter the scores directly; sequences here are
at most ~100 tokens, so a fused kernel buys little); the KV cache is a plain array the
caller threads through (pure functions, no hidden decode state), which is what the
batched beam search needs.

Some pieces exist for speed on XLA:CPU (found by profiling the paper-size train step on
2 CPU cores) and give the same values and gradients as the plain code: ``hash_bits``
(dropout masks from a counter hash instead of threefry), ``dense`` (weight gradients that
transpose the narrow operand), ``add_batch_bias`` (bias gradients summed by a matmul) and
``Attention.attend_source`` with ``source_attention`` (cross-attention of a few queries
straight over the encoder states, its source gradient as one product). Every module
takes ``kernels``: ``"cpu"`` uses them, ``"plain"`` (the default) the textbook
expressions with autodiff gradients and exact-rate threefry dropout. A run picks them
with ``model.kernels`` (``auto``: ``cpu`` on a CPU backend, ``plain`` on accelerators,
where they were never measured), so an accelerator session can time both.
``matmul`` and ``einsum`` accumulate bfloat16 products in float32
(``model.dtype="bfloat16"``).
"""

from __future__ import annotations

import math

from flax import nnx
import jax
import jax.numpy as jnp

KERNELS = ("cpu", "plain")


def check_kernels(kernels: str) -> str:
  if kernels not in KERNELS:
    raise ValueError(f"kernels={kernels!r}; choose one of {list(KERNELS)}")
  return kernels


def _fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a bijection with full avalanche, five cheap ops."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def hash_bits(key: jax.Array, n: int) -> jax.Array:
  """``n`` pseudo-random uint32 words from a JAX key, by hashing a counter.

  Two keyed rounds of the murmur3 finalizer over ``0 .. n-1`` (64 key bits drawn from
  ``key`` with JAX's own PRNG). Deterministic in ``key``, like ``jax.random.bits``, and
  about 100x cheaper on CPU than threefry, whose bits cost about a tenth of the
  paper-size train step (5.43 → 4.85 s for the loss gradient). Good enough for dropout
  masks; not for anything statistical.
  """
  seed = jax.random.bits(key, (2,), jnp.uint32)
  counter = jnp.arange(n, dtype=jnp.uint32)
  return _fmix32(_fmix32(counter ^ seed[0]) + seed[1])


class Dropout(nnx.Module):
  """Inverted dropout, active only when ``rngs`` is given.

  ``kernels="plain"``: threefry Bernoulli draws at exactly ``rate``. ``"cpu"``: cheap
  masks, four 8-bit draws from each counter-hashed 32-bit word (``hash_bits``), so the
  rate is rounded to a multiple of 1/256 (0.1 → 26/256 ≈ 0.102) and the kept values are
  scaled by that exact keep probability.
  """

  def __init__(self, rate: float, kernels: str = "plain"):
    self.kernels = check_kernels(kernels)
    self.rate = float(rate)
    self.threshold = int(round(rate * 256))

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    if rngs is None or self.rate == 0:
      return x
    if self.kernels == "plain":
      keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.rate, x.shape)
      scale = 1.0 / (1.0 - self.rate)
    else:
      if self.threshold == 0:
        return x
      n = x.size
      bits = hash_bits(rngs.dropout(), (n + 3) // 4)
      draws = jax.lax.bitcast_convert_type(bits, jnp.uint8).reshape(-1)[:n]
      keep = (draws >= self.threshold).reshape(x.shape)
      scale = 256.0 / (256 - self.threshold)
    return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros((), x.dtype))


def matmul(a: jax.Array, b: jax.Array, out_dtype=None) -> jax.Array:
  """``a @ b`` accumulated in float32, returned in ``out_dtype`` (default: a's dtype).

  For bfloat16 operands this is the fast path on hardware with bf16 dot products
  (TPU, GPU, and x86 CPUs with AVX512-BF16, where XLA runs it at ~1.8x the float32
  matmul rate); a bf16-output product is slower there and less accurate everywhere.
  """
  if a.dtype == jnp.float32 and b.dtype == jnp.float32:
    out = a @ b  # the plain product (XLA:CPU lowers it the same way, minus a convert)
  else:
    out = jnp.matmul(a, b, preferred_element_type=jnp.float32)
  return out.astype(out_dtype or a.dtype)


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """``jnp.einsum`` of two operands with ``matmul``'s precision rule."""
  if a.dtype == jnp.float32 and b.dtype == jnp.float32:
    return jnp.einsum(spec, a, b)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


@jax.custom_vjp
def dense(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x [..., i] @ w [i, o]``, with a weight gradient that transposes the narrow side.

  Autodiff's weight gradient contracts the flattened rows of x and dy; XLA:CPU lays that
  out by transposing one operand in full, and it picked the wide one (the [B·T, d_ff]
  MLP activations), a copy of ~85 MB per layer at the paper size. Here the narrower of
  the two is transposed explicitly (an optimisation barrier keeps XLA from folding it
  back), which took the paper-size TIGER train step from 4.7 s to 4.2 s on 2 CPU cores.
  Same values as ``x @ w`` and its autodiff gradients.
  """
  return matmul(x, w)


def _dense_fwd(x, w):
  return matmul(x, w), (x, w)


def _dense_bwd(res, g):
  x, w = res
  g = g.astype(x.dtype)  # no-op in float32; bf16 cotangents for the bf16 fast path
  dx = matmul(g, w.T)
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  if x2.shape[1] <= g2.shape[1]:
    dw = matmul(jax.lax.optimization_barrier(x2.T), g2, w.dtype)
  else:
    dw = matmul(jax.lax.optimization_barrier(g2.T), x2, w.dtype).T
  return dx, dw


dense.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def source_attention(qk: jax.Array, src: jax.Array, keep: jax.Array) -> jax.Array:
  """softmax(qk · srcᵀ, masked) · src for few query rows: [B, N, d], [B, T, d] → [B, N, d].

  ``keep`` is bool, broadcastable to [B, N, T]. Scores and softmax in float32, products
  as ``matmul``. The gradient for ``src`` has two parts (through the scores and through
  the context); autodiff forms each as a batched product over the N rows, which XLA:CPU
  runs slowly for small N. Here they are one product over 2N rows, with the small
  operand transposed explicitly. Same values and gradients as the plain expression.
  """
  return _source_attention_fwd(qk, src, keep)[0]


def _source_attention_fwd(qk, src, keep):
  scores = matmul(qk, jnp.swapaxes(src, 1, 2), jnp.float32)
  scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(qk.dtype)
  return matmul(probs, src), (qk, src, keep, probs)


def _source_attention_bwd(res, g):
  qk, src, keep, probs = res
  g = g.astype(qk.dtype)
  dprobs = matmul(g, jnp.swapaxes(src, 1, 2), jnp.float32)
  p32 = probs.astype(jnp.float32)
  dscores = (p32 * (dprobs - (dprobs * p32).sum(-1, keepdims=True))).astype(qk.dtype)
  dqk = matmul(dscores, src)
  rows = jnp.concatenate([dscores, probs], axis=1)  # [B, 2N, T]
  cols = jnp.concatenate([qk, g], axis=1)  # [B, 2N, d]
  dsrc = matmul(jax.lax.optimization_barrier(jnp.swapaxes(rows, 1, 2)), cols, src.dtype)
  return dqk, dsrc, None


source_attention.defvjp(_source_attention_fwd, _source_attention_bwd)


class Linear(nnx.Linear):
  """``nnx.Linear`` without bias (same parameters, same tree); with ``kernels="cpu"``
  its product is ``dense``."""

  def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs,
               kernels: str = "plain"):
    super().__init__(in_features, out_features, use_bias=False, dtype=dtype, rngs=rngs)
    self.kernels = check_kernels(kernels)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    product = dense if self.kernels == "cpu" else matmul
    return product(x.astype(dtype), self.kernel[...].astype(dtype))


@jax.custom_vjp
def add_batch_bias(scores: jax.Array, bias: jax.Array) -> jax.Array:
  """``scores [B, ...] + bias [1, ...]``; the bias gradient is summed by a matmul.

  XLA:CPU reduced the [B, heads, T, T] score gradients over B with a slow reduction
  (a third of a second per paper-size step for the shared encoder bias); a ones-vector
  matmul reads them at memory speed.
  """
  return scores + bias


def _bias_fwd(scores, bias):
  return scores + bias, None


def _bias_bwd(_, g):
  flat = g.reshape(g.shape[0], -1)
  db = jnp.ones((1, g.shape[0]), g.dtype) @ flat
  return g, db.reshape((1,) + g.shape[1:])


add_batch_bias.defvjp(_bias_fwd, _bias_bwd)


def history_age(mask: jax.Array, max_age: int) -> jax.Array:
  """int32[B, H]: each history position's distance from the user's most recent item
  (0 = most recent) in left-aligned histories under ``mask`` bool[B, H]; padding gets 0,
  ages clipped to ``max_age - 1``."""
  age = mask.sum(1, keepdims=True) - 1 - jnp.arange(mask.shape[1])
  return jnp.clip(jnp.where(mask, age, 0), 0, max_age - 1).astype(jnp.int32)


def relative_position_buckets(relative: jax.Array, bidirectional: bool,
                              num_buckets: int, max_distance: int) -> jax.Array:
  """T5's log-spaced buckets of ``key_pos - query_pos``."""
  buckets = jnp.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative > 0).astype(relative.dtype) * num_buckets
    distance = jnp.abs(relative)
  else:
    distance = -jnp.minimum(relative, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  log_ratio = jnp.log(jnp.maximum(distance, 1) / max_exact) / math.log(
      max_distance / max_exact)
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nnx.Module):
  """Learned per-head bias indexed by bucketed relative position (one per stack)."""

  def __init__(self, num_heads: int, *, bidirectional: bool, num_buckets: int = 32,
               max_distance: int = 128, rngs: nnx.Rngs):
    self.bidirectional = bidirectional
    self.num_buckets = num_buckets
    self.max_distance = max_distance
    self.embedding = nnx.Embed(num_buckets, num_heads, rngs=rngs,
                               embedding_init=nnx.initializers.normal(0.1))

  def __call__(self, q_len: int, k_len: int) -> jax.Array:
    """float32[heads, q_len, k_len] for queries and keys at positions 0.."""
    relative = jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]
    buckets = relative_position_buckets(relative, self.bidirectional, self.num_buckets,
                                        self.max_distance)
    return jnp.transpose(self.embedding(buckets), (2, 0, 1))


class Attention(nnx.Module):
  """Multi-head attention; ``project_kv`` and ``attend`` are split for KV caching."""

  def __init__(self, d_model: int, num_heads: int, head_dim: int, *, dtype,
               rngs: nnx.Rngs, kernels: str = "plain"):
    inner = num_heads * head_dim
    self.kernels = check_kernels(kernels)
    make = lambda i, o: Linear(i, o, dtype=dtype, rngs=rngs, kernels=kernels)
    self.q, self.k, self.v = make(d_model, inner), make(d_model, inner), make(d_model, inner)
    self.o = make(inner, d_model)
    self.num_heads, self.head_dim = num_heads, head_dim

  def _split(self, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))

  def project_kv(self, x: jax.Array, heads_first: bool = False
                 ) -> tuple[jax.Array, jax.Array]:
    """[..., T, d] → keys and values [..., T, heads, head_dim], or with ``heads_first``
    [..., heads, T, head_dim]: the layout ``attend`` multiplies in, for caches that are
    read many times (beam search)."""
    k, v = self._split(self.k(x)), self._split(self.v(x))
    if heads_first:
      k, v = jnp.moveaxis(k, -2, -3), jnp.moveaxis(v, -2, -3)
    return k, v

  def attend(self, x: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None,
             bias: jax.Array | None, heads_first: bool = False) -> jax.Array:
    """Queries from ``x`` [B, Q, d] attend over ``k, v`` [B, T, heads, head_dim]
    ([B, heads, T, head_dim] with ``heads_first``).

    ``mask`` broadcasts to bool[B, heads, Q, T]; ``bias`` to [B, heads, Q, T].
    """
    q = self._split(self.q(x))
    # Heads first: the two products then run as plain batched matmuls over
    # [B, heads, ., head_dim], and the output projection contracts heads and head_dim
    # together. On XLA:CPU this saves the layout copies that "bqhd,bkhd->bhqk" costs
    # (about 8 % of the paper-size train step); caches kept heads-first (beam search)
    # save the remaining copy of K and V at every step.
    qh = jnp.moveaxis(q, -2, -3)
    kh, vh = k.astype(q.dtype), v.astype(q.dtype)
    if not heads_first:
      kh, vh = jnp.moveaxis(kh, -2, -3), jnp.moveaxis(vh, -2, -3)
    scores = matmul(qh, jnp.swapaxes(kh, -1, -2), jnp.float32) / math.sqrt(self.head_dim)
    if bias is not None:
      bias = jnp.broadcast_to(bias, (1,) * (scores.ndim - bias.ndim) + bias.shape)
      if (self.kernels == "cpu" and bias.shape[0] == 1
          and bias.shape[1:] == scores.shape[1:]):
        scores = add_batch_bias(scores, bias.astype(scores.dtype))
      else:
        scores = scores + bias
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return self._output(matmul(probs, vh))  # [B, heads, Q, head_dim] → [B, Q, d]

  def _output(self, out: jax.Array) -> jax.Array:
    """Heads-first [B, heads, Q, head_dim] → [B, Q, d] through the output projection."""
    kernel = self.o.kernel[...].reshape(self.num_heads, self.head_dim, -1)
    return einsum("bhqd,hdm->bqm", out, kernel.astype(out.dtype))

  def attend_source(self, x: jax.Array, src: jax.Array, *,
                    mask: jax.Array | None) -> jax.Array:
    """Queries from ``x`` [B, Q, d] over source states ``src`` [B, T, d], unprojected.

    The key and value projections are folded into the queries and the output:
    scores = (q W_kᵀ) · srcᵀ per head and out = (probs · src) W_v. The same function as
    ``attend(x, *project_kv(src))`` up to rounding, but the [B, T, heads·head_dim] keys
    and values, their layout copies and their gradients are never formed. Cheaper when
    few queries read the source (Q · heads small against T): teacher-forced decoders
    and S²GR's thought recurrence; beam search, with many queries per cached source,
    keeps ``project_kv``. ``mask`` broadcasts to bool[B, heads, Q, T].

    With ``kernels="plain"`` this is exactly ``attend(x, *project_kv(src))``.
    """
    if self.kernels == "plain":
      return self.attend(x, *self.project_kv(src), mask=mask, bias=None)
    b, n, d = x.shape
    h, e = self.num_heads, self.head_dim
    q = self._split(self.q(x))  # [B, Q, h, e]
    src = src.astype(q.dtype)
    wk = self.k.kernel[...].astype(q.dtype).reshape(d, h, e)
    qk = einsum("bqhe,dhe->bhqd", q * jnp.asarray(1 / math.sqrt(e), q.dtype), wk)
    t = src.shape[1]
    keep = jnp.ones((1, 1, 1, t), bool) if mask is None else mask
    # One row per user when the mask ignores heads and queries (the encoder padding
    # mask), else one per (head, query) row of qk.
    rows = (1, 1) if keep.shape[1:3] == (1, 1) else (h, n)
    keep = jnp.broadcast_to(keep, (b, *rows, t)).reshape(b, -1, t)
    ctx = source_attention(qk.reshape(b, h * n, d), src, keep).reshape(b, h, n, d)
    wv = self.v.kernel[...].astype(q.dtype).reshape(d, h, e)
    return self._output(einsum("bhqd,dhe->bhqe", ctx, wv))

  def __call__(self, x, kv, *, mask=None, bias=None):
    k, v = self.project_kv(kv)
    return self.attend(x, k, v, mask=mask, bias=bias)


class Mlp(nnx.Module):

  def __init__(self, d_model: int, d_ff: int, dropout: float, *, dtype, rngs: nnx.Rngs,
               kernels: str = "plain"):
    self.wi = Linear(d_model, d_ff, dtype=dtype, rngs=rngs, kernels=kernels)
    self.wo = Linear(d_ff, d_model, dtype=dtype, rngs=rngs, kernels=kernels)
    self.drop = Dropout(dropout, kernels)

  def __call__(self, x, rngs=None):
    h = self.drop(jax.nn.relu(self.wi(x)), rngs)
    return self.wo(h)


class EncoderLayer(nnx.Module):

  def __init__(self, d_model, num_heads, head_dim, d_ff, dropout, *, dtype, rngs,
               kernels: str = "plain"):
    self.norm1 = nnx.RMSNorm(d_model, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.attn = Attention(d_model, num_heads, head_dim, dtype=dtype, rngs=rngs,
                          kernels=kernels)
    self.norm2 = nnx.RMSNorm(d_model, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(d_model, d_ff, dropout, dtype=dtype, rngs=rngs, kernels=kernels)
    self.drop = Dropout(dropout, kernels)

  def __call__(self, x, mask, bias, rngs=None):
    h = self.norm1(x)
    x = x + self.drop(self.attn(h, h, mask=mask, bias=bias), rngs)
    return x + self.drop(self.mlp(self.norm2(x), rngs), rngs)


class DecoderLayer(nnx.Module):
  """Causal self-attention, cross-attention to the encoder, MLP."""

  def __init__(self, d_model, num_heads, head_dim, d_ff, dropout, *, dtype, rngs,
               kernels: str = "plain"):
    attention = lambda: Attention(d_model, num_heads, head_dim, dtype=dtype, rngs=rngs,
                                  kernels=kernels)
    self.norm1 = nnx.RMSNorm(d_model, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.self_attn = attention()
    self.norm2 = nnx.RMSNorm(d_model, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.cross_attn = attention()
    self.norm3 = nnx.RMSNorm(d_model, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(d_model, d_ff, dropout, dtype=dtype, rngs=rngs, kernels=kernels)
    self.drop = Dropout(dropout, kernels)

  def _cross_and_mlp(self, x, cross, cross_mask, rngs):
    if isinstance(cross, (tuple, list)):  # cached (keys, values), heads first
      h = self.cross_attn.attend(self.norm2(x), *cross, mask=cross_mask, bias=None,
                                 heads_first=True)
    else:  # the encoder states themselves
      h = self.cross_attn.attend_source(self.norm2(x), cross, mask=cross_mask)
    x = x + self.drop(h, rngs)
    return x + self.drop(self.mlp(self.norm3(x), rngs), rngs)

  def __call__(self, x, cross, cross_mask, self_bias, rngs=None):
    """Teacher-forced: x [B, S, d], causal over S.

    ``cross``: the encoder states [B, T, d] (read by ``attend_source``), or their keys and
    values from ``cross_attn.project_kv(enc, heads_first=True)`` (read by ``attend``).
    """
    s = x.shape[1]
    causal = jnp.tril(jnp.ones((s, s), bool))[None, None]
    h = self.norm1(x)
    h = self.self_attn(h, h, mask=causal, bias=self_bias[None])
    x = x + self.drop(h, rngs)
    return self._cross_and_mlp(x, cross, cross_mask, rngs)

  def step(self, x, cache, pos, cross, cross_mask, self_bias, rngs=None):
    """Cached decoding of Q consecutive positions for a grid of beams.

    Args:
      x: [B, K, Q, d], the inputs at positions ``pos .. pos+Q-1`` of each of K beams.
      cache: (keys, values), each [B, K, S_max, heads, head_dim].
      pos: the first position (a Python int: decoding is unrolled).
      cross: encoder keys/values [B, heads, T, head_dim] each, or the encoder states
        [B, T, d] (see ``__call__``); shared by a user's beams
        (the K×Q rows act as queries, so nothing is copied per beam).
      cross_mask: bool[B, 1, 1, T].
      self_bias: [heads, S_max, S_max] decoder position bias.
      rngs: dropout (teacher-forced training through the cache), or None.
    Returns:
      x [B, K, Q, d] and the updated cache.
    """
    b, kb, q, d = x.shape
    h = self.norm1(x)
    k_new, v_new = self.self_attn.project_kv(h)  # [B, K, Q, heads, head_dim]
    keys = cache[0].at[:, :, pos:pos + q].set(k_new.astype(cache[0].dtype))
    values = cache[1].at[:, :, pos:pos + q].set(v_new.astype(cache[1].dtype))
    s_max = keys.shape[2]
    visible = jnp.arange(s_max)[None, :] <= (pos + jnp.arange(q))[:, None]  # [Q, S]
    flat = lambda a: a.reshape((b * kb,) + a.shape[2:])
    # The self-attention cache stays [.., S_max, heads, head_dim]: kept heads-first it
    # made S²GR's float32 beam search ~13 % slower (the per-step writes), unlike the
    # cross cache.
    h = self.self_attn.attend(flat(h), flat(keys), flat(values), mask=visible[None, None],
                              bias=self_bias[None, :, pos:pos + q, :])
    x = x + self.drop(h.reshape(b, kb, q, d), rngs)
    x = self._cross_and_mlp(x.reshape(b, kb * q, d), cross, cross_mask, rngs)
    return x.reshape(b, kb, q, d), (keys, values)
