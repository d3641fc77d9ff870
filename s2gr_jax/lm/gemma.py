"""Gemma 3 (text) in Flax NNX: the 270M model SIDReasoner's issues build on.

The architecture, as Google DeepMind's ``gemma`` (``Gemma3_270M``) defines it:
decoder-only, ``num_layers`` blocks of

    x += post_attn_norm(attn(pre_attn_norm(x)))
    x += post_ffw_norm(down(gelu_tanh(gate(h)) * up(h))),  h = pre_ffw_norm(x)

then a final norm and logits ``x @ embed.T`` (the output head is the input embedding).
RMSNorm is zero-centred, ``x / rms(x) * (1 + scale)``; attention is multi-query (one
key/value head for the 270M model) with RMSNorm over the head dimension of q and k
before RoPE (split-half), queries scaled by ``head_dim ** -0.5``; five local layers
(sliding window of 512 positions, RoPE base 10k) to one global (base 1M), so layers 5,
11, 17 are global; input embeddings are scaled by ``sqrt(d_model)``.

Why our own module and not a library's. ``google-tunix`` 0.1.7 has a Flax NNX Gemma 3,
the closest fit, but installs transformers, datasets, kagglehub, numba, qwix, perfetto
and more for it, and its cache and sharding (its own ``ShardingConfig``) do not follow
this project's decoding protocol (``start_decoding`` / ``decode_level``, used by every
search and by GRPO) or its mesh rules (``parallel.DEFAULT_RULES``); Google DeepMind's
``gemma`` 3.3 is Flax Linen on top of kauldron. The model is small enough (one file) to
write against those interfaces directly; its weights load from the GGUF that is the only
offline copy (``gguf_io``), and a reference check against llama.cpp
(``lm/reference.py``, figures in ``docs/results.md``) pins it to an independent
implementation.

Shapes: B batch, T tokens, S cache slots, N query heads, K key/value heads, H head
dim, D model width, F MLP width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp

NEG_INF = -2.3819763e38  # Gemma's attention mask value


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Sizes of a Gemma 3 text model (``gemma3_270m()``; ``tiny()`` for tests)."""

  vocab_size: int = 262_144
  d_model: int = 640
  num_layers: int = 18
  num_heads: int = 4
  num_kv_heads: int = 1
  head_dim: int = 256
  d_ff: int = 2048
  sliding_window: int = 512
  local_base: float = 10_000.0
  global_base: float = 1_000_000.0
  global_every: int = 6  # 5 local : 1 global
  norm_eps: float = 1e-6
  dtype: str = "float32"  # compute dtype ("bfloat16" where the device has it)
  param_dtype: str = "float32"
  remat: bool = False  # recompute each block in the backward pass (gradient checkpointing)
  lora_rank: int = 0  # > 0: LoRA adapters (nnx.LoRAParam) on every attention/MLP matrix
  lora_alpha: float = 16.0

  @classmethod
  def gemma3_270m(cls, **overrides) -> "GemmaConfig":
    return cls(**overrides)

  @classmethod
  def tiny(cls, **overrides) -> "GemmaConfig":
    """The same architecture at test size (random weights)."""
    values = dict(vocab_size=512, d_model=32, num_layers=3, num_heads=2, num_kv_heads=1,
                  head_dim=16, d_ff=64, sliding_window=4, global_every=3)
    values.update(overrides)
    return cls(**values)

  def is_global(self, layer: int) -> bool:
    return (layer + 1) % self.global_every == 0


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """Zero-centred RMSNorm: ``x / rms(x) * (1 + scale)`` (statistics in float32)."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return (y * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Split-half rotary embedding of x [B, T, heads, H] at positions int[B, T]."""
  half = x.shape[-1] // 2
  timescale = base ** (2.0 * jnp.arange(half, dtype=jnp.float32) / x.shape[-1])
  angle = positions[..., None, None].astype(jnp.float32) / timescale  # [B, T, 1, H/2]
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Norm(nnx.Module):
  def __init__(self, size: int, param_dtype):
    self.scale = nnx.Param(jnp.zeros((size,), param_dtype))


class Dense(nnx.Module):
  """``x @ kernel`` (no bias), kernel [in, out] (``parallel.DEFAULT_RULES`` names); with
  ``lora_rank`` > 0 plus ``(x @ lora_a) @ lora_b * alpha / rank`` (``lora_b`` starts at
  zero, so an adapted model starts as the base one; both are ``nnx.LoRAParam``)."""

  def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, param_dtype,
               lora_rank: int = 0, lora_alpha: float = 16.0):
    init = jax.nn.initializers.normal(1.0 / math.sqrt(d_in))
    self.kernel = nnx.Param(init(rngs.params(), (d_in, d_out), param_dtype))
    self.lora_scale = lora_alpha / lora_rank if lora_rank else 0.0
    if lora_rank:
      self.lora_a = nnx.LoRAParam(init(rngs.params(), (d_in, lora_rank), param_dtype))
      self.lora_b = nnx.LoRAParam(jnp.zeros((lora_rank, d_out), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x @ self.kernel[...].astype(x.dtype)
    if self.lora_scale:
      low = (x @ self.lora_a[...].astype(x.dtype)) @ self.lora_b[...].astype(x.dtype)
      y = y + low * jnp.asarray(self.lora_scale, x.dtype)
    return y


def _dense_args(cfg: GemmaConfig) -> dict:
  return dict(param_dtype=jnp.dtype(cfg.param_dtype), lora_rank=cfg.lora_rank,
              lora_alpha=cfg.lora_alpha)


# The pretrained weights: every parameter but the LoRA adapters.
BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


class Embed(nnx.Module):
  def __init__(self, vocab: int, d: int, *, rngs: nnx.Rngs, param_dtype):
    # (x sqrt(d) on the way in: unit-variance inputs; unit-scale logits on the way out)
    init = jax.nn.initializers.normal(1.0 / math.sqrt(d))
    self.embedding = nnx.Param(init(rngs.params(), (vocab, d), param_dtype))


class Attention(nnx.Module):
  def __init__(self, cfg: GemmaConfig, *, rngs: nnx.Rngs):
    kw = _dense_args(cfg)
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.q = Dense(d, n * h, rngs=rngs, **kw)
    self.k = Dense(d, k * h, rngs=rngs, **kw)
    self.v = Dense(d, k * h, rngs=rngs, **kw)
    self.o = Dense(n * h, d, rngs=rngs, **kw)
    pd = jnp.dtype(cfg.param_dtype)
    self.q_norm = Norm(h, pd)
    self.k_norm = Norm(h, pd)
    self.cfg = cfg

  def project(self, x, positions, base):
    """q [B, T, N, H] (scaled), k and v [B, T, K, H] at ``positions``."""
    cfg = self.cfg
    b, t, _ = x.shape
    q = self.q(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = self.k(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = self.v(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    q = rope(rms_norm(q, self.q_norm.scale[...], cfg.norm_eps), positions, base)
    k = rope(rms_norm(k, self.k_norm.scale[...], cfg.norm_eps), positions, base)
    return q * jnp.asarray(cfg.head_dim ** -0.5, q.dtype), k, v

  def attend(self, q, k, v, mask):
    """Softmax attention of q [B, T, N, H] over k, v [B, S, K, H] where mask [B, T, S]."""
    cfg = self.cfg
    b, t = q.shape[:2]
    g = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(b, t, cfg.num_kv_heads, g, cfg.head_dim)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k).astype(jnp.float32)
    logits = jnp.where(mask[:, None, None], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return self.o(out.reshape(b, t, cfg.num_heads * cfg.head_dim))


class Block(nnx.Module):
  def __init__(self, cfg: GemmaConfig, layer: int, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.pre_attn_norm = Norm(cfg.d_model, pd)
    self.attn = Attention(cfg, rngs=rngs)
    self.post_attn_norm = Norm(cfg.d_model, pd)
    self.pre_ffw_norm = Norm(cfg.d_model, pd)
    kw = _dense_args(cfg)
    self.gate = Dense(cfg.d_model, cfg.d_ff, rngs=rngs, **kw)
    self.up = Dense(cfg.d_model, cfg.d_ff, rngs=rngs, **kw)
    self.down = Dense(cfg.d_ff, cfg.d_model, rngs=rngs, **kw)
    self.post_ffw_norm = Norm(cfg.d_model, pd)
    self.is_global = cfg.is_global(layer)
    self.cfg = cfg

  @property
  def base(self) -> float:
    return self.cfg.global_base if self.is_global else self.cfg.local_base

  def window_mask(self, q_pos, k_pos):
    """Local layers: a query sees keys fewer than ``sliding_window`` positions back."""
    if self.is_global:
      return True
    return (q_pos[:, :, None] - k_pos[:, None, :]) < self.cfg.sliding_window

  def mlp(self, x):
    eps = self.cfg.norm_eps
    h = rms_norm(x, self.pre_ffw_norm.scale[...], eps)
    f = self.down(jax.nn.gelu(self.gate(h), approximate=True) * self.up(h))
    return x + rms_norm(f, self.post_ffw_norm.scale[...], eps)

  def __call__(self, x, positions, mask):
    """Full self-attention over x [B, T, D]; also returns this layer's k, v."""
    eps = self.cfg.norm_eps
    h = rms_norm(x, self.pre_attn_norm.scale[...], eps)
    q, k, v = self.attn.project(h, positions, self.base)
    mask = mask & self.window_mask(positions, positions)
    a = self.attn.attend(q, k, v, mask)
    x = x + rms_norm(a, self.post_attn_norm.scale[...], eps)
    return self.mlp(x), (k, v)

  def step(self, x, positions, cache_k, cache_v, slot_pos, slot: int | jax.Array):
    """x [B, T, D] at ``positions`` written into cache slots slot..slot+T-1 and attending
    over every filled slot (``slot_pos`` int[B, S], -1 empty; already holding them)."""
    eps = self.cfg.norm_eps
    h = rms_norm(x, self.pre_attn_norm.scale[...], eps)
    q, k, v = self.attn.project(h, positions, self.base)
    cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), slot, 1)
    cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), slot, 1)
    causal = (slot_pos[:, None, :] >= 0) & (slot_pos[:, None, :] <= positions[:, :, None])
    mask = causal & self.window_mask(positions, slot_pos)
    a = self.attn.attend(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype), mask)
    x = x + rms_norm(a, self.post_attn_norm.scale[...], eps)
    return self.mlp(x), cache_k, cache_v


@struct.dataclass
class Cache:
  """Keys and values of every layer for a batch of sequences.

  Attributes:
    k, v: per layer [B, S, K, H].
    slot_pos: int32[B, S]: the position each slot holds (-1: empty or padding).
    length: int32[]: slots written so far (the next token goes to slot ``length``).
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  slot_pos: jax.Array
  length: jax.Array

  @property
  def size(self) -> int:
    return self.slot_pos.shape[1]


def positions_of(valid: jax.Array) -> jax.Array:
  """int32[B, T]: each token's position, counting only the valid ones (left padding
  gets -1)."""
  pos = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
  return jnp.where(valid, pos, -1)


class Gemma3(nnx.Module):
  """Gemma 3 text model (module docstring)."""

  def __init__(self, cfg: GemmaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs,
                       param_dtype=jnp.dtype(cfg.param_dtype))
    self.layers = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])
    self.final_norm = Norm(cfg.d_model, jnp.dtype(cfg.param_dtype))

  @property
  def dtype(self):
    return jnp.dtype(self.cfg.dtype)

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    x = self.embed.embedding[...][tokens].astype(self.dtype)
    return x * jnp.sqrt(jnp.asarray(self.cfg.d_model, jnp.float32)).astype(self.dtype)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """float32[..., V]: the tied output head."""
    return jnp.einsum("...d,vd->...v", hidden, self.embed.embedding[...].astype(hidden.dtype),
                      preferred_element_type=jnp.float32)

  def hidden(self, tokens: jax.Array, valid: jax.Array | None = None,
             return_kv: bool = False):
    """The final-normed hidden states [B, T, D] of tokens int[B, T] (``valid`` bool[B, T]
    marks real tokens; padding on the left or right is neither attended to nor counted
    in positions); with ``return_kv`` also every layer's keys and values."""
    if valid is None:
      valid = jnp.ones(tokens.shape, bool)
    positions = positions_of(valid)
    mask = (valid[:, None, :] & valid[:, :, None]
            & (positions[:, None, :] <= positions[:, :, None]))
    x = self.embed_tokens(tokens)
    kvs = []
    for layer in self.layers:
      if self.cfg.remat:
        x, kv = nnx.remat(lambda blk, *a: blk(*a))(layer, x, positions, mask)
      else:
        x, kv = layer(x, positions, mask)
      kvs.append(kv)
    x = rms_norm(x, self.final_norm.scale[...], self.cfg.norm_eps)
    return (x, kvs) if return_kv else x

  def __call__(self, tokens: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Logits float32[B, T, V] (every position; see ``hidden`` for the arguments)."""
    return self.logits(self.hidden(tokens, valid))

  def prefill(self, tokens: jax.Array, valid: jax.Array, cache_size: int,
              cache_dtype=None):
    """Runs the prompts tokens int[B, T] (``valid`` bool[B, T], left padding) and
    returns the hidden state of each one's last token [B, D] and a ``Cache`` of
    ``cache_size`` >= T slots holding them."""
    b, t = tokens.shape
    if cache_size < t:
      raise ValueError(f"cache_size={cache_size} is smaller than the prompt ({t} tokens)")
    hidden, kvs = self.hidden(tokens, valid, return_kv=True)
    dtype = cache_dtype or self.dtype
    pad = ((0, 0), (0, cache_size - t), (0, 0), (0, 0))
    ks = tuple(jnp.pad(k.astype(dtype), pad) for k, _ in kvs)
    vs = tuple(jnp.pad(v.astype(dtype), pad) for _, v in kvs)
    slot_pos = jnp.pad(positions_of(valid), ((0, 0), (0, cache_size - t)),
                       constant_values=-1)
    cache = Cache(k=ks, v=vs, slot_pos=slot_pos, length=jnp.asarray(t, jnp.int32))
    return hidden[:, -1], cache

  def next_positions(self, cache: Cache) -> jax.Array:
    """int32[B]: the position the next token of each sequence takes."""
    return cache.slot_pos.max(axis=1) + 1

  def decode(self, tokens: jax.Array, cache: Cache):
    """Feeds tokens int[B, T'] after what ``cache`` holds; returns their hidden states
    [B, T', D] and the cache with them written (slots length..length+T'-1)."""
    b, t = tokens.shape
    positions = self.next_positions(cache)[:, None] + jnp.arange(t, dtype=jnp.int32)
    slot = cache.length
    slot_pos = jax.lax.dynamic_update_slice_in_dim(cache.slot_pos, positions, slot, 1)
    x = self.embed_tokens(tokens)
    ks, vs = [], []
    for layer, ck, cv in zip(self.layers, cache.k, cache.v):
      x, ck, cv = layer.step(x, positions, ck, cv, slot_pos, slot)
      ks.append(ck), vs.append(cv)
    x = rms_norm(x, self.final_norm.scale[...], self.cfg.norm_eps)
    return x, Cache(k=tuple(ks), v=tuple(vs), slot_pos=slot_pos, length=slot + t)

  def num_params(self, which=BASE_PARAMS) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(self, which)))
