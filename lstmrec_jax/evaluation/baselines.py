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
                     chunk_size: int = 8192, batch_size: int = 1024) -> np.ndarray:
  """Ranks under the popularity baseline (training counts), users in the split's order."""
  counts = jnp.asarray(item_counts_V, jnp.float32)
  table = jnp.zeros((counts.shape[0], 1), jnp.float32)
  fn = jax.jit(functools.partial(ranks_lib.target_ranks, exclude_seen=exclude_seen,
                                 chunk_size=chunk_size))
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
    ranks = fn(jnp.zeros((batch_size, 1)), table, counts, targets, seen)
    out.append(np.asarray(ranks)[:hi - lo])
  return np.concatenate(out) if out else np.zeros((0,), np.int32)
