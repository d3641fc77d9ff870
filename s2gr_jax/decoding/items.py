"""Ranking for models that score catalogue items directly (``models.ItemScorer``)."""

from __future__ import annotations

from typing import ClassVar

from flax import struct


@struct.dataclass
class Catalogue:
  """The "constraint" of an item scorer: any of ``num_items`` items (static)."""

  kind: ClassVar[str] = "catalogue"

  num_items: int = struct.field(pytree_node=False)

  @classmethod
  def from_table(cls, table) -> "Catalogue":
    return cls(num_items=int(table.num_items))


def top_items(model, batch, catalogue: Catalogue, *, beam: int):
  """The model's own ranking: the top ``beam`` of every item's score, [B, beam] each."""
  del catalogue  # the model's scores already cover every item
  return model.rank(batch, beam)
