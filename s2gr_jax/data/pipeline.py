"""Grain pipelines: leave-one-out split, sliding windows, length buckets, batches.

Protocol (SPEC §0): per user, the last item is the test target, the second-to-last the
validation target, and training examples are all prefixes of the rest (the target at
position ``t`` with history ``items[:t]``, ``t = 1 .. n-3``). Histories keep the
``max_history`` most recent items.

Every example follows the batch schema of ``batches.py`` (numpy arrays; a batch adds the
leading ``[B]`` axis).

``H`` is the example's length bucket: histories are padded to the smallest of
``length_buckets`` that holds them, so short histories (most of them) cost less; each
bucket is one static shape for ``jit``. Training batches come from one bucket at a time,
mixed in proportion to the buckets' sizes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import grain
import numpy as np

from s2gr_jax.data import batches

Batch = batches.Batch


@dataclasses.dataclass(frozen=True)
class LeaveOneOut:
  """The leave-one-out split of a dataset, as index arrays.

  Attributes:
    lengths: int64[num_users] sequence lengths.
  """

  lengths: np.ndarray

  @classmethod
  def from_sequences(cls, sequences: Sequence[np.ndarray]) -> "LeaveOneOut":
    lengths = np.asarray([len(s) for s in sequences], np.int64)
    if lengths.size and lengths.min() < 3:
      raise ValueError("leave-one-out needs at least 3 items per user; got "
                       f"{int(lengths.min())}")
    return cls(lengths)

  def train_index(self) -> np.ndarray:
    """int64[num_examples, 2]: (user index, target position) of every training example."""
    users = np.repeat(np.arange(len(self.lengths)), self.lengths - 3)
    starts = np.cumsum(self.lengths - 3) - (self.lengths - 3)
    positions = np.arange(len(users)) - np.repeat(starts, self.lengths - 3) + 1
    return np.stack([users, positions], axis=1)

  def eval_index(self, split: str) -> np.ndarray:
    """int64[num_users, 2]: (user index, target position) for 'val' or 'test'."""
    offset = {"val": 2, "test": 1}.get(split)
    if offset is None:
      raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    return np.stack([np.arange(len(self.lengths)), self.lengths - offset], axis=1)

  def training_histories(self, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The training part of every user (everything before the validation target)."""
    return [s[:n - 2] for s, n in zip(sequences, self.lengths)]


def bucket_of(history_lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
  """Index of the smallest bucket that holds each (capped) history length."""
  return np.searchsorted(np.asarray(buckets), history_lengths, side="left")


class MakeExample(grain.transforms.Map):
  """(user index, target position) → padded example, reading the user's record."""

  def __init__(self, source: Any, codes: np.ndarray, user_buckets: np.ndarray,
               max_history: int, pad_to: int):
    self._source = source
    self._codes = codes  # int32[num_items + 1, levels]; row 0 = padding
    self._user_buckets = user_buckets
    self._max_history = max_history
    self._pad_to = pad_to

  def map(self, element) -> Batch:
    user, pos = int(element[0]), int(element[1])
    items = np.asarray(self._source[user]["items"], np.int32)
    return batches.example(items, pos, self._codes, self._user_buckets[user],
                           self._max_history, self._pad_to)


class MakeBatch(grain.transforms.Map):
  """A batch of (user index, target position) rows → the padded batch, vectorized.

  The same arrays as ``MakeExample`` on each row followed by ``batches.stack``, built
  with a few numpy gathers from the users' sequences held in one padded matrix
  (``padded_sequences``) instead of one Python call per example: the input pipeline
  stops competing with the train step for the host's cores.
  """

  def __init__(self, sequences: np.ndarray, codes: np.ndarray, user_buckets: np.ndarray,
               max_history: int, pad_to: int, future: int = 0,
               lengths: np.ndarray | None = None):
    self._sequences = sequences  # int32[num_users, max_length], 0 after each user's end
    self._codes = codes
    self._user_buckets = user_buckets
    self._max_history = max_history
    self._pad_to = pad_to
    # ``future`` > 0 (the RL stage's MSRA): also ``future_items`` int32[B, future], the
    # items after the target that are still in the user's training part (positions
    # before ``lengths - 2``, the validation target), 0 beyond it.
    self._future = future
    self._lengths = lengths
    if future and lengths is None:
      raise ValueError("future items need the users' sequence lengths")

  def map(self, element) -> Batch:
    rows = np.asarray(element).reshape(-1, 2)
    users, pos = rows[:, 0], rows[:, 1]
    start = np.maximum(pos - self._max_history, 0)
    cols = start[:, None] + np.arange(self._pad_to)[None]
    keep = cols < pos[:, None]
    width = self._sequences.shape[1]
    history = np.where(keep, self._sequences[users[:, None], np.minimum(cols, width - 1)],
                       0).astype(np.int32)
    target = self._sequences[users, pos].astype(np.int32)
    extra = {}
    if self._future:
      at = pos[:, None] + 1 + np.arange(self._future)[None]
      train_end = self._lengths[users][:, None] - 2  # the validation target's position
      extra["future_items"] = np.where(
          at < train_end, self._sequences[users[:, None], np.minimum(at, width - 1)],
          0).astype(np.int32)
    return extra | {
        "history_items": history,
        "history_codes": self._codes[history],
        "history_mask": history > 0,
        "user_bucket": np.asarray(self._user_buckets)[users],
        "target_item": target,
        "target_codes": self._codes[target],
        "weight": np.ones(len(rows), np.float32),
    }


def padded_sequences(source: Any, num_users: int,
                     sequences: Sequence[np.ndarray] | None = None) -> np.ndarray:
  """int32[num_users, max_length]: every user's items, left-aligned, 0-padded; from
  ``sequences`` when they are already in memory, else read from ``source``."""
  if sequences is None:
    if hasattr(source, "__getitems__"):
      records = source.__getitems__(list(range(num_users)))
    else:
      records = [source[u] for u in range(num_users)]
    sequences = [r["items"] for r in records]
  items = [np.asarray(s, np.int32) for s in sequences]
  out = np.zeros((num_users, max((len(i) for i in items), default=1)), np.int32)
  for u, seq in enumerate(items):
    out[u, :len(seq)] = seq
  return out


@dataclasses.dataclass
class Pipelines:
  """Everything the trainer reads: training iterator factory and evaluation batches.

  Built once per run from the dataset, its split and the SID codes.
  """

  source: Any
  split: LeaveOneOut
  codes: np.ndarray  # int32[num_items + 1, levels]
  user_buckets: np.ndarray  # int32[num_users]
  max_history: int
  length_buckets: tuple[int, ...]
  shard_index: int = 0
  shard_count: int = 1
  vectorized: bool = True  # False: one MakeExample call per example (the reference)
  sequences: Sequence[np.ndarray] | None = None  # the users' items, when in memory

  @functools.cached_property
  def padded(self) -> np.ndarray:
    return padded_sequences(self.source, len(self.split.lengths), self.sequences)

  def _buckets_for(self, index: np.ndarray, min_size: int) -> list[tuple[int, np.ndarray]]:
    """Groups examples by length bucket; buckets smaller than ``min_size`` merge upward."""
    hist = np.minimum(index[:, 1], self.max_history)
    which = bucket_of(hist, self.length_buckets)
    groups, carry = [], np.zeros((0, 2), index.dtype)
    for b, length in enumerate(self.length_buckets):
      members = np.concatenate([carry, index[which == b]])
      if len(members) >= min_size or b == len(self.length_buckets) - 1:
        if len(members):
          groups.append((length, members))
        carry = np.zeros((0, 2), index.dtype)
      else:
        carry = members
    return groups

  def train_dataset(self, batch_size: int, seed: int,
                    num_threads: int = 2, prefetch: int = 4,
                    future: int = 0, examples: str = "all") -> grain.IterDataset:
    """An infinite, shuffled stream of training batches of this host's shard
    (``future`` > 0: with ``future_items``, ``MakeBatch``). ``examples``: ``all`` the
    training examples, ``except_last`` all but each user's last training target,
    ``last`` only those (``train.hold_out_last`` / ``rl.examples``).

    ``batch_size`` is the per-host batch. Each bucket is shuffled with its own seed
    derived from ``seed`` (reshuffled every epoch) and batched without remainder;
    the buckets are then mixed in proportion to their number of batches.

    With several hosts the buckets are formed from all hosts' examples and then split
    between them, and the mixing weights are global: every host draws its k-th batch
    from the same bucket, so the hosts' shards of one global batch have the same shape
    (with per-host buckets they drew different ones, and the hosts ran different
    programs against each other's collectives).
    """
    index = self.split.train_index()
    if examples != "all":
      last = index[:, 1] == self.split.lengths[index[:, 0]] - 3
      if examples not in ("last", "except_last"):
        raise ValueError(f"examples={examples!r}: expected 'all', 'except_last' or 'last'")
      index = index[last if examples == "last" else ~last]
    datasets, weights = [], []
    buckets = self._train_buckets(index, batch_size)
    for b, (length, members, global_count) in enumerate(buckets):
      if global_count < batch_size * self.shard_count:  # the same answer on every host
        raise ValueError(f"only {len(members)} training examples on this host, fewer "
                         f"than one batch of {batch_size}; lower train.batch_size")
      ds = grain.MapDataset.source(members).seed(seed * 1000 + b).shuffle()
      if self.vectorized or future:  # the same batches, in the same order
        ds = ds.batch(batch_size, drop_remainder=True).map(MakeBatch(
            self.padded, self.codes, self.user_buckets, self.max_history, length,
            future=future, lengths=self.split.lengths))
      else:
        ds = ds.map(MakeExample(self.source, self.codes, self.user_buckets,
                                self.max_history, length)).batch(batch_size,
                                                                 drop_remainder=True)
      ds = ds.repeat()
      datasets.append(ds)
      weights.append(global_count // (batch_size * self.shard_count))
    mixed = grain.MapDataset.mix(datasets, weights) if len(datasets) > 1 else datasets[0]
    return mixed.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=prefetch))

  def _train_buckets(self, index: np.ndarray,
                     batch_size: int) -> list[tuple[int, np.ndarray, int]]:
    """(length, this host's members, all hosts' member count) of each training bucket:
    the same buckets on every host (see ``train_dataset``)."""
    groups = self._buckets_for(index, batch_size * self.shard_count)
    return [(length, members[self.shard_index::self.shard_count], len(members))
            for length, members in groups]

  def steps_per_epoch(self, batch_size: int) -> int:
    return sum(n // (batch_size * self.shard_count)
               for _, _, n in self._train_buckets(self.split.train_index(), batch_size))

  def num_train_examples(self) -> int:
    return int((self.split.lengths - 3).sum())

  def eval_batches(self, split: str, batch_size: int,
                   users: np.ndarray | None = None) -> list[Batch]:
    """This host's evaluation batches for 'val' or 'test', bucketed by history length.

    ``users`` restricts evaluation to a subset (indices into the dataset). The last
    batch of each bucket is padded with weight-0 rows; every host gets the same number
    of batches.
    """
    index = self.split.eval_index(split)
    if users is not None:
      index = index[np.sort(users)]
    out = []
    for length, members in self._buckets_for(index, 1):
      local = members[self.shard_index::self.shard_count]
      per_host = -(-len(members) // self.shard_count)
      num_batches = -(-per_host // batch_size)
      if self.vectorized:
        make = MakeBatch(self.padded, self.codes, self.user_buckets, self.max_history,
                         length)
        for i in range(num_batches):
          chunk = local[i * batch_size:(i + 1) * batch_size]
          # The last batch is padded with weight-0 copies of the bucket's first example.
          rows = np.concatenate([chunk, np.repeat(members[:1], batch_size - len(chunk),
                                                  axis=0)])
          batch = make.map(rows)
          batch["weight"][len(chunk):] = 0.0
          out.append(batch)
        continue
      make = MakeExample(self.source, self.codes, self.user_buckets, self.max_history,
                         length)
      examples = [make.map(e) for e in local]
      for i in range(num_batches):
        chunk = examples[i * batch_size:(i + 1) * batch_size]
        out.append(batches.stack(chunk, batch_size, make.map(members[0])))
    return out
