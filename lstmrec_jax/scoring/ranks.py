"""The target's rank over the whole catalog and each user's top-k, computed in item chunks.

Shape legend: B users, E embedding size, V catalog size (row 0 = padding), S seen items per user,
C items per chunk, K top-k, M candidates per user (the sampled protocol: the target and its
sampled negatives).

Domains: with `item_domains_V` (each item's domain) and `domains_B` (each row's domain; -1 = all)
a row is ranked, and its top-k drawn, among its own domain's items only: the others score -inf in
every chunk, exactly like removed items (one path for evaluation and serving).

Pairs: an optional (ids_BxP, values_BxP) per row adds values_BxP[b, p] to the score of item
ids_BxP[b, p] (id 0: nothing), in every chunk and to the target's score: the transition prior of
`model.transition_weight` (`SeqRecModel.transition_pairs`), sparse per user.

The rank of a target is the number of catalog items that outrank it: real items (id >= 1), other than
the target, not removed as already seen, whose score is greater than or equal to the target's
(ties count against the target, so a constant scorer gets no credit). Rank 0 is a hit at 1. Items
are visited in chunks of C with a running count, so ranking V = 10^6 never holds a [B x V] matrix.
The target itself is never removed here, even when the user saw it before: the protocol choice
`eval.seen_targets` is applied to the ranks afterwards (`evaluation.metrics.apply_seen_targets`).

A non-finite score (NaN or +inf, from a diverged model) compares false with everything, so a
plain `>=` would rank a NaN target first. Any user whose target or candidate scores are not finite
gets NONFINITE_RANK instead: worse than every real rank (a miss at every k), and counted by
`evaluation.metrics.metrics_from_ranks` as `nonfinite_users`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NONFINITE_RANK = np.iinfo(np.int32).max  # the rank of a user with any non-finite score


def pad_items(table_VxE: jax.Array, bias_V: jax.Array | None, chunk: int):
  """Pads the item axis to a multiple of `chunk`; padded rows score -inf."""
  num_items = table_VxE.shape[0]
  num_chunks = -(-num_items // chunk)
  pad = num_chunks * chunk - num_items
  table = jnp.pad(table_VxE, ((0, pad), (0, 0)))
  bias = jnp.zeros((num_items,), jnp.float32) if bias_V is None else bias_V.astype(jnp.float32)
  bias = jnp.pad(bias, (0, pad), constant_values=-jnp.inf)
  return table.reshape(num_chunks, chunk, -1), bias.reshape(num_chunks, chunk)


def pad_domains(item_domains_V: jax.Array | None, chunk: int) -> jax.Array | None:
  """[num_chunks, chunk] item domains, padded with -2 (no row's domain); None stays None."""
  if item_domains_V is None:
    return None
  num_items = item_domains_V.shape[0]
  pad = -(-num_items // chunk) * chunk - num_items
  return jnp.pad(jnp.asarray(item_domains_V, jnp.int32), (0, pad),
                 constant_values=-2).reshape(-1, chunk)


def pair_scores(pairs, ids_BxM: jax.Array) -> jax.Array:
  """What `pairs` (ids_BxP, values_BxP) add to the items ids_BxM of each row, f32 [B, M].

  Example: pairs ([[2, 5, 0]], [[1.0, 0.5, 0.0]]), ids [[5, 3, 2]] -> [[0.5, 0.0, 1.0]].
  """
  ids_BxP, values_BxP = pairs
  match_BxMxP = (ids_BxM[:, :, None] == ids_BxP[:, None, :]) & (ids_BxP[:, None, :] > 0)
  return jnp.sum(jnp.where(match_BxMxP, values_BxP.astype(jnp.float32)[:, None, :], 0.0), axis=2)


def _chunk_cells(ids_BxP: jax.Array, keep_BxP: jax.Array, lo, chunk: int):
  """(rows, columns) of per-row item ids inside the chunk lo .. lo + chunk - 1, for a scatter with
  mode="drop": ids outside it, id 0 and those not kept get the column `chunk` (dropped)."""
  local = ids_BxP - lo
  inside = keep_BxP & (ids_BxP > 0) & (local >= 0) & (local < chunk)
  rows = jnp.broadcast_to(jnp.arange(ids_BxP.shape[0])[:, None], ids_BxP.shape)
  return rows, jnp.where(inside, local, chunk)


def add_pairs(scores_BxC: jax.Array, pairs, lo) -> jax.Array:
  """scores_BxC of the items lo .. lo + C - 1 with the pairs' values added (a scatter-add)."""
  ids_BxP, values_BxP = pairs
  cells = _chunk_cells(ids_BxP, jnp.ones(ids_BxP.shape, bool), lo, scores_BxC.shape[1])
  return scores_BxC.at[cells].add(values_BxP.astype(jnp.float32), mode="drop")


def chunk_scores(user_BxE, table_CxE, bias_C, lo, seen_BxS, targets_B, exclude_seen,
                 domains_C=None, domains_B=None, pairs=None):
  """Scores of one item chunk (plus the pairs' values, given pairs) with padding id 0,
  (optionally) seen items and, with domains, items outside each row's domain set to -inf."""
  chunk = table_CxE.shape[0]
  scores_BxC = jnp.dot(user_BxE, table_CxE.T.astype(user_BxE.dtype),
                       preferred_element_type=jnp.float32) + bias_C[None, :]
  if pairs is not None:
    scores_BxC = add_pairs(scores_BxC, pairs, lo)
  ids_C = lo + jnp.arange(chunk)
  scores_BxC = jnp.where(ids_C[None, :] == 0, -jnp.inf, scores_BxC)
  if domains_C is not None and domains_B is not None:
    row_B1 = domains_B.astype(jnp.int32)[:, None]
    inside_BxC = (row_B1 < 0) | (domains_C[None, :] == row_B1)
    scores_BxC = jnp.where(inside_BxC, scores_BxC, -jnp.inf)
  if exclude_seen and seen_BxS is not None:
    cells = _chunk_cells(seen_BxS, seen_BxS != targets_B[:, None], lo, chunk)
    seen_BxC = jnp.zeros(scores_BxC.shape, bool).at[cells].set(True, mode="drop")
    scores_BxC = jnp.where(seen_BxC, -jnp.inf, scores_BxC)
  return scores_BxC


def target_ranks(user_BxE: jax.Array, table_VxE: jax.Array, bias_V: jax.Array | None,
                 targets_B: jax.Array, seen_BxS: jax.Array | None = None, *,
                 exclude_seen: bool = True, chunk_size: int = 8192,
                 item_domains_V: jax.Array | None = None,
                 domains_B: jax.Array | None = None, pairs=None) -> jax.Array:
  """0-based rank of each target among all items (see the module docstring); int32 [B].

  With `item_domains_V` and `domains_B`, among the items of the row's domain only.
  Example: scores [pad, 0.1, 0.9, 0.5] with target 3 and nothing seen -> rank 1 (item 2 is ahead);
  scores [pad, 0.1, nan, 0.5] -> NONFINITE_RANK; with domains [-1, 0, 1, 0] and the row's
  domain 0 -> rank 0 (item 2 is in domain 1).
  """
  user = user_BxE.astype(jnp.float32)
  target_scores_B = jnp.einsum("be,be->b", user, table_VxE[targets_B].astype(jnp.float32))
  if bias_V is not None:
    target_scores_B = target_scores_B + bias_V[targets_B].astype(jnp.float32)
  if pairs is not None:
    target_scores_B = target_scores_B + pair_scores(pairs, targets_B[:, None])[:, 0]
  chunk = min(chunk_size, table_VxE.shape[0])
  tables, biases = pad_items(table_VxE, bias_V, chunk)
  domains = pad_domains(item_domains_V, chunk) if domains_B is not None else None
  if domains is None:
    domains = jnp.zeros(tables.shape[:2], jnp.int32)

  def body(carry, xs):
    count_B, bad_B = carry
    index, table_CxE, bias_C, domains_C = xs
    lo = index * chunk
    scores_BxC = chunk_scores(user, table_CxE, bias_C, lo, seen_BxS, targets_B, exclude_seen,
                              domains_C, domains_B, pairs)
    ids_C = lo + jnp.arange(chunk)
    ahead = (scores_BxC >= target_scores_B[:, None]) & (ids_C[None, :] != targets_B[:, None])
    # -inf marks padding and removed items; NaN or +inf is a broken score
    bad_B = bad_B | jnp.any(jnp.isnan(scores_BxC) | (scores_BxC == jnp.inf), axis=1)
    return (count_B + ahead.sum(axis=1, dtype=jnp.int32), bad_B), None

  (count_B, bad_B), _ = jax.lax.scan(
      body, (jnp.zeros(targets_B.shape, jnp.int32), ~jnp.isfinite(target_scores_B)),
      (jnp.arange(tables.shape[0]), tables, biases, domains))
  return jnp.where(bad_B, NONFINITE_RANK, count_B)


def top_k_items(user_BxE: jax.Array, table_VxE: jax.Array, bias_V: jax.Array | None,
                k: int, seen_BxS: jax.Array | None = None, *, exclude_seen: bool = True,
                chunk_size: int = 8192, item_domains_V: jax.Array | None = None,
                domains_B: jax.Array | None = None, pairs=None) -> tuple[jax.Array, jax.Array]:
  """Each user's top-k item ids and scores over the catalog (with `item_domains_V` and
  `domains_B`: over the row's domain), with a running top-k over chunks."""
  user = user_BxE.astype(jnp.float32)
  chunk = max(min(chunk_size, table_VxE.shape[0]), k)
  tables, biases = pad_items(table_VxE, bias_V, chunk)
  no_target_B = jnp.full((user.shape[0],), -1, jnp.int32)
  domains = pad_domains(item_domains_V, chunk) if domains_B is not None else None
  if domains is None:
    domains = jnp.zeros(tables.shape[:2], jnp.int32)

  def body(carry, xs):
    best_scores_BxK, best_ids_BxK = carry
    index, table_CxE, bias_C, domains_C = xs
    lo = index * chunk
    scores_BxC = chunk_scores(user, table_CxE, bias_C, lo, seen_BxS, no_target_B, exclude_seen,
                              domains_C, domains_B, pairs)
    ids_BxC = jnp.broadcast_to(lo + jnp.arange(chunk, dtype=jnp.int32), scores_BxC.shape)
    all_scores = jnp.concatenate([best_scores_BxK, scores_BxC], axis=1)
    all_ids = jnp.concatenate([best_ids_BxK, ids_BxC], axis=1)
    top_scores, idx = jax.lax.top_k(all_scores, k)
    return (top_scores, jnp.take_along_axis(all_ids, idx, axis=1)), None

  init = (jnp.full((user.shape[0], k), -jnp.inf, jnp.float32),
          jnp.zeros((user.shape[0], k), jnp.int32))
  (scores, ids), _ = jax.lax.scan(body, init,
                                  (jnp.arange(tables.shape[0]), tables, biases, domains))
  return ids, scores


def candidate_ranks(user_BxE: jax.Array, table_VxE: jax.Array, bias_V: jax.Array | None,
                    candidates_BxM: jax.Array, pairs=None) -> tuple[jax.Array, jax.Array]:
  """The sampled protocol: each target's 0-based rank among its row's candidates.

  `candidates_BxM[:, 0]` is the target, the rest its negatives (id 0: none). The rank is the
  number of negatives scoring at least the target's score (ties count against the target, as in
  `target_ranks`); a row with a non-finite candidate score gets NONFINITE_RANK. Also returns
  ties_B, the negatives scoring exactly the target's score (a published rule that counts only
  strictly greater negatives gives rank - ties).

  Example: candidates [[3, 1, 2]] with scores [pad, 0.5, 0.9, 0.5] -> rank 2, ties 1.
  """
  user = user_BxE.astype(jnp.float32)
  rows_BxMxE = jnp.take(table_VxE, candidates_BxM, axis=0).astype(jnp.float32)
  scores_BxM = jnp.einsum("be,bme->bm", user, rows_BxMxE)
  if bias_V is not None:
    scores_BxM = scores_BxM + jnp.take(bias_V, candidates_BxM).astype(jnp.float32)
  if pairs is not None:
    scores_BxM = scores_BxM + pair_scores(pairs, candidates_BxM)
  real_BxM = candidates_BxM > 0
  target_B1 = scores_BxM[:, :1]
  negatives = real_BxM[:, 1:]
  ahead_B = jnp.sum(negatives & (scores_BxM[:, 1:] >= target_B1), axis=1, dtype=jnp.int32)
  ties_B = jnp.sum(negatives & (scores_BxM[:, 1:] == target_B1), axis=1, dtype=jnp.int32)
  bad_B = jnp.any(real_BxM & ~jnp.isfinite(scores_BxM), axis=1)
  return jnp.where(bad_B, NONFINITE_RANK, ahead_B), jnp.where(bad_B, 0, ties_B)
