"""Catalogue-constrained beam search over Semantic IDs, in pure JAX.

Static shapes throughout: ``[B, K]`` beams, levels unrolled (a handful). Each beam sits
on a node of the SID trie (``sid.table.PrefixIndex``); its children are one contiguous
range of the next depth, so the candidates of a beam are gathered as ``start + arange(W)``
with ``W`` = the most children any node of that depth has. Only SID prefixes that exist
in the catalogue are ever scored, memory is linear in the number of items, and the
finished beams map straight to item ids.

Scores are the model's log-probabilities (softmax over each level's full vocabulary),
summed over levels: exactly what scoring every item by teacher forcing gives, so a wide
enough beam returns the brute-force ranking.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from s2gr_jax.sid.table import PrefixIndex


def index_arrays(index: PrefixIndex) -> dict[str, Any]:
  """The trie as a pytree of arrays to pass into ``jit`` (not baked in as constants)."""
  return {
      "child_start": [jnp.asarray(a) for a in index.child_start],
      "child_count": [jnp.asarray(a) for a in index.child_count],
      "node_code": [jnp.asarray(a) for a in index.node_code],
      "leaf_item": jnp.asarray(index.leaf_item),
  }


def _gather_beams(tree, parent: jax.Array):
  """Reorders leaves [B, K, ...] along K by ``parent`` int[B, K] (local to each user)."""
  def take(x):
    index = parent.reshape(parent.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)
  return jax.tree.map(take, tree)


def beam_search(model, batch, trie: dict[str, Any], *, beam: int,
                max_children: tuple[int, ...]):
  """Top-``beam`` items per user under ``model``, restricted to catalogue SIDs.

  Args:
    model: a generator with ``start_decoding`` / ``decode_level`` (see ``models.tiger``).
    batch: an evaluation batch (``history_codes`` etc., leading axis B).
    trie: ``index_arrays(prefix_index)``.
    beam: number of beams K (also the length of the returned list).
    max_children: ``prefix_index.max_children`` (static candidate widths per level).
  Returns:
    item_ids int32[B, K] and scores float32[B, K], best first; slots beyond the number
    of reachable items hold item 0 and score -inf.
  """
  # Every beam starts at the root, so the first level runs one beam per user and the
  # top-K of its children then fan out into K beams (the cache is gathered K times).
  state = model.start_decoding(batch, 1)
  b = state["cross_mask"].shape[0]
  node = jnp.zeros((b, 1), jnp.int32)
  score = jnp.zeros((b, 1))
  codes = None
  for level, width in enumerate(max_children):
    log_probs, state = model.decode_level(state, codes, level)  # [B, K_in, V_level]
    k_in = node.shape[1]
    start = trie["child_start"][level][node]
    count = trie["child_count"][level][node]
    slot = jnp.arange(width)
    valid = slot < count[..., None]  # [B, K_in, W]
    child = jnp.where(valid, start[..., None] + slot, 0)
    child_code = trie["node_code"][level][child]
    cand = score[..., None] + jnp.take_along_axis(log_probs, child_code, axis=-1)
    cand = jnp.where(valid, cand, -jnp.inf).reshape(b, k_in * width)
    child, child_code = child.reshape(b, -1), child_code.reshape(b, -1)
    if k_in * width < beam:  # fewer candidates than beams: pad with dead ones
      pad = ((0, 0), (0, beam - k_in * width))
      cand = jnp.pad(cand, pad, constant_values=-jnp.inf)
      child, child_code = jnp.pad(child, pad), jnp.pad(child_code, pad)
    score, top = jax.lax.top_k(cand, beam)
    parent = jnp.minimum(top // width, k_in - 1)
    node = jnp.take_along_axis(child, top, axis=1)
    codes = jnp.take_along_axis(child_code, top, axis=1)
    state = dict(state, per_beam=_gather_beams(state["per_beam"], parent))
  items = jnp.where(jnp.isfinite(score), trie["leaf_item"][node], 0)
  return items, score


def recommend(model, batch, trie: dict[str, Any], *, beam: int,
              max_children: tuple[int, ...]):
  """Top-``beam`` item ids and scores: the model's own ranking if it scores items
  directly (SASRec), else the constrained beam search over its SIDs."""
  if hasattr(model, "rank"):
    return model.rank(batch, beam)
  return beam_search(model, batch, trie, beam=beam, max_children=max_children)


def score_all_items(model, batch, codes: np.ndarray) -> jax.Array:
  """Brute force: log-probability of every catalogue item's SID, float32[B, num_items].

  ``codes`` is ``SidTable.codes`` (row i = item i + 1). For tests and small catalogues.
  """
  b = batch["history_codes"].shape[0]
  n = codes.shape[0]
  tiled = {k: jnp.repeat(v, n, axis=0) for k, v in batch.items()}
  tiled["target_codes"] = jnp.tile(jnp.asarray(codes), (b, 1))
  logits = model.teacher_forced_logits(tiled)
  total = 0.0
  for level, lg in enumerate(logits):
    lp = jax.nn.log_softmax(lg, axis=-1)
    total = total + jnp.take_along_axis(lp, tiled["target_codes"][:, level:level + 1],
                                        axis=1)[:, 0]
  return total.reshape(b, n)
