"""Generators over Semantic IDs, built by name from ``config.model``."""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import nnx

from s2gr_jax.models import s2gr
from s2gr_jax.models import sasrec
from s2gr_jax.models import tiger

NAMES = ("tiger", "s2gr", "sasrec")
# Models that score catalogue items directly (no Semantic IDs, no beam search).
ITEM_SCORERS = ("sasrec",)


def model_factory(model_cfg, table, *, user_buckets: int,
                  max_history: int) -> Callable[[nnx.Rngs], nnx.Module]:
  """``make(rngs)`` for the generator ``model_cfg.name`` over a ``SidTable``.

  ``model_cfg`` holds every model's fields; each model takes the ones it declares.
  Anything computed from data (S²GR's codebook clusters) is computed here, once and
  eagerly, so that ``make`` stays a pure function for shape-first initialisation.
  """
  fields = model_cfg.to_dict()
  name = fields.pop("name")
  if name == "sasrec":
    known = {f.name for f in dataclasses.fields(sasrec.SasrecConfig)}
    known -= {"num_items", "max_history"}
    cfg = sasrec.SasrecConfig(num_items=table.num_items, max_history=max_history,
                              **{k: v for k, v in fields.items() if k in known})
    return lambda rngs: sasrec.Sasrec(cfg, rngs=rngs)
  if name == "tiger":
    cls, config_cls = tiger.Tiger, tiger.TigerConfig
  elif name == "s2gr":
    cls, config_cls = s2gr.S2gr, s2gr.S2grConfig
  else:
    raise ValueError(f"unknown model.name {name!r}; available: {list(NAMES)}")
  known = {f.name for f in dataclasses.fields(config_cls)}
  cfg = config_cls(codebook_sizes=tuple(table.codebook_sizes), user_buckets=user_buckets,
                   **{k: v for k, v in fields.items() if k in known})
  extra = {}
  if name == "s2gr" and cfg.align_weight > 0 and cfg.thoughts_per_level > 0:
    if table.codebooks is None:
      raise ValueError("model.align_weight > 0 needs a tokenizer with codebooks")
    centres, assign = s2gr.cluster_codebooks(table.codebooks, cfg.num_clusters)
    extra = dict(centres=centres, code_cluster=assign)
  return lambda rngs: cls(cfg, rngs=rngs, **extra)
