"""The models, by name: ``config.model.name`` → its config dataclass, its module and the
search that ranks with it.

| name     | config section        | module                  | search      |
|----------|-----------------------|-------------------------|-------------|
| `tiger`  | `config.model.tiger`  | `tiger.Tiger`           | `prefix`    |
| `s2gr`   | `config.model.s2gr`   | `s2gr.S2gr`             | `prefix`    |
| `sasrec` | `config.model.sasrec` | `sasrec.Sasrec`         | `catalogue` |
| `reg4rec`| `config.model.reg4rec`| `reg4rec.Reg4Rec`       | `sets`      |

Adding a model is one module (an ``nnx.Module`` with the calls of ``interfaces.py``),
one frozen config dataclass, and one ``register`` line below. The config gets a section
``config.model.<name>`` with the dataclass's fields and defaults (``config_lib``), checked
against the dataclass, so a key the model does not take fails and names the model. The
fields a dataclass lists in ``FROM_RUN`` are filled from the run (``run_fields``), never
from the config. ``search`` names the constrained search in ``decoding`` that ranks
catalogue items with the model: ``prefix`` (beam search over the SID trie) or
``catalogue`` (the top K of every item's score) or ``sets`` (REG4Rec's confidence-ordered
beams over unordered codebooks).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx
import jax

from s2gr_jax.models import layers
from s2gr_jax.models import reg4rec
from s2gr_jax.models import s2gr
from s2gr_jax.models import sasrec
from s2gr_jax.models import tiger
from s2gr_jax.models.interfaces import Generator
from s2gr_jax.models.interfaces import ItemScorer
from s2gr_jax.models.interfaces import Model

__all__ = ["Entry", "Generator", "ItemScorer", "Model", "REGISTRY", "build",
           "config_from_section", "get", "register", "resolve_kernels", "run_fields",
           "section_defaults"]

SEARCHES = ("prefix", "catalogue", "sets")


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered model.

  Attributes:
    config: its frozen config dataclass (``FROM_RUN``: the fields the run fills in).
    module: the ``nnx.Module`` class; ``module(cfg, rngs=..., **module.inputs(cfg,
      table))`` if it defines ``inputs``.
    search: the decoding search that ranks with it (``SEARCHES``).
  """

  config: type
  module: type
  search: str

  @property
  def uses_sids(self) -> bool:
    """Whether the model reads Semantic IDs (else it addresses item ids directly and
    the run needs no tokenizer)."""
    return self.search != "catalogue"


REGISTRY: dict[str, Entry] = {}


def register(name: str, config: type, module: type, search: str) -> None:
  if search not in SEARCHES:
    raise ValueError(f"model {name!r}: search {search!r} is not one of {SEARCHES}")
  if not dataclasses.is_dataclass(config):
    raise TypeError(f"model {name!r}: its config must be a dataclass, got {config}")
  REGISTRY[name] = Entry(config, module, search)


register("tiger", tiger.TigerConfig, tiger.Tiger, search="prefix")
register("s2gr", s2gr.S2grConfig, s2gr.S2gr, search="prefix")
register("sasrec", sasrec.SasrecConfig, sasrec.Sasrec, search="catalogue")
register("reg4rec", reg4rec.Reg4RecConfig, reg4rec.Reg4Rec, search="sets")


def get(name: str) -> Entry:
  if name not in REGISTRY:
    raise ValueError(f"unknown model.name {name!r}; available: {sorted(REGISTRY)}")
  return REGISTRY[name]


def section_defaults(name: str) -> dict[str, Any]:
  """The config section of model ``name``: its dataclass fields minus ``FROM_RUN``."""
  cls = get(name).config
  skip = set(getattr(cls, "FROM_RUN", ()))
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in skip:
      continue
    if f.default is dataclasses.MISSING:
      raise TypeError(f"{cls.__name__}.{f.name} has no default: list it in FROM_RUN")
    out[f.name] = f.default
  return out


def check_section(name: str, section: dict[str, Any]) -> None:
  """Raises ValueError naming the model if ``section`` has keys its dataclass lacks."""
  known = section_defaults(name)
  unknown = sorted(set(section) - set(known))
  if unknown:
    run_only = sorted(set(unknown) & set(getattr(get(name).config, "FROM_RUN", ())))
    hint = (f" ({', '.join(run_only)} come from the data and model.kernels)"
            if run_only else "")
    raise ValueError(f"config.model.{name} has keys the {name} model does not take: "
                     f"{', '.join(unknown)}{hint}; it takes {', '.join(sorted(known))}")
  missing = sorted(set(known) - set(section))
  if missing:
    raise ValueError(f"config.model.{name} lacks {', '.join(missing)}")


def resolve_kernels(kernels: str) -> str:
  """``model.kernels``: ``auto`` is ``cpu`` on a CPU backend and ``plain`` elsewhere."""
  if kernels == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "plain"
  return layers.check_kernels(kernels)


def run_fields(table, *, user_buckets: int, max_history: int,
               kernels: str) -> dict[str, Any]:
  """Every value a ``FROM_RUN`` field may ask for, from the SID table and the run."""
  return {"codebook_sizes": tuple(int(s) for s in table.codebook_sizes),
          "semantic_levels": int(table.semantic_levels),
          "num_items": int(table.num_items), "user_buckets": int(user_buckets),
          "max_history": int(max_history), "kernels": resolve_kernels(kernels)}


def config_from_section(name: str, section: dict[str, Any], facts: dict[str, Any]):
  """The model's config dataclass from its config section and the run's facts."""
  check_section(name, section)
  cls = get(name).config
  fields = {f.name: facts[f.name] for f in dataclasses.fields(cls)
            if f.name in getattr(cls, "FROM_RUN", ())}
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
  return cls(**values, **fields)


def build(model_config, table, *, user_buckets: int,
          max_history: int) -> Callable[[nnx.Rngs], nnx.Module]:
  """``make(rngs)`` for the model ``model_config.name`` over a ``SidTable``.

  ``model_config`` is ``config.model`` (``name``, ``kernels`` and one section per
  model). Anything computed from data (S²GR's codebook clusters) is computed here, once
  and eagerly, so that ``make`` stays a pure function for shape-first initialisation.
  """
  name = model_config.name
  entry = get(name)
  facts = run_fields(table, user_buckets=user_buckets, max_history=max_history,
                     kernels=model_config.kernels)
  section = model_config[name]
  section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  cfg = config_from_section(name, section, facts)
  inputs = entry.module.inputs(cfg, table) if hasattr(entry.module, "inputs") else {}
  return lambda rngs: entry.module(cfg, rngs=rngs, **inputs)
