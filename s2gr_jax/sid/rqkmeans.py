"""RQ-KMeans: residual k-means over item vectors, one codebook per level."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from s2gr_jax.sid import clustering
from s2gr_jax.sid.interface import QuantizedItems


@dataclasses.dataclass
class ResidualKMeans:
  """RQ-KMeans: k-means on the residuals of the previous levels."""

  levels: int = 3
  codebook_size: int = 256
  iters: int = 50
  seed: int = 0
  sinkhorn_last_level: bool = False

  def fit(self, x: np.ndarray, graph: Any = None) -> QuantizedItems:
    del graph  # RQ-KMeans uses content only.
    n = x.shape[0]
    if n < self.codebook_size:
      raise ValueError(f"{n} items are fewer than tokenizer.codebook_size="
                       f"{self.codebook_size} codes per level")
    # Centre and scale so that the k-means++ seeding sees comparable spreads.
    residual = jnp.asarray((x - x.mean(0)) / (x.std() + 1e-8), jnp.float32)
    key = jax.random.key(self.seed)
    codes, codebooks, inertia = [], [], []
    for level in range(self.levels):
      centers, assign, err = clustering.kmeans(residual, jax.random.fold_in(key, level),
                                    k=self.codebook_size, iters=self.iters)
      if self.sinkhorn_last_level and level == self.levels - 1:
        assign = jnp.asarray(clustering.sinkhorn_codes(residual, centers))
      residual = residual - centers[assign]
      codes.append(np.asarray(assign))
      codebooks.append(np.asarray(centers))
      inertia.append(float(err))
    # Per element of the (scaled) input, like the RQ-VAE's reconstruction error.
    final = float(np.mean(np.asarray(residual) ** 2))
    return QuantizedItems(codes=np.stack(codes, 1).astype(np.int32),
                          codebook_sizes=(self.codebook_size,) * self.levels,
                          codebooks=codebooks,
                          history={"residual_mse": inertia, "final_recon_mse": final})
