"""SASRec (Kang & McAuley, 2018): a causal transformer over item-id embeddings.

The baseline every results table carries (a tuned SASRec beats published TIGER
reproductions on Beauty). It addresses items directly, not through Semantic IDs: the
state at the last history position scores every catalogue item by a dot product with
the (shared) item embeddings, trained with full softmax cross-entropy, and evaluation
takes the top K of those scores over the whole catalogue, like the generators' beams.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from s2gr_jax.models import layers


@dataclasses.dataclass(frozen=True)
class SasrecConfig:
  """``config.model.sasrec``; the fields in ``FROM_RUN`` come from the run, not the config."""

  FROM_RUN: ClassVar[tuple[str, ...]] = ("num_items", "max_history", "kernels")

  num_items: int
  max_history: int = 20
  kernels: str = "plain"  # layers.KERNELS
  d_model: int = 64
  num_heads: int = 2
  head_dim: int = 32
  d_ff: int = 256
  encoder_layers: int = 2
  dropout: float = 0.2
  # 'from_end': position 0 is the most recent item, as in the paper (histories padded on
  # the left, so the last item always has the last position); 'from_start': position 0 is
  # the oldest item of the left-aligned history (this project's first version, kept for
  # the ablation: the most recent item's position then varies with the length).
  positions: str = "from_end"
  dtype: str = "float32"

  def __post_init__(self):
    if self.positions not in ("from_end", "from_start"):
      raise ValueError("model.sasrec.positions must be 'from_end' or 'from_start', got "
                       f"{self.positions!r}")


class Sasrec(nnx.Module):

  def __init__(self, cfg: SasrecConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    self.items = nnx.Embed(cfg.num_items + 1, cfg.d_model, dtype=dtype, rngs=rngs,
                           embedding_init=nnx.initializers.normal(0.02))
    self.positions = nnx.Embed(cfg.max_history, cfg.d_model, dtype=dtype, rngs=rngs,
                               embedding_init=nnx.initializers.normal(0.02))
    self.blocks = nnx.List([
        layers.EncoderLayer(cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.d_ff,
                            cfg.dropout, dtype=dtype, rngs=rngs, kernels=cfg.kernels)
        for _ in range(cfg.encoder_layers)])
    self.norm = nnx.RMSNorm(cfg.d_model, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.drop = layers.Dropout(cfg.dropout, cfg.kernels)

  def user_state(self, batch, rngs: nnx.Rngs | None = None):
    """[B, d]: the causal transformer's state at each user's last history item."""
    items, mask = batch["history_items"], batch["history_mask"]
    h = items.shape[1]
    if self.cfg.positions == "from_end":
      pos = layers.history_age(mask, self.cfg.max_history)
    else:
      pos = jnp.arange(h)[None]
    x = self.items(items) + self.positions(pos)
    x = self.drop(x * mask[..., None], rngs)
    attn_mask = (jnp.tril(jnp.ones((h, h), bool))[None] & mask[:, None, :])[:, None]
    for block in self.blocks:
      x = block(x, attn_mask, None, rngs)
    x = self.norm(x)
    last = jnp.maximum(mask.sum(1) - 1, 0)
    return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]

  def item_scores(self, batch, rngs: nnx.Rngs | None = None):
    """float32[B, num_items]: scores of items 1..N (column i = item i + 1)."""
    state = self.user_state(batch, rngs)
    table = self.items.embedding[...][1:].astype(state.dtype)
    return (state @ table.T).astype(jnp.float32)

  def loss(self, batch, rngs: nnx.Rngs | None = None):
    logits = self.item_scores(batch, rngs)
    target = batch["target_item"] - 1
    w = batch["weight"]
    denom = jnp.maximum(w.sum(), 1.0)
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, target) * w).sum() / denom
    acc = ((logits.argmax(-1) == target) * w).sum() / denom
    return loss, {"loss": loss, "rec": loss, "acc": acc}

  def rank(self, batch, k: int):
    """Top-``k`` item ids and scores over the full catalogue, [B, k] each."""
    scores, idx = jax.lax.top_k(self.item_scores(batch), k)
    return idx.astype(jnp.int32) + 1, scores
