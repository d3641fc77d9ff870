"""Rewards of the GRPO stage, as named functions combined by config weights.

A reward scores each of G sampled paths per user against a target item: every function
takes a ``Paths`` (the sampled items, their codes and the order their steps took), the
target item ids int[B] and a ``RewardTables`` (the catalogue's codes and the tokens'
categories), and returns float32[B, G]. ``combine`` weights them (``rl.rewards``) and
applies REG4Rec's MSRA over several future targets.

REG4Rec's PARS (arXiv 2508.15308, Figure 2b; ``shared/research/reg4rec.md``). The paper
counts steps; here each count is divided by its number of terms, so every part is in
[0, 1] and the config weights compare like with like:

* ``step_hit``: share of the M semantic steps whose token equals the target's token of
  the same codebook (for ordered SIDs: of the same level);
* ``global_path``: 1 if the sampled item is the target;
* ``category_hit``: share of steps whose token's category (``sid/categories.py``, the
  majority category of the token's items) equals the category of the target's token of
  that codebook; an unknown category never hits;
* ``step_consistency``: share of the M - 1 adjacent step pairs, in the order the path
  took, whose tokens share a (known) category.

SIDReasoner's reward for ordered SIDs (arXiv 2603.23183, ``sidreasoner_gemma.md``):

* ``prefix``: with n the number of leading semantic levels that match the target's,
  0 if n = 0, else 2^(n - L) (L = 3: 0.25, 0.5, 1.0 for an exact match), + 0.1 when
  the sampled path is a valid catalogue item (the constrained sampler's always are).

MiniOneRec's ranking reward (its ``rl.py``, ``ndcg_rule_reward``), for beam rollouts:

* ``rank``: in a group that holds the target, 0 for it and minus the share of the NDCG
  discount of its beam place for each wrong item (the hard negatives at the top cost
  most); 0 in a group without the target. MiniOneRec adds it to ``global_path``.

REG4Rec's MSRA (multi-step reward augmentation): the same reward against each of the
next N items of the user's sequence, ``targets`` int[B, N] (the example's target first,
then the items after it *in the training part only*, 0 where there is none), summed with
weights w_k = decay^(k - 1); N = 1 is MSRA off.
"""

from __future__ import annotations

from typing import Callable

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np


@struct.dataclass
class Paths:
  """G sampled paths per user.

  Attributes:
    item: int32[B, G] the sampled item ids (1-based; 0 = no item).
    order: int32[B, G, ≥M] the codebook (level) each step emitted, in order (the
      first M steps are the semantic ones).
    rank: int32[B, G] each path's place in the beam (0 = best) for beam rollouts
      (``rl.rollout='beam'``); None for sampled ones, which have no ranking.
  """

  item: jax.Array
  order: jax.Array
  rank: jax.Array | None = None


@struct.dataclass
class RewardTables:
  """What the rewards read about the catalogue (a pytree for ``jit``).

  Attributes:
    codes: int32[N + 1, L] every item's codes (row 0: padding).
    token_category: int32[ΣD] the category of each semantic token (codebook offset +
      code; -1 unknown).
    offsets: start of each semantic codebook in the flat token index (static).
  """

  codes: jax.Array
  token_category: jax.Array
  offsets: tuple[int, ...] = struct.field(pytree_node=False)

  @property
  def semantic_levels(self) -> int:
    return len(self.offsets)

  @classmethod
  def from_table(cls, table, item_category: np.ndarray | None = None) -> "RewardTables":
    """From a ``SidTable`` and the items' categories int[num_items] (or none)."""
    from s2gr_jax.sid import categories  # pylint: disable=g-import-not-at-top
    m = table.semantic_levels
    sizes = [int(s) for s in table.codebook_sizes[:m]]
    codes = np.asarray(table.codes)
    if item_category is None:
      token_category = np.full(sum(sizes), categories.NO_CATEGORY)
    else:
      token_category = np.concatenate(categories.token_categories(
          codes[:, :m], sizes, np.asarray(item_category)))
    return cls(codes=jnp.asarray(table.lookup(), jnp.int32),
               token_category=jnp.asarray(token_category, jnp.int32),
               offsets=tuple(int(x) for x in np.cumsum([0] + sizes[:-1])))

  def categories(self, items: jax.Array) -> jax.Array:
    """int32[..., M]: the category of each semantic token of ``items``."""
    m = self.semantic_levels
    return self.token_category[self.codes[items][..., :m] + jnp.asarray(self.offsets)]


def _semantic(tables: RewardTables, items: jax.Array) -> jax.Array:
  return tables.codes[items][..., :tables.semantic_levels]


def step_hit(paths: Paths, target: jax.Array, tables: RewardTables) -> jax.Array:
  """Share of semantic steps whose token equals the target's in that codebook."""
  same = _semantic(tables, paths.item) == _semantic(tables, target)[:, None]
  return same.mean(-1).astype(jnp.float32)


def global_path(paths: Paths, target: jax.Array, tables: RewardTables) -> jax.Array:
  """1 where the sampled item is the target."""
  del tables
  return ((paths.item == target[:, None]) & (target[:, None] > 0)).astype(jnp.float32)


def category_hit(paths: Paths, target: jax.Array, tables: RewardTables) -> jax.Array:
  """Share of steps whose token's category equals that of the target's token of the
  same codebook (unknown never hits)."""
  mine, theirs = tables.categories(paths.item), tables.categories(target)[:, None]
  return ((mine == theirs) & (mine >= 0)).mean(-1).astype(jnp.float32)


def step_consistency(paths: Paths, target: jax.Array, tables: RewardTables) -> jax.Array:
  """Share of adjacent steps (in the path's order) whose tokens share a known category."""
  del target
  m = tables.semantic_levels
  cats = jnp.take_along_axis(tables.categories(paths.item), paths.order[..., :m], axis=-1)
  if cats.shape[-1] < 2:
    return jnp.zeros(cats.shape[:-1], jnp.float32)
  a, b = cats[..., :-1], cats[..., 1:]
  return ((a == b) & (a >= 0)).mean(-1).astype(jnp.float32)


def prefix(paths: Paths, target: jax.Array, tables: RewardTables) -> jax.Array:
  """SIDReasoner's: 2^(n - L) for n >= 1 leading matching levels (0 if the first
  misses), + 0.1 for a valid catalogue item."""
  same = _semantic(tables, paths.item) == _semantic(tables, target)[:, None]
  n = jnp.cumprod(same, axis=-1).sum(-1)
  levels = tables.semantic_levels
  real = paths.item > 0  # (no item: no reward; row 0 of the codes is not an item)
  hit = jnp.where((n > 0) & real, 2.0 ** (n - levels), 0.0)
  return (hit + 0.1 * real).astype(jnp.float32)


def rank(paths: Paths, target: jax.Array, tables: RewardTables) -> jax.Array:
  """MiniOneRec's ranking reward for beam rollouts: in a group where some path is the
  target, the target gets 0 and a wrong item at beam place k (0-based) gets
  -(1/log2(k + 2)) / Σ_j 1/log2(j + 2) (the share of the NDCG discount it takes), so a
  wrong item ranked above the target costs more than one ranked below; a group without
  the target gets 0 everywhere."""
  del tables
  if paths.rank is None:
    raise ValueError("reward 'rank' needs beam rollouts (config.rl.rollout='beam'): "
                     "sampled paths have no ranking")
  group = paths.item.shape[1]
  discount = 1.0 / jnp.log2(paths.rank.astype(jnp.float32) + 2.0)
  total = (1.0 / jnp.log2(jnp.arange(group, dtype=jnp.float32) + 2.0)).sum()
  miss = (paths.item != target[:, None]) | (target[:, None] <= 0)
  found = ~miss.all(-1, keepdims=True)
  return jnp.where(miss & found, -discount / total, 0.0).astype(jnp.float32)


REWARDS: dict[str, Callable[[Paths, jax.Array, RewardTables], jax.Array]] = {
    "step_hit": step_hit, "global_path": global_path, "category_hit": category_hit,
    "step_consistency": step_consistency, "prefix": prefix, "rank": rank}

PARS = "step_hit=1,global_path=1,category_hit=1,step_consistency=1"
PREFIX = "prefix=1"


def parse_weights(spec: str, search: str, allow_none: bool = False) -> dict[str, float]:
  """``rl.rewards`` → {reward name: weight}. ``'auto'``: PARS for unordered codebooks
  (search 'sets', REG4Rec), SIDReasoner's prefix reward for ordered SIDs. ``'none'``
  (only with ``allow_none``: ``rl.sft_weight`` > 0) gives {}: no reward, so every
  advantage is 0 and the loop trains the target's NLL under the KL penalty alone, the
  control for what the rewards add."""
  if str(spec).strip() == "none":
    if not allow_none:
      raise ValueError("config.rl.rewards='none' leaves nothing to learn unless "
                       "config.rl.sft_weight > 0 (then the loop trains the target's NLL "
                       "alone: the control for what the rewards add)")
    return {}
  if spec == "auto":
    spec = PARS if search == "sets" else PREFIX
  weights = {}
  for part in str(spec).split(","):
    if not part.strip():
      continue
    name, sep, value = part.partition("=")
    name = name.strip()
    if name not in REWARDS:
      raise ValueError(f"config.rl.rewards={spec!r}: unknown reward {name!r}; available: "
                       f"{sorted(REWARDS)} (e.g. 'step_hit=1,global_path=0.5')")
    try:
      weights[name] = float(value) if sep else 1.0
    except ValueError as e:
      raise ValueError(f"config.rl.rewards={spec!r}: the weight of {name!r} is not a "
                       f"number ({value!r})") from e
  if not weights or not any(weights.values()):
    raise ValueError(f"config.rl.rewards={spec!r} gives no reward a non-zero weight")
  return weights


def msra_weights(n: int, decay: float) -> jax.Array:
  """float32[N]: w_k = decay^(k - 1), k = 1..N."""
  return decay ** jnp.arange(n, dtype=jnp.float32)


def combine(paths: Paths, targets: jax.Array, tables: RewardTables,
            weights: dict[str, float], decay: float = 0.5):
  """The total reward float32[B, G] and each part's (weighted over the targets, before
  the config weights), for ``targets`` int[B, N] (column 0: the example's target; the
  rest MSRA's future items, 0 where none)."""
  w = msra_weights(targets.shape[1], decay)
  parts = {}
  for name in weights:
    per_target = jnp.stack([REWARDS[name](paths, targets[:, k], tables)
                            for k in range(targets.shape[1])], axis=-1)  # [B, G, N]
    present = (targets > 0)[:, None, :]
    parts[name] = (per_target * present * w).sum(-1)
  total = sum((weights[name] * parts[name] for name in weights),
              jnp.zeros(paths.item.shape, jnp.float32))
  return total, parts
