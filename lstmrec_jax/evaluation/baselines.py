"""Baselines every report sits beside: the popularity ranking (training counts).

Shape legend: B users per batch, V catalog size, S seen items per user.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lstmrec_jax.scoring import ranks as ranks_lib


def popularity_ranks(item_counts_V: np.ndarray, split, *, exclude_seen: bool,
                     chunk_size: int = 8192, batch_size: int = 1024,
                     item_domains_V: np.ndarray | None = None) -> np.ndarray:
  """Ranks under the popularity baseline (training counts), users in the split's order.

  With `item_domains_V` and a split with target domains, each user is ranked in their domain.
  """
  counts = jnp.asarray(item_counts_V, jnp.float32)
  table = jnp.zeros((counts.shape[0], 1), jnp.float32)
  by_domain = item_domains_V is not None and split.domains_U is not None
  fn = jax.jit(functools.partial(ranks_lib.target_ranks, exclude_seen=exclude_seen,
                                 chunk_size=chunk_size,
                                 item_domains_V=item_domains_V if by_domain else None))
  offsets, items = split.history.offsets_U1, split.history.items_N
  out = []
  for lo in range(0, len(split.targets_U), batch_size):
    hi = min(lo + batch_size, len(split.targets_U))
    lengths = offsets[lo + 1:hi + 1] - offsets[lo:hi]
    seen = np.zeros((batch_size, max(int(lengths.max(initial=1)), 1)), np.int32)
    for r in range(hi - lo):
      seen[r, :lengths[r]] = items[offsets[lo + r]:offsets[lo + r + 1]]
    targets = np.zeros((batch_size,), np.int32)
    targets[:hi - lo] = split.targets_U[lo:hi]
    kwargs = {}
    if by_domain:
      domains = np.zeros((batch_size,), np.int32)
      domains[:hi - lo] = split.domains_U[lo:hi]
      kwargs["domains_B"] = domains
    ranks = fn(jnp.zeros((batch_size, 1)), table, counts, targets, seen, **kwargs)
    out.append(np.asarray(ranks)[:hi - lo])
  return np.concatenate(out) if out else np.zeros((0,), np.int32)


def popularity_candidate_ranks(item_counts_V: np.ndarray, candidates_UxM: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray]:
  """The sampled protocol under popularity: (ranks_U, ties_U) as `ranks.candidate_ranks` gives.

  Example: counts [0, 5, 1, 5], candidates [[3, 1, 2]] -> ranks [1], ties [1].
  """
  scores_UxM = np.asarray(item_counts_V, np.float64)[candidates_UxM]
  real_UxM = candidates_UxM[:, 1:] > 0
  target_U1 = scores_UxM[:, :1]
  ranks_U = np.sum(real_UxM & (scores_UxM[:, 1:] >= target_U1), axis=1)
  ties_U = np.sum(real_UxM & (scores_UxM[:, 1:] == target_U1), axis=1)
  return ranks_U.astype(np.int32), ties_U.astype(np.int32)