"""The quantizer interface every tokenizer implements: ``fit(x, graph=None) ->
QuantizedItems``.

RQ-KMeans (``rqkmeans.py``), the RQ-VAE family (plain and CoBa, ``rqvae.py``) and, next,
REG4Rec's parallel codebooks (``ordered=False``) fit this one call; ``quantizers.py``
builds them by name from ``config.tokenizer``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass
class QuantizedItems:
  """A quantizer's output.

  Attributes:
    codes: int32[num_items, levels], row ``i`` = item ``i + 1``.
    codebook_sizes: codes per level.
    codebooks: per level ``float32[size, d]`` code vectors (None if not meaningful).
    ordered: False when the levels are parallel, unordered codebooks (REG4Rec).
    history: per-level training curves or diagnostics to log.
  """

  codes: np.ndarray
  codebook_sizes: tuple[int, ...]
  codebooks: list[np.ndarray] | None = None
  ordered: bool = True
  history: dict[str, Any] = dataclasses.field(default_factory=dict)


class Quantizer(Protocol):
  """Item vectors float32[num_items, d] (and, for CoBa, the co-occurrence graph of the
  training histories) → per-level discrete codes."""

  def fit(self, x: np.ndarray, graph: Any = None) -> QuantizedItems:
    ...
