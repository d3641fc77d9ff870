"""Semantic-ID tokens in the language model's vocabulary.

Each level of a ``SidTable`` gets its own tokens, written as upstream SIDReasoner /
MiniOneRec write them: ``<a_i>`` for level 0, ``<b_j>`` for level 1, ``<c_k>`` for
level 2, then ``<d_m>`` for the de-duplication level (and so on). ``SidVocab.add_to``
adds every token of every level to the tokenizer (ids after the base vocabulary) and
grows the model's embedding with rows initialised at the mean of the existing rows (the
output head is the same matrix, so it follows); ``rows_from_text`` gives each SID token
a row of its own instead, the mean of the title embeddings of the items with that code
(``reasoner.sid_init='text'``). ``codes ↔ token ids ↔ text`` both ways.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Sequence

from flax import nnx
import jax.numpy as jnp
import numpy as np
import scipy.sparse

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

  def all_ids(self) -> np.ndarray:
    """The LM ids of every SID token, level by level (the row order of
    ``rows_from_text``)."""
    return np.concatenate([self.level_ids[l, :s] for l, s in enumerate(self.sizes)])

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


def rows_from_text(table: np.ndarray, codes: np.ndarray, sizes: Sequence[int],
                   texts: Sequence[Sequence[int]]) -> np.ndarray:
  """Embedding rows for the SID tokens, from the text of the items that carry them.

  An item's vector is the mean of the base rows of its text's token ids (its title);
  a (level, code) row is the mean of the vectors of the items with that code, rescaled
  to the mean norm of the base rows, so that it is as large as an ordinary token. A
  code no item carries (or whose items have no text) gets the mean base row, as
  ``grow_embedding`` gives every new token.

  Args:
    table: float[V, d], the base vocabulary's embedding.
    codes: int[N, L], the codes of N items.
    sizes: codes per level (L entries).
    texts: N sequences of base-vocabulary token ids, one per item.

  Returns:
    float32[sum(sizes), d], level by level (row ``sum(sizes[:l]) + c`` for (l, c)).
  """
  table = np.asarray(table, np.float32)
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[0] != len(texts) or codes.shape[1] != len(sizes):
    raise ValueError(f"codes {codes.shape} do not match {len(texts)} texts of "
                     f"{len(sizes)} levels")
  lengths = np.asarray([len(t) for t in texts], np.int64)
  flat = np.fromiter((i for t in texts for i in t), np.int64, int(lengths.sum()))
  if flat.size and (flat.min() < 0 or flat.max() >= table.shape[0]):
    raise ValueError(f"text token ids outside the base vocabulary of {table.shape[0]}")
  # items x vocabulary counts, each item's row summing to 1 (0 for an empty text)
  item_of = np.repeat(np.arange(len(texts)), lengths)
  weight = 1.0 / np.maximum(lengths, 1)[item_of]
  mix = scipy.sparse.csr_matrix((weight, (item_of, flat)),
                                shape=(len(texts), table.shape[0]), dtype=np.float32)
  items = np.asarray(mix @ table, np.float32)  # [N, d]
  has_text = lengths > 0
  mean_row = table.mean(axis=0)
  scale = float(np.linalg.norm(table, axis=1).mean())
  out = []
  for level, size in enumerate(sizes):
    level_codes = codes[has_text, level]
    sums = np.zeros((size, table.shape[1]), np.float32)
    np.add.at(sums, level_codes, items[has_text])
    counts = np.bincount(level_codes, minlength=size)[:size]
    rows = sums / np.maximum(counts, 1)[:, None]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows * (scale / np.maximum(norms, 1e-12))
    rows[counts == 0] = mean_row
    out.append(rows)
  return np.concatenate(out).astype(np.float32)


def set_rows(model: gemma.Gemma3, ids: np.ndarray, rows: np.ndarray) -> None:
  """Writes ``rows`` into the (tied) embedding at token ids ``ids``."""
  emb = model.embed.embedding[...]
  model.embed.embedding = nnx.Param(
      emb.at[jnp.asarray(ids)].set(jnp.asarray(rows, emb.dtype)))
