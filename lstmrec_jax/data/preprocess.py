"""InteractionLog -> SequenceDataset: filters, dense ids, chronological order, splits, side data.

Shape legend: `N` flattened events, `U` users (the `_U1` suffix: U + 1 CSR offsets), `V` catalog
size including the padding id 0, `A` attribute table size including the padding id 0, `X`
examples of an evaluation split.

Ids: items are dense `1..V-1` in the sorted order of their raw keys, 0 is padding; users are
dense `0..U-1`, also in raw-key order. `SequenceDataset.item_keys[id]` / `user_keys[u]` give the
raw keys back (`item_keys[0]` is a placeholder: -1 for integer keys, "" for string keys).

The result can be cached as one `.npz` plus a small `.json` in `cache_dir`, keyed by sha256 of
the source fingerprint (the source files' bytes and reader options) and the options here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np

from lstmrec_jax.errors import DataError
from lstmrec_jax.data import rewards as rewards_lib
from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide

# Bump when the dataset arrays or their meaning change: old caches then miss instead of lying.
CACHE_VERSION = 2  # 2: per-event rewards
SPLITS = ("loo", "temporal")


@dataclasses.dataclass(frozen=True, eq=False)
class Sequences:
  """CSR rows of item ids: row u is `items_N[offsets_U1[u]:offsets_U1[u + 1]]`."""

  offsets_U1: np.ndarray  # int64, offsets_U1[0] == 0
  items_N: np.ndarray  # int32

  def __len__(self) -> int:
    return len(self.offsets_U1) - 1

  def __getitem__(self, u: int) -> np.ndarray:
    return self.items_N[self.offsets_U1[u]:self.offsets_U1[u + 1]]

  @property
  def lengths_U(self) -> np.ndarray:
    return np.diff(self.offsets_U1)

  @classmethod
  def from_lists(cls, rows: Sequence[Sequence[int]]) -> Sequences:
    """CSR from a list of rows, e.g. `from_lists([[1, 2], [], [3]])`."""
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.fromiter((x for r in rows for x in r), np.int32, int(offsets[-1]))
    return cls(offsets, items)

  @classmethod
  def from_lengths(cls, lengths_U: np.ndarray, items_N: np.ndarray) -> Sequences:
    offsets = np.zeros(len(lengths_U) + 1, np.int64)
    np.cumsum(lengths_U, out=offsets[1:])
    return cls(offsets, np.asarray(items_N, np.int32))


@dataclasses.dataclass(frozen=True, eq=False)
class EvalSplit:
  """One target per user; `history[k]` is everything user `users_U[k]` did before `targets_U[k]`.

  `rewards_U` is each target's reward (`data/rewards.py`), or None where the split was made
  without (a built split always has it). On a multi-domain dataset `domains_U[k]` is the domain
  of `targets_U[k]` (the user is evaluated in that domain); None on a single catalogue.
  """

  users_U: np.ndarray  # int32 dense user indices
  history: Sequences
  targets_U: np.ndarray  # int32 dense item ids
  rewards_U: np.ndarray | None = None  # float32 reward of each target
  domains_U: np.ndarray | None = None  # int32 domain index of each target; None: one domain

  def __len__(self) -> int:
    return len(self.users_U)

  def select(self, keep: np.ndarray) -> EvalSplit:
    """The split restricted to rows `keep` (sorted indices), histories and domains included."""
    keep = np.asarray(keep, np.int64)
    lengths = self.history.lengths_U[keep]
    items = (np.concatenate([self.history[int(i)] for i in keep]) if len(keep) else
             np.zeros(0, np.int32))
    return EvalSplit(self.users_U[keep], Sequences.from_lengths(lengths, items),
                     self.targets_U[keep],
                     None if self.rewards_U is None else self.rewards_U[keep],
                     None if self.domains_U is None else self.domains_U[keep])

  def sample(self, n: int, seed: int) -> EvalSplit:
    """`n` of its users (a seeded draw, kept in their order) with their histories and targets."""
    return self.select(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))


@dataclasses.dataclass(eq=False)
class SequenceDataset:
  """Dense, split, ready-to-batch data; see docs/architecture.md."""

  num_items: int  # V, including the padding id 0
  num_users: int
  item_keys: np.ndarray  # [V] raw item keys; [0] is a placeholder
  user_keys: np.ndarray  # [U] raw user keys
  train: Sequences  # one row per user, time order
  valid: EvalSplit
  test: EvalSplit
  item_attrs: Sequences  # one row per item id (row 0 empty); attribute ids from 1
  num_attrs: int  # attribute table size, including the padding id 0
  item_titles: list[str]  # [V], "" where unknown
  attribute_names: list[str]  # [num_attrs], [0] == ""
  item_counts_V: np.ndarray  # int64 training-part interaction counts
  split: str = "loo"
  source: str = ""
  stats: dict[str, Any] = dataclasses.field(default_factory=dict)
  # Multi-domain catalogues: the domain of each item id (-1 at the padding id 0) and the domains'
  # names. Item ids are contiguous per domain (domain d holds ids domain_starts[d] .. the next
  # start - 1), so a domain is an id range. None / () for a single catalogue.
  item_domains_V: np.ndarray | None = None
  domain_names: tuple[str, ...] = ()
  kept_domain: str | None = None  # data.domain: only this domain's events were kept
  # float32 reward of each training event, aligned with `train.items_N` (data/rewards.py);
  # None: a dataset made without rewards (read as 1.0 each: `train_rewards`).
  train_rewards_N: np.ndarray | None = None

  @property
  def domain_starts(self) -> tuple[int, ...]:
    """The first item id of each domain, e.g. (1, 11838); () for a single catalogue."""
    return domain_starts(self.item_domains_V, len(self.domain_names))

  def train_rewards(self) -> np.ndarray:
    """float32 reward of each training event (1.0 each where the dataset has none)."""
    if self.train_rewards_N is None:
      return np.ones(len(self.train.items_N), np.float32)
    return self.train_rewards_N

  def summary(self) -> str:
    """One line: sizes of the catalog and of each split."""
    domains = ""
    if self.domain_names:
      counts = np.bincount(self.item_domains_V[1:], minlength=len(self.domain_names))
      domains = "; domains " + ", ".join(f"{n} ({c} items)"
                                          for n, c in zip(self.domain_names, counts))
      if self.kept_domain is not None:
        domains += f"; only {self.kept_domain} events kept"
    return (f"{self.source}: {self.num_users} users, {self.num_items - 1} items,"
            f" {self.stats.get('num_events', '?')} events; split {self.split}: train"
            f" {len(self.train.items_N)} events, valid {len(self.valid)}, test {len(self.test)};"
            f" {self.num_attrs - 1} attributes{domains}")


def domain_starts(item_domains_V: np.ndarray | None, num_domains: int) -> tuple[int, ...]:
  """The first id of each domain of a domain-contiguous catalogue; () without domains.

  Example: item_domains_V [-1, 0, 0, 1] -> (1, 3).
  """
  if item_domains_V is None or not num_domains:
    return ()
  doms = np.asarray(item_domains_V[1:])
  return tuple(int(np.searchsorted(doms, d, side="left")) + 1 for d in range(num_domains))


def build_options(*, dedupe: bool = False, min_rating: float | None = None,
                  min_user_events: int = 1, min_item_events: int = 1, split: str = "loo",
                  temporal_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  reward: rewards_lib.RewardConfig | None = None) -> dict[str, Any]:
  """Validated, canonical options of `build_dataset` (the part of the cache key they set)."""
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
  if not isinstance(dedupe, (bool, np.bool_)):
    raise DataError(f"dedupe must be True or False, got {dedupe!r}")
  for name, value in (("min_user_events", min_user_events), ("min_item_events", min_item_events)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise DataError(f"{name} must be a non-negative integer, got {value!r}")
  if min_rating is not None and not isinstance(min_rating, (int, float, np.number)):
    raise DataError(f"min_rating must be a number or None, got {min_rating!r}")
  fractions = None
  if split == "temporal":
    fractions = [float(f) for f in temporal_fractions]
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
      raise DataError("temporal_fractions must be three positive numbers (train, valid, test)"
                      f" summing to 1, got {list(temporal_fractions)}")
  return {"dedupe": bool(dedupe), "min_rating": None if min_rating is None else float(min_rating),
          "min_user_events": int(min_user_events), "min_item_events": int(min_item_events),
          "split": split, "temporal_fractions": fractions,
          "reward": rewards_lib.CONSTANT_ONE if reward is None else reward.options()}


def build_dataset(log: InteractionLog, *, dedupe: bool = False,
                  min_rating: float | None = None, min_user_events: int = 1,
                  min_item_events: int = 1, split: str = "loo",
                  temporal_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  reward: rewards_lib.RewardConfig | None = None,
                  cache_dir: str | os.PathLike[str] | None = None) -> SequenceDataset:
  """Filters, orders and splits an interaction log into a `SequenceDataset`.

  Order of operations: duplicates, rating threshold, k-core, chronological order, split,
  dense ids.

  Duplicates: an event is a duplicate when an earlier event in file order has the same user,
  item and timestamp (ratings aside); in a log without timestamps, when it repeats the item of
  the same user's previous event in file order (`a a b a` has one: the second `a`). Repeats
  inflate metrics (a tripled log scores a repeat as the next item), so they are always counted
  (`stats["duplicate_events"]`, logged) and, with `dedupe`, dropped before any other filter,
  keeping the first of each group.

  Chronological order is a stable sort by timestamp within each user: ties keep file order, and
  without timestamps file order is time order.

  Splits:
    * "loo" (leave-one-out, the standard protocol of the Amazon benchmarks): per user, test
      target = last event, valid target = second-to-last, train = the rest. Valid history = train
      sequence; test history = train sequence + valid target. Users with fewer than 3 events are
      dropped (counted and logged). The catalog is every item left after filtering.
    * "temporal" (global cut points, needs timestamps): with the filtered events' timestamps
      sorted ascending as `ts[0..N-1]` and fractions `(a, b, c)`, `t_valid = ts[floor(a*N)]` and
      `t_test = ts[floor((a+b)*N)]`. Train = events with `t < t_valid`. A user's valid example
      is their first event with `t_valid <= t < t_test`, with all their earlier events (= their
      train events) as history; their test example is their first event with `t >= t_test`,
      with all earlier events as history. The catalog is the items seen in train: a model
      cannot score an item it never trained on, so examples whose target is outside the catalog
      are dropped, items outside it are removed from test histories, and examples whose history
      ends up empty are dropped (all counted and logged). Users are those with a train event
      or an evaluation example.

  Args:
    log: raw events from a reader.
    dedupe: drop duplicate events (see above); False keeps them (counted either way).
    min_rating: keep only events rated at least this (needs ratings; None keeps all).
    min_user_events: k-core threshold on events per user (<= 1: no filter).
    min_item_events: k-core threshold on events per item (<= 1: no filter); both thresholds are
      applied alternately until neither drops anything.
    split: "loo" or "temporal".
    temporal_fractions: (train, valid, test) fractions of events for the temporal cut points.
    reward: the `reward` group (`data/rewards.py`): each event's reward, carried beside its item
      into `train_rewards_N` and each split's `rewards_U`; None: 1.0 for every event.
    cache_dir: where to keep / find the `.npz` + `.json` cache; None disables caching.

  Returns:
    The `SequenceDataset`; `stats` holds every count that filtering and splitting dropped.

  Raises:
    DataError: bad options, no ratings for `min_rating`, no timestamps for "temporal", or too
      few events for the split.
  """
  options = build_options(dedupe=dedupe, min_rating=min_rating, min_user_events=min_user_events,
                          min_item_events=min_item_events, split=split,
                          temporal_fractions=temporal_fractions, reward=reward)
  key = None
  if cache_dir is not None:
    key = cache_key(log.fingerprint or log_fingerprint(log), options)
    cached = load_cached(cache_dir, key)
    if cached is not None:
      return cached
  dataset = _build(log, options, reward)
  if key is not None:
    save_cached(dataset, cache_dir, key, options)
  return dataset


# ----------------------------------------------------------------------------- the build


def _build(log: InteractionLog, options: dict[str, Any],
           reward: rewards_lib.RewardConfig | None = None) -> SequenceDataset:
  src = log.source
  n = len(log)
  if n == 0:
    raise DataError(f"{src}: no events")
  rewards_raw_N = rewards_lib.event_rewards(log, reward)
  stats: dict[str, Any] = {"events_read": n}
  user_raw, user_inv_N = np.unique(log.users, return_inverse=True)
  item_raw, item_inv_N = np.unique(log.items, return_inverse=True)
  keep_N = np.ones(n, bool)

  times_raw_N = None if log.timestamps is None else np.asarray(log.timestamps, np.int64)
  duplicate_N = _duplicates(user_inv_N, item_inv_N, times_raw_N, len(item_raw))
  stats["duplicate_events"] = int(duplicate_N.sum())
  what = ("same user, item and time" if times_raw_N is not None else
          "a user's item repeated at once, file order")
  if options["dedupe"]:
    keep_N &= ~duplicate_N
    stats["dropped_duplicates"] = stats["duplicate_events"]
    logging.info("%s: dedupe dropped %d duplicate events (%s) of %d", src,
                 stats["duplicate_events"], what, n)
  elif stats["duplicate_events"]:
    logging.warning("%s: %d duplicate events (%s) of %d are kept; dedupe=True (config"
                    " data.dedupe) drops them", src, stats["duplicate_events"], what, n)
  else:
    logging.info("%s: no duplicate events (%s)", src, what)

  if options["min_rating"] is not None:
    if log.ratings is None:
      raise DataError(f"{src}: min_rating={options['min_rating']} but this log has no ratings")
    kept = int(keep_N.sum())
    keep_N &= log.ratings >= options["min_rating"]
    stats["dropped_by_rating"] = int(kept - keep_N.sum())
    logging.info("%s: min_rating %g dropped %d of %d events", src, options["min_rating"],
                 stats["dropped_by_rating"], n)
    if not keep_N.any():
      raise DataError(f"{src}: no event is rated at least {options['min_rating']}")

  keep_N = _k_core(keep_N, user_inv_N, item_inv_N, len(user_raw), len(item_raw),
                 options["min_user_events"], options["min_item_events"], src, stats)

  # Chronological order: stable by time, then stable by user, so ties keep file order.
  rows_N = np.flatnonzero(keep_N)
  users_N, items_N = user_inv_N[rows_N], item_inv_N[rows_N]
  if times_raw_N is not None:
    times_N = times_raw_N[rows_N]
    by_time_N = np.argsort(times_N, kind="stable")
    order_N = by_time_N[np.argsort(users_N[by_time_N], kind="stable")]
    times_N = times_N[order_N]
  else:
    order_N = np.argsort(users_N, kind="stable")
    times_N = None
  users_N, items_N = users_N[order_N], items_N[order_N]
  rewards_N = rewards_raw_N[rows_N][order_N]

  if options["split"] == "loo":
    parts = _split_loo(users_N, items_N, rewards_N, src, stats)
  else:
    if times_N is None:
      raise DataError(f"{src}: the temporal split needs timestamps; this log has none"
                      " (use split='loo')")
    parts = _split_temporal(users_N, items_N, rewards_N, times_N, options["temporal_fractions"],
                            src, stats)
  user_sel, item_sel, train, valid, test, train_rewards_N = parts

  item_keys = item_raw[item_sel]
  item_domains_V, domain_names = None, ()
  if log.item_side.domains:
    domain_names = tuple(log.item_side.domain_names)
    item_keys, item_domains_V, (train, valid, test) = _order_by_domain(
        item_keys, log.item_side.domains, len(domain_names), (train, valid, test), src)
    valid, test = (dataclasses.replace(sp, domains_U=item_domains_V[sp.targets_U])
                   for sp in (valid, test))
    for name, sp in (("valid", valid), ("test", test)):
      counts = np.bincount(sp.domains_U, minlength=len(domain_names))
      stats[f"{name}_targets_by_domain"] = dict(zip(domain_names, counts.tolist()))
    stats["train_events_by_domain"] = dict(zip(domain_names, np.bincount(
        item_domains_V[train.items_N], minlength=len(domain_names)).tolist()))
  placeholder = np.array([-1 if item_keys.dtype.kind in "iu" else ""], item_keys.dtype)
  item_keys = np.concatenate([placeholder, item_keys])
  num_items = len(item_keys)
  item_attrs, attribute_names, item_titles = _item_side_arrays(log.item_side, item_keys)
  item_counts = np.bincount(train.items_N, minlength=num_items).astype(np.int64)
  stats.update(num_users=len(user_sel), num_items=num_items - 1,
               train_events=int(len(train.items_N)), valid_examples=len(valid),
               test_examples=len(test))
  dataset = SequenceDataset(
      num_items=num_items, num_users=len(user_sel), item_keys=item_keys,
      user_keys=user_raw[user_sel], train=train, valid=valid, test=test, item_attrs=item_attrs,
      num_attrs=len(attribute_names), item_titles=item_titles, attribute_names=attribute_names,
      item_counts_V=item_counts, split=options["split"], source=src, stats=stats,
      train_rewards_N=train_rewards_N, item_domains_V=item_domains_V, domain_names=domain_names)
  logging.info("%s", dataset.summary())
  return dataset


def _order_by_domain(item_keys, domains, num_domains, splits, src):
  """Item ids renumbered so that each domain is one contiguous id range (stable by raw key).

  Returns (item keys in the new order, item_domains_V with -1 at 0, the splits renumbered).
  """
  doms = np.array([domains.get(k, -1) for k in item_keys.tolist()], np.int32)
  if (doms < 0).any():
    missing = item_keys[doms < 0]
    raise DataError(f"{src}: item {missing[0]} has no domain ({len(missing)} items without one)")
  if (doms >= num_domains).any():
    raise DataError(f"{src}: item {item_keys[doms >= num_domains][0]} has domain "
                    f"{int(doms.max())}; there are {num_domains} domains")
  order = np.argsort(doms, kind="stable")
  new_id = np.zeros(len(item_keys) + 1, np.int32)
  new_id[order + 1] = np.arange(1, len(item_keys) + 1, dtype=np.int32)
  train, valid, test = splits
  if not np.array_equal(order, np.arange(len(order))):
    renumber = lambda seqs: Sequences(seqs.offsets_U1, new_id[seqs.items_N])
    train = renumber(train)
    valid, test = (dataclasses.replace(sp, history=renumber(sp.history),
                                       targets_U=new_id[sp.targets_U]) for sp in (valid, test))
  return item_keys[order], np.concatenate([[-1], doms[order]]).astype(np.int32), (train, valid,
                                                                                   test)


def keep_domain(dataset: SequenceDataset, name: str) -> SequenceDataset:
  """The dataset with one domain's events only: the single-domain baseline on the same split.

  The split is the merged log's (built first): a user is evaluated where their merged target is
  in `name`, from the events of `name` before it; training keeps the events of `name` of each
  training row (with its reward). The catalogue (ids, keys, domains) is unchanged, so rankings
  and sampled candidates line up with the merged dataset's; the other domain's items simply have
  no training events. Raises DataError when `name` is not a domain of the dataset.
  """
  if not dataset.domain_names:
    raise DataError(f"data.domain={name!r}: {dataset.source} has no domains (a single-domain "
                    "format); data.domain needs a multi-domain log such as format crossdomain")
  if name not in dataset.domain_names:
    raise DataError(f"data.domain={name!r} is not a domain of {dataset.source} (its domains: "
                    f"{', '.join(dataset.domain_names)})")
  d = dataset.domain_names.index(name)
  in_d_V = dataset.item_domains_V == d

  def only_d(seqs: Sequences) -> Sequences:
    keep_N = in_d_V[seqs.items_N]
    owner_N = np.repeat(np.arange(len(seqs)), seqs.lengths_U)
    return Sequences.from_lengths(np.bincount(owner_N[keep_N], minlength=len(seqs)),
                                  seqs.items_N[keep_N])

  def split_d(sp: EvalSplit) -> EvalSplit:
    sel = sp.select(np.flatnonzero(sp.domains_U == d))
    return dataclasses.replace(sel, history=only_d(sel.history))

  train, valid, test = only_d(dataset.train), split_d(dataset.valid), split_d(dataset.test)
  train_rewards_N = (None if dataset.train_rewards_N is None
                     else dataset.train_rewards_N[in_d_V[dataset.train.items_N]])
  counts = np.bincount(train.items_N, minlength=dataset.num_items).astype(np.int64)
  stats = {**dataset.stats, "kept_domain": name,
           "kept_train_events": int(len(train.items_N)),
           "dropped_train_events": int(len(dataset.train.items_N) - len(train.items_N)),
           "kept_valid_examples": len(valid), "kept_test_examples": len(test),
           "empty_test_histories": int((test.history.lengths_U == 0).sum())}
  logging.info("%s: data.domain=%s keeps %d of %d training events, %d valid and %d test targets"
               " (%d test users without a %s event before the target)", dataset.source, name,
               stats["kept_train_events"], len(dataset.train.items_N), len(valid), len(test),
               stats["empty_test_histories"], name)
  return dataclasses.replace(dataset, train=train, valid=valid, test=test, item_counts_V=counts,
                             stats=stats, kept_domain=name, train_rewards_N=train_rewards_N)


def _duplicates(users_N: np.ndarray, items_N: np.ndarray, times_N: np.ndarray | None,
                num_items: int) -> np.ndarray:
  """Which events are duplicates of an earlier one (see `build_dataset`); first copies are not.

  Example: users [0, 0, 0, 1], items [5, 5, 6, 5] without times -> [F, T, F, F]; with times
  [1, 1, 1, 1] the same; with times [1, 2, 1, 1] -> [F, F, F, F].
  """
  n = len(users_N)
  if times_N is None:
    order_N = np.argsort(users_N, kind="stable")  # each user's events in file order
    a_N, b_N = users_N[order_N], items_N[order_N]
    same_N = (a_N[1:] == a_N[:-1]) & (b_N[1:] == b_N[:-1])
  else:
    pair_N = users_N.astype(np.int64) * num_items + items_N
    order_N = np.lexsort((times_N, pair_N))  # stable: equal events keep file order
    a_N, b_N = pair_N[order_N], times_N[order_N]
    same_N = (a_N[1:] == a_N[:-1]) & (b_N[1:] == b_N[:-1])
  duplicate_N = np.zeros(n, bool)
  duplicate_N[order_N[1:][same_N]] = True
  return duplicate_N


def _k_core(keep_N, user_inv_N, item_inv_N, num_users, num_items, min_user, min_item, src, stats):
  """Drops users / items below their thresholds, alternately, until nothing changes."""
  if min_user <= 1 and min_item <= 1:
    return keep_N
  before = int(keep_N.sum())
  users_before = int(np.count_nonzero(np.bincount(user_inv_N[keep_N], minlength=num_users)))
  items_before = int(np.count_nonzero(np.bincount(item_inv_N[keep_N], minlength=num_items)))
  rounds = 0
  while True:
    user_counts = np.bincount(user_inv_N[keep_N], minlength=num_users)
    item_counts = np.bincount(item_inv_N[keep_N], minlength=num_items)
    new_keep_N = (keep_N & (user_counts[user_inv_N] >= min_user) &
                  (item_counts[item_inv_N] >= min_item))
    rounds += 1
    if new_keep_N.sum() == keep_N.sum():
      break
    keep_N = new_keep_N
  users_after = int(np.count_nonzero(user_counts))
  items_after = int(np.count_nonzero(item_counts))
  stats.update(kcore_rounds=rounds, kcore_dropped_events=before - int(keep_N.sum()),
               kcore_dropped_users=users_before - users_after,
               kcore_dropped_items=items_before - items_after)
  logging.info("%s: %d-core on users, %d-core on items (%d rounds) dropped %d events, %d users,"
               " %d items", src, min_user, min_item, rounds, stats["kcore_dropped_events"],
               stats["kcore_dropped_users"], stats["kcore_dropped_items"])
  if not keep_N.any():
    raise DataError(f"{src}: too few events for the split: the k-core filter (users >= "
                    f"{min_user}, items >= {min_item}) left no events")
  return keep_N


def _split_loo(users_N, items_N, rewards_N, src, stats):
  """Leave-one-out over events sorted by (user, time); see `build_dataset`."""
  counts_U = np.bincount(users_N)
  short_U = (counts_U > 0) & (counts_U < 3)
  stats["split_dropped_users"] = int(short_U.sum())
  stats["split_dropped_events"] = int(counts_U[short_U].sum())
  if short_U.any():
    logging.info("%s: leave-one-out drops %d users with fewer than 3 events (%d events)", src,
                 stats["split_dropped_users"], stats["split_dropped_events"])
  keep_N = ~short_U[users_N]
  if not keep_N.any():
    raise DataError(f"{src}: too few events for the split: no user has the 3 events"
                    " leave-one-out needs (train, valid, test)")
  users_N, items_N, rewards_N = users_N[keep_N], items_N[keep_N], rewards_N[keep_N]
  stats["num_events"] = int(len(users_N))
  user_sel, users_N = np.unique(users_N, return_inverse=True)
  item_sel, item_ids_N = np.unique(items_N, return_inverse=True)
  item_ids_N = (item_ids_N + 1).astype(np.int32)
  lengths_U = np.bincount(users_N)
  offsets_U1 = np.concatenate([[0], np.cumsum(lengths_U)])
  pos_N = np.arange(len(users_N)) - offsets_U1[users_N]
  left_N = lengths_U[users_N] - pos_N  # 1 at the last event, 2 at the second-to-last
  train = Sequences.from_lengths(lengths_U - 2, item_ids_N[left_N > 2])
  everyone_U = np.arange(len(user_sel), dtype=np.int32)
  valid = EvalSplit(everyone_U, train, item_ids_N[left_N == 2], rewards_N[left_N == 2])
  test = EvalSplit(everyone_U, Sequences.from_lengths(lengths_U - 1, item_ids_N[left_N > 1]),
                   item_ids_N[left_N == 1], rewards_N[left_N == 1])
  return user_sel, item_sel, train, valid, test, rewards_N[left_N > 2]


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """Concatenated `arange(s, e)` for each pair, e.g. ([0, 5], [2, 7]) -> [0, 1, 5, 6]."""
  lengths = ends - starts
  total = int(lengths.sum())
  if total == 0:
    return np.zeros(0, np.int64)
  row_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  return np.repeat(starts - row_starts, lengths) + np.arange(total)


def _split_temporal(users_N, items_N, rewards_N, times_N, fractions, src, stats):
  """Global time cut points; see `build_dataset` for the exact definition."""
  n = len(times_N)
  sorted_times_N = np.sort(times_N)
  t_valid = sorted_times_N[min(int(np.floor(fractions[0] * n)), n - 1)]
  t_test = sorted_times_N[min(int(np.floor((fractions[0] + fractions[1]) * n)), n - 1)]
  stats.update(t_valid=int(t_valid), t_test=int(t_test), num_events=n)
  logging.info("%s: temporal split at t_valid=%d, t_test=%d", src, t_valid, t_test)
  in_train_N = times_N < t_valid
  if not in_train_N.any() or t_valid >= t_test or not (times_N >= t_test).any():
    raise DataError(f"{src}: too few events for the split: the cut points at fractions"
                    f" {fractions} leave an empty train, valid or test part (too many equal"
                    " timestamps?)")
  item_sel = np.unique(items_N[in_train_N])
  dense = np.zeros(items_N.max() + 1, np.int32)
  dense[item_sel] = np.arange(1, len(item_sel) + 1)
  item_ids_N = dense[items_N]  # 0: item unseen in train, outside the catalog

  num_raw_users = int(users_N.max()) + 1
  user_start = np.searchsorted(users_N, np.arange(num_raw_users))

  def first_per_user(mask_N):
    rows = np.flatnonzero(mask_N)
    _, first = np.unique(users_N[rows], return_index=True)
    return rows[first]

  valid_pos_X = first_per_user((times_N >= t_valid) & (times_N < t_test))
  test_pos_X = first_per_user(times_N >= t_test)

  def examples(pos_X, name):
    """Keeps examples with a known target and a non-empty in-catalog history."""
    known_X = item_ids_N[pos_X] > 0
    start_X = user_start[users_N[pos_X]]
    # Flat positions of every example's history events, and the example each belongs to.
    hist_idx = _ranges(start_X, pos_X)
    hist_owner = np.repeat(np.arange(len(pos_X)), pos_X - start_X)
    in_catalog = item_ids_N[hist_idx] > 0
    removed = int((~in_catalog).sum())
    hist_idx, hist_owner = hist_idx[in_catalog], hist_owner[in_catalog]
    lengths_X = np.bincount(hist_owner, minlength=len(pos_X))
    ok_X = known_X & (lengths_X > 0)
    stats[f"{name}_dropped_unknown_target"] = int((~known_X).sum())
    stats[f"{name}_dropped_empty_history"] = int((known_X & (lengths_X == 0)).sum())
    stats[f"{name}_history_items_removed"] = removed
    logging.info("%s: %s examples: %d kept, %d dropped (target not in train), %d dropped (empty"
                 " history), %d history events on items unseen in train removed", src, name,
                 int(ok_X.sum()), stats[f"{name}_dropped_unknown_target"],
                 stats[f"{name}_dropped_empty_history"], removed)
    return pos_X[ok_X], lengths_X[ok_X], item_ids_N[hist_idx[ok_X[hist_owner]]]

  valid_pos_X, valid_len_X, valid_hist = examples(valid_pos_X, "valid")
  test_pos_X, test_len_X, test_hist = examples(test_pos_X, "test")
  if len(valid_pos_X) == 0 or len(test_pos_X) == 0:
    raise DataError(f"{src}: too few events for the split: no usable "
                    f"{'valid' if len(valid_pos_X) == 0 else 'test'} example")
  train_users = users_N[in_train_N]
  user_sel = np.unique(np.concatenate([train_users, users_N[valid_pos_X],
                                       users_N[test_pos_X]]))
  dense_user = np.full(num_raw_users, -1, np.int64)
  dense_user[user_sel] = np.arange(len(user_sel))
  train = Sequences.from_lengths(
      np.bincount(dense_user[train_users], minlength=len(user_sel)), item_ids_N[in_train_N])
  valid = EvalSplit(dense_user[users_N[valid_pos_X]].astype(np.int32),
                    Sequences.from_lengths(valid_len_X, valid_hist), item_ids_N[valid_pos_X],
                    rewards_N[valid_pos_X])
  test = EvalSplit(dense_user[users_N[test_pos_X]].astype(np.int32),
                   Sequences.from_lengths(test_len_X, test_hist), item_ids_N[test_pos_X],
                   rewards_N[test_pos_X])
  return user_sel, item_sel, train, valid, test, rewards_N[in_train_N]


def _attr_sort_key(a):
  return (type(a).__name__, a)


def _item_side_arrays(side: ItemSide, item_keys: np.ndarray):
  """Dense item_attrs CSR, attribute names and titles over item ids 0..V-1."""
  keys = item_keys[1:].tolist()
  titles = [""] + [side.titles.get(k, "") or "" for k in keys]
  per_item = [list(dict.fromkeys(side.attributes.get(k, ()))) for k in keys]
  raw_attrs = sorted({a for attrs in per_item for a in attrs}, key=_attr_sort_key)
  attr_id = {a: i + 1 for i, a in enumerate(raw_attrs)}
  names = [""] + [str(side.attribute_names.get(a, a)) for a in raw_attrs]
  item_attrs = Sequences.from_lists([[]] + [[attr_id[a] for a in attrs] for attrs in per_item])
  return item_attrs, names, titles


# ----------------------------------------------------------------------------- cache


def log_fingerprint(log: InteractionLog) -> str:
  """sha256 of a log's arrays and side data, for logs that came from no file."""
  h = hashlib.sha256(log.source.encode())
  for arr in (log.users, log.items, log.timestamps, log.ratings):
    if arr is None:
      h.update(b"none")
    else:
      arr = np.ascontiguousarray(arr)
      h.update(arr.dtype.str.encode() + arr.tobytes())
  side = log.item_side
  h.update(repr((sorted(side.titles.items(), key=repr), sorted(side.attributes.items(), key=repr),
                 sorted(side.attribute_names.items(), key=repr))).encode())
  if side.domains:  # only then: the fingerprints of single-domain logs stay what they were
    h.update(repr((sorted(side.domains.items(), key=repr), list(side.domain_names))).encode())
  return h.hexdigest()


def cache_key(fingerprint: str, options: dict[str, Any]) -> str:
  """sha256 of the cache version, the source fingerprint and the build options."""
  blob = json.dumps({"version": CACHE_VERSION, "fingerprint": fingerprint, "options": options},
                    sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def cache_paths(cache_dir: str | os.PathLike[str], key: str) -> tuple[pathlib.Path, pathlib.Path]:
  """(npz, json) paths of one cache entry."""
  base = pathlib.Path(cache_dir).expanduser() / f"dataset-{key[:24]}"
  return base.with_suffix(".npz"), base.with_suffix(".json")


def _pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  encoded = [s.encode("utf-8") for s in strings]
  lengths = np.fromiter((len(b) for b in encoded), np.int64, len(encoded))
  blob = np.frombuffer(b"".join(encoded), np.uint8)
  return blob, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _unpack_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
  data = blob.tobytes()
  return [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]


def save_cached(dataset: SequenceDataset, cache_dir, key: str,
                options: dict[str, Any] | None = None) -> pathlib.Path:
  """Writes the dataset's cache entry atomically; returns the `.npz` path."""
  npz_path, json_path = cache_paths(cache_dir, key)
  npz_path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {"item_keys": dataset.item_keys, "user_keys": dataset.user_keys,
            "train_offsets": dataset.train.offsets_U1, "train_items": dataset.train.items_N,
            "attr_offsets": dataset.item_attrs.offsets_U1,
            "attr_items": dataset.item_attrs.items_N, "item_counts": dataset.item_counts_V,
            "train_rewards": dataset.train_rewards()}
  for name, split in (("valid", dataset.valid), ("test", dataset.test)):
    arrays.update({f"{name}_users": split.users_U, f"{name}_targets": split.targets_U,
                   f"{name}_offsets": split.history.offsets_U1,
                   f"{name}_items": split.history.items_N,
                   f"{name}_rewards": (np.ones(len(split), np.float32) if split.rewards_U is None
                                       else split.rewards_U)})
  if dataset.item_domains_V is not None:
    arrays["item_domains"] = dataset.item_domains_V
    arrays.update({f"{name}_domains": sp.domains_U
                   for name, sp in (("valid", dataset.valid), ("test", dataset.test))})
  arrays["titles_blob"], arrays["titles_offsets"] = _pack_strings(dataset.item_titles)
  arrays["names_blob"], arrays["names_offsets"] = _pack_strings(dataset.attribute_names)
  meta = {"key": key, "version": CACHE_VERSION, "num_items": dataset.num_items,
          "num_users": dataset.num_users, "num_attrs": dataset.num_attrs,
          "split": dataset.split, "source": dataset.source, "stats": dataset.stats,
          "options": options, "domain_names": list(dataset.domain_names)}
  tmp = npz_path.with_name(npz_path.name + f".tmp{os.getpid()}")
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, npz_path)
  # The json is written last: its presence marks a complete entry.
  tmp = json_path.with_name(json_path.name + f".tmp{os.getpid()}")
  tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
  os.replace(tmp, json_path)
  logging.info("wrote dataset cache %s", npz_path)
  return npz_path


def load_cached(cache_dir, key: str) -> SequenceDataset | None:
  """The cached dataset for `key`, or None when there is none (or it is unreadable: rebuilt)."""
  npz_path, json_path = cache_paths(cache_dir, key)
  if not (npz_path.is_file() and json_path.is_file()):
    return None
  try:
    meta = json.loads(json_path.read_text())
    if meta.get("key") != key or meta.get("version") != CACHE_VERSION:
      return None
    with np.load(npz_path, allow_pickle=False) as z:
      a = {k: z[k] for k in z.files}

    def split(name):
      return EvalSplit(a[f"{name}_users"], Sequences(a[f"{name}_offsets"], a[f"{name}_items"]),
                       a[f"{name}_targets"], a[f"{name}_rewards"], a.get(f"{name}_domains"))

    dataset = SequenceDataset(
        num_items=meta["num_items"], num_users=meta["num_users"], item_keys=a["item_keys"],
        user_keys=a["user_keys"], train=Sequences(a["train_offsets"], a["train_items"]),
        valid=split("valid"), test=split("test"),
        item_attrs=Sequences(a["attr_offsets"], a["attr_items"]), num_attrs=meta["num_attrs"],
        item_titles=_unpack_strings(a["titles_blob"], a["titles_offsets"]),
        attribute_names=_unpack_strings(a["names_blob"], a["names_offsets"]),
        item_counts_V=a["item_counts"], split=meta["split"], source=meta["source"],
        stats=meta["stats"], train_rewards_N=a["train_rewards"],
        item_domains_V=a.get("item_domains"), domain_names=tuple(meta.get("domain_names", ())))
  except Exception as e:  # pylint: disable=broad-except
    # A damaged entry (BadZipFile, a bad CRC, EOFError, zlib.error, a missing array, ...) is
    # rebuilt from the source, never fatal.
    logging.warning("ignoring unreadable dataset cache %s (%s: %s); rebuilding it", npz_path,
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return None
  logging.info("loaded dataset cache %s", npz_path)
  return dataset
