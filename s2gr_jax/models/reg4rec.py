"""REG4Rec's generator over parallel, unordered codebooks (arXiv 2508.15308, Figure 2).

The backbone is TIGER's T5 encoder–decoder (``tiger.Tiger``: same layers, heads and
width, so comparisons are fair). What differs is the path:

* **Tokens.** An item is M (codebook, code) tokens from MPQ (``sid/mpq.py``) plus, when
  items share all M, the de-duplication token. Every token id carries its codebook (one
  id range per codebook), so the decoder sees which codebook each emitted token is from
  and the order of a path can vary. The encoder reads the user token, then ``<SEP>``
  and the tokens of each history item (Figure 2).
* **Order-agnostic training.** Each example is teacher-forced along a random order of
  its M codebooks (drawn from the dropout stream; the fixed order 0..M-1 without
  ``rngs``), and every decoder position t is trained to predict the target's code in
  *every* codebook not yet emitted: the loss is the mean over positions of the mean
  cross-entropy over the remaining codebooks (each codebook its own softmax), plus the
  de-duplication token at position M. So any order the search takes was trained.
* **Confidence-based reasoning step selection (CRSS)** at inference
  (``decoding/sets.py``): each beam continues with the codebook whose best still-
  possible code is the most probable, over that codebook's codes.
* **Consistency-oriented pruning (CORP)**, ``corp``: after ``corp_step`` steps the
  search drops paths whose steps disagree in category (the tokens' majority item
  categories, ``sid/categories.py``); ``corp=False`` is the ablation.
* ``order='fixed'`` is the ablation: training and search in codebook order 0..M-1.
* ``targets='next'`` trains each position on the codebook its order emits there only,
  not on every remaining one (with ``order='fixed'``: TIGER's loss on this backbone).

The score of an item is the sum of its tokens' log-probabilities along the order the
search took (``path_log_probs`` computes the same by teacher forcing, for tests and the
RL stage). The unlikelihood variant of TIGER's config is not supported here.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2gr_jax.models import tiger

ORDERS = ("confidence", "fixed")
TARGETS = ("remaining", "next")


@dataclasses.dataclass(frozen=True)
class Reg4RecConfig(tiger.TigerConfig):
  """``config.model.reg4rec``: TIGER's fields, the path order and the run's M."""

  FROM_RUN: ClassVar[tuple[str, ...]] = tiger.TigerConfig.FROM_RUN + ("semantic_levels",)

  semantic_levels: int = 0  # M, from the SID table
  # 'confidence': random-order training, CRSS search; 'fixed': codebooks 0..M-1 (ablation)
  order: str = "confidence"
  # What each decoder position is trained on: 'remaining' (every codebook not yet
  # emitted, the recipe) or 'next' (only the codebook the teacher-forced order takes
  # there; with order='fixed' this is TIGER's next-token loss over the same backbone).
  targets: str = "remaining"
  # CORP, consistency-oriented pruning (decoding/sets.py): after `corp_step` steps
  # (0 = M - 1) a path whose adjacent steps share their token's category less often than
  # `corp_min_consistency` is dropped (a step of unknown category agrees with any).
  corp: bool = True
  corp_step: int = 0
  corp_min_consistency: float = 0.5
  # The search's expansion: 'best_codebook' (CRSS: each beam continues in its most
  # confident codebook) or 'all_codebooks' (the variant: every open codebook's codes
  # compete; paths that reach one item are merged by `merge`, 'logsumexp' or 'max').
  expand: str = "best_codebook"
  merge: str = "logsumexp"

  @property
  def sem_sizes(self) -> tuple[int, ...]:
    return tuple(self.codebook_sizes[:self.semantic_levels])

  @property
  def flat_offsets(self) -> tuple[int, ...]:
    """Start of each codebook's codes in the flat semantic token index."""
    return tuple(int(x) for x in np.cumsum((0,) + self.sem_sizes[:-1]))

  @property
  def has_dedup(self) -> bool:
    return self.num_levels > self.semantic_levels

  @property
  def sep(self) -> int:
    """The ``<SEP>`` token that opens each history item in the encoder (Figure 2)."""
    return super().vocab_size

  @property
  def vocab_size(self) -> int:
    return super().vocab_size + 1


class Reg4Rec(tiger.Tiger):
  """The REG4Rec generator (see module docstring)."""

  def __init__(self, cfg: Reg4RecConfig, *, rngs: nnx.Rngs):
    if cfg.order not in ORDERS:
      raise ValueError(f"model.reg4rec.order={cfg.order!r}; choose one of {ORDERS}")
    if cfg.expand not in ("best_codebook", "all_codebooks"):
      raise ValueError(f"model.reg4rec.expand={cfg.expand!r}; choose 'best_codebook' or "
                       "'all_codebooks'")
    if cfg.targets not in TARGETS:
      raise ValueError(f"model.reg4rec.targets={cfg.targets!r}; choose one of {TARGETS}")
    if cfg.merge not in ("logsumexp", "max"):
      raise ValueError(f"model.reg4rec.merge={cfg.merge!r}; choose 'logsumexp' or 'max'")
    if cfg.unlikelihood_weight > 0:
      raise ValueError("model.reg4rec.unlikelihood_weight: the unlikelihood variant is "
                       "TIGER's and S²GR's, not REG4Rec's; set it to 0")
    if cfg.corp and not (0 <= cfg.corp_step <= cfg.semantic_levels
                         and 0 <= cfg.corp_min_consistency <= 1):
      raise ValueError(f"model.reg4rec.corp_step={cfg.corp_step} must be in 0..M "
                       f"(M = {cfg.semantic_levels}) and corp_min_consistency in [0, 1]")
    if not 1 <= cfg.semantic_levels <= cfg.num_levels:
      raise ValueError(f"semantic_levels={cfg.semantic_levels} of {cfg.num_levels} levels")
    super().__init__(cfg, rngs=rngs)

  # --- encoder -----------------------------------------------------------------------

  def encode(self, batch, rngs: nnx.Rngs | None = None):
    """History → encoder states [B, T, d], mask [B, T]: the user token, then per history
    item ``<SEP>`` and its L tokens (T = 1 + H (L + 1))."""
    cfg = self.cfg
    codes = batch["history_codes"]  # [B, H, L]
    b, hist, levels = codes.shape
    per_item = jnp.concatenate([jnp.full((b, hist, 1), cfg.sep, jnp.int32),
                                codes + jnp.asarray(cfg.code_offsets)], axis=2)
    tokens = jnp.concatenate([tiger.FIRST_USER + batch["user_bucket"][:, None],
                              per_item.reshape(b, hist * (levels + 1))], axis=1)
    mask = jnp.concatenate([jnp.ones((b, 1), bool),
                            jnp.repeat(batch["history_mask"], levels + 1, axis=1)], axis=1)
    x = self.embed(tokens)
    extra = None  # [B, H, d]: per history item, added to each of its tokens
    if cfg.item_embeddings:
      extra = self.item_embed(batch["history_items"])
    if cfg.recency_embeddings:
      rec = self.recency(tiger.layers.history_age(batch["history_mask"], cfg.max_history))
      extra = rec if extra is None else extra + rec
    if extra is not None:
      extra = jnp.repeat(extra, levels + 1, axis=1)
      x = x + jnp.concatenate([jnp.zeros_like(extra[:, :1]), extra], axis=1)
    x = self.drop(x, rngs)
    bias = self.enc_bias(tokens.shape[1], tokens.shape[1])[None]
    for layer in self.encoder:
      x = layer(x, mask[:, None, None, :], bias, rngs)
    return self.drop(self.enc_norm(x), rngs), mask

  # --- tokens ------------------------------------------------------------------------

  def embed_flat(self, flat: jax.Array) -> jax.Array:
    """Embeddings of flat semantic tokens (codebook offset + code; the id ranges of the
    codebooks are contiguous, so the flat index maps to one embedding row)."""
    return self.embed(flat + self.cfg.code_offsets[0])

  def all_log_probs(self, hidden: jax.Array) -> jax.Array:
    """Per-codebook log-softmax of every codebook's codes, concatenated: [..., ΣD]."""
    return jnp.concatenate([jax.nn.log_softmax(self.level_logits(hidden, r), axis=-1)
                            for r in range(self.cfg.semantic_levels)], axis=-1)

  def orders(self, batch_size: int, rngs: nnx.Rngs | None) -> jax.Array:
    """int32[B, M]: the codebook order of each example (random when training)."""
    m = self.cfg.semantic_levels
    fixed = jnp.tile(jnp.arange(m, dtype=jnp.int32), (batch_size, 1))
    if rngs is None or self.cfg.order == "fixed":
      return fixed
    return jnp.argsort(jax.random.uniform(rngs.dropout(), (batch_size, m)), axis=1
                       ).astype(jnp.int32)

  def flat_targets(self, target_codes: jax.Array) -> jax.Array:
    """int32[B, M]: the target's flat token of every codebook."""
    m = self.cfg.semantic_levels
    return target_codes[:, :m] + jnp.asarray(self.cfg.flat_offsets, jnp.int32)

  # --- teacher forcing ---------------------------------------------------------------

  def ordered_hidden(self, batch, orders, rngs=None, encoded=None):
    """Decoder states [B, P, d] teacher-forced along ``orders``: inputs BOS, then the
    target's tokens in that order (P = M, or M + 1 with the de-dup token)."""
    enc, enc_mask = encoded if encoded is not None else self.encode(batch, rngs)
    flat = jnp.take_along_axis(self.flat_targets(batch["target_codes"]), orders, axis=1)
    positions = self.cfg.num_levels
    b = flat.shape[0]
    inputs = jnp.concatenate([self.bos((b, 1)), self.embed_flat(flat)], axis=1)
    return self.decode(inputs[:, :positions], enc, enc_mask, rngs)

  def teacher_forced_logits(self, batch, rngs=None, encoded=None, orders=None):
    """Per step along ``orders`` (default 0..M-1), log-probabilities of the codebook
    emitted at that step, [B, D_r] (then the de-dup token's): what brute-force scoring
    of a whole path reads."""
    b = batch["target_codes"].shape[0]
    orders = self.orders(b, None) if orders is None else orders
    hidden = self.ordered_hidden(batch, orders, rngs, encoded)
    out = []
    for t in range(self.cfg.semantic_levels):
      r_lp = [jax.nn.log_softmax(self.level_logits(hidden[:, t], r), axis=-1)
              for r in range(self.cfg.semantic_levels)]
      # the step's codebook differs per example: gather from the padded stack
      width = max(self.cfg.sem_sizes)
      stacked = jnp.stack([jnp.pad(x, ((0, 0), (0, width - x.shape[-1])),
                                   constant_values=-jnp.inf) for x in r_lp], axis=1)
      out.append(jnp.take_along_axis(stacked, orders[:, t, None, None], axis=1)[:, 0])
    if self.cfg.has_dedup:
      out.append(self.level_logits(hidden[:, -1], self.cfg.semantic_levels))
    return out

  def path_log_probs_along(self, batch, orders) -> jax.Array:
    """log P(target path) [B] along ``orders`` int32[B, M] (no dropout)."""
    logits = self.teacher_forced_logits(batch, orders=orders)
    target = batch["target_codes"]
    sem = jnp.take_along_axis(target[:, :self.cfg.semantic_levels], orders, axis=1)
    total = 0.0
    for t in range(self.cfg.semantic_levels):
      total = total + jnp.take_along_axis(logits[t], sem[:, t:t + 1], axis=1)[:, 0]
    if self.cfg.has_dedup:
      lp = jax.nn.log_softmax(logits[-1], axis=-1)
      total = total + jnp.take_along_axis(lp, target[:, -1:], axis=1)[:, 0]
    return total

  def loss(self, batch, rngs: nnx.Rngs | None = None):
    """Order-agnostic L_rec: every position predicts every remaining codebook."""
    cfg = self.cfg
    m = cfg.semantic_levels
    target = batch["target_codes"]
    b = target.shape[0]
    orders = self.orders(b, rngs)
    hidden = self.ordered_hidden(batch, orders, rngs)
    lp = self.all_log_probs(hidden[:, :m])  # [B, M (positions), ΣD]
    flat = self.flat_targets(target)  # [B, M (codebooks)]
    gold = jnp.take_along_axis(lp, jnp.broadcast_to(flat[:, None, :], (b, m, m)), axis=2)
    rank = jnp.argsort(orders, axis=1)  # position at which each codebook is emitted
    if cfg.targets == "next":  # only the codebook emitted at position t
      remaining = rank[:, None, :] == jnp.arange(m)[None, :, None]  # [B, t, r]
    else:
      remaining = rank[:, None, :] >= jnp.arange(m)[None, :, None]  # [B, t, r]
    per_position = -(gold * remaining).sum(2) / remaining.sum(2)  # [B, M]
    w = batch["weight"]
    denom = jnp.maximum(w.sum(), 1.0)
    metrics = {}
    terms = [(per_position[:, t] * w).sum() / denom for t in range(m)]
    for t, term in enumerate(terms):
      metrics[f"ce_step{t}"] = term
    next_gold = jnp.take_along_axis(flat, orders, axis=1)  # the token each step takes
    metrics["acc_next"] = ((lp.argmax(-1) == next_gold).mean(1) * w).sum() / denom
    if cfg.has_dedup:
      lg = self.level_logits(hidden[:, m], m)
      ce = optax.softmax_cross_entropy_with_integer_labels(lg, target[:, m])
      terms.append((ce * w).sum() / denom)
      metrics["ce_dedup"] = terms[-1]
    rec = sum(terms) / len(terms)
    metrics["rec"] = rec
    metrics["loss"] = rec
    return rec, metrics

  # --- cached decoding ---------------------------------------------------------------

  def decode_level(self, state, prev_codes: jax.Array | None, level: int):
    """Step ``level``: log-probs [B, K, ΣD] of every codebook's codes (steps < M; each
    codebook its own softmax) or of the de-dup token (step M), given each beam's
    previous flat token."""
    if level == 0:
      x = self.bos(state["per_beam"]["cache"][0][0].shape[:2])
    else:
      x = self.embed_flat(prev_codes)
    hidden, state = self.decode_step(state, x, level)
    if level < self.cfg.semantic_levels:
      return self.all_log_probs(hidden), state
    return jax.nn.log_softmax(self.level_logits(hidden, level), axis=-1), state
