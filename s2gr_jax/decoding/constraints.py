"""Catalogue constraints: which tokens may come next on each beam's path.

A search (``beam.py``) asks a ``Constraint`` four things, all on static shapes inside
``jit``: where every path starts (``root``), which tokens each beam may take at a step
(``allowed``: at most ``widths[step]`` candidates per beam), what a beam's path is after
it takes one of them (``advance``), and which item a finished path is (``item``). Only
paths that exist in the catalogue are ever scored, so every ranked item is real.

``PrefixTrie`` constrains ordered SIDs (TIGER, S²GR): each beam sits on a node of the SID
trie (``sid.table.PrefixIndex``), whose children are one contiguous range of the next
depth, so the candidates of a beam are ``start + arange(W)`` with ``W`` the most children
any node of that depth has; memory is linear in the number of items. REG4Rec's
unordered codebooks (set constraints) and a language model's text-then-SID decoding
implement the same four calls.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from flax import struct
import jax
import jax.numpy as jnp

from s2gr_jax.sid.table import PrefixIndex


class Constraint(Protocol):
  """A pytree (its arrays go into ``jit`` as arguments) with static ``widths``.

  Paths are pytrees with leading ``[B, K]`` axes (K beams per user).
  """

  kind: ClassVar[str]  # the search that reads it (``decoding.SEARCHES``)
  widths: tuple[int, ...]  # candidates per beam at each step; len = number of steps

  def root(self, batch_size: int) -> Any:
    """Every user's empty path, ``[B, 1]``."""
    ...

  def allowed(self, path: Any, step: int) -> tuple[jax.Array, jax.Array]:
    """Candidate tokens int32[B, K, W] (indices into the model's log-probabilities at
    ``step``) and whether each is allowed, bool[B, K, W]."""
    ...

  def advance(self, path: Any, step: int, parent: jax.Array, slot: jax.Array) -> Any:
    """The paths after each new beam took candidate ``slot`` of old beam ``parent``
    (int32[B, K'] each)."""
    ...

  def item(self, path: Any) -> jax.Array:
    """The item id int32[B, K] of each finished path."""
    ...


@struct.dataclass
class PrefixTrie:
  """The SID trie as arrays (``sid.table.PrefixIndex``); a path is its node int32[B, K].

  Attributes:
    child_start, child_count: per depth ``d``, int32[nodes_d]: first child and number
      of children of each node.
    node_code: per depth ``d``, int32[nodes_{d+1}]: the code a child appends.
    leaf_item: int32[nodes_L]: the item of each complete SID.
    widths: per depth, the largest number of children (static).
  """

  kind: ClassVar[str] = "prefix"

  child_start: tuple[jax.Array, ...]
  child_count: tuple[jax.Array, ...]
  node_code: tuple[jax.Array, ...]
  leaf_item: jax.Array
  widths: tuple[int, ...] = struct.field(pytree_node=False)

  @classmethod
  def from_index(cls, index: PrefixIndex) -> "PrefixTrie":
    return cls(child_start=tuple(jnp.asarray(a) for a in index.child_start),
               child_count=tuple(jnp.asarray(a) for a in index.child_count),
               node_code=tuple(jnp.asarray(a) for a in index.node_code),
               leaf_item=jnp.asarray(index.leaf_item), widths=tuple(index.max_children))

  @classmethod
  def from_table(cls, table) -> "PrefixTrie":
    if not table.ordered:
      raise ValueError("a prefix trie needs ordered SIDs; this table's codebooks are "
                       "parallel (unordered)")
    return cls.from_index(table.prefix_index())

  def root(self, batch_size: int) -> jax.Array:
    return jnp.zeros((batch_size, 1), jnp.int32)

  def _children(self, node: jax.Array, step: int):
    start = self.child_start[step][node]
    count = self.child_count[step][node]
    slot = jnp.arange(self.widths[step])
    valid = slot < count[..., None]  # [B, K, W]
    return jnp.where(valid, start[..., None] + slot, 0), valid

  def allowed(self, path: jax.Array, step: int) -> tuple[jax.Array, jax.Array]:
    child, valid = self._children(path, step)
    return self.node_code[step][child], valid

  def advance(self, path: jax.Array, step: int, parent: jax.Array,
              slot: jax.Array) -> jax.Array:
    node = jnp.take_along_axis(path, parent, axis=1)
    start = self.child_start[step][node]
    count = self.child_count[step][node]
    return jnp.where(slot < count, start + slot, 0)

  def item(self, path: jax.Array) -> jax.Array:
    return self.leaf_item[path]
