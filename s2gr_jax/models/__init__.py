"""Generators over Semantic IDs, built by name from ``config.model``."""

from __future__ import annotations

from flax import nnx

from s2gr_jax.models import tiger


def build(model_cfg, codebook_sizes: tuple[int, ...], user_buckets: int,
          rngs: nnx.Rngs) -> nnx.Module:
  """The generator ``model_cfg.name`` for a SID table with ``codebook_sizes``."""
  if model_cfg.name == "tiger":
    fields = {k: v for k, v in model_cfg.to_dict().items() if k != "name"}
    cfg = tiger.TigerConfig(codebook_sizes=tuple(codebook_sizes),
                            user_buckets=user_buckets, **fields)
    return tiger.Tiger(cfg, rngs=rngs)
  raise ValueError(f"unknown model.name {model_cfg.name!r}; available: ['tiger']")
