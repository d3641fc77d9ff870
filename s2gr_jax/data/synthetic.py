"""A synthetic catalogue and users that follow it: the built-in default dataset.

The generator plants the structure a sequential recommender should find:

* a category hierarchy (``branching[0]`` top categories, each with ``branching[1]``
  sub-categories, ...); every item sits in one leaf and has a brand tied to its top
  category, so its attributes (top, every deeper category, brand, a few of its leaf's
  descriptive tags, sometimes a noise attribute) describe where it lives;
* long-tailed item popularity (log-normal weights);
* users with a few favourite leaf categories (one of them in another top category)
  whose next item is: sometimes a fixed "complement" of the last one (co-purchase; by
  default an item of a fixed partner leaf under the same top category, as a phone's
  case sits beside phones: ``complement_scope``), sometimes an item of the last one's
  leaf, most often an item of one of their favourite leaves, else a popular item.

What a model must learn, and what the non-learned rows already catch:

* **complements** (``p_complement``): one fixed item per item. Counting transitions
  finds them once a pair has been seen; a model has to memorise the pairs (and can
  lean on the partner leaf, which the SIDs' category structure exposes).
* **same leaf** (``p_same_leaf``): a popular item of the last item's leaf. A model that
  maps items to their leaf (their SIDs share a prefix) generalises across items; the
  counts see only the pairs that happened.
* **favourite leaves** (``p_favourite``, the largest share): the user's returning
  interests, readable only from the whole history; the last-item floor misses them and
  history transitions catch them only through co-occurrence counts.

The ceiling is far above the counting rows: ranking by the true process (the user's
favourites, the complements and popularity known, seen items excluded) reaches test
R@10 0.55 / N@10 0.33 on the default spec, and 0.52 / 0.32 with the favourites guessed
from the leaves of the history; the last-item floor has 0.27 / 0.18, history
transitions 0.30 / 0.18, popularity 0.04 / 0.02 (2,000 users). Everything is
deterministic from ``seed``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from s2gr_jax.data.prepared import PreparedDataset


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  num_users: int = 2000
  num_items: int = 1000
  branching: tuple[int, ...] = (8, 8)
  brands_per_top: int = 4
  min_length: int = 5
  mean_length: float = 9.0
  max_length: int = 40
  favourite_leaves: int = 3
  p_complement: float = 0.15
  p_same_leaf: float = 0.2
  p_favourite: float = 0.55  # else: a popular item from anywhere
  tags_per_leaf: int = 12
  tags_per_item: int = 3
  noise_attribute_rate: float = 0.3
  # Where an item's complement lives: 'related_leaf' (a fixed partner leaf under the
  # same top category, the way a phone's case sits beside phones) or 'anywhere'.
  complement_scope: str = "related_leaf"
  seed: int = 0

  def validate(self) -> None:
    if self.num_items < 2 * self.max_length:
      raise ValueError(f"synthetic.num_items={self.num_items} must be at least twice "
                       f"synthetic.max_length={self.max_length}")
    if not 3 <= self.min_length <= self.max_length:
      raise ValueError("synthetic lengths need 3 <= min_length <= max_length, got "
                       f"{self.min_length}, {self.max_length}")
    if self.complement_scope not in ("related_leaf", "anywhere"):
      raise ValueError("synthetic.complement_scope must be 'related_leaf' or 'anywhere', "
                       f"got {self.complement_scope!r}")
    if self.p_complement + self.p_same_leaf + self.p_favourite > 1:
      raise ValueError("synthetic transition probabilities sum to more than 1")


def _hierarchy(spec: SyntheticSpec, rng: np.random.Generator):
  """Assigns items to leaves; returns per item its path [num_items, depth] and brand."""
  num_leaves = int(np.prod(spec.branching))
  leaf = rng.integers(0, num_leaves, spec.num_items)
  path = np.stack(np.unravel_index(leaf, spec.branching), axis=1)
  brand = path[:, 0] * spec.brands_per_top + rng.integers(0, spec.brands_per_top,
                                                          spec.num_items)
  return leaf, path, brand


def _related_complements(spec: SyntheticSpec, leaf: np.ndarray, popularity: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
  """Each item's fixed complement: a popularity-weighted item of its leaf's partner leaf
  (another leaf under the same top category; every leaf has one partner)."""
  per_top = int(np.prod(spec.branching[1:]))
  num_leaves = int(np.prod(spec.branching))
  partner = np.empty(num_leaves, np.int64)
  for top in range(spec.branching[0]):
    leaves = top * per_top + rng.permutation(per_top)
    partner[leaves] = np.roll(leaves, 1) if per_top > 1 else leaves
  complement = np.empty(len(leaf), np.int64)
  for item in range(len(leaf)):
    pool = np.flatnonzero((leaf == partner[leaf[item]]) & (np.arange(len(leaf)) != item))
    if pool.size == 0:  # an empty partner leaf (small catalogues): anywhere
      pool = np.flatnonzero(np.arange(len(leaf)) != item)
    w = popularity[pool]
    complement[item] = rng.choice(pool, p=w / w.sum())
  return complement


def generate(spec: SyntheticSpec) -> PreparedDataset:
  """Draws the catalogue and the users' sequences."""
  spec.validate()
  rng = np.random.default_rng(spec.seed)
  n = spec.num_items
  leaf, path, brand = _hierarchy(spec, rng)
  popularity = rng.lognormal(0.0, 1.0, n)
  complement = rng.integers(0, n, n)
  if spec.complement_scope == "related_leaf":
    complement = _related_complements(spec, leaf, popularity, rng)

  # Attribute ids: every (depth, category prefix) gets an id, then brands, then noise.
  attributes: list[list[int]] = [[] for _ in range(n)]
  offset, prefix_ids = 1, {}
  for item in range(n):
    for depth in range(len(spec.branching)):
      key = (depth,) + tuple(path[item, :depth + 1])
      if key not in prefix_ids:
        prefix_ids[key] = offset
        offset += 1
      attributes[item].append(prefix_ids[key])
  brand_base = offset
  offset += int(brand.max()) + 1
  # Tags: a few of the leaf's own descriptive tags, so that items of a leaf differ.
  tag_base = offset
  offset += len(prefix_ids) * spec.tags_per_leaf
  noise = rng.random(n) < spec.noise_attribute_rate
  noise_attr = offset + rng.integers(0, 16, n)
  for item in range(n):
    attributes[item].append(brand_base + int(brand[item]))
    tags = rng.choice(spec.tags_per_leaf, size=min(spec.tags_per_item, spec.tags_per_leaf),
                      replace=False)
    attributes[item].extend(int(tag_base + leaf[item] * spec.tags_per_leaf + t)
                            for t in sorted(tags))
    if noise[item]:
      attributes[item].append(int(noise_attr[item]))

  def pool(items: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    if items.size == 0:
      return None  # an empty category (small catalogues)
    cum = np.cumsum(popularity[items])
    return items, cum / cum[-1]

  by_leaf = [pool(np.flatnonzero(leaf == l)) for l in range(int(np.prod(spec.branching)))]
  everything = pool(np.arange(n))

  def draw(items_cum: tuple[np.ndarray, np.ndarray] | None, seen: set[int]) -> int | None:
    """A popularity-weighted item of the pool that the user has not seen yet."""
    if items_cum is None:
      return None
    items, cum = items_cum
    for _ in range(8):  # rejection sampling: sequences are short next to the pools
      item = int(items[min(np.searchsorted(cum, rng.random()), len(items) - 1)])
      if item not in seen:
        return item
    rest = np.asarray([i for i in items if i not in seen])
    if rest.size == 0:
      return None
    w = popularity[rest]
    return int(rng.choice(rest, p=w / w.sum()))

  sequences = []
  lengths = np.clip(spec.min_length + rng.geometric(
      1.0 / max(spec.mean_length - spec.min_length + 1, 1.0), spec.num_users) - 1,
                    spec.min_length, spec.max_length)
  for length in lengths:
    # Favourite leaves: mostly under one top category, one anywhere.
    home = rng.integers(spec.branching[0])
    per_top = len(by_leaf) // spec.branching[0]
    favourites = list(home * per_top + rng.choice(
        per_top, size=min(spec.favourite_leaves - 1, per_top), replace=False))
    favourites.append(int(rng.integers(len(by_leaf))))
    seen: set[int] = set()
    first = draw(by_leaf[int(rng.choice(favourites))], seen)
    seq = [first if first is not None else draw(everything, seen)]
    seen.add(seq[0])
    while len(seq) < length:
      last, u = seq[-1], rng.random()
      nxt = None
      if u < spec.p_complement and int(complement[last]) not in seen:
        nxt = int(complement[last])
      elif u < spec.p_complement + spec.p_same_leaf:
        nxt = draw(by_leaf[leaf[last]], seen)
      elif u < spec.p_complement + spec.p_same_leaf + spec.p_favourite:
        nxt = draw(by_leaf[int(rng.choice(favourites))], seen)
      if nxt is None:
        nxt = draw(everything, seen)
      seq.append(nxt)
      seen.add(nxt)
    sequences.append(np.asarray(seq, np.int32) + 1)  # item ids start at 1

  text = [{"title": f"Item {i + 1}", "brand": f"Brand {int(brand[i])}",
           "categories": [["Synthetic"] + [f"C{'.'.join(map(str, path[i, :d + 1]))}"
                                           for d in range(path.shape[1])]]}
          for i in range(n)]
  return PreparedDataset(
      name="synthetic", user_ids=np.arange(1, spec.num_users + 1, dtype=np.int64),
      sequences=sequences, num_items=n, item_attributes=attributes, item_text=text,
      filter_log={})
