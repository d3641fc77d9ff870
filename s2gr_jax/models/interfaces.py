"""What the training loop, the searches and the later RL stage ask of a model.

Two kinds of model, told apart by their registry entry (``models/__init__.py``):

* a **Generator** writes an item as a path of tokens, one decoding step at a time, and
  a catalogue constraint (``decoding/``) decides which tokens may come next: TIGER and
  S²GR over ordered SIDs (a prefix trie); REG4Rec over unordered codebooks (set
  constraints) and the language model of SIDReasoner (free text, then a constrained
  SID) come next behind the same calls;
* an **ItemScorer** scores every catalogue item at once (SASRec), and its ranking is the
  top K of those scores.

Every model is an ``nnx.Module`` built as ``Module(cfg, rngs=rngs, **Module.inputs(cfg,
table))`` from its frozen config dataclass, and trains through ``loss``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from flax import nnx
import jax


@runtime_checkable
class Model(Protocol):
  """Anything the supervised train step can train."""

  def loss(self, batch: dict, rngs: nnx.Rngs | None = None
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(scalar loss, metrics) on a batch; dropout only when ``rngs`` is given."""
    ...


@runtime_checkable
class Generator(Model, Protocol):
  """A token-by-token generator over the SID vocabulary.

  Decoding state: ``start_decoding`` returns a dict whose ``"per_beam"`` entry holds
  every array with leading ``[B, K]`` axes (e.g. the self-attention KV cache), which the
  search reorders within each user as beams are kept or dropped; the rest is per user.
  """

  def start_decoding(self, batch: dict, beam: int) -> dict[str, Any]:
    """The state for ``beam`` beams per user, before the first token."""
    ...

  def decode_level(self, state: dict[str, Any], prev_codes: jax.Array | None,
                   level: int) -> tuple[jax.Array, dict[str, Any]]:
    """Log-probabilities float32[B, K, V_level] of step ``level``'s tokens given each
    beam's previous token int32[B, K] (None at the first step), and the new state."""
    ...

  def teacher_forced_logits(self, batch: dict) -> list[jax.Array]:
    """Per step, logits [B, V_level] of the target's token given its earlier tokens
    (brute-force scoring of whole paths, tests)."""
    ...


@runtime_checkable
class ItemScorer(Model, Protocol):
  """A model that scores catalogue items directly (no Semantic IDs)."""

  def item_scores(self, batch: dict, rngs: nnx.Rngs | None = None) -> jax.Array:
    """float32[B, num_items]: column i scores item i + 1."""
    ...

  def rank(self, batch: dict, k: int) -> tuple[jax.Array, jax.Array]:
    """Top-``k`` item ids int32[B, k] and their scores, best first."""
    ...
