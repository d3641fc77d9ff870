"""Brute-force scoring of every catalogue item: the reference the searches are tested
against (and a ranking for small catalogues)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from s2gr_jax.data import batches


def score_all_items(model, batch, codes: np.ndarray) -> jax.Array:
  """Log-probability of every catalogue item's SID under a generator, float32[B, items].

  ``codes`` is ``SidTable.codes`` (row i = item i + 1). For tests and small catalogues.
  """
  b = batches.batch_size(batch)
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
