"""Full-ranking metrics: the target's rank over the whole catalog, computed in item chunks.

Shape legend: B users, E embedding size, V catalog size (row 0 = padding), S seen items per user,
C items per chunk, K top-k.

The rank of a target is the number of catalog items that outrank it: real items (id >= 1), other than
the target, not removed as already seen, whose score is greater than or equal to the target's
(ties count against the target, so a constant scorer gets no credit). Rank 0 is a hit at 1. Items
are visited in chunks of C with a running count, so ranking V = 10^6 never holds a [B x V] matrix.
The target itself is never removed here, even when the user saw it before (see below).

A non-finite score (NaN or +inf, from a diverged model) compares false with everything, so a
plain `>=` would rank a NaN target first. Any user whose target or candidate scores are not finite
gets NONFINITE_RANK instead: worse than every real rank (a miss at every k), and counted by
`metrics_from_ranks` as `nonfinite_users`.

A target the user has already interacted with (it is in the history: a repeat) is kept rankable
here. The protocol choice `eval.seen_targets` is applied to the ranks afterwards
(`apply_seen_targets`): "miss" (the published protocol: the history, target included, is removed,
so a repeated target can never be hit) gives such a user SEEN_TARGET_RANK; "rankable" keeps the
rank computed here. One ranking pass gives both numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (1, 5, 10, 20)
NONFINITE_RANK = np.iinfo(np.int32).max  # the rank of a user with any non-finite score
# A repeated target under seen_targets="miss": a miss at every k, MRR 0, not counted as non-finite.
SEEN_TARGET_RANK = NONFINITE_RANK - 1
SEEN_TARGETS = ("miss", "rankable")  # eval.seen_targets


def _pad_items(table_VxE: jax.Array, bias_V: jax.Array | None, chunk: int):
  """Pads the item axis to a multiple of `chunk`; padded rows score -inf."""
  num_items = table_VxE.shape[0]
  num_chunks = -(-num_items // chunk)
  pad = num_chunks * chunk - num_items
  table = jnp.pad(table_VxE, ((0, pad), (0, 0)))
  bias = jnp.zeros((num_items,), jnp.float32) if bias_V is None else bias_V.astype(jnp.float32)
  bias = jnp.pad(bias, (0, pad), constant_values=-jnp.inf)
  return table.reshape(num_chunks, chunk, -1), bias.reshape(num_chunks, chunk)


def _chunk_scores(user_BxE, table_CxE, bias_C, lo, seen_BxS, targets_B, exclude_seen):
  """Scores of one item chunk with padding id 0 and (optionally) seen items set to -inf."""
  chunk = table_CxE.shape[0]
  scores_BxC = jnp.dot(user_BxE, table_CxE.T.astype(user_BxE.dtype),
                       preferred_element_type=jnp.float32) + bias_C[None, :]
  ids_C = lo + jnp.arange(chunk)
  scores_BxC = jnp.where(ids_C[None, :] == 0, -jnp.inf, scores_BxC)
  if exclude_seen and seen_BxS is not None:
    local = seen_BxS - lo
    drop = (seen_BxS > 0) & (local >= 0) & (local < chunk) & (seen_BxS != targets_B[:, None])
    rows = jnp.broadcast_to(jnp.arange(seen_BxS.shape[0])[:, None], seen_BxS.shape)
    seen_BxC = jnp.zeros(scores_BxC.shape, bool).at[rows, jnp.where(drop, local, chunk)].set(
        True, mode="drop")
    scores_BxC = jnp.where(seen_BxC, -jnp.inf, scores_BxC)
  return scores_BxC


def target_ranks(user_BxE: jax.Array, table_VxE: jax.Array, bias_V: jax.Array | None,
                 targets_B: jax.Array, seen_BxS: jax.Array | None = None, *,
                 exclude_seen: bool = True, chunk_size: int = 8192) -> jax.Array:
  """0-based rank of each target among all items (see the module docstring); int32 [B].

  Example: scores [pad, 0.1, 0.9, 0.5] with target 3 and nothing seen -> rank 1 (item 2 is ahead);
  scores [pad, 0.1, nan, 0.5] -> NONFINITE_RANK.
  """
  user = user_BxE.astype(jnp.float32)
  target_scores_B = jnp.einsum("be,be->b", user, table_VxE[targets_B].astype(jnp.float32))
  if bias_V is not None:
    target_scores_B = target_scores_B + bias_V[targets_B].astype(jnp.float32)
  chunk = min(chunk_size, table_VxE.shape[0])
  tables, biases = _pad_items(table_VxE, bias_V, chunk)

  def body(carry, xs):
    count_B, bad_B = carry
    index, table_CxE, bias_C = xs
    lo = index * chunk
    scores_BxC = _chunk_scores(user, table_CxE, bias_C, lo, seen_BxS, targets_B, exclude_seen)
    ids_C = lo + jnp.arange(chunk)
    ahead = (scores_BxC >= target_scores_B[:, None]) & (ids_C[None, :] != targets_B[:, None])
    # -inf marks padding and removed items; NaN or +inf is a broken score
    bad_B = bad_B | jnp.any(jnp.isnan(scores_BxC) | (scores_BxC == jnp.inf), axis=1)
    return (count_B + ahead.sum(axis=1, dtype=jnp.int32), bad_B), None

  (count_B, bad_B), _ = jax.lax.scan(
      body, (jnp.zeros(targets_B.shape, jnp.int32), ~jnp.isfinite(target_scores_B)),
      (jnp.arange(tables.shape[0]), tables, biases))
  return jnp.where(bad_B, NONFINITE_RANK, count_B)


def top_k_items(user_BxE: jax.Array, table_VxE: jax.Array, bias_V: jax.Array | None,
                k: int, seen_BxS: jax.Array | None = None, *, exclude_seen: bool = True,
                chunk_size: int = 8192) -> tuple[jax.Array, jax.Array]:
  """Each user's top-k item ids and scores over the catalog, with a running top-k over chunks."""
  user = user_BxE.astype(jnp.float32)
  chunk = max(min(chunk_size, table_VxE.shape[0]), k)
  tables, biases = _pad_items(table_VxE, bias_V, chunk)
  no_target_B = jnp.full((user.shape[0],), -1, jnp.int32)

  def body(carry, xs):
    best_scores_BxK, best_ids_BxK = carry
    index, table_CxE, bias_C = xs
    lo = index * chunk
    scores_BxC = _chunk_scores(user, table_CxE, bias_C, lo, seen_BxS, no_target_B, exclude_seen)
    ids_BxC = jnp.broadcast_to(lo + jnp.arange(chunk, dtype=jnp.int32), scores_BxC.shape)
    all_scores = jnp.concatenate([best_scores_BxK, scores_BxC], axis=1)
    all_ids = jnp.concatenate([best_ids_BxK, ids_BxC], axis=1)
    top_scores, idx = jax.lax.top_k(all_scores, k)
    return (top_scores, jnp.take_along_axis(all_ids, idx, axis=1)), None

  init = (jnp.full((user.shape[0], k), -jnp.inf, jnp.float32),
          jnp.zeros((user.shape[0], k), jnp.int32))
  (scores, ids), _ = jax.lax.scan(body, init, (jnp.arange(tables.shape[0]), tables, biases))
  return ids, scores


def metrics_from_ranks(ranks_U: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float | None]:
  """HR@k, NDCG@k (one relevant item) and MRR from 0-based ranks; NONFINITE_RANK is a miss.

  Example: ranks [0, 3] -> HR@1 0.5, HR@5 1.0, NDCG@5 (1 + 1/log2(5)) / 2, MRR (1 + 1/4) / 2.
  """
  ranks = np.asarray(ranks_U, np.float64)
  if ranks.size == 0:  # None, not NaN: the report stays strict JSON and comparable
    return {**{f"HR@{k}": None for k in ks}, **{f"NDCG@{k}": None for k in ks if k > 1},
            "MRR": None, "users": 0}
  out: dict[str, float] = {}
  for k in ks:
    out[f"HR@{k}"] = float(np.mean(ranks < k))
  for k in ks:
    if k > 1:
      out[f"NDCG@{k}"] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))
  out["MRR"] = float(np.mean(np.where(ranks >= SEEN_TARGET_RANK, 0.0, 1.0 / (ranks + 1.0))))
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
