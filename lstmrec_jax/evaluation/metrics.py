"""Full-ranking metrics from target ranks (`scoring.ranks`): HR@k, NDCG@k, MRR, by history length.

Shape legend: U users.

MRR is over the whole catalog (a target at rank 500 still adds 1/501); MRR@10 counts only the top
10 (0 beyond), as most papers and RecBole report it: compare MRR@10 with MRR@10. Every user has one
held-out target, so RecBole's Recall@k (hits / relevant items) equals HR@k here; it is not
reported twice.

A rank is 0-based: the number of catalog items ahead of the target (`scoring.ranks.target_ranks`).
NONFINITE_RANK (a user whose scores were not finite) is a miss at every k and counted as
`nonfinite_users`, so a broken model can never look good.

A target the user has already interacted with (it is in the history: a repeat) is rankable in
`target_ranks`. The protocol choice `eval.seen_targets` is applied to the ranks here
(`apply_seen_targets`): "miss" (the published protocol: the history, target included, is removed,
so a repeated target can never be hit) gives such a user SEEN_TARGET_RANK; "rankable" keeps the
rank. One ranking pass gives both numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from lstmrec_jax import config_keys
from lstmrec_jax.scoring import ranks as ranks_lib

DEFAULT_KS = (1, 5, 10, 20)
NONFINITE_RANK = ranks_lib.NONFINITE_RANK  # the rank of a user with any non-finite score
# A repeated target under seen_targets="miss": a miss at every k, MRR 0, not counted as non-finite.
SEEN_TARGET_RANK = NONFINITE_RANK - 1
SEEN_TARGETS = config_keys.SEEN_TARGETS  # eval.seen_targets


def metrics_from_ranks(ranks_U: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float | None]:
  """HR@k, NDCG@k (one relevant item) and MRR from 0-based ranks; NONFINITE_RANK is a miss.

  Example: ranks [0, 3] -> HR@1 0.5, HR@5 1.0, NDCG@5 (1 + 1/log2(5)) / 2, MRR (1 + 1/4) / 2;
  ranks [0, 12] -> MRR (1 + 1/13) / 2, MRR@10 1 / 2.
  """
  ranks = np.asarray(ranks_U, np.float64)
  if ranks.size == 0:  # None, not NaN: the report stays strict JSON and comparable
    return {**{f"HR@{k}": None for k in ks}, **{f"NDCG@{k}": None for k in ks if k > 1},
            "MRR": None, "MRR@10": None, "users": 0}
  out: dict[str, float] = {}
  for k in ks:
    out[f"HR@{k}"] = float(np.mean(ranks < k))
  for k in ks:
    if k > 1:
      out[f"NDCG@{k}"] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))
  out["MRR"] = float(np.mean(np.where(ranks >= SEEN_TARGET_RANK, 0.0, 1.0 / (ranks + 1.0))))
  out["MRR@10"] = float(np.mean(np.where(ranks < 10, 1.0 / (ranks + 1.0), 0.0)))
  out["users"] = int(ranks.size)
  nonfinite = int(np.sum(ranks >= NONFINITE_RANK))
  if nonfinite:  # reported only when it happens: the keys of a healthy report stay the same
    out["nonfinite_users"] = nonfinite
  return out


def repeated_targets(history_offsets_U1: np.ndarray, history_items_N: np.ndarray,
                     targets_U: np.ndarray) -> np.ndarray:
  """bool [U]: whether each user's target occurs in the user's history (a repeat).

  Example: histories [[1, 2], [3]] (offsets [0, 2, 3], items [1, 2, 3]), targets [2, 4]
  -> [True, False].
  """
  offsets = np.asarray(history_offsets_U1, np.int64)
  owner_N = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
  hit_N = np.asarray(history_items_N) == np.asarray(targets_U)[owner_N]
  return np.bincount(owner_N[hit_N], minlength=len(offsets) - 1) > 0


def apply_seen_targets(ranks_U: np.ndarray, repeated_U: np.ndarray, seen_targets: str
                       ) -> np.ndarray:
  """Ranks under an `eval.seen_targets` protocol: "miss" turns repeated targets into misses.

  A non-finite rank stays non-finite (the model is broken whatever the protocol).
  Example: ranks [0, 3], repeated [True, False], "miss" -> [SEEN_TARGET_RANK, 3].
  """
  if seen_targets not in SEEN_TARGETS:
    raise ValueError(f"seen_targets={seen_targets!r} must be one of {', '.join(SEEN_TARGETS)}")
  ranks = np.asarray(ranks_U)
  if seen_targets == "rankable":
    return ranks
  miss = np.asarray(repeated_U, bool) & (ranks < NONFINITE_RANK)
  return np.where(miss, np.asarray(SEEN_TARGET_RANK, ranks.dtype), ranks)


REWARD_KS = (5, 10, 20)


def reward_metrics(ranks_U: np.ndarray, rewards_U: np.ndarray,
                   ks: Sequence[int] = REWARD_KS) -> dict[str, float | None]:
  """The reward the hits earn: `hit_reward@k` (mean reward of the targets hit at k; None with no
  hit) and `reward@k` (their summed reward per target: the SQN papers' cumulative reward / U).

  Example: ranks [0, 30], rewards [1.0, 0.2] -> hit_reward@10 1.0, reward@10 0.5,
  hit_reward@20 1.0.
  """
  ranks = np.asarray(ranks_U, np.float64)
  rewards = np.asarray(rewards_U, np.float64)
  out: dict[str, float | None] = {}
  for k in ks:
    hit = ranks < k
    out[f"hit_reward@{k}"] = float(rewards[hit].mean()) if hit.any() else None
    out[f"reward@{k}"] = float(np.where(hit, rewards, 0.0).mean()) if ranks.size else None
  return out


HISTORY_BUCKETS = ((1, 2), (3, 5), (6, 10), (11, None))


def bucket_name(lo: int, hi: int | None) -> str:
  """'1-2', '3-5', '>10' style names of history-length buckets."""
  return f">{lo - 1}" if hi is None else f"{lo}-{hi}"


def metrics_by_history_length(ranks_U: np.ndarray, history_lengths_U: np.ndarray,
                              buckets: Iterable[tuple[int, int | None]] = HISTORY_BUCKETS,
                              ks: Sequence[int] = (10,)) -> dict[str, Mapping[str, float]]:
  """Metrics per bucket of history length (events before the target)."""
  out = {}
  for lo, hi in buckets:
    sel = (history_lengths_U >= lo) & (history_lengths_U <= (hi if hi is not None else np.inf))
    out[bucket_name(lo, hi)] = metrics_from_ranks(np.asarray(ranks_U)[sel], ks)
  return out
