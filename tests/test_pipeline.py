"""Leave-one-out split, sliding windows, padding, buckets, Grain iterator state."""

import numpy as np
import pytest

from s2gr_jax.data import batches
from s2gr_jax.data import pipeline

# Three users; item ids are small so codes are easy to read: code(item) = [item, 10*item].
SEQUENCES = [np.array([5, 6, 7, 8, 9]), np.array([1, 2, 3]), np.array([4, 3, 2, 1])]
CODES = np.array([[0, 0]] + [[i, 10 * i] for i in range(1, 10)], np.int32)


def make_pipes(max_history=3, buckets=(3,), shard_index=0, shard_count=1):
  split = pipeline.LeaveOneOut.from_sequences(SEQUENCES)
  return pipeline.Pipelines(
      source=[{"items": s.tolist()} for s in SEQUENCES], split=split, codes=CODES,
      user_buckets=np.array([7, 8, 9], np.int32), max_history=max_history,
      length_buckets=buckets, shard_index=shard_index, shard_count=shard_count)


def test_leave_one_out_on_a_hand_made_example():
  split = pipeline.LeaveOneOut.from_sequences(SEQUENCES)
  # User 0 (5 items): training targets at positions 1 and 2; val at 3; test at 4.
  # User 1 (3 items): no training example; user 2 (4 items): one, at position 1.
  assert split.train_index().tolist() == [[0, 1], [0, 2], [2, 1]]
  assert split.eval_index("val").tolist() == [[0, 3], [1, 1], [2, 2]]
  assert split.eval_index("test").tolist() == [[0, 4], [1, 2], [2, 3]]
  assert [h.tolist() for h in split.training_histories(SEQUENCES)] == [[5, 6, 7], [1], [4, 3]]
  with pytest.raises(ValueError, match="'val' or 'test'"):
    split.eval_index("train")
  with pytest.raises(ValueError, match="at least 3"):
    pipeline.LeaveOneOut.from_sequences([np.array([1, 2])])


def test_example_padding_masks_codes_and_history_cap():
  pipes = make_pipes(max_history=2, buckets=(2,))
  make = pipeline.MakeExample(pipes.source, CODES, pipes.user_buckets, 2, pad_to=2)
  ex = make.map(np.array([0, 4]))  # test example of user 0: history 5 6 7 8 → last two
  assert ex["history_items"].tolist() == [7, 8]
  assert ex["history_codes"].tolist() == [[7, 70], [8, 80]]
  assert ex["target_item"] == 9 and ex["target_codes"].tolist() == [9, 90]
  assert ex["user_bucket"] == 7 and ex["weight"] == 1.0
  make = pipeline.MakeExample(pipes.source, CODES, pipes.user_buckets, 2, pad_to=4)
  ex = make.map(np.array([1, 1]))  # val example of user 1: history [1]
  assert ex["history_items"].tolist() == [1, 0, 0, 0]
  assert ex["history_mask"].tolist() == [True, False, False, False]
  assert ex["history_codes"].tolist() == [[1, 10], [0, 0], [0, 0], [0, 0]]


def test_buckets_group_by_history_length():
  assert pipeline.bucket_of(np.array([1, 2, 3, 4, 5]), (2, 4, 5)).tolist() == [0, 0, 1, 1, 2]
  pipes = make_pipes(max_history=3, buckets=(1, 3))
  batches = pipes.eval_batches("test", batch_size=2)
  # History lengths 3, 2, 3 → all in bucket 3 (bucket 1 is empty): one batch of 2 + 1.
  assert [b["history_items"].shape for b in batches] == [(2, 3), (2, 3)]
  assert [b["weight"].tolist() for b in batches] == [[1, 1], [1, 0]]
  assert sorted(np.concatenate([b["target_item"][b["weight"] > 0] for b in batches])) == [
      1, 3, 9]
  val = pipes.eval_batches("val", batch_size=4)
  # Val histories have lengths 3, 1, 2 → bucket 1 holds user 1, bucket 3 the others.
  assert [b["history_items"].shape[1] for b in val] == [1, 3]
  assert val[0]["weight"].tolist() == [1, 0, 0, 0]


def test_training_stream_covers_an_epoch_and_resumes_exactly():
  rng = np.random.default_rng(0)
  seqs = [rng.permutation(np.arange(1, 10))[:rng.integers(4, 9)] for _ in range(40)]
  split = pipeline.LeaveOneOut.from_sequences(seqs)
  pipes = pipeline.Pipelines([{"items": s.tolist()} for s in seqs], split, CODES,
                             np.arange(40, dtype=np.int32), max_history=3,
                             length_buckets=(3,))
  n = pipes.num_train_examples()
  batch = 4
  ds = pipes.train_dataset(batch, seed=1, num_threads=0)
  it = iter(ds)
  epoch = [next(it) for _ in range(n // batch)]
  # (user, target) identifies an example: one epoch holds distinct training examples.
  seen = [(int(u), int(t)) for b in epoch
          for u, t in zip(b["user_bucket"], b["target_item"])]
  every = {(int(u), int(seqs[u][p])) for u, p in split.train_index()}
  assert len(set(seen)) == len(seen) == (n // batch) * batch
  assert set(seen) <= every and len(every) == n
  assert pipes.steps_per_epoch(batch) == n // batch
  # Iterator state: a restored iterator continues with exactly the same batches.
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  it2 = iter(pipes.train_dataset(batch, seed=1, num_threads=0))
  it2.set_state(state)
  for a, b in zip(expected, [next(it2) for _ in range(3)]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Another seed, another order.
  other = next(iter(pipes.train_dataset(batch, seed=2, num_threads=0)))
  assert any((other[k] != epoch[0][k]).any() for k in epoch[0])


def test_held_out_last_training_targets_split_the_examples_in_two():
  rng = np.random.default_rng(3)
  seqs = [rng.permutation(np.arange(1, 10))[:rng.integers(5, 9)] for _ in range(40)]
  split = pipeline.LeaveOneOut.from_sequences(seqs)
  pipes = pipeline.Pipelines([{"items": s.tolist()} for s in seqs], split, CODES,
                             np.arange(40, dtype=np.int32), max_history=3,
                             length_buckets=(3,))

  def examples(which, batch):
    it = iter(pipes.train_dataset(batch, seed=1, num_threads=0, examples=which))
    n = {"last": 40, "except_last": pipes.num_train_examples() - 40}[which] // batch
    return {(int(u), int(t)) for _ in range(n) for b in [next(it)]
            for u, t in zip(b["user_bucket"], b["target_item"])}
  last = examples("last", 8)  # 5 batches: every user's last training target once
  assert last == {(u, int(s[len(s) - 3])) for u, s in enumerate(seqs)}
  rest = examples("except_last", 1)
  every = {(int(u), int(seqs[u][p])) for u, p in split.train_index()}
  assert not last & rest and last | rest == every
  with pytest.raises(ValueError, match="examples='first'"):
    pipes.train_dataset(8, seed=1, examples="first")


def test_host_shards_are_disjoint_and_complete():
  rng = np.random.default_rng(1)
  seqs = [rng.permutation(np.arange(1, 10))[:rng.integers(4, 9)] for _ in range(30)]
  split = pipeline.LeaveOneOut.from_sequences(seqs)
  shards = []
  for i in range(3):
    pipes = pipeline.Pipelines([{"items": s.tolist()} for s in seqs], split, CODES,
                               np.arange(30, dtype=np.int32), 3, (3,), i, 3)
    shards.append(pipes.eval_batches("test", batch_size=4))
  assert len({len(s) for s in shards}) == 1  # same number of batches on every host
  users = [int(u) for s in shards for b in s for u, w in zip(b["user_bucket"], b["weight"])
           if w > 0]
  assert sorted(users) == list(range(30))


def test_host_training_streams_draw_the_same_bucket_at_every_step():
  """With several length buckets, every host's k-th training batch has the same shape
  (the hosts' shards of one global batch), and the hosts' examples are disjoint."""
  rng = np.random.default_rng(2)
  # Lengths 3..30 → history lengths spread over the buckets unevenly per host.
  seqs = [rng.integers(1, 10, size=rng.integers(3, 31)) for _ in range(120)]
  split = pipeline.LeaveOneOut.from_sequences(seqs)
  hosts, batch, steps = 3, 4, 60
  streams, epochs = [], []
  for i in range(hosts):
    pipes = pipeline.Pipelines([{"items": s.tolist()} for s in seqs], split, CODES,
                               np.arange(120, dtype=np.int32), 20, (3, 8, 20), i, hosts)
    it = iter(pipes.train_dataset(batch, seed=0, num_threads=0))
    streams.append([next(it) for _ in range(steps)])
    epochs.append(pipes.steps_per_epoch(batch))
  shapes = [[b["history_items"].shape for b in s] for s in streams]
  assert shapes[0] == shapes[1] == shapes[2]
  assert len({s[1] for s in shapes[0]}) == 3  # all three buckets are drawn
  assert len(set(epochs)) == 1
  # Disjoint shards: within the first epoch no example (user, history, target) is on
  # two hosts.
  seen = [{(int(u), tuple(h[h > 0].tolist()), int(t)) for b in s[:epochs[0]]
           for u, h, t in zip(b["user_bucket"], b["history_items"], b["target_item"])}
          for s in streams]
  assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_user_hash_is_stable():
  h = batches.hash_users(np.array([1, 2, 3, 22363]), 2000)
  assert h.tolist() == batches.hash_users(np.array([1, 2, 3, 22363]), 2000).tolist()
  assert (h >= 0).all() and (h < 2000).all() and len(set(h.tolist())) == 4


def test_user_hash_known_values_and_jax_equals_numpy():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ids = np.array([0, 1, 2, 3, 22363, 2**31 + 5])
  # (id * 2654435761) mod 2^32 mod 2000, computed with Python integers.
  expected = [(int(i) * 2654435761) % 2**32 % 2000 for i in ids]
  assert batches.hash_users(ids, 2000).tolist() == expected
  assert np.asarray(batches.hash_users(jnp.asarray(ids, jnp.uint32), 2000,
                                       xp=jnp)).tolist() == expected


@pytest.mark.parametrize("buckets", [(3,), (1, 2, 3)])
def test_vectorized_batches_equal_the_per_example_reference(buckets):
  rng = np.random.default_rng(0)
  seqs = [rng.integers(1, 10, n) for n in rng.integers(3, 12, 40)]
  split = pipeline.LeaveOneOut.from_sequences(seqs)
  make = lambda vectorized: pipeline.Pipelines(
      [{"items": s.tolist()} for s in seqs], split, CODES,
      np.arange(40, dtype=np.int32) % 7, max_history=3, length_buckets=buckets,
      vectorized=vectorized)
  fast, slow = make(True), make(False)
  for split_name in ("val", "test"):
    for a, b in zip(fast.eval_batches(split_name, 8), slow.eval_batches(split_name, 8),
                    strict=True):
      for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert a[k].dtype == b[k].dtype, k
  fi, si = iter(fast.train_dataset(4, seed=3)), iter(slow.train_dataset(4, seed=3))
  for _ in range(30):  # several epochs: the same batches in the same order
    a, b = next(fi), next(si)
    for k in b:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
      assert a[k].dtype == b[k].dtype, k
