"""Tiny models, SID tables and batches for tests."""

from flax import nnx
import jax.numpy as jnp
import numpy as np

from s2gr_jax.data import batches
from s2gr_jax.models import tiger
from s2gr_jax.sid import table as table_lib


def sid_table(num_items=40, codebook=4, levels=3, seed=0) -> table_lib.SidTable:
  rng = np.random.default_rng(seed)
  return table_lib.SidTable.from_semantic_codes(
      rng.integers(0, codebook, (num_items, levels)), (codebook,) * levels)


def tiny_tiger(table, seed=0, dropout=0.0, **kw) -> tiger.Tiger:
  cfg = dict(codebook_sizes=table.codebook_sizes, user_buckets=10, d_model=32,
             num_heads=2, head_dim=16, d_ff=64, encoder_layers=2, decoder_layers=2,
             dropout=dropout)
  cfg.update(kw)
  return tiger.Tiger(tiger.TigerConfig(**cfg), rngs=nnx.Rngs(seed))


def batch(table, batch_size=3, history=5, seed=0) -> dict:
  rng = np.random.default_rng(seed)
  items = rng.integers(1, table.num_items + 1, (batch_size, history))
  lengths = rng.integers(1, history + 1, batch_size)
  items[np.arange(history)[None] >= lengths[:, None]] = 0
  target = rng.integers(1, table.num_items + 1, batch_size)
  built = batches.from_histories(items, table.lookup(),
                                 np.arange(batch_size, dtype=np.int32) % 10,
                                 target_items=target)
  return {k: jnp.asarray(v) for k, v in built.items()}
