"""Training and evaluation batches: layout, packing, shuffling, resume, sharding, coverage."""

from __future__ import annotations

import numpy as np
import pytest

from lstmrec_jax import data
from lstmrec_jax.data import pipeline
from lstmrec_jax.data.preprocess import EvalSplit
from lstmrec_jax.data.preprocess import Sequences
from helpers import data_config


def random_sequences(lengths, seed=0, num_items=100_000) -> Sequences:
  rng = np.random.default_rng(seed)
  return Sequences.from_lists([rng.integers(1, num_items, n).tolist() for n in lengths])


def beauty_like_lengths(num_users=20_000, seed=0) -> np.ndarray:
  """Training lengths shaped like Beauty's: users have >= 5 events (mean ~9, long tail), minus
  the two leave-one-out targets."""
  rng = np.random.default_rng(seed)
  events = np.minimum(4 + rng.geometric(1 / 4.9, num_users), 400)
  return events - 2


def all_batches(batches: pipeline.TrainBatches, epoch=0, skip=0):
  return list(batches.epoch(epoch, skip_batches=skip))


def test_unpacked_rows_hand_example():
  train = Sequences.from_lists([[1, 2, 3, 4], [5], [6, 7]])
  batches = pipeline.TrainBatches(train, batch_size=2, max_len=2, seed=0)
  assert (batches.num_examples, batches.num_skipped_users, batches.steps_per_epoch) == (2, 1, 1)
  (batch,) = all_batches(batches)
  assert set(batch) == {"inputs_BxL", "targets_BxL", "mask_BxL", "resets_BxL"}
  assert batch["inputs_BxL"].dtype == np.int32 and batch["targets_BxL"].dtype == np.int32
  assert batch["mask_BxL"].dtype == bool and batch["resets_BxL"].dtype == bool
  got = sorted(zip(batch["inputs_BxL"].tolist(), batch["targets_BxL"].tolist(),
                   batch["mask_BxL"].tolist()))
  # The most recent max_len positions of user 0; user 2 right-padded; user 1 has no example.
  assert got == [([2, 3], [3, 4], [True, True]), ([6, 0], [7, 0], [True, False])]
  assert not batch["resets_BxL"].any()


def test_first_fit_decreasing_example():
  rows, cols = pipeline.first_fit_decreasing(np.array([3, 2, 2, 1]), 4)
  assert rows.tolist() == [0, 1, 1, 0] and cols.tolist() == [0, 0, 2, 3]


def split_segments(inputs, targets, mask, resets):
  """Segments of one packed row: a new one at each reset; real positions are a prefix."""
  n = int(mask.sum())
  assert mask[:n].all() and not mask[n:].any() and not targets[n:].any()
  starts = [0] + [int(t) for t in np.flatnonzero(resets) if t > 0]
  assert all(t < n for t in starts)
  ends = starts[1:] + [n]
  return [(tuple(inputs[a:b]), tuple(targets[a:b])) for a, b in zip(starts, ends)]


def test_packed_rows_hold_each_example_once_with_resets():
  lengths = np.random.default_rng(1).integers(0, 40, 300)
  train = random_sequences(lengths, seed=2)
  max_len = 16
  batches = pipeline.TrainBatches(train, batch_size=1, max_len=max_len, seed=0, pack=True)
  segments = []
  for batch in all_batches(batches):
    segments += split_segments(batch["inputs_BxL"][0], batch["targets_BxL"][0],
                               batch["mask_BxL"][0], batch["resets_BxL"][0])
  expected = []
  for u in range(len(train)):
    s = train[u].tolist()
    if len(s) >= 2:
      m = min(len(s) - 1, max_len)
      expected.append((tuple(s[-m - 1:-1]), tuple(s[-m:])))
  assert sorted(segments) == sorted(expected)
  assert batches.num_skipped_users == int((lengths < 2).sum())
  assert batches.num_rows < batches.num_examples  # it did pack


def test_packing_padding_under_ten_percent_on_beauty_like_lengths():
  train = random_sequences(beauty_like_lengths())
  packed = pipeline.TrainBatches(train, batch_size=256, max_len=50, seed=0, pack=True)
  unpacked = pipeline.TrainBatches(train, batch_size=256, max_len=50, seed=0, pack=False)
  assert packed.padding_fraction < 0.10, packed.padding_fraction
  assert unpacked.padding_fraction > 0.5
  masks = np.concatenate([b["mask_BxL"] for b in all_batches(packed)])
  # The epoch drops the remainder rows; the rest shows the same padding.
  assert abs((1 - masks.mean()) - packed.padding_fraction) < 0.02
  assert abs(masks.sum() - packed.real_positions_per_epoch) <= 50 * (packed.num_rows % 256)


@pytest.mark.shared_data
def test_packing_padding_on_beauty(shared_data):
  ds = data.load_dataset(data_config(
      format="seqfile", attributes_path=False,
      path=str(shared_data / "amazon-beauty" / "Beauty.txt")))
  packed = pipeline.TrainBatches(ds.train, batch_size=256, max_len=50, seed=0, pack=True)
  assert packed.padding_fraction < 0.10
  assert packed.num_examples == ds.num_users  # every Beauty user has >= 2 training events


def test_epochs_are_static_deterministic_and_replayable():
  train = random_sequences(np.arange(2, 60) % 23 + 2, seed=3)
  make = lambda seed: pipeline.TrainBatches(train, batch_size=8, max_len=10, seed=seed,
                                            pack=True)
  a, b = make(7), make(7)
  steps = a.steps_per_epoch
  assert steps == a.num_rows // 8 and steps >= 3
  epoch2 = all_batches(a, 2)
  assert len(epoch2) == steps
  for batch in epoch2:
    for key, value in batch.items():
      assert value.shape == (8, 10), key
  # A fresh object with the same seed replays the epoch exactly (a restarted process).
  for x, y in zip(epoch2, all_batches(b, 2)):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(epoch2[0]["inputs_BxL"], all_batches(a, 3)[0]["inputs_BxL"])
  assert not np.array_equal(epoch2[0]["inputs_BxL"], all_batches(make(8), 2)[0]["inputs_BxL"])
  # Resume: skipping k batches yields exactly the tail of the unbroken epoch.
  for k in (1, steps - 1, steps):
    tail = all_batches(b, 2, skip=k)
    assert len(tail) == steps - k
    for x, y in zip(epoch2[k:], tail):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_union_is_the_global_batch(process_count):
  train = random_sequences(np.arange(100) % 13 + 1, seed=4)
  kwargs = dict(batch_size=8, max_len=6, seed=5, pack=True)
  single = all_batches(pipeline.TrainBatches(train, **kwargs), 1)
  shards = [all_batches(pipeline.TrainBatches(train, **kwargs, process_index=p,
                                              process_count=process_count), 1)
            for p in range(process_count)]
  assert all(len(s) == len(single) for s in shards)
  for k, batch in enumerate(single):
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([shard[k][key] for shard in shards]), batch[key])
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.TrainBatches(train, batch_size=6, max_len=6, seed=0, process_count=4)


def test_eval_batches_cover_every_user_once_with_full_seen():
  rng = np.random.default_rng(6)
  lengths = rng.integers(1, 30, 37)
  lengths[5] = 61  # S = 64 for the split
  history = random_sequences(lengths, seed=7, num_items=500)
  users = rng.permutation(1000)[:37].astype(np.int32)
  split = EvalSplit(users, history, rng.integers(1, 500, 37).astype(np.int32))
  max_len = 8
  assert pipeline.seen_width(split) == 64
  row_of_user = {int(u): k for k, u in enumerate(users)}
  for process_count in (1, 2):
    seen_users = []
    for p in range(process_count):
      batches = list(pipeline.eval_batches(split, batch_size=8, max_len=max_len,
                                           process_index=p, process_count=process_count))
      assert len(batches) == pipeline.num_eval_batches(split, batch_size=8,
                                                       process_count=process_count) == 5
      for batch in batches:
        b = 8 // process_count
        assert batch["inputs_BxL"].shape == (b, max_len)
        assert batch["seen_BxS"].shape == (b, 64)
        for i in range(b):
          if not batch["valid_B"][i]:
            assert batch["users_B"][i] == -1 and not batch["inputs_BxL"][i].any()
            assert not batch["mask_BxL"][i].any() and not batch["seen_BxS"][i].any()
            continue
          user = int(batch["users_B"][i])
          seen_users.append(user)
          h = history[row_of_user[user]].tolist()
          last = h[-max_len:]
          assert batch["inputs_BxL"][i].tolist() == last + [0] * (max_len - len(last))
          assert batch["mask_BxL"][i].tolist() == [True] * len(last) + [False] * (
              max_len - len(last))
          assert batch["seen_BxS"][i].tolist() == h + [0] * (64 - len(h))
          assert batch["targets_B"][i] == split.targets_U[row_of_user[user]]
    assert sorted(seen_users) == sorted(users.tolist())  # every user exactly once
  with pytest.raises(ValueError, match="not divisible"):
    next(pipeline.eval_batches(split, batch_size=9, max_len=4, process_count=2))


def test_eval_lengths():
  assert pipeline.eval_lengths(50) == (16, 50)
  assert pipeline.eval_lengths(200) == (56, 200)
  assert pipeline.eval_lengths(16) == (8, 16)
  assert pipeline.eval_lengths(8) == (8,)
  assert pipeline.eval_lengths(3) == (3,)


def test_eval_batches_by_length_are_the_same_rows_cut_short():
  rng = np.random.default_rng(8)
  lengths = rng.integers(0, 12, 45)  # 0: a user without history
  lengths[[3, 17, 30]] = (40, 33, 25)
  history = random_sequences(lengths, seed=9, num_items=300)
  users = rng.permutation(500)[:45].astype(np.int32)
  split = EvalSplit(users, history, rng.integers(1, 300, 45).astype(np.int32))
  max_len, short, width = 32, 8, pipeline.seen_width(split)
  row_of_user = {int(u): k for k, u in enumerate(users)}
  plain = {}
  for batch in pipeline.eval_batches(split, batch_size=8, max_len=max_len):
    for i in np.flatnonzero(batch["valid_B"]):
      plain[int(batch["users_B"][i])] = {k: batch[k][i] for k in batch}
  for process_count in (1, 2):
    got, shapes = [], set()
    per_process = [list(pipeline.eval_batches(split, batch_size=8, max_len=max_len,
                                              process_index=p, process_count=process_count,
                                              by_length=True))
                   for p in range(process_count)]
    for k in range(len(per_process[0])):
      whole = {key: np.concatenate([pp[k][key] for pp in per_process]) for key in per_process[0][k]}
      length = whole["inputs_BxL"].shape[1]
      shapes.add((length, whole["seen_BxS"].shape[1]))
      real = whole["valid_B"]
      # Shortest first: the batch's histories are no shorter than the last batch's.
      got_lengths = lengths[[row_of_user[int(u)] for u in whole["users_B"][real]]]
      if got:
        assert got_lengths.min() >= max(lengths[[row_of_user[u] for u in got]])
      assert length == (short if got_lengths.max() <= short else max_len)
      for i in np.flatnonzero(real):
        user = int(whole["users_B"][i])
        ref = plain[user]
        got.append(user)
        # The same history, targets and seen items; only padding after the history is cut.
        assert not ref["inputs_BxL"][length:].any() and not ref["seen_BxS"][
            whole["seen_BxS"].shape[1]:].any()
        np.testing.assert_array_equal(whole["inputs_BxL"][i], ref["inputs_BxL"][:length])
        np.testing.assert_array_equal(whole["mask_BxL"][i], ref["mask_BxL"][:length])
        np.testing.assert_array_equal(whole["seen_BxS"][i],
                                      ref["seen_BxS"][:whole["seen_BxS"].shape[1]])
        assert whole["targets_B"][i] == ref["targets_B"]
      assert not whole["inputs_BxL"][~real].any() and (whole["users_B"][~real] == -1).all()
    assert sorted(got) == sorted(users.tolist())  # every user exactly once
    assert shapes == {(short, short), (max_len, width)}
  # `only`: those global batches of the same pass; the first and the last hold every shape.
  every = list(pipeline.eval_batches(split, batch_size=8, max_len=max_len, by_length=True))
  ends = list(pipeline.eval_batches(split, batch_size=8, max_len=max_len, by_length=True,
                                    only=(0, -1)))
  assert len(ends) == 2
  for got_batch, want in zip(ends, (every[0], every[-1])):
    for key in want:
      np.testing.assert_array_equal(got_batch[key], want[key])


def test_batches_from_a_real_build():
  ds = data.load_dataset(data_config(
      synthetic={"num_users": 200, "num_items": 100, "seed": 2}))
  batches = data.TrainBatches(ds.train, batch_size=16, max_len=20, seed=0, pack=True)
  batch = next(batches.epoch(0))
  assert batch["targets_BxL"].max() < ds.num_items
  # A target is the next item of the same history: never the first item of a segment.
  assert (batch["targets_BxL"][batch["mask_BxL"]] > 0).all()
  eval_batch = next(data.eval_batches(ds.test, batch_size=16, max_len=20))
  assert eval_batch["valid_B"].all() and eval_batch["seen_BxS"].shape[1] % 8 == 0
