"""Constrained beam search, in pure JAX, for any ``Generator`` and ``Constraint``.

Static shapes throughout: ``[B, K]`` beams, steps unrolled (a handful). At each step
the model gives log-probabilities over that step's tokens, the constraint the allowed
candidates of every beam; the K best extensions by summed log-probability survive.
Scores are the model's log-probabilities (softmax over each step's full vocabulary)
summed over steps: exactly what scoring every item by teacher forcing gives, so a wide
enough beam returns the brute-force ranking (``brute_force.score_all_items``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from s2gr_jax.data import batches
from s2gr_jax.decoding.constraints import Constraint


def gather_beams(tree, parent: jax.Array):
  """Reorders leaves [B, K, ...] along K by ``parent`` int[B, K'] (local to each user)."""
  def take(x):
    index = parent.reshape(parent.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)
  return jax.tree.map(take, tree)


def beam_search(model, batch, constraint: Constraint, *, beam: int):
  """Top-``beam`` items per user under ``model``, restricted to the catalogue.

  Args:
    model: a ``models.Generator`` (``start_decoding`` / ``decode_level``).
    batch: an evaluation batch (``data.batches``, leading axis B).
    constraint: e.g. ``PrefixTrie.from_table(table)``.
    beam: number of beams K (also the length of the returned list).
  Returns:
    item_ids int32[B, K] and scores float32[B, K], best first; slots beyond the number
    of reachable items hold item 0 and score -inf.
  """
  # Every beam starts at the root, so the first step runs one beam per user and the
  # top-K of its candidates then fan out into K beams (the cache is gathered K times).
  b = batches.batch_size(batch)
  state = model.start_decoding(batch, 1)
  path = constraint.root(b)
  score = jnp.zeros((b, 1))
  tokens = None
  for step, width in enumerate(constraint.widths):
    log_probs, state = model.decode_level(state, tokens, step)  # [B, K_in, V_step]
    k_in = score.shape[1]
    cand_tokens, valid = constraint.allowed(path, step)  # [B, K_in, W]
    cand = score[..., None] + jnp.take_along_axis(log_probs, cand_tokens, axis=-1)
    cand = jnp.where(valid, cand, -jnp.inf).reshape(b, k_in * width)
    cand_tokens = cand_tokens.reshape(b, -1)
    if k_in * width < beam:  # fewer candidates than beams: pad with dead ones
      pad = ((0, 0), (0, beam - k_in * width))
      cand = jnp.pad(cand, pad, constant_values=-jnp.inf)
      cand_tokens = jnp.pad(cand_tokens, pad)
    score, top = jax.lax.top_k(cand, beam)
    parent = jnp.minimum(top // width, k_in - 1)
    path = constraint.advance(path, step, parent, top % width)
    tokens = jnp.take_along_axis(cand_tokens, top, axis=1)
    state = dict(state, per_beam=gather_beams(state["per_beam"], parent))
  items = jnp.where(jnp.isfinite(score), constraint.item(path), 0)
  return items, score
