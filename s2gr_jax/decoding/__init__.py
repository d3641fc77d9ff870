"""Catalogue-constrained decoding: ``recommend(model, batch, index, beam=K)``.

``make_index(table, search)`` builds the index a model's search reads from the SID table
(``search`` comes from the model's registry entry, ``models.get(name).search``), and
``recommend`` runs the search that index belongs to, so callers never choose one:

| search      | index                       | what runs                                    |
|-------------|-----------------------------|----------------------------------------------|
| `prefix`    | `PrefixTrie` (ordered SIDs) | `beam.beam_search`: one model step per level |
| `catalogue` | `Catalogue`                 | `items.top_items`: the top K of item scores  |
| `sets`      | `CodeSets` (unordered SIDs) | `sets.crss_search`: REG4Rec's CRSS beams     |

A new kind of constraint (REG4Rec's sets, an LLM's text-then-SID) is an index type and a
search function registered in ``SEARCHES``; the callers (evaluation, export, benchmarks)
stay as they are. Everything here runs inside ``jit`` on static shapes.
"""

from __future__ import annotations

from typing import Any, Callable

from s2gr_jax.decoding.beam import beam_search
from s2gr_jax.decoding.beam import gather_beams
from s2gr_jax.decoding.brute_force import score_all_items
from s2gr_jax.decoding.constraints import Constraint
from s2gr_jax.decoding.constraints import PrefixTrie
from s2gr_jax.decoding.items import Catalogue
from s2gr_jax.decoding.items import top_items
from s2gr_jax.decoding.sets import CodeSets
from s2gr_jax.decoding.sets import crss_search

__all__ = ["Catalogue", "CodeSets", "Constraint", "crss_search", "INDEXES", "PrefixTrie",
           "SEARCHES", "beam_search",
           "gather_beams", "make_index", "recommend", "score_all_items", "top_items"]

# search kind → (index type built from a SidTable, the search that reads it)
INDEXES: dict[str, type] = {"prefix": PrefixTrie, "catalogue": Catalogue,
                            "sets": CodeSets}
SEARCHES: dict[str, Callable[..., Any]] = {"prefix": beam_search, "catalogue": top_items,
                                           "sets": crss_search}


def make_index(table, search: str, **extras):
  """The index of ``search`` over the catalogue of ``table`` (a pytree for ``jit``);
  ``extras`` go to the index's ``from_table`` (the ``sets`` index takes
  ``item_category``, the items' categories, for REG4Rec's pruning)."""
  if search not in INDEXES:
    raise ValueError(f"unknown search {search!r}; available: {sorted(INDEXES)}")
  return INDEXES[search].from_table(table, **extras)


# Searches that also report per-user counts of what they did (``return_stats``).
SEARCH_STATS: dict[str, tuple[str, ...]] = {"sets": ("corp_pruned",)}


def recommend(model, batch, index, *, beam: int, return_stats: bool = False):
  """Top-``beam`` item ids int32[B, beam] and scores float32[B, beam], best first, by
  the search that ``index`` belongs to (``make_index``); with ``return_stats`` also a
  dict of float[B] per-user counts (``SEARCH_STATS``; empty for the other searches)."""
  search = SEARCHES[index.kind]
  if not return_stats:
    return search(model, batch, index, beam=beam)
  if index.kind in SEARCH_STATS:
    return search(model, batch, index, beam=beam, return_stats=True)
  return search(model, batch, index, beam=beam) + ({},)
