"""Semantic-ID tokens in the language model's vocabulary.

Each level of a ``SidTable`` gets its own tokens, written as upstream SIDReasoner /
MiniOneRec write them: ``<a_i>`` for level 0, ``<b_j>`` for level 1, ``<c_k>`` for
level 2, then ``<d_m>`` for the de-duplication level (and so on). ``SidVocab.add_to``
adds every token of every level to the tokenizer (ids after the base vocabulary) and
grows the model's embedding with rows initialised at the mean of the existing rows (the
output head is the same matrix, so it follows). ``codes ↔ token ids ↔ text`` both ways.
"""

from __future__ import annotations

import dataclasses
import re
import string

from flax import nnx
import jax.numpy as jnp
import numpy as np

from s2gr_jax.lm import gemma
from s2gr_jax.lm import tokenizer as tok_lib

_TOKEN = re.compile(r"<([a-z])_(\d+)>")


def level_letter(level: int) -> str:
  if level >= 26:
    raise ValueError("at most 26 SID levels have token names")
  return string.ascii_lowercase[level]


@dataclasses.dataclass
class SidVocab:
  """The SID tokens of a table's levels and their ids in an LM vocabulary.

  Attributes:
    sizes: codes per level.
    level_ids: int32[L, max size]: the LM token id of (level, code) (0 past a level's
      size).
  """

  sizes: tuple[int, ...]
  level_ids: np.ndarray

  @staticmethod
  def token(level: int, code: int) -> str:
    return f"<{level_letter(level)}_{int(code)}>"

  @classmethod
  def add_to(cls, tokenizer: tok_lib.Tokenizer, sizes, model: gemma.Gemma3 | None = None):
    """Adds the tokens of levels of ``sizes`` codes to ``tokenizer`` (and grows
    ``model``'s embedding to the new vocabulary size)."""
    sizes = tuple(int(s) for s in sizes)
    level_ids = np.zeros((len(sizes), max(sizes)), np.int32)
    for level, size in enumerate(sizes):
      level_ids[level, :size] = tokenizer.add_tokens(cls.token(level, c) for c in range(size))
    if model is not None:
      grow_embedding(model, tokenizer.vocab_size)
    return cls(sizes=sizes, level_ids=level_ids)

  @classmethod
  def for_table(cls, table, tokenizer, model=None) -> "SidVocab":
    return cls.add_to(tokenizer, table.codebook_sizes, model)

  def ids(self, codes: np.ndarray) -> np.ndarray:
    """LM token ids int32[..., L] of codes int[..., L]."""
    codes = np.asarray(codes)
    return self.level_ids[np.arange(codes.shape[-1]), codes]

  def codes(self, ids) -> np.ndarray:
    """Codes int32[..., L] of SID token ids int[..., L] (a non-SID id is an error)."""
    ids = np.asarray(ids)
    out = np.full(ids.shape, -1, np.int32)
    for level, size in enumerate(self.sizes):
      row = self.level_ids[level, :size]
      lo = int(row[0])
      at = ids[..., level] - lo
      ok = (at >= 0) & (at < size)
      out[..., level] = np.where(ok, at, -1)
    if (out < 0).any():
      raise ValueError(f"token ids {ids[out < 0][:5].tolist()} are not SID tokens of their "
                       "level")
    return out

  def text(self, codes) -> str:
    """``<a_i><b_j><c_k>`` of one item's codes."""
    return "".join(self.token(level, c) for level, c in enumerate(codes))

  def parse(self, text: str) -> list[int] | None:
    """The codes of the first full SID in ``text`` (levels in order), or None."""
    found = _TOKEN.findall(text)
    letters = [level_letter(i) for i in range(len(self.sizes))]
    for start in range(len(found) - len(letters) + 1):
      window = found[start:start + len(letters)]
      if [w[0] for w in window] == letters:
        codes = [int(w[1]) for w in window]
        if all(c < s for c, s in zip(codes, self.sizes)):
          return codes
    return None


def grow_embedding(model: gemma.Gemma3, vocab_size: int) -> None:
  """Grows the (tied) embedding to ``vocab_size`` rows, new rows at the mean row."""
  old = model.embed.embedding[...]
  extra = vocab_size - old.shape[0]
  if extra < 0:
    raise ValueError(f"the embedding has {old.shape[0]} rows, more than {vocab_size}")
  if extra == 0:
    return
  mean = jnp.mean(old.astype(jnp.float32), axis=0, keepdims=True).astype(old.dtype)
  model.embed.embedding = nnx.Param(jnp.concatenate([old, jnp.repeat(mean, extra, 0)]))
  model.cfg = dataclasses.replace(model.cfg, vocab_size=vocab_size)
