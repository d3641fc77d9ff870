"""TIGER: a T5-style encoder–decoder that reads a user's history as Semantic-ID tokens
and generates the next item's SID, one level at a time (Rajput et al., 2023; SPEC §3).

Token layout (one embedding table for encoder and decoder):

  0           padding
  1           BOS (decoder start)
  2 .. 2+U-1  hashed user buckets (the encoder's first token)
  then one id range per SID level: code ``c`` of level ``l`` is ``offset[l] + c``

The encoder sees ``[user, item1_l0, item1_l1, ..., itemH_l(L-1)]``; the decoder is
teacher-forced on ``[BOS, s0, ..., s(L-2)]`` and position ``l`` predicts level ``l``'s code
through that level's slice of one output projection.

Decoding interface, shared with the other generators (``models.interfaces.Generator``;
the searches are in ``decoding/``):
``start_decoding(batch, beam) -> state`` and ``decode_level(state, prev_codes, level) ->
(log_probs [B, K, V_level], state)``. ``state["per_beam"]`` holds everything with
leading ``[B, K]`` axes (the self-attention KV cache), which the beam search reorders
within each user (so a batch split over devices stays local); the rest is per user and
never copied per beam.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2gr_jax.models import layers

PAD, BOS, FIRST_USER = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class TigerConfig:
  """``config.model.tiger``; the fields in ``FROM_RUN`` come from the run, not the config."""

  FROM_RUN: ClassVar[tuple[str, ...]] = ("codebook_sizes", "user_buckets", "kernels",
                                         "num_items", "max_history")

  codebook_sizes: tuple[int, ...]
  user_buckets: int = 2000
  num_items: int = 0
  max_history: int = 20
  kernels: str = "plain"  # layers.KERNELS: the XLA:CPU speed pieces or the plain code
  d_model: int = 128
  num_heads: int = 6
  head_dim: int = 64
  d_ff: int = 1024
  encoder_layers: int = 4
  decoder_layers: int = 4
  dropout: float = 0.1
  rel_pos_buckets: int = 32
  rel_pos_max_distance: int = 128
  dtype: str = "float32"
  # A named variant, off in the paper's method: an item-id embedding added to each of a
  # history item's SID-token embeddings in the encoder, so that pairs of particular items
  # (co-purchases) can be memorised beside what the shared codes generalise. The output
  # side stays SIDs and the catalogue-constrained search.
  item_embeddings: bool = False
  # A named variant, off in the paper's method: a learned embedding of each history
  # item's distance from the end (0 = the most recent), added to its tokens. The T5 encoder's relative biases see only distances
  # between tokens: with left-aligned histories nothing marks the most recent item.
  recency_embeddings: bool = False
  # A named variant, off in the paper's method: unlikelihood (Welleck et al., 2019) of
  # the user's own ``unlikelihood_items`` most recent history items, −log(1 − P(item)),
  # with P the model's probability of the item's whole SID path, added to the loss at
  # this weight. A generator that copies the history's categories otherwise spends
  # beam slots on items the user already has (items rarely repeat in these datasets;
  # a history item that is the target is never penalised).
  unlikelihood_weight: float = 0.0
  unlikelihood_items: int = 4

  @property
  def code_offsets(self) -> tuple[int, ...]:
    start = FIRST_USER + self.user_buckets
    return tuple(int(x) for x in start + np.cumsum((0,) + self.codebook_sizes[:-1]))

  @property
  def vocab_size(self) -> int:
    return FIRST_USER + self.user_buckets + sum(self.codebook_sizes)

  @property
  def num_levels(self) -> int:
    return len(self.codebook_sizes)


class Tiger(nnx.Module):
  """The TIGER generator (SPEC §3 backbone)."""

  def __init__(self, cfg: TigerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    d, h = cfg.d_model, cfg.num_heads
    args = (d, h, cfg.head_dim, cfg.d_ff, cfg.dropout)
    kw = dict(dtype=dtype, rngs=rngs, kernels=cfg.kernels)
    self.embed = nnx.Embed(cfg.vocab_size, d, dtype=dtype, rngs=rngs)
    if cfg.item_embeddings:
      if cfg.num_items < 1:
        raise ValueError("item_embeddings needs num_items (filled from the run)")
      self.item_embed = nnx.Embed(cfg.num_items + 1, d, dtype=dtype, rngs=rngs)
    if cfg.recency_embeddings:
      self.recency = nnx.Embed(cfg.max_history, d, dtype=dtype, rngs=rngs)
    self.enc_bias = layers.RelativePositionBias(
        h, bidirectional=True, num_buckets=cfg.rel_pos_buckets,
        max_distance=cfg.rel_pos_max_distance, rngs=rngs)
    self.encoder = nnx.List([layers.EncoderLayer(*args, **kw)
                             for _ in range(cfg.encoder_layers)])
    self.enc_norm = nnx.RMSNorm(d, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.dec_bias = layers.RelativePositionBias(
        h, bidirectional=False, num_buckets=cfg.rel_pos_buckets,
        max_distance=cfg.rel_pos_max_distance, rngs=rngs)
    self.decoder = nnx.List([layers.DecoderLayer(*args, **kw)
                             for _ in range(cfg.decoder_layers)])
    self.dec_norm = nnx.RMSNorm(d, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(d, sum(cfg.codebook_sizes), use_bias=False, dtype=dtype,
                           rngs=rngs)
    self.drop = layers.Dropout(cfg.dropout, cfg.kernels)

  # --- encoder -----------------------------------------------------------------------

  def encode(self, batch, rngs: nnx.Rngs | None = None):
    """History → encoder states [B, T, d] and their mask bool[B, T], T = 1 + H*L."""
    codes = batch["history_codes"]  # [B, H, L]
    b, hist, levels = codes.shape
    tokens = (codes + jnp.asarray(self.cfg.code_offsets)).reshape(b, hist * levels)
    user = FIRST_USER + batch["user_bucket"][:, None]
    tokens = jnp.concatenate([user, tokens], axis=1)
    mask = jnp.concatenate([jnp.ones((b, 1), bool),
                            jnp.repeat(batch["history_mask"], levels, axis=1)], axis=1)
    x = self.embed(tokens)
    extra = None  # [B, H, d]: per history item, added to each of its tokens
    if self.cfg.item_embeddings:
      extra = self.item_embed(batch["history_items"])  # 0 = padding
    if self.cfg.recency_embeddings:
      rec = self.recency(layers.history_age(batch["history_mask"], self.cfg.max_history))
      extra = rec if extra is None else extra + rec
    if extra is not None:
      extra = jnp.repeat(extra, levels, axis=1)
      x = x + jnp.concatenate([jnp.zeros_like(extra[:, :1]), extra], axis=1)
    x = self.drop(x, rngs)
    bias = self.enc_bias(tokens.shape[1], tokens.shape[1])[None]
    key_mask = mask[:, None, None, :]
    for layer in self.encoder:
      x = layer(x, key_mask, bias, rngs)
    x = self.drop(self.enc_norm(x), rngs)
    return x, mask

  # --- decoder -----------------------------------------------------------------------

  def embed_codes(self, codes: jax.Array, level: int) -> jax.Array:
    return self.embed(codes + self.cfg.code_offsets[level])

  def bos(self, shape: tuple[int, ...]) -> jax.Array:
    return self.embed(jnp.full(shape, BOS, jnp.int32))

  def decode(self, x, enc, enc_mask, rngs: nnx.Rngs | None = None):
    """Teacher-forced decoder over input embeddings x [B, S, d] → hidden [B, S, d]."""
    x = self.drop(x, rngs)
    bias = self.dec_bias(x.shape[1], x.shape[1])
    cross_mask = enc_mask[:, None, None, :]
    for layer in self.decoder:
      x = layer(x, enc, cross_mask, bias, rngs)  # keys/values folded into the queries
    return self.drop(self.dec_norm(x), rngs)

  def level_logits(self, hidden: jax.Array, level: int) -> jax.Array:
    """Logits over level ``level``'s codes from decoder states [..., d]."""
    lo = sum(self.cfg.codebook_sizes[:level])
    kernel = self.head.kernel[:, lo:lo + self.cfg.codebook_sizes[level]]
    return layers.matmul(hidden, kernel.astype(hidden.dtype), jnp.float32)

  def teacher_forced_logits(self, batch, rngs: nnx.Rngs | None = None, encoded=None):
    """Per level, logits [B, V_l] for the target's code given its earlier codes
    (``encoded``: the batch's ``encode`` output, when the caller has it)."""
    enc, enc_mask = encoded if encoded is not None else self.encode(batch, rngs)
    target = batch["target_codes"]
    b, levels = target.shape
    inputs = [self.bos((b, 1))] + [self.embed_codes(target[:, l:l + 1], l)
                                   for l in range(levels - 1)]
    hidden = self.decode(jnp.concatenate(inputs, axis=1), enc, enc_mask, rngs)
    return [self.level_logits(hidden[:, l], l) for l in range(levels)]

  def reconstruction_loss(self, logits, batch):
    """Mean over levels of the weighted cross-entropy (L_rec); returns (loss, metrics)."""
    w = batch["weight"]
    denom = jnp.maximum(w.sum(), 1.0)
    metrics, total = {}, 0.0
    for l, lg in enumerate(logits):
      tgt = batch["target_codes"][:, l]
      ce = (optax.softmax_cross_entropy_with_integer_labels(lg, tgt) * w).sum() / denom
      metrics[f"ce_l{l}"] = ce
      metrics[f"acc_l{l}"] = ((lg.argmax(-1) == tgt) * w).sum() / denom
      total = total + ce
    rec = total / len(logits)
    metrics["rec"] = rec
    return rec, metrics

  def loss(self, batch, rngs: nnx.Rngs | None = None):
    """L_rec (+ the unlikelihood variant); returns (loss, metrics)."""
    encoded = self.encode(batch, rngs)
    loss, metrics = self.reconstruction_loss(
        self.teacher_forced_logits(batch, rngs, encoded), batch)
    loss = self.add_unlikelihood(loss, metrics, batch, *encoded)
    metrics["loss"] = loss
    return loss, metrics

  def path_log_probs(self, enc, enc_mask, codes: jax.Array) -> jax.Array:
    """log P(SID path) [B, K] of K paths per user, codes int[B, K, L], through the
    cached decoding steps (the beam search's; no dropout)."""
    state = self.init_decoding(enc, enc_mask, codes.shape[1])
    total = 0.0
    for level in range(self.cfg.num_levels):
      log_probs, state = self.decode_level(
          state, codes[..., level - 1] if level else None, level)
      total = total + jnp.take_along_axis(log_probs, codes[..., level:level + 1],
                                          axis=-1)[..., 0]
    return total

  def add_unlikelihood(self, loss, metrics, batch, enc, enc_mask):
    """``loss`` + the unlikelihood term of the variant (``metrics`` gains its parts)."""
    cfg = self.cfg
    if cfg.unlikelihood_weight <= 0:
      return loss
    mask = batch["history_mask"]
    k = min(cfg.unlikelihood_items, mask.shape[1])
    idx = mask.sum(1, keepdims=True) - 1 - jnp.arange(k)  # [B, k], most recent first
    valid = idx >= 0
    idx = jnp.maximum(idx, 0)
    items = jnp.take_along_axis(batch["history_items"], idx, axis=1)
    codes = jnp.take_along_axis(batch["history_codes"], idx[..., None], axis=1)
    valid = valid & (items != batch["target_item"][:, None])
    valid = valid & (batch["weight"][:, None] > 0)
    log_p = jnp.minimum(self.path_log_probs(enc, enc_mask, codes), -1e-6)
    ul = -jnp.log1p(-jnp.exp(log_p))
    n = jnp.maximum(valid.sum(), 1)
    metrics["unlikelihood"] = jnp.where(valid, ul, 0.0).sum() / n
    metrics["seen_prob"] = jnp.where(valid, jnp.exp(log_p), 0.0).sum() / n
    return loss + cfg.unlikelihood_weight * metrics["unlikelihood"]

  # --- cached decoding ---------------------------------------------------------------

  def decode_positions(self) -> int:
    """Decoder positions one item takes (the KV cache length)."""
    return self.cfg.num_levels

  def start_decoding(self, batch, beam: int):
    return self.init_decoding(*self.encode(batch), beam)

  def init_decoding(self, enc, enc_mask, beam: int, project: bool = True):
    """Decoding state for ``beam`` beams per user over encoder states [B, T, d].

    ``project``: cache each layer's cross-attention keys and values (beam search: many
    queries per user reuse them); False reads ``enc`` directly through
    ``Attention.attend_source`` (a handful of queries, as in S²GR's recurrence) with the
    CPU kernels, while the plain kernels project once here either way.
    """
    project = project or self.cfg.kernels == "plain"
    b = enc.shape[0]
    s_max = self.decode_positions()
    shape = (b, beam, s_max, self.cfg.num_heads, self.cfg.head_dim)
    cache = [(jnp.zeros(shape, enc.dtype), jnp.zeros(shape, enc.dtype))
             for _ in self.decoder]
    return {
        "per_beam": {"cache": cache},
        "cross": [layer.cross_attn.project_kv(enc, heads_first=True) if project else enc
                  for layer in self.decoder],
        "cross_mask": enc_mask[:, None, None, :],
        "bias": self.dec_bias(s_max, s_max),
    }

  def decode_step(self, state, x: jax.Array, pos: int, rngs: nnx.Rngs | None = None):
    """Decoder positions ``pos ..`` for inputs x [B, K, d] or [B, K, Q, d] → hidden, same shape."""
    single = x.ndim == 3
    if single:
      x = x[:, :, None]
    x = self.drop(x, rngs)  # as in ``decode``: dropout on the decoder inputs
    caches = []
    for layer, cache, cross in zip(self.decoder, state["per_beam"]["cache"],
                                   state["cross"]):
      x, cache = layer.step(x, cache, pos, cross, state["cross_mask"], state["bias"], rngs)
      caches.append(cache)
    state = dict(state, per_beam=dict(state["per_beam"], cache=caches))
    x = self.drop(self.dec_norm(x), rngs)
    return (x[:, :, 0] if single else x), state

  def decode_level(self, state, prev_codes: jax.Array | None, level: int):
    """Log-probs [B, K, V_level] of level ``level`` given the beams' previous codes."""
    if level == 0:
      x = self.bos(state["per_beam"]["cache"][0][0].shape[:2])
    else:
      x = self.embed_codes(prev_codes, level - 1)
    hidden, state = self.decode_step(state, x, level)
    return jax.nn.log_softmax(self.level_logits(hidden, level), axis=-1), state
