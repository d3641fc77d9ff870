"""Gemma's tokenizer from the GGUF file's own vocabulary, through SentencePiece.

The GGUF holds the SentencePiece vocabulary (``tokenizer.ggml.model = "llama"``): the
pieces, their scores and types (normal, control, user-defined, byte). ``from_gguf``
rebuilds a SentencePiece BPE model from them (Gemma's settings: no dummy prefix, no
whitespace folding, byte fallback) and encodes with the ``sentencepiece`` library, so
the merges are SentencePiece's own, not a re-implementation.

Special tokens: ``<bos>`` 2, ``<eos>`` 1, ``<pad>`` 0, ``<start_of_turn>`` 105,
``<end_of_turn>`` 106. With ``parse_special`` (the default) those, and any added token
(the Semantic-ID tokens, ``add_tokens``), are recognised in the text and mapped to
their ids; everything between them goes through SentencePiece. Added tokens take ids
after the base vocabulary (``vocab_size`` grows; the model's embedding is grown to match,
``sid_vocab.py``).
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

import numpy as np

from s2gr_jax import errors

PAD, EOS, BOS, UNK = 0, 1, 2, 3
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
# SentencePiece piece types (the same numbers as llama.cpp's token types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def byte_vocab(words: Sequence[str] = ("he", "ll", "llo", "hello")):
  """(pieces, scores, types) of a small vocabulary for tests and ``:tiny`` runs on the
  random tiny LM: Gemma's first special tokens (the same ids 0-4), the two chat-turn
  tokens, byte fallback for every character, and a few pieces (``words``) BPE merges."""
  pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", START_OF_TURN, END_OF_TURN]
  types = [CONTROL] * len(pieces)
  pieces += [f"<0x{i:02X}>" for i in range(256)]
  types += [BYTE] * 256
  pieces += ["\u2581", "h", "e", "l", "o", "w", "r", "d", "t"] + list(words)
  types += [NORMAL] * (9 + len(words))
  scores = [0.0] * 263 + [-float(i) for i in range(len(pieces) - 263)]
  return pieces, scores, types


def read_vocab(path: str | os.PathLike[str]):
  """(pieces, scores, types) of the GGUF file's vocabulary."""
  import gguf  # pylint: disable=g-import-not-at-top
  reader = gguf.GGUFReader(os.fspath(path))
  fields = reader.fields

  def arr(name):
    if name not in fields:
      raise errors.DataError(f"{path}: no {name} (a GGUF file without a tokenizer)")
    f = fields[name]
    return [f.parts[i] for i in f.data]
  model = bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() if (
      "tokenizer.ggml.model" in fields) else None
  if model != "llama":
    raise errors.DataError(f"{path}: tokenizer.ggml.model is {model!r}; Gemma's "
                           "SentencePiece vocabulary is 'llama'")
  pieces = [bytes(p).decode("utf-8") for p in arr("tokenizer.ggml.tokens")]
  scores = np.concatenate(arr("tokenizer.ggml.scores")).astype(np.float32)
  types = np.concatenate(arr("tokenizer.ggml.token_type")).astype(np.int32)
  return pieces, scores, types


class Tokenizer:
  """Text ↔ Gemma token ids (module docstring)."""

  def __init__(self, pieces: Sequence[str], scores: Sequence[float], types: Sequence[int]):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=g-import-not-at-top
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(pieces)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id = UNK, BOS
    m.trainer_spec.eos_id, m.trainer_spec.pad_id = EOS, PAD
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for i, (piece, score, kind) in enumerate(zip(pieces, scores, types)):
      p = m.pieces.add()
      # The GGUF writes user-defined whitespace runs with real spaces; SentencePiece
      # matches user-defined pieces on the escaped text (spaces as ▁).
      if kind == USER_DEFINED:
        piece = piece.replace(" ", "\u2581")
      p.piece, p.score = piece, float(score)
      p.type = UNKNOWN if i == UNK else int(kind)  # (the GGUF marks <unk> as control)
    self._sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    self.pieces = list(pieces)
    self.base_size = len(pieces)
    self._special = {p: i for i, p in enumerate(pieces) if types[i] == CONTROL
                     and p.startswith("<") and not p.startswith("<unused")}
    self._added: dict[str, int] = {}
    self._added_names: dict[int, str] = {}  # (the reverse of _added)
    self._pattern = None
    self._rebuild_pattern()

  @classmethod
  def from_gguf(cls, path: str | os.PathLike[str]) -> "Tokenizer":
    return cls(*read_vocab(path))

  @property
  def vocab_size(self) -> int:
    return self.base_size + len(self._added)

  def _rebuild_pattern(self):
    names = sorted(list(self._special) + list(self._added), key=len, reverse=True)
    self._pattern = re.compile("(" + "|".join(re.escape(n) for n in names) + ")")

  def add_tokens(self, tokens: Iterable[str]) -> list[int]:
    """Adds whole-word tokens (e.g. ``<a_12>``) after the vocabulary; their ids."""
    ids = []
    for t in tokens:
      if t in self._special or t in self._added:
        raise ValueError(f"token {t!r} is already in the vocabulary")
      self._added[t] = self.vocab_size
      self._added_names[self._added[t]] = t
      ids.append(self._added[t])
    self._rebuild_pattern()
    return ids

  def token_id(self, token: str) -> int:
    if token in self._added:
      return self._added[token]
    if token in self._special:
      return self._special[token]
    i = self._sp.piece_to_id(token)
    if i == UNK and token != "<unk>":
      raise KeyError(f"{token!r} is not a token of the vocabulary")
    return i

  def encode(self, text: str, *, add_bos: bool = False,
             parse_special: bool = True) -> list[int]:
    ids = [BOS] if add_bos else []
    parts = self._pattern.split(text) if parse_special else [text]
    for part in parts:
      if not part:
        continue
      if parse_special and part in self._added:
        ids.append(self._added[part])
      elif parse_special and part in self._special:
        ids.append(self._special[part])
      else:
        ids.extend(self._sp.encode(part))
    return ids

  def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
    out, run = [], []
    reverse = self._added_names
    for i in map(int, ids):
      if i in reverse or (i < self.base_size and self._sp.is_control(i)):
        if run:
          out.append(self._sp.decode(run))
          run = []
        if not skip_special:
          out.append(reverse.get(i) or self.pieces[i])
      else:
        run.append(i)
    if run:
      out.append(self._sp.decode(run))
    return "".join(out)

  def chat_prompt(self, user: str, system: str | None = None) -> str:
    """Gemma's chat template for one user turn, ready for the model's answer (a system
    message is folded into the user turn, as Gemma's template does)."""
    text = f"{system}\n\n{user}" if system else user
    return f"{START_OF_TURN}user\n{text}{END_OF_TURN}\n{START_OF_TURN}model\n"
