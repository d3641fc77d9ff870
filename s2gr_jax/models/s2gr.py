"""S²GR: stepwise semantic-guided reasoning in latent space (SPEC §3).

TIGER's encoder–decoder, with continuous *thought* vectors before every SID level.
Decoder positions, per level ``l`` (m = ``thoughts_per_level``, usually 1):

  [x_l, t_l^1, ..., t_l^m]   x_0 = BOS, x_l = embedding of the code s_{l-1}
  t_l^j = h(previous position) + p_l^j      (h: the decoder's normalised last-layer state)

and the state at t_l^m predicts s_l. A thought is fed back as the next input
embedding, never sampled, so it never widens the beam.

Training (teacher forcing with the exact recurrence): a thought depends on the decoder's
output at the position before it, so positions go through the KV cache in short
sequential chunks (``recurrence``), with dropout, and gradients flow through every
thought; the decoder evaluates 2 positions per level where TIGER evaluates 1. Beam
decoding runs the same positions one cached step at a time (``1 + m`` per level).

Losses: L_rec (cross-entropy of every level) + align_weight · Σ_l L_align(l)
+ nce_weight · L_nce + reg_weight · L_reg, where

* L_align: each level's codebook is clustered (k-means, ``num_clusters``) at build time;
  a learned projection of each thought into codebook space is scored against the
  cluster centres by cosine / τ; the target is the cluster of the true code;
* L_nce: an auxiliary decoder of ``anchor_layers`` layers reads the encoder output
  from a BOS query and gives the interest vector v_g, pulled by in-batch InfoNCE towards
  v̄ = mean of the target item's SID embeddings (held fixed);
* L_reg = 1 − cos(t_0^1, sg(v_g)) anchors the first thought.

Each switch off gives an ablation: ``thoughts_per_level=0`` is TIGER, ``align_weight=0``
thoughts without alignment, ``anchor_layers=0`` without the auxiliary decoder.
"""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2gr_jax.models import layers
from s2gr_jax.models import tiger
from s2gr_jax.sid import clustering


@dataclasses.dataclass(frozen=True)
class S2grConfig(tiger.TigerConfig):
  thoughts_per_level: int = 1
  num_clusters: int = 16
  align_temperature: float = 0.1
  align_weight: float = 1.0
  anchor_layers: int = 2
  nce_weight: float = 1.0
  nce_temperature: float = 0.1
  reg_weight: float = 0.1

  @property
  def positions_per_level(self) -> int:
    return 1 + self.thoughts_per_level


class FixedTargets(nnx.Variable):
  """Cluster centres and code → cluster maps: supervision targets, never trained."""


def cluster_codebooks(codebooks, num_clusters: int, seed: int = 0):
  """k-means of each level's code vectors → (centres [L, Kc, D], cluster of code [L, K])."""
  centres, assign = [], []
  for level, book in enumerate(codebooks):
    if len(book) < num_clusters:
      raise ValueError(f"level {level} has {len(book)} codes, fewer than "
                       f"model.s2gr.num_clusters={num_clusters}")
    c, a, _ = clustering.kmeans(jnp.asarray(book, jnp.float32),
                                jax.random.key(seed + level), k=num_clusters, iters=50)
    centres.append(np.asarray(c))
    assign.append(np.asarray(a))
  return np.stack(centres), np.stack(assign).astype(np.int32)


def _unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def cosine(a, b):
  """Cosine similarities of rows: [..., n, d] × [..., m, d] → [..., n, m]."""
  return _unit(a) @ jnp.swapaxes(_unit(b), -1, -2)


def cluster_infonce(projected, centres, cluster, temperature):
  """L_align per example: softmax over the Kc centres of cos(projected, c_k) / τ.

  Args:
    projected: [B, D] thoughts mapped into codebook space.
    centres: [Kc, D] the level's cluster centres.
    cluster: int[B] the cluster of each example's true code.
  Returns:
    cross-entropy [B] and the predicted cluster [B].
  """
  logits = cosine(projected, centres) / temperature
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, cluster)
  return ce, logits.argmax(-1)


class S2gr(tiger.Tiger):
  """TIGER + thought tokens, cluster alignment and the first-thought anchor."""

  @classmethod
  def inputs(cls, cfg: S2grConfig, table) -> dict:
    """Constructor inputs computed from the data, once and eagerly (so that building
    the module stays a pure function for shape-first initialisation): the k-means
    clusters of each level's codebook that supervise the thoughts."""
    if not (cfg.align_weight > 0 and cfg.thoughts_per_level > 0):
      return {}
    if table.codebooks is None:
      raise ValueError("model.s2gr.align_weight > 0 needs a tokenizer with codebooks")
    centres, assign = cluster_codebooks(table.codebooks, cfg.num_clusters)
    return dict(centres=centres, code_cluster=assign)

  def __init__(self, cfg: S2grConfig, *, centres: np.ndarray | None = None,
               code_cluster: np.ndarray | None = None, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    d, m = cfg.d_model, cfg.thoughts_per_level
    dtype = jnp.dtype(cfg.dtype)
    self.thought_pos = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (cfg.num_levels, max(m, 1), d)))
    self.align = cfg.align_weight > 0 and m > 0
    if self.align:
      if centres is None or code_cluster is None:
        raise ValueError("thought alignment needs the tokenizer's codebooks (cluster "
                         "centres); set model.s2gr.align_weight=0 to train without it")
      self.centres = FixedTargets(jnp.asarray(centres, jnp.float32))
      self.code_cluster = FixedTargets(jnp.asarray(code_cluster, jnp.int32))
      self.align_proj = nnx.Linear(d, centres.shape[-1], use_bias=False, dtype=dtype,
                                   rngs=rngs)
    if cfg.anchor_layers > 0 and m > 0:
      args = (d, cfg.num_heads, cfg.head_dim, cfg.d_ff, cfg.dropout)
      self.anchor = nnx.List([layers.DecoderLayer(*args, dtype=dtype, rngs=rngs,
                                                   kernels=cfg.kernels)
                              for _ in range(cfg.anchor_layers)])
      self.anchor_norm = nnx.RMSNorm(d, epsilon=1e-6, dtype=dtype, rngs=rngs)
    else:
      self.anchor = None

  # --- teacher forcing ---------------------------------------------------------------

  def recurrence(self, batch, rngs: nnx.Rngs | None = None, encoded=None):
    """The teacher-forced thought recurrence through the KV cache.

    Positions are fed in the fewest sequential chunks the recurrence allows: a chunk
    holds the newest thought and, when a level is complete, the next code's embedding
    (both known by then), so L·m + 1 cached steps of one or two positions each.

    Returns:
      logits per level [B, V_l], thoughts per level (lists of [B, d]), and the
      encoder output with its mask.
    """
    cfg = self.cfg
    enc, enc_mask = encoded if encoded is not None else self.encode(batch, rngs)
    state = self.init_decoding(enc, enc_mask, 1, project=False)
    target = batch["target_codes"]
    pending = [self.bos((target.shape[0],))]  # inputs of the next chunk, [B, d] each
    pos, logits, thoughts = 0, [], []
    for level in range(cfg.num_levels):
      level_thoughts = []
      for j in range(cfg.thoughts_per_level):
        hidden, state = self.decode_step(state, jnp.stack(pending, 1)[:, None], pos, rngs)
        pos += len(pending)
        if level > 0 and j == 0:  # the first row was the previous level's last thought
          logits.append(self.level_logits(hidden[:, 0, 0], level - 1))
        t = hidden[:, 0, -1] + self.thought_pos[...][level, j].astype(hidden.dtype)
        level_thoughts.append(t)
        pending = [t]
      thoughts.append(level_thoughts)
      if level + 1 < cfg.num_levels:
        pending.append(self.embed_codes(target[:, level], level))
    hidden, state = self.decode_step(state, jnp.stack(pending, 1)[:, None], pos, rngs)
    logits.append(self.level_logits(hidden[:, 0, 0], cfg.num_levels - 1))
    return logits, thoughts, enc, enc_mask

  def teacher_forced_logits(self, batch, rngs: nnx.Rngs | None = None, encoded=None):
    if self.cfg.thoughts_per_level == 0:
      return super().teacher_forced_logits(batch, rngs, encoded)
    return self.recurrence(batch, rngs, encoded)[0]

  def loss(self, batch, rngs: nnx.Rngs | None = None):
    cfg = self.cfg
    if cfg.thoughts_per_level == 0:
      return super().loss(batch, rngs)
    logits, thoughts, enc, enc_mask = self.recurrence(batch, rngs)
    rec, metrics = self.reconstruction_loss(logits, batch)
    w = batch["weight"]
    denom = jnp.maximum(w.sum(), 1.0)
    mean = lambda v: (v * w).sum() / denom
    total = rec
    target = batch["target_codes"]
    if self.align:
      align = 0.0
      for level in range(self.code_cluster.shape[0]):  # semantic levels only
        cluster = self.code_cluster[...][level][target[:, level]]
        for t in thoughts[level]:
          ce, predicted = cluster_infonce(self.align_proj(t), self.centres[...][level],
                                          cluster, cfg.align_temperature)
          align = align + mean(ce) / len(thoughts[level])
        metrics[f"align_acc_l{level}"] = mean(predicted == cluster)
      metrics["align"] = align
      total = total + cfg.align_weight * align
    if self.anchor is not None:
      v_g = self.interest_vector(batch, enc, enc_mask, rngs)
      sem = self.code_cluster.shape[0] if self.align else self.cfg.num_levels
      v_bar = jax.lax.stop_gradient(jnp.mean(jnp.stack(
          [self.embed_codes(target[:, l], l) for l in range(sem)]), 0))
      sims = cosine(v_g, v_bar) / cfg.nce_temperature  # [B, B]
      sims = jnp.where(w[None] > 0, sims, -1e9)  # padding rows are no negatives
      nce = mean(optax.softmax_cross_entropy_with_integer_labels(
          sims, jnp.arange(sims.shape[0])))
      first = thoughts[0][0]
      reg = mean(1.0 - (_unit(first) * _unit(jax.lax.stop_gradient(v_g))).sum(-1))
      metrics.update(nce=nce, reg=reg)
      total = total + cfg.nce_weight * nce + cfg.reg_weight * reg
    total = self.add_unlikelihood(total, metrics, batch, enc, enc_mask)
    metrics["loss"] = total
    return total, metrics

  def thought_clusters(self, batch):
    """Where the thoughts point, teacher-forced on the batch's target items.

    Returns (picked, true), int[B, semantic levels] each: the codebook cluster that each
    level's (last) thought is closest to after projection, and the cluster of the
    target's actual code at that level.
    """
    if not self.align:
      raise ValueError("this model has no thought alignment (model.s2gr.align_weight=0)")
    _, thoughts, _, _ = self.recurrence(batch)
    levels = self.code_cluster.shape[0]
    picked = [cosine(self.align_proj(thoughts[l][-1]), self.centres[...][l]).argmax(-1)
              for l in range(levels)]
    true = [self.code_cluster[...][l][batch["target_codes"][:, l]] for l in range(levels)]
    return jnp.stack(picked, 1), jnp.stack(true, 1)

  def interest_vector(self, batch, enc, enc_mask, rngs=None):
    """v_g: the auxiliary (half-depth) decoder's state at a BOS query, [B, d]."""
    b = enc.shape[0]
    x = self.bos((b, 1))
    cross_mask = enc_mask[:, None, None, :]
    bias = self.dec_bias(1, 1)
    for layer in self.anchor:
      x = layer(x, enc, cross_mask, bias, rngs)
    return self.anchor_norm(x)[:, 0]

  # --- cached decoding ---------------------------------------------------------------

  def decode_positions(self) -> int:
    return self.cfg.num_levels * self.cfg.positions_per_level

  def decode_level(self, state, prev_codes, level: int):
    """Input token, then its thoughts, each one cached step; log-probs of the level."""
    if self.cfg.thoughts_per_level == 0:
      return super().decode_level(state, prev_codes, level)
    shape = state["per_beam"]["cache"][0][0].shape[:2]
    x = self.bos(shape) if level == 0 else self.embed_codes(prev_codes, level - 1)
    pos = level * self.cfg.positions_per_level
    hidden, state = self.decode_step(state, x, pos)
    for j in range(self.cfg.thoughts_per_level):
      thought = hidden + self.thought_pos[...][level, j].astype(hidden.dtype)
      hidden, state = self.decode_step(state, thought, pos + 1 + j)
    return jax.nn.log_softmax(self.level_logits(hidden, level), axis=-1), state
