"""build_dataset: order, filters, splits, side data, cache; the synthetic log; load_dataset."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lstmrec_jax import data
from lstmrec_jax.data import preprocess
from lstmrec_jax.data.formats import seqfile
from lstmrec_jax.errors import DataError
from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide
from helpers import data_config


def make_log(users, items, timestamps=None, ratings=None, side=None, source="hand"):
  return InteractionLog(
      users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
      timestamps=None if timestamps is None else np.asarray(timestamps, np.int64),
      item_side=side or ItemSide(), source=source,
      ratings=None if ratings is None else np.asarray(ratings, np.float32))


def rows(seqs: preprocess.Sequences) -> list[list[int]]:
  return [seqs[u].tolist() for u in range(len(seqs))]


def raw(ds, ids):
  return [int(ds.item_keys[i]) for i in ids]


def test_chronological_ties_keep_file_order():
  # User 5: times 9, 3, 3, 1, 3 -> order by time, the three 3s in file order (20, 30, 50).
  log = make_log([5, 5, 7, 5, 5, 7, 7, 5], [10, 20, 70, 30, 40, 71, 72, 50],
                 [9, 3, 2, 3, 1, 1, 3, 3])
  ds = preprocess.build_dataset(log)
  history = ds.test.history
  assert raw(ds, history[0]) == [40, 20, 30, 50]  # user 5 before the test item 10
  assert raw(ds, [ds.test.targets_U[0]]) == [10]
  assert raw(ds, history[1]) == [71, 70] and raw(ds, [ds.test.targets_U[1]]) == [72]
  # No timestamps: file order is time order.
  ds = preprocess.build_dataset(make_log([1, 2, 1, 1, 2, 2], [5, 6, 7, 8, 9, 5]))
  assert raw(ds, ds.train[0]) == [5] and raw(ds, ds.train[1]) == [6]
  assert raw(ds, ds.valid.targets_U) == [7, 9] and raw(ds, ds.test.targets_U) == [8, 5]


def test_leave_one_out_hand_example(caplog):
  side = ItemSide(titles={30: "thirty", 10: "ten"},
                  attributes={10: ["b", "a"], 30: ["a"], 99: ["unused"]},
                  attribute_names={"a": "Alpha"})
  log = make_log(users=[2, 1, 1, 2, 1, 1, 3, 2, 4, 4, 4],
                 items=[10, 20, 30, 20, 10, 40, 10, 30, 50, 50, 20], side=side)
  with caplog.at_level(logging.INFO):
    ds = preprocess.build_dataset(log)
  assert "drops 1 users with fewer than 3 events (1 events)" in caplog.text
  assert ds.user_keys.tolist() == [1, 2, 4]
  assert ds.item_keys.tolist() == [-1, 10, 20, 30, 40, 50]  # 0 = padding
  assert ds.num_items == 6 and ds.num_users == 3
  # user 1: 20 30 10 40 | user 2: 10 20 30 | user 4: 50 50 20
  assert rows(ds.train) == [[2, 3], [1], [5]]
  assert ds.valid.users_U.tolist() == [0, 1, 2]
  assert rows(ds.valid.history) == rows(ds.train)
  assert ds.valid.targets_U.tolist() == [1, 2, 5]
  assert rows(ds.test.history) == [[2, 3, 1], [1, 2], [5, 5]]
  assert ds.test.targets_U.tolist() == [4, 3, 2]
  # Popularity counts come from the training part only.
  assert ds.item_counts_V.tolist() == [0, 1, 1, 1, 0, 1]
  assert ds.stats["split_dropped_users"] == 1 and ds.stats["split_dropped_events"] == 1
  # Side data: attribute ids from 1 in sorted raw order, only for catalog items.
  assert ds.attribute_names == ["", "Alpha", "b"] and ds.num_attrs == 3
  assert rows(ds.item_attrs) == [[], [2, 1], [], [1], [], []]
  assert ds.item_titles == ["", "ten", "", "thirty", "", ""]


def test_too_few_events_for_the_split():
  with pytest.raises(DataError, match="hand: too few events for the split"):
    preprocess.build_dataset(make_log([1, 1, 2], [1, 2, 3]))
  with pytest.raises(DataError, match="hand: too few events for the split"):
    preprocess.build_dataset(make_log([1, 1, 1], [1, 2, 3]), min_item_events=2)


def test_k_core_iterates_until_stable(caplog):
  # 2-core on items and 3-core on users: item 9 (once) goes, then user 3 has 2 events and goes,
  # which leaves item 8 once, so it goes too, and user 2 falls to 2 events.
  users = [1, 1, 1, 2, 2, 2, 3, 3, 3, 1, 4, 4, 4]
  items = [5, 6, 7, 5, 6, 8, 8, 9, 5, 7, 5, 6, 7]
  with caplog.at_level(logging.INFO):
    ds = preprocess.build_dataset(make_log(users, items), min_user_events=3, min_item_events=2)
  assert ds.user_keys.tolist() == [1, 4]
  assert ds.item_keys[1:].tolist() == [5, 6, 7]
  assert ds.stats["kcore_dropped_users"] == 2 and ds.stats["kcore_dropped_items"] == 2
  assert ds.stats["kcore_dropped_events"] == 6 and ds.stats["kcore_rounds"] >= 3
  assert "dropped 6 events, 2 users, 2 items" in caplog.text


def test_min_rating():
  log = make_log([1] * 5, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], ratings=[5, 1, 4, 4.5, 3.5])
  ds = preprocess.build_dataset(log, min_rating=4)
  assert ds.item_keys[1:].tolist() == [1, 3, 4]
  assert ds.stats["dropped_by_rating"] == 2
  with pytest.raises(DataError, match="min_rating=4.0 but this log has no ratings"):
    preprocess.build_dataset(make_log([1, 1, 1], [1, 2, 3]), min_rating=4)


def test_duplicates_are_counted_and_dropped_with_dedupe(caplog):
  # Issue 15, case 9: every event tripled lifted test HR@10 from 0.35 to 0.48 without a word.
  users, items, times = [1, 1, 1, 1, 2, 2, 2], [5, 6, 7, 8, 5, 7, 9], [1, 2, 3, 4, 1, 2, 3]
  once = preprocess.build_dataset(make_log(users, items, times))
  thrice = make_log(np.repeat(users, 3), np.repeat(items, 3), np.repeat(times, 3),
                    ratings=np.tile([5, 1, 3], 7))
  with caplog.at_level("INFO"):
    kept = preprocess.build_dataset(thrice)
  assert kept.stats["duplicate_events"] == 14 and "dropped_duplicates" not in kept.stats
  assert "14 duplicate events (same user, item and time) of 21 are kept" in caplog.text
  # Kept, each test target is a repeat of the history's last item: an easy, inflated hit.
  assert rows(kept.test.history)[1] == [1, 1, 1, 3, 3, 3, 5, 5] and kept.test.targets_U[1] == 5
  dropped = preprocess.build_dataset(thrice, dedupe=True)
  assert dropped.stats["dropped_duplicates"] == 14 and dropped.stats["num_events"] == 7
  for a, b in ((once.train, dropped.train), (once.test.history, dropped.test.history)):
    assert rows(a) == rows(b)
  np.testing.assert_array_equal(once.test.targets_U, dropped.test.targets_U)
  # The first copy is the one kept (its rating, too): min_rating=4 keeps every first copy.
  assert preprocess.build_dataset(thrice, dedupe=True, min_rating=4).stats["num_events"] == 7

  # Same user and item at another time is a repeat, not a duplicate.
  log = make_log([1, 1, 1, 1, 1], [5, 6, 5, 5, 7], [1, 2, 3, 3, 4])
  assert preprocess.build_dataset(log).stats["duplicate_events"] == 1
  # Without times: a user's item repeated at once, in file order (other users in between).
  log = make_log([1, 2, 1, 1, 2, 1, 2, 2], [5, 5, 5, 6, 5, 5, 9, 8])
  ds = preprocess.build_dataset(log, dedupe=True)
  assert ds.stats["duplicate_events"] == 2 and rows(ds.test.history) == [[1, 2], [1, 4]]
  caplog.clear()
  with caplog.at_level("INFO"):
    preprocess.build_dataset(make_log([1, 1, 1], [1, 2, 1]))
  assert "no duplicate events" in caplog.text
  with pytest.raises(DataError, match="dedupe must be True or False"):
    preprocess.build_dataset(log, dedupe="yes")


def test_temporal_split_definition():
  # 20 events at times 0..19; fractions (0.5, 0.25, 0.25): t_valid = 10, t_test = 15.
  events = [  # (user, item, time)
      (1, 1, 0), (1, 2, 1), (1, 3, 11), (1, 4, 12), (1, 5, 16), (1, 6, 17),
      (2, 2, 2), (2, 1, 3), (2, 3, 4), (2, 9, 13), (2, 1, 15),
      (3, 3, 5), (3, 2, 6), (3, 1, 18),
      (4, 4, 7), (4, 5, 8), (4, 6, 9), (4, 7, 10), (4, 8, 14),
      (5, 7, 19)]
  users, items, times = zip(*events)
  ds = preprocess.build_dataset(make_log(users, items, times), split="temporal",
                                temporal_fractions=(0.5, 0.25, 0.25))
  assert (ds.stats["t_valid"], ds.stats["t_test"]) == (10, 15)
  # Catalog: items seen before t=10 -> 1..6; 7 (first at 10), 8, 9 are not rankable.
  assert ds.item_keys[1:].tolist() == [1, 2, 3, 4, 5, 6]
  assert ds.user_keys.tolist() == [1, 2, 3, 4]  # user 5 only acts after t_test: nowhere
  assert rows(ds.train) == [[1, 2], [2, 1, 3], [3, 2], [4, 5, 6]]
  # Valid: first event in [10, 15). User 2's is item 9 (unknown): dropped; user 4's is item 7.
  assert ds.valid.users_U.tolist() == [0]
  assert ds.valid.targets_U.tolist() == [3] and rows(ds.valid.history) == [[1, 2]]
  # Test: first event at/after 15, all earlier events as history minus unknown items.
  assert ds.test.users_U.tolist() == [0, 1, 2]
  assert ds.test.targets_U.tolist() == [5, 1, 1]
  assert rows(ds.test.history) == [[1, 2, 3, 4], [2, 1, 3], [3, 2]]
  assert ds.stats["valid_dropped_unknown_target"] == 2
  assert ds.stats["test_history_items_removed"] == 1
  assert ds.item_counts_V.tolist() == [0, 2, 3, 2, 1, 1, 1]
  with pytest.raises(DataError, match="needs timestamps"):
    preprocess.build_dataset(make_log(users, items), split="temporal")
  with pytest.raises(DataError, match="summing to 1"):
    preprocess.build_dataset(make_log(users, items, times), split="temporal",
                             temporal_fractions=(0.5, 0.5, 0.5))


def test_cache_roundtrip_and_key(tmp_path, monkeypatch):
  seq = tmp_path / "Beauty.txt"
  seq.write_text("1 1 2 3 4\n2 2 3 4\n3 4 1 2\n")
  (tmp_path / "Beauty_item2attributes.json").write_text('{"1": [7], "2": [7, 8]}')
  cfg = data_config(format="seqfile", path=str(seq), cache_dir=str(tmp_path / "cache"))
  first = data.load_dataset(cfg)
  assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
  assert len(list((tmp_path / "cache").glob("*.json"))) == 1

  def no_parse(*args, **kwargs):
    raise AssertionError("parsed the source although a cache entry exists")

  with monkeypatch.context() as m:
    m.setattr(seqfile, "read_seqfile", no_parse)
    m.setattr(preprocess, "_build", no_parse)
    second = data.load_dataset(cfg)
  for name in ("num_items", "num_users", "num_attrs", "item_titles", "attribute_names",
               "split", "source", "stats"):
    assert getattr(first, name) == getattr(second, name), name
  for a, b in ((first.item_keys, second.item_keys), (first.train.items_N, second.train.items_N),
               (first.test.history.offsets_U1, second.test.history.offsets_U1),
               (first.item_attrs.items_N, second.item_attrs.items_N)):
    np.testing.assert_array_equal(a, b)

  fp = seqfile.source_fingerprint(seq, tmp_path / "Beauty_item2attributes.json")
  options = preprocess.build_options(**cfg.build_kwargs())
  key = preprocess.cache_key(fp, options)
  assert preprocess.load_cached(tmp_path / "cache", key) is not None
  assert preprocess.cache_key(fp, preprocess.build_options(min_item_events=2)) != key
  assert preprocess.cache_key(fp, preprocess.build_options(split="temporal")) != key
  assert preprocess.cache_key(fp, preprocess.build_options(dedupe=True)) != key
  seq.write_text("1 1 2 3 4\n2 2 3 4\n3 3 1 2\n")
  fp2 = seqfile.source_fingerprint(seq, tmp_path / "Beauty_item2attributes.json")
  assert preprocess.cache_key(fp2, options) != key
  third = data.load_dataset(cfg)  # new bytes: a new entry, not the stale one
  assert rows(third.test.history)[2] == [3, 1]
  assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
  # build_dataset's own cache keys on log.fingerprint and shares entries with load_dataset.
  with monkeypatch.context() as m:
    m.setattr(preprocess, "_build", no_parse)
    fourth = preprocess.build_dataset(
        data.read_seqfile(seq, tmp_path / "Beauty_item2attributes.json"),
        **cfg.build_kwargs(), cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(fourth.test.targets_U, third.test.targets_U)


def test_load_dataset_takes_config_file_conventions(tmp_path):
  # configs/*.py write "" for "not set" and 0 for "no filter" (ConfigDict holds no None).
  path = tmp_path / "log.csv"
  path.write_text("user_id,item_id,timestamp,genres\n"
                  "1,5,30,a|b\n1,6,10,b\n1,7,20,\n2,5,1,a|b\n2,6,2,b\n2,7,3,\n")
  group = {
      "format": "csv", "path": str(path), "attributes_path": "", "tfds_name": "",
      "tfds_data_dir": "", "download": False, "dedupe": False,
      "columns": {"user": "user_id", "item": "item_id", "time": "timestamp", "session": "",
                  "rating": "", "feedback": "", "title": "", "lists": "genres", "delimiter": "",
                  "list_separator": "|", "header": True},
      "min_rating": 0.0, "min_user_events": 0, "min_item_events": 0, "split": "loo",
      "temporal_fractions": (0.8, 0.1, 0.1), "cache_dir": "", "synthetic": {},
      "domains_path": "", "domain_names": (), "domain": ""}
  ds = data.load_dataset(data.DataConfig.from_mapping(group))
  assert raw(ds, ds.test.targets_U) == [5, 7]  # user 1 in time order: 6, 7, 5
  assert ds.attribute_names == ["", "a", "b"] and rows(ds.item_attrs)[1] == [1, 2]
  assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed():
  a = data.synthetic_log(num_users=50, num_items=100, seed=3, num_clusters=5)
  b = data.synthetic_log(num_users=50, num_items=100, seed=3, num_clusters=5)
  c = data.synthetic_log(num_users=50, num_items=100, seed=4, num_clusters=5)
  for name in ("users", "items", "timestamps"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  assert a.fingerprint == b.fingerprint != c.fingerprint
  assert not np.array_equal(a.items[:50], c.items[:50])
  # No repeats per user (seen items are removed at evaluation time).
  pairs = a.users * 1000 + a.items
  assert len(np.unique(pairs)) == len(pairs)
  assert a.item_side.attributes[1][0] in range(5) and a.item_side.titles[1]


def hit_rate_at_10(split, scores_fn) -> float:
  hits = 0
  for k in range(len(split)):
    history = split.history[k]
    scores = scores_fn(history).astype(np.float64)
    scores[0] = -np.inf
    scores[history] = -np.inf  # the protocol removes seen items
    target = split.targets_U[k]
    hits += int((scores > scores[target]).sum() < 10)
  return hits / len(split)


def test_synthetic_rewards_a_sequence_model():
  ds = data.load_dataset(data_config())  # the defaults a trainer uses
  assert 2500 <= ds.num_users <= 3000 and ds.num_items == 1001
  assert 20 <= ds.stats["num_events"] / ds.num_users <= 40
  v = ds.num_items
  transitions = np.zeros((v, v))
  for u in range(len(ds.train)):
    s = ds.train[u]
    np.add.at(transitions, (s[:-1], s[1:]), 1)
  popularity = ds.item_counts_V.astype(np.float64)
  hr_pop = hit_rate_at_10(ds.test, lambda h: popularity)
  hr_markov = hit_rate_at_10(ds.test, lambda h: transitions[h[-1]] + 1e-6 * popularity)
  assert hr_markov > 0.4 and hr_markov > 4 * hr_pop, (hr_markov, hr_pop)


def test_synthetic_temporal_split():
  ds = data.load_dataset(data_config(
      split="temporal", synthetic={"num_users": 300, "num_items": 200, "seed": 1}))
  assert len(ds.valid) > 50 and len(ds.test) > 50
  assert (ds.item_counts_V[1:] > 0).all()  # the catalog is the training items


# ----------------------------------------------------------------------------- shared data


@pytest.mark.shared_data
def test_shared_games_and_movielens(shared_data, caplog):
  with caplog.at_level(logging.INFO):
    games = data.load_dataset(data_config(
        format="pairs", path=str(shared_data / "amazon-games" / "Video.txt")))
  # 112 users of Video.txt have fewer than 3 events; leave-one-out drops them, and says so.
  assert games.stats["events_read"] == 287_107
  assert games.stats["split_dropped_users"] == 112
  assert games.num_users == 31_013 - 112
  assert "drops 112 users with fewer than 3 events" in caplog.text
  ml = data.load_dataset(data_config(format="movielens", path=str(shared_data / "ml-100k"),
                                    min_rating=4))
  assert ml.stats["events_read"] == 100_000 and ml.stats["dropped_by_rating"] == 44_625
  assert ml.item_titles[ml.item_keys.tolist().index(1)] == "Toy Story (1995)"
  ml_temporal = data.load_dataset(data_config(
      format="movielens", path=str(shared_data / "ml-100k"), split="temporal"))
  assert len(ml_temporal.test) > 0 and ml_temporal.stats["t_valid"] < ml_temporal.stats["t_test"]


def test_eval_split_sample_keeps_each_users_history_and_target():
  histories = [[1, 2], [3], [4, 5, 6], [], [7, 8]]
  split = preprocess.EvalSplit(np.array([10, 11, 12, 13, 14], np.int32),
                               preprocess.Sequences.from_lists(histories),
                               np.array([20, 21, 22, 23, 24], np.int32))
  part = split.sample(3, seed=0)
  assert len(part) == 3 and list(part.users_U) == sorted(part.users_U)
  for k, user in enumerate(part.users_U):
    row = int(user) - 10
    assert part.history[k].tolist() == histories[row] and part.targets_U[k] == 20 + row
  assert split.sample(3, seed=0).users_U.tolist() == part.users_U.tolist()  # seeded
  assert len(split.sample(0, seed=0)) == 0
