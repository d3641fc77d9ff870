"""Set-constrained beam search over parallel, unordered codebooks (REG4Rec's CRSS).

An item is M (codebook, code) tokens (and a de-duplication token last, when items share
all M). A path may emit the codebooks in any order; every prefix must leave at least
one catalogue item possible. ``CodeSets`` holds the catalogue as arrays:

* ``codes`` int32[N, L]: every item's codes;
* ``posting`` int32[ΣD, P]: for each flat token (codebook offset + code), the items
  carrying it (0-based, -1 padding; P is the longest such list, so memory is
  O(ΣD · P) ≈ O(M · N) for balanced codebooks — linear in the catalogue);
* ``used`` bool[ΣD]: tokens some item carries;
* ``pairs`` bool[ΣD, ΣD]: tokens that some item carries together (O((ΣD)²), independent
  of the catalogue's size), and ``pair_width`` P₂, the most items that share any two
  tokens (≈ N / D² + a few for balanced codebooks);
* ``pair_items`` int32[C, N] and ``pair_start`` int32[C, D² + 1]: for each of the
  C = M(M-1)/2 codebook pairs (r < s), the items sorted by (code_r, code_s) and where
  each (a, b) run starts (memory O(M² · N), linear in the catalogue).

A beam's path is the items still possible (``alive`` int32[B, K, P], the posting list
of its first token filtered by every later one) and the codebooks it has emitted. At
each step ``crss_search``:

1. takes the model's log-probabilities of every codebook's codes, masked to the tokens
   some alive item carries in a codebook the beam has not emitted;
2. picks the beam's codebook: the one whose best allowed code is the most probable
   (confidence-based step selection; ``model.cfg.order == 'fixed'`` takes codebook
   ``step`` instead, the ablation);
3. extends the beam by that codebook's allowed codes; the K best extensions of all
   beams by summed log-probability survive, as in ``beam.beam_search``;
4. CORP (``model.cfg.corp``): after ``corp_step`` steps (0 = M - 1), a path whose
   adjacent steps share their tokens' category (``token_category``; unknown agrees with
   anything) in fewer than ``corp_min_consistency`` of the pairs is dropped, so its slot
   goes to another extension (unless every path of a user would be dropped).

**Compaction** (``compact=True``, the default; ``False`` is the plain version, kept for
tests and the ``sets`` benchmark suite): the second step reads its allowed tokens from
``pairs`` instead of scanning the P alive items' codes, and after it the items alive
(at most P₂) are read as one run of ``pair_items``, so no step touches a posting list
and every step costs O(P₂ · M) per beam instead of O(P · M): the search's work no longer
grows with the catalogue, only the index's memory does. Both give the same paths.

Since the order is a function of the path so far, each item is reached by one path, so
a beam as wide as the catalogue returns every item once, each scored by its
log-probability along the order the search took.

``model.cfg.expand='all_codebooks'`` is the variant that extends every beam by the
allowed codes of *every* open codebook; then several orders can reach one token set, so
at every step the 2K best extensions are merged by set (``model.cfg.merge``:
``logsumexp`` of their scores, or ``max``; the merged path keeps the order of its best
member) and the K best sets survive: a beam is a set of tokens, never two slots for one.
"""

from __future__ import annotations

from typing import ClassVar

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from s2gr_jax.data import batches
from s2gr_jax.decoding.beam import gather_beams


@struct.dataclass
class CodeSets:
  """The catalogue for set-constrained decoding (see module docstring)."""

  kind: ClassVar[str] = "sets"

  codes: jax.Array
  posting: jax.Array
  used: jax.Array
  codebook_of: jax.Array  # int32[ΣD]: the codebook of each flat token
  token_category: jax.Array  # int32[ΣD]: each token's majority category (-1: unknown)
  pairs: jax.Array  # bool[ΣD, ΣD]: tokens some item carries together
  pair_items: jax.Array  # int32[C, N]: items sorted by their codes in each codebook pair
  pair_start: jax.Array  # int32[C, D_max² + 1]: where each pair of codes' run starts
  sizes: tuple[int, ...] = struct.field(pytree_node=False)  # semantic codebook sizes
  dedup_size: int = struct.field(pytree_node=False)  # 0: no de-dup level
  pair_width: int = struct.field(pytree_node=False, default=0)  # P₂ (see docstring)
  compact: bool = struct.field(pytree_node=False, default=True)

  @property
  def offsets(self) -> tuple[int, ...]:
    return tuple(int(x) for x in np.cumsum((0,) + self.sizes[:-1]))

  @property
  def widths(self) -> tuple[int, ...]:
    return (max(self.sizes),) * len(self.sizes) + ((self.dedup_size,) if self.dedup_size
                                                   else ())

  @classmethod
  def from_table(cls, table, item_category: np.ndarray | None = None,
                 token_category: np.ndarray | None = None,
                 compact: bool = True) -> "CodeSets":
    """The index of ``table``; ``item_category`` int[N] (``sid.categories``) gives the
    tokens their categories for CORP, or ``token_category`` int[ΣD] gives them directly
    (``sid/token_categories.json``); without either every token's is unknown.
    ``compact=False`` is the plain search (module docstring)."""
    from s2gr_jax.sid import categories  # pylint: disable=g-import-not-at-top
    m = table.semantic_levels
    sizes = tuple(int(s) for s in table.codebook_sizes[:m])
    codes = np.asarray(table.codes, np.int32)
    flat = codes[:, :m] + np.cumsum((0,) + sizes[:-1])[None]  # [N, M]
    total = sum(sizes)
    counts = np.bincount(flat.ravel(), minlength=total)
    width = int(counts.max())
    posting = np.full((total, width), -1, np.int32)
    order = np.argsort(flat.ravel(), kind="stable")
    tokens = flat.ravel()[order]
    items = np.repeat(np.arange(len(codes)), m)[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    posting[tokens, np.arange(len(tokens)) - starts[tokens]] = items
    dedup = int(table.codebook_sizes[m]) if table.num_levels > m else 0
    dmax = max(sizes)
    # The pair tables grow with D², not with N: past ~64M entries (e.g. codebooks of 4,096
    # codes) the plain search is used instead.
    compact = compact and m >= 2 and (m * (m - 1) // 2 * dmax * dmax + total * total
                                      <= 64 * 2**20)
    pairs = np.zeros((total, total) if compact else (1, 1), bool)
    pair_width = 1
    pairs_used = _codebook_pairs(m) if compact else []
    pair_items = np.zeros((max(len(pairs_used), 1), len(codes) if compact else 1), np.int32)
    pair_start = np.zeros((len(pair_items), dmax * dmax + 1 if compact else 1), np.int32)
    for p, (r, s) in enumerate(pairs_used):
      pairs[flat[:, r], flat[:, s]] = pairs[flat[:, s], flat[:, r]] = True
      key = codes[:, r].astype(np.int64) * dmax + codes[:, s]
      pair_items[p] = np.argsort(key, kind="stable")
      pair_start[p] = np.searchsorted(key[pair_items[p]], np.arange(dmax * dmax + 1))
      pair_width = max(pair_width, int(np.diff(pair_start[p]).max()))
    if token_category is not None:
      token_category = np.asarray(token_category, np.int32)
      if token_category.shape != (total,):
        raise ValueError(f"token_category has shape {token_category.shape}, the table "
                         f"has {total} semantic tokens")
    elif item_category is not None:
      token_category = np.concatenate(categories.token_categories(
          codes[:, :m], sizes, np.asarray(item_category))).astype(np.int32)
    else:
      token_category = np.full(total, categories.NO_CATEGORY, np.int32)
    return cls(codes=jnp.asarray(codes), posting=jnp.asarray(posting),
               used=jnp.asarray(counts > 0),
               codebook_of=jnp.asarray(np.repeat(np.arange(m), sizes), jnp.int32),
               token_category=jnp.asarray(token_category), pairs=jnp.asarray(pairs),
               pair_items=jnp.asarray(pair_items), pair_start=jnp.asarray(pair_start),
               sizes=sizes, dedup_size=dedup, pair_width=min(pair_width, width),
               compact=compact)

  def pair_run(self, first: jax.Array, second: jax.Array) -> jax.Array:
    """int32[..., P₂]: the items (0-based, -1 padding) that carry both flat tokens
    ``first`` and ``second`` (of two different codebooks), from ``pair_items``."""
    m, offsets = len(self.sizes), jnp.asarray(self.offsets, jnp.int32)
    pair_id = np.zeros((m, m), np.int32)
    for p, (r, s) in enumerate(_codebook_pairs(m)):
      pair_id[r, s] = pair_id[s, r] = p
    r, s = self.codebook_of[first], self.codebook_of[second]
    lo, hi = jnp.where(r < s, first, second), jnp.where(r < s, second, first)
    key = ((lo - offsets[self.codebook_of[lo]]) * max(self.sizes)
           + hi - offsets[self.codebook_of[hi]])
    p = jnp.asarray(pair_id)[r, s]
    start, end = self.pair_start[p, key], self.pair_start[p, key + 1]
    at = start[..., None] + jnp.arange(self.pair_width, dtype=jnp.int32)
    items = self.pair_items[p[..., None], jnp.minimum(at, self.pair_items.shape[1] - 1)]
    return jnp.where(at < end[..., None], items, -1)

  def carried(self, alive: jax.Array, level: int | None = None) -> jax.Array:
    """bool[B, K, ΣD] (or [B, K, D_dedup] for ``level`` = M): tokens an alive item has."""
    m = len(self.sizes)
    safe = jnp.maximum(alive, 0)
    ok = alive >= 0
    if level is None:
      flat = self.codes[safe][..., :m] + jnp.asarray(self.offsets, jnp.int32)  # [B,K,P,M]
      size, ok = sum(self.sizes), jnp.broadcast_to(ok[..., None], flat.shape)
    else:
      flat, size = self.codes[safe][..., level], self.dedup_size
    lead = alive.shape[:2]
    flat = flat.reshape(lead + (-1,))
    ok = ok.reshape(lead + (-1,))
    scatter = lambda f, v: jnp.zeros(size, bool).at[f].max(v)
    return jax.vmap(jax.vmap(scatter))(flat, ok)

  def item(self, alive: jax.Array) -> jax.Array:
    """The item id (1-based) of each finished path: its one alive item."""
    return alive.max(-1) + 1


def _codebook_pairs(m: int):
  return [(r, s) for r in range(m) for s in range(r + 1, m)]


def consistency(cats: jax.Array) -> jax.Array:
  """Share of adjacent steps whose categories agree (-1 agrees with any): cats
  int[..., S] → float[...]."""
  a, b = cats[..., :-1], cats[..., 1:]
  agree = (a == b) | (a < 0) | (b < 0)
  return agree.mean(-1)


def merge_sets(codes: jax.Array, scores: jax.Array, how: str) -> jax.Array:
  """Candidates [B, K] whose token sets ``codes`` [B, K, M] (the code of each codebook,
  -1 where none yet) are equal are one path: the first of each group gets the
  log-sum-exp (``how='logsumexp'``) or the max of the group's scores, the others -inf."""
  valid = jnp.isfinite(scores)
  same = ((codes[:, :, None, :] == codes[:, None, :, :]).all(-1)
          & valid[:, :, None] & valid[:, None, :])
  masked = jnp.where(same, scores[:, None, :], -jnp.inf)
  merged = jax.nn.logsumexp(masked, axis=-1) if how == "logsumexp" else masked.max(-1)
  k = scores.shape[1]
  earlier = jnp.arange(k)[None, None, :] < jnp.arange(k)[None, :, None]
  first = ~(same & earlier).any(-1)
  return jnp.where(first & valid, merged, -jnp.inf)


def crss_search(model, batch, index: CodeSets, *, beam: int, return_orders: bool = False,
                return_stats: bool = False):
  """Top-``beam`` items per user: ids int32[B, K] and scores float32[B, K], best first
  (and, with ``return_orders``, the codebook order int32[B, K, M] of each path; with
  ``return_stats``, ``{"corp_pruned": float[B]}``, the paths CORP dropped per user)."""
  b = batches.batch_size(batch)
  m = len(index.sizes)
  cfg = model.cfg
  fixed = getattr(cfg, "order", "confidence") == "fixed"
  every_codebook = getattr(cfg, "expand", "best_codebook") == "all_codebooks"
  pruned_count = jnp.zeros((b,))
  corp_after = (cfg.corp_step or m - 1) if getattr(cfg, "corp", False) else 0
  offsets = jnp.asarray(index.offsets, jnp.int32)
  sizes = jnp.asarray(index.sizes, jnp.int32)
  width = max(index.sizes)
  state = model.start_decoding(batch, 1)
  score = jnp.zeros((b, 1))
  compact = index.compact  # (from_table turns it off for M < 2)
  alive = jnp.full((b, 1, index.pair_width if compact else index.posting.shape[1]), -1,
                   jnp.int32)
  first = None  # [B, K]: each beam's first token (the compacted search's second step)
  orders = jnp.zeros((b, 1, m), jnp.int32)
  cats = jnp.zeros((b, 1, m), jnp.int32)
  picked = jnp.full((b, 1, m), -1, jnp.int32)  # each path's code per codebook so far
  tokens = None

  def keep(cand, cand_tokens, k_in, w, size=beam):
    """The ``size`` best of [B, k_in * w] candidates: scores, parents, slots."""
    if k_in * w < size:
      pad = ((0, 0), (0, size - k_in * w))
      cand = jnp.pad(cand, pad, constant_values=-jnp.inf)
      cand_tokens = jnp.pad(cand_tokens, pad)
    top_score, top = jax.lax.top_k(cand, size)
    return top_score, jnp.minimum(top // w, k_in - 1), jnp.take_along_axis(cand_tokens, top, 1)

  for step in range(m):
    log_probs, state = model.decode_level(state, tokens, step)  # [B, K_in, ΣD]
    k_in = score.shape[1]
    if step == 0:
      allowed = jnp.broadcast_to(index.used, log_probs.shape)
    else:  # tokens an alive item carries, in a codebook the path has not emitted
      # (the compacted second step: the tokens that go with the beam's first, `tokens`)
      carried = index.pairs[tokens] if step == 1 and compact else index.carried(alive)
      allowed = carried & ~jnp.take_along_axis(
          picked >= 0, jnp.broadcast_to(index.codebook_of, log_probs.shape), axis=2)
    masked = jnp.where(allowed, log_probs, -jnp.inf)
    if every_codebook and not fixed:  # the variant: pairs of every open codebook
      w = masked.shape[-1]
      cand_tokens = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32), masked.shape)
      cand = (score[..., None] + masked).reshape(b, k_in * w)
      # Two orders reach the same token set from step 2 on: the 2K best extensions are
      # merged by set (`merge`), so the K kept are K different sets.
      pool_score, pool_parent, pool_tokens = keep(cand, cand_tokens.reshape(b, -1), k_in,
                                                  w, size=2 * beam)
      cb = index.codebook_of[pool_tokens]
      pool_sets = jnp.where(jax.nn.one_hot(cb, m, dtype=bool),
                            (pool_tokens - offsets[cb])[..., None],
                            jnp.take_along_axis(picked, pool_parent[..., None], axis=1))
      merged = merge_sets(pool_sets, pool_score, getattr(cfg, "merge", "logsumexp"))
      score, sel = jax.lax.top_k(merged, beam)
      parent = jnp.take_along_axis(pool_parent, sel, axis=1)
      tokens = jnp.take_along_axis(pool_tokens, sel, axis=1)
      alive, orders, cats, picked = gather_beams((alive, orders, cats, picked),
                                                 parent)
      codebook = index.codebook_of[tokens]
    else:
      if fixed:
        chosen = jnp.full((b, k_in), step, jnp.int32)
      else:
        best = jnp.stack([masked[..., o:o + s].max(-1) for o, s in
                          zip(index.offsets, index.sizes)], axis=-1)  # [B, K_in, M]
        chosen = best.argmax(-1).astype(jnp.int32)
      slot = jnp.arange(width)
      in_book = slot < sizes[chosen][..., None]
      cand_tokens = offsets[chosen][..., None] + jnp.where(in_book, slot, 0)  # [B,K,W]
      cand = score[..., None] + jnp.take_along_axis(masked, cand_tokens, axis=-1)
      cand = jnp.where(in_book, cand, -jnp.inf).reshape(b, k_in * width)
      score, parent, tokens = keep(cand, cand_tokens.reshape(b, -1), k_in, width)
      alive, orders, cats, picked = gather_beams((alive, orders, cats, picked),
                                                 parent)
      codebook = jnp.take_along_axis(chosen, parent, axis=1)
    orders = orders.at[:, :, step].set(codebook)
    cats = cats.at[:, :, step].set(index.token_category[tokens])
    if step + 1 == corp_after and corp_after >= 2:
      pruned = consistency(cats[..., :corp_after]) < cfg.corp_min_consistency
      pruned = pruned & ~pruned.all(1, keepdims=True)  # never every path of a user
      pruned = pruned & jnp.isfinite(score)
      pruned_count = pruned.sum(1).astype(jnp.float32)
      score = jnp.where(pruned, -jnp.inf, score)
    picked = jnp.where(jax.nn.one_hot(codebook, m, dtype=bool),
                       (tokens - offsets[codebook])[..., None], picked)
    if step == 0 and compact:
      first = tokens
    elif step == 0:
      alive = index.posting[tokens]
    elif step == 1 and compact:  # the items of both tokens: one run of pair_items
      alive = index.pair_run(jnp.take_along_axis(first, parent, axis=1), tokens)
    else:
      code = tokens - offsets[codebook]
      has = index.codes[jnp.maximum(alive, 0), codebook[..., None]] == code[..., None]
      alive = jnp.where((alive >= 0) & has, alive, -1)
    state = dict(state, per_beam=gather_beams(state["per_beam"], parent))
  if index.dedup_size:
    log_probs, state = model.decode_level(state, tokens, m)  # [B, K, D_dedup]
    masked = jnp.where(index.carried(alive, m), log_probs, -jnp.inf)
    k_in, w = score.shape[1], index.dedup_size
    cand = (score[..., None] + masked).reshape(b, k_in * w)
    cand_tokens = jnp.broadcast_to(jnp.arange(w), (b, k_in, w)).reshape(b, -1)
    score, parent, dedup = keep(cand, cand_tokens, k_in, w)
    alive, orders = gather_beams((alive, orders), parent)
    alive = jnp.where((alive >= 0) & (index.codes[jnp.maximum(alive, 0), m]
                                      == dedup[..., None]), alive, -1)
  items = jnp.where(jnp.isfinite(score), index.item(alive), 0)
  out = (items, score)
  if return_orders:
    out = out + (orders,)
  if return_stats:
    out = out + ({"corp_pruned": pruned_count},)
  return out if len(out) > 2 else (items, score)
