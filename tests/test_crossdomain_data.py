"""The multi-domain data path: the crossdomain format, domain-contiguous ids, per-split target
domains, the single-domain view (data.domain) and the cache."""

import json

import numpy as np
import pytest

from lstmrec_jax import data
from lstmrec_jax.data import preprocess
from lstmrec_jax.data.formats import crossdomain
from lstmrec_jax.errors import DataError
from helpers import data_config

# Raw ids interleave the domains (A: 10, 12, 14; B: 11, 13, 15) so renumbering is exercised.
MAP = {"a10": [10, 0], "b11": [11, 1], "a12": [12, 0], "b13": [13, 1], "a14": [14, 0],
       "b15": [15, 1]}
LINES = ["1 10|1 11|2 12|2 13|3 14|4",
         "2 11|1 10|1 13|5 15|6",
         "3 12|1 14|2 11|3 10|3 15|4"]


def write(tmp_path, lines=LINES, mapping=MAP, name="map_item.json"):
  path = tmp_path / "sequences.txt"
  path.write_text("\n".join(lines) + "\n")
  # one entry per line: entry k (0-based) is on line k + 2
  (tmp_path / name).write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}"
                                                   for k, v in mapping.items()) + "\n}\n")
  return path


def load(path, **kw):
  return data.load_dataset(data_config(format="crossdomain", path=str(path),
                                       domain_names=("A", "B"), **kw))


def test_ids_are_contiguous_per_domain_and_targets_carry_their_domain(tmp_path):
  ds = load(write(tmp_path))
  assert ds.domain_names == ("A", "B")
  assert ds.item_keys[1:].tolist() == [10, 12, 14, 11, 13, 15]
  assert ds.item_domains_V.tolist() == [-1, 0, 0, 0, 1, 1, 1]
  assert ds.domain_starts == (1, 4)
  key = lambda ids: [int(ds.item_keys[i]) for i in ids]
  # user 1: ... 13|3 14|4 -> test 14 (A), valid 13 (B); file order kept
  u = list(ds.user_keys).index(1)
  assert key([ds.test.targets_U[u]]) == [14] and ds.test.domains_U[u] == 0
  assert key([ds.valid.targets_U[u]]) == [13] and ds.valid.domains_U[u] == 1
  assert key(ds.test.history[u]) == [10, 11, 12, 13]
  for sp in (ds.valid, ds.test):
    np.testing.assert_array_equal(sp.domains_U, ds.item_domains_V[sp.targets_U])


def test_same_time_events_keep_file_order(tmp_path):
  # user 3 has 11|3 10|3: a re-sort by time must not swap them
  ds = load(write(tmp_path))
  u = list(ds.user_keys).index(3)
  assert [int(ds.item_keys[i]) for i in ds.test.history[u]] == [12, 14, 11, 10]


@pytest.mark.parametrize("lines, mapping, where, what", [
    (["1 10|1 99|2 12|3"], MAP, "sequences.txt:1", "item 99 has no domain in map_item.json"),
    (["1 10|1 11|2", "2 12|5 13|4 14|6"], MAP, "sequences.txt:2", "times out of order"),
    (["1 10|1 11 12|3"], MAP, "sequences.txt:1", "expected 'item|time'"),
    (["1 10|1 11|x"], MAP, "sequences.txt:1", "non-integer time"),
    (["1 10|1", "1 11|2"], MAP, "sequences.txt:2", "user 1 already has a line"),
    (LINES, {**MAP, "b13": [13, 2]}, "map_item.json:5", "unknown domain 2"),
    (LINES, {**MAP, "b13": [13, "Toys"]}, "map_item.json:5", "unknown domain 'Toys'"),
    (LINES, {**MAP, "dup": [13, 0]}, "map_item.json:8", "item 13 is given two domains"),
    (LINES, {**MAP, "b13": [13]}, "map_item.json:5", "expected [item id, domain]"),
])
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, lines, mapping, where, what):
  path = write(tmp_path, lines, mapping)
  with pytest.raises(DataError) as e:
    load(path)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(str(tmp_path / where.split(":")[0]) + ":" + where.split(":")[1] + ":")
  assert what in message


def test_domain_map_by_item_id_and_names(tmp_path):
  path = write(tmp_path, mapping={"10": "A", "11": "B", "12": "A", "13": "B", "14": "A",
                                  "15": "B"})
  ds = data.load_dataset(data_config(format="crossdomain", path=str(path)))
  assert ds.domain_names == ("A", "B") and ds.domain_starts == (1, 4)
  other = tmp_path / "other.json"
  other.write_text(json.dumps(MAP))
  (tmp_path / "map_item.json").unlink()
  with pytest.raises(DataError, match="map_item.json: file not found"):
    load(path)
  assert load(path, domains_path=str(other)).domain_starts == (1, 4)


def test_keep_domain_is_the_merged_split_restricted(tmp_path):
  path = write(tmp_path)
  merged = load(path)
  only_b = load(path, domain="B")
  assert only_b.kept_domain == "B"
  # the catalogue does not change: ids, keys and domains line up with the merged dataset
  np.testing.assert_array_equal(only_b.item_keys, merged.item_keys)
  np.testing.assert_array_equal(only_b.item_domains_V, merged.item_domains_V)
  for name in ("valid", "test"):
    m, b = getattr(merged, name), getattr(only_b, name)
    sel = np.flatnonzero(m.domains_U == 1)
    np.testing.assert_array_equal(b.users_U, m.users_U[sel])
    np.testing.assert_array_equal(b.targets_U, m.targets_U[sel])
    for k, row in enumerate(sel):
      np.testing.assert_array_equal(b.history[k], [i for i in m.history[row] if i >= 4])
  assert set(only_b.train.items_N.tolist()) <= {4, 5, 6}
  assert only_b.item_counts_V[1:4].sum() == 0
  # each kept training event keeps its reward (main's rewards, aligned with train.items_N)
  assert len(only_b.train_rewards()) == len(only_b.train.items_N) < len(merged.train.items_N)
  with pytest.raises(DataError, match="data.domain='C' is not a domain of .*A, B"):
    load(path, domain="C")
  with pytest.raises(DataError, match="has no domains"):
    data.load_dataset(data_config(format="synthetic", domain="A",
                                  synthetic={"num_users": 20, "num_items": 40}))


def test_cache_keeps_domains(tmp_path):
  path = write(tmp_path)
  first = load(path, cache_dir=str(tmp_path / "cache"))
  again = load(path, cache_dir=str(tmp_path / "cache"))
  assert list((tmp_path / "cache").glob("*.npz"))
  assert again.domain_names == first.domain_names
  np.testing.assert_array_equal(again.item_domains_V, first.item_domains_V)
  np.testing.assert_array_equal(again.test.domains_U, first.test.domains_U)


def test_synthetic_multi_domain_log():
  ds = data.load_dataset(data_config(synthetic={"num_users": 100, "num_items": 60, "seed": 1,
                                                "num_domains": 2}))
  assert ds.domain_names == ("d0", "d1")
  assert np.all(np.diff(ds.item_domains_V[1:]) >= 0)
  assert set(ds.test.domains_U.tolist()) == {0, 1}
  single = data.load_dataset(data_config(synthetic={"num_users": 100, "num_items": 60,
                                                    "seed": 1}))
  assert single.domain_names == () and single.test.domains_U is None
  assert len(single.train.items_N) == len(ds.train.items_N)  # the same events


@pytest.mark.shared_data
def test_shared_cross_domain_counts(shared_data):
  for name, users, events, items, test_targets in (
      ("food-kitchen", 7144, 173548, (11837, 16258), (2419, 4725)),
      ("beauty-electronics", 4474, 114129, (10379, 14188), (1875, 2599))):
    path = shared_data / "amazon-cross-domain" / name / "sequences.txt"
    log = crossdomain.read_crossdomain(path)
    assert len(log) == events
    ds = preprocess.build_dataset(log)
    assert ds.num_users == users
    assert tuple(np.bincount(ds.item_domains_V[1:])) == items
    assert tuple(np.bincount(ds.test.domains_U)) == test_targets
