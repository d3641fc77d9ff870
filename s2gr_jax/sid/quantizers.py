"""The tokenizers by name: ``config.tokenizer.kind`` → a ``Quantizer`` (``interface.py``).

| kind       | what                                                        | module        |
|------------|-------------------------------------------------------------|---------------|
| `rqkmeans` | residual k-means                                            | `rqkmeans.py` |
| `rqvae`    | TIGER's RQ-VAE                                              | `rqvae.py`    |
| `coba`     | S²GR's CoBa: the RQ-VAE with the ``tokenizer.coba`` switches | `rqvae.py`    |
| `mpq`      | REG4Rec's parallel, unordered codebooks (``tokenizer.mpq``)  | `mpq.py`      |

Adding a tokenizer is one module with a ``fit`` and one entry in ``BUILDERS``.
"""

from __future__ import annotations

from typing import Callable

from s2gr_jax.sid import mpq
from s2gr_jax.sid import rqkmeans
from s2gr_jax.sid import rqvae
from s2gr_jax.sid.interface import Quantizer
from s2gr_jax.sid.interface import QuantizedItems

__all__ = ["BUILDERS", "KINDS", "Quantizer", "QuantizedItems", "make_quantizer",
           "needs_graph"]


def _rqkmeans(tcfg, mesh, callback) -> Quantizer:
  del mesh, callback  # one k-means per level, no training loop
  return rqkmeans.ResidualKMeans(levels=tcfg.levels, codebook_size=tcfg.codebook_size,
                                 iters=tcfg.kmeans_iters, seed=tcfg.seed,
                                 sinkhorn_last_level=tcfg.sinkhorn_last_level)


def _rqvae(tcfg, mesh, callback, coba: bool = False) -> Quantizer:
  settings = dict(tcfg.rqvae.to_dict(), hidden=tuple(tcfg.rqvae.hidden))
  if coba:
    settings.update({k: v for k, v in tcfg.coba.to_dict().items() if k != "window"})
  return rqvae.RQVAE(levels=tcfg.levels, codebook_size=tcfg.codebook_size,
                     kmeans_iters=tcfg.kmeans_iters, seed=tcfg.seed,
                     sinkhorn_last_level=tcfg.sinkhorn_last_level, mesh=mesh,
                     callback=callback, **settings)


def _mpq(tcfg, mesh, callback) -> Quantizer:
  settings = dict(tcfg.mpq.to_dict(), hidden=tuple(tcfg.mpq.hidden),
                  codebook_sizes=tuple(tcfg.mpq.codebook_sizes))
  return mpq.MPQ(codebook_size=tcfg.codebook_size, kmeans_iters=tcfg.kmeans_iters,
                 seed=tcfg.seed, mesh=mesh, callback=callback, **settings)


# kind → builder(tokenizer config, mesh, callback(step, scalars)) -> Quantizer
BUILDERS: dict[str, Callable[..., Quantizer]] = {
    "rqkmeans": _rqkmeans,
    "rqvae": _rqvae,
    "coba": lambda tcfg, mesh, callback: _rqvae(tcfg, mesh, callback, coba=True),
    "mpq": _mpq,
}
KINDS = tuple(BUILDERS)


def needs_graph(kind: str) -> bool:
  """Whether ``fit`` takes the co-occurrence graph of the training histories."""
  return kind == "coba"


def make_quantizer(tcfg, *, mesh=None, callback=None) -> Quantizer:
  """The quantizer ``config.tokenizer.kind`` with its settings."""
  if tcfg.kind not in BUILDERS:
    raise ValueError(f"unknown tokenizer.kind {tcfg.kind!r}; available: {list(KINDS)}")
  return BUILDERS[tcfg.kind](tcfg, mesh, callback)
