"""Item-table initialisation from co-occurrence (`train.item_init="cooccurrence"`).

The id table's rows start from a factorisation of how items occur together in the training
sequences, instead of N(0, 1/E): items bought close together start close. Counts are taken
within `window` positions of each other inside one user's training sequence (never across
users, never from the validation or test targets), weighted into positive pointwise mutual
information (PPMI), and factored by a truncated SVD: row a = U[a] sqrt(S), scaled to norm 1 (the
expected norm of the random rows it replaces, so the optimizer starts from the same scale).
Items without any co-occurrence keep their random row; row 0 (padding) and the padding rows
below the real ones are untouched.

Cost: the count matrix has at most 2 x window x events entries, and the SVD is randomized (a few
sparse products, `randomized_svd`); done once per run, before the first step.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
import scipy.sparse

from lstmrec_jax.errors import ConfigError


DIRECTIONS = ("both", "next")


def cooccurrence_counts(offsets_U1: np.ndarray, items_N: np.ndarray, num_items: int,
                        window: int, direction: str = "both") -> scipy.sparse.csr_matrix:
  """The V x V counts of item pairs within `window` positions in one sequence.

  direction "both": symmetric, each pair counted both ways; "next": row a counts the items that
  came after a (within `window` positions), the transitions a next-item model learns.
  Example: one sequence [1, 2, 3], window 1 -> pairs (1, 2), (2, 3): "both" counts (2, 1) and
  (3, 2) too, "next" does not.
  """
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
  lengths = np.diff(offsets_U1)
  row_N = np.repeat(np.arange(len(lengths)), lengths)
  a_parts, b_parts = [], []
  for k in range(1, window + 1):
    same = row_N[:-k] == row_N[k:] if len(row_N) > k else np.zeros(0, bool)
    a_parts.append(items_N[:-k][same])
    b_parts.append(items_N[k:][same])
  if direction == "next":
    a = np.concatenate(a_parts).astype(np.int64)
    b = np.concatenate(b_parts).astype(np.int64)
  else:
    a = np.concatenate(a_parts + b_parts).astype(np.int64)
    b = np.concatenate(b_parts + a_parts).astype(np.int64)
  keep = (a != b) & (a > 0) & (b > 0)
  a, b = a[keep], b[keep]
  return scipy.sparse.coo_matrix((np.ones(len(a), np.float64), (a, b)),
                                 shape=(num_items, num_items)).tocsr()  # sums duplicates


def ppmi_matrix(offsets_U1: np.ndarray, items_N: np.ndarray, num_items: int,
                window: int) -> scipy.sparse.csr_matrix:
  """The V x V symmetric PPMI matrix of `cooccurrence_counts`."""
  counts = cooccurrence_counts(offsets_U1, items_N, num_items, window)
  total = counts.sum()
  if total == 0:
    return counts
  marginal = np.asarray(counts.sum(axis=1)).ravel()
  coo = counts.tocoo()
  pmi = np.log(coo.data * total / (marginal[coo.row] * marginal[coo.col]))
  pos = pmi > 0
  return scipy.sparse.csr_matrix((pmi[pos], (coo.row[pos], coo.col[pos])),
                                 shape=(num_items, num_items))


NEIGHBOR_SCORES = ("count", "cosine")


def neighbor_lists(offsets_U1: np.ndarray, items_N: np.ndarray, num_items: int, k: int, *,
                   window: int, score: str = "count") -> np.ndarray:
  """int32 [V, k]: each item's k best co-occurring items (0 pads rows with fewer).

  Counted as `cooccurrence_counts` (training sequences only) and ranked by `score`:
  - "count": the most frequent partners first;
  - "cosine": count / sqrt(n_a n_b), n the items' total co-occurrences: a popular partner must
    co-occur proportionally more often to rank first, so the lists favour specific partners.
  Ties go to the pair with the higher PMI (the rarer partner), then to the lower id, so the lists
  are deterministic. Row 0 (padding) and items without a co-occurrence get no neighbour.
  Example: sequences [1, 2, 3] and [1, 2], window 1, k 1 -> item 1: [2], 2: [1], 3: [2].
  """
  return _top_partners(cooccurrence_counts(offsets_U1, items_N, num_items, window), k, score)[0]


def _top_partners(counts: scipy.sparse.spmatrix, k: int, score: str
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(int32 [V, k] ids, f64 [V, k] their counts) of each row's k best partners by `score` (as
  `neighbor_lists` ranks them); 0 pads both."""
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if score not in NEIGHBOR_SCORES:
    raise ValueError(f"score must be one of {NEIGHBOR_SCORES}, got {score!r}")
  counts = counts.tocoo()
  num_items = counts.shape[0]
  ids = np.zeros((num_items, k), np.int32)
  kept = np.zeros((num_items, k), np.float64)
  if counts.nnz == 0:
    return ids, kept
  marginal = np.bincount(counts.row, weights=counts.data, minlength=num_items)
  value = counts.data
  if score == "cosine":
    value = value / np.sqrt(marginal[counts.row] * marginal[counts.col])
  # lexsort's last key sorts first: row, then the score (descending), then the partner's
  # marginal (ascending: the higher PMI for equal scores), then the partner's id.
  order = np.lexsort((counts.col, marginal[counts.col], -value, counts.row))
  rows, cols, data = counts.row[order], counts.col[order], counts.data[order]
  starts = np.searchsorted(rows, np.arange(num_items))
  rank = np.arange(len(rows)) - starts[rows]
  keep = rank < k
  ids[rows[keep], rank[keep]] = cols[keep]
  kept[rows[keep], rank[keep]] = data[keep]
  return ids, kept


def teacher_lists(offsets_U1: np.ndarray, items_N: np.ndarray, num_items: int, k: int, *,
                  window: int, direction: str = "both") -> tuple[np.ndarray, np.ndarray]:
  """(int32 [V, k] partner ids, f32 [V, k] probabilities): each item's k most frequent
  co-occurring items (`neighbor_lists` by count; `direction` as `cooccurrence_counts`: "next"
  keeps only the items that came after it) and each one's share of their counts, the
  distribution the co-occurrence teacher (`loss.teacher_weight`) pulls a position toward when
  that item is the last one read. Rows without partners are all 0 (no term).
  Example: sequences [1, 2, 3] and [1, 2], window 1, k 2 -> item 2: ids [1, 3], probs [2/3, 1/3];
  direction "next": item 2: ids [3, 0], probs [1, 0].
  """
  counts = cooccurrence_counts(offsets_U1, items_N, num_items, window, direction)
  ids, c = _top_partners(counts, k, "count")
  total = c.sum(axis=1, keepdims=True)
  probs = np.where(total > 0, c / np.maximum(total, 1e-12), 0.0).astype(np.float32)
  return ids, probs


# `transition_lists`' scale: log(1 + TRANSITION_SCALE x share), so a partner with 1% of an
# item's transitions scores log 2 and one with all of them log 101.
TRANSITION_SCALE = 100.0


def transition_lists(offsets_U1: np.ndarray, items_N: np.ndarray, num_items: int, k: int, *,
                     window: int) -> tuple[np.ndarray, np.ndarray]:
  """(int32 [V, k] next items, f32 [V, k] their log-shares): the first-order transition prior of
  `model.transition_weight`. Row a holds the k items that most often came within `window`
  positions after a in the training sequences (`cooccurrence_counts(direction="next")`, ties as
  `neighbor_lists`) and log(1 + TRANSITION_SCALE x c(a, b) / c(a, all)), the share taken over ALL
  of a's transitions (not only the k kept). Rows without transitions are all 0 (no term).
  Example: sequences [1, 2, 3] and [1, 2], window 1, k 1 -> item 1: [2] log(101), item 2: [3]
  log(101), item 3: nothing.
  """
  counts = cooccurrence_counts(offsets_U1, items_N, num_items, window, "next")
  ids, c = _top_partners(counts, k, "count")
  total = np.asarray(counts.sum(axis=1)).ravel()[:, None]
  logp = np.where(c > 0, np.log1p(TRANSITION_SCALE * c / np.maximum(total, 1.0)), 0.0)
  return ids, logp.astype(np.float32)


def randomized_svd(m: scipy.sparse.csr_matrix, k: int, *, seed: int, oversample: int = 16,
                   power_iters: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """The top-k left singular vectors and values of a square symmetric sparse `m`, approximately.

  Halko, Martinsson & Tropp's randomized range finder with power iterations: a few sparse
  products with a (V, k + oversample) block instead of ARPACK's many, so its cost grows with the
  non-zeros (Beauty's 12k x 12k PPMI at k = 256: under 2 s; ARPACK took 10 s). Seeded.
  """
  n = m.shape[0]
  width = min(n, k + oversample)
  m = m.astype(np.float32)
  y = m @ np.random.default_rng(seed).standard_normal((n, width), dtype=np.float32)
  for _ in range(power_iters):  # m is symmetric: m.T @ m @ y = m @ (m @ y)
    q, _ = np.linalg.qr(y)
    y = m @ (m @ q)
  q, _ = np.linalg.qr(y)
  u_small, s, _ = np.linalg.svd(np.asarray((m @ q).T), full_matrices=False)  # (q.T m) = (m q).T
  return q @ u_small[:, :k], s[:k]


def cooccurrence_vectors(offsets_U1: np.ndarray, items_N: np.ndarray, num_items: int, dim: int,
                         *, window: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(V x dim unit-norm item vectors, V bool: which items have one) from the PPMI's SVD."""
  m = ppmi_matrix(offsets_U1, items_N, num_items, window)
  has_V = np.asarray((m != 0).sum(axis=1)).ravel() > 0
  vectors = np.zeros((num_items, dim), np.float32)
  k = min(dim, num_items - 2)
  if k < 1 or not has_V.any():
    return vectors, np.zeros(num_items, bool)
  u, s = randomized_svd(m, k, seed=seed)
  emb = u * np.sqrt(s)[None, :]
  norms = np.linalg.norm(emb, axis=1)
  has_V &= norms > 0
  vectors[:, :k] = np.where(has_V[:, None], emb / np.maximum(norms, 1e-12)[:, None], 0.0)
  return vectors, has_V


def _is_id_table(path) -> bool:
  """Whether a parameter path is the id table (`item_repr.embedding`, not a content part's)."""
  keys = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
  return keys[:2] == ["item_repr", "embedding"]


def init_item_table(params, offsets_U1: np.ndarray, items_N: np.ndarray, num_items: int, *,
                    window: int, seed: int = 0):
  """`params` with the id table's rows of co-occurring items from `cooccurrence_vectors`.

  Raises ConfigError (printed as one line) when the model has no id table (item_mode="content").
  """
  found = []

  def replace(path, leaf):
    if not _is_id_table(path):
      return leaf
    table = np.array(jax.device_get(leaf))
    vectors, has_V = cooccurrence_vectors(offsets_U1, items_N, num_items, table.shape[1],
                                          window=window, seed=seed)
    rows = np.flatnonzero(has_V)
    table[rows] = vectors[rows].astype(table.dtype)
    found.append(len(rows))
    return jax.numpy.asarray(table, leaf.dtype)

  new = jax.tree_util.tree_map_with_path(replace, params)
  if not found:
    raise ConfigError("train.item_init=cooccurrence needs an id item table (model.item_mode id, "
                     "sum or gate); this model has none")
  logging.info("train.item_init=cooccurrence: %d of %d item rows from the co-occurrence SVD "
               "(window %d), the rest random", found[0], num_items - 1, window)
  return new
