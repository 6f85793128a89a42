"""Beyond-accuracy metrics of top-K lists: coverage, Gini, popularity bias, novelty, diversity.

Shape legend: U users, B users per batch, K list length, V catalog size (row 0 = padding),
E embedding size, A attributes per item.

Every metric here reads top-K lists (ids, 0 = an empty slot) and per-item arrays, never a
users x items matrix: the lists come from the chunked `ranks_lib.top_k_items`, in the same jitted
evaluation step as the target ranks (`scoring.rank_topk_step`), and `BeyondAccumulator` folds
them batch by batch into O(V) counts and O(1) sums. Definitions (training counts c_i, the
number of times item i was recommended r_i, n = V - 1 real items):

  coverage@K       distinct recommended items / n
  gini@K           Gini index of (r_1..r_n), items never recommended included (0 = even, -> 1 =
                   all recommendations on one item)
  ARP@K            mean over slots of c_i (average recommendation popularity, in training events)
  tail_share@K     share of slots holding a long-tail item: outside the head, the most popular
                   items that together make 80% of the training events
  novelty@K        mean over slots of -log2(c_i / sum c) (self-information; c_i floored at 1)
  ILD@K (emb)      mean over lists of the mean pairwise cosine distance 1 - cos(t_i, t_j) of the
                   learned item vectors
  ILD@K (attr)     the same with the Jaccard distance of attribute sets; pairs where an item has
                   no attributes are skipped
  personalization  1 - mean over user pairs of |L_u & L_v| / K, exactly from r_i (each list
                   holds distinct items): sum_i r_i (r_i - 1) / 2 shared slots over U (U - 1) / 2
                   pairs

A slot whose score is not finite (-inf: the catalog ran out; NaN: a broken model) is empty: it
counts in no metric, and a report over no filled slot says None, not a number.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstmrec_jax.data import content
from lstmrec_jax.scoring import ranks as ranks_lib

HEAD_SHARE = 0.8  # the head holds the most popular items that make this share of the events


def long_tail_mask(item_counts_V: np.ndarray, head_share: float = HEAD_SHARE) -> np.ndarray:
  """Bool [V]: items outside the head (most popular items making `head_share` of the events).

  Example: counts [0, 6, 3, 1] (item 0 = padding) -> head {1, 2} (6 + 3 >= 0.8 * 10),
  tail [False, False, False, True].
  """
  counts = np.asarray(item_counts_V, np.float64).copy()
  counts[0] = 0.0
  order = np.argsort(-counts[1:], kind="stable") + 1
  cum = np.cumsum(counts[order])
  total = cum[-1] if len(cum) else 0.0
  # The head ends at the first item where the running share reaches head_share.
  num_head = int(np.searchsorted(cum, head_share * total - 1e-9) + 1) if total > 0 else 0
  tail = np.ones(len(counts), bool)
  tail[order[:num_head]] = False
  tail[0] = False
  return tail


def gini(rec_counts: np.ndarray) -> float | None:
  """Gini index of non-negative counts (every item, zeros included); None when all are zero.

  Example: [0, 0, 4] -> (2*1-3-1)*0 + (2*2-3-1)*0 + (2*3-3-1)*4 = 8 over 3*4 -> 2/3.
  """
  x = np.sort(np.asarray(rec_counts, np.float64))
  n, total = len(x), x.sum()
  if n == 0 or total <= 0:
    return None
  i = np.arange(1, n + 1)
  return float(np.sum((2 * i - n - 1) * x) / (n * total))


def personalization(rec_counts_V: np.ndarray, num_users: int, k: int) -> float | None:
  """1 - mean overlap |L_u & L_v| / K over user pairs, from recommendation counts alone.

  Example: lists [1, 2], [1, 3] (K = 2): item 1 shared once over 1 pair -> 1 - 1/2 = 0.5.
  """
  if num_users < 2 or k < 1:
    return None
  r = np.asarray(rec_counts_V, np.float64)
  shared = float(np.sum(r * (r - 1) / 2))
  return 1.0 - shared / (num_users * (num_users - 1) / 2) / k


def _pairwise_mean(dist_BxKxK: np.ndarray, ok_BxKxK: np.ndarray) -> tuple[float, int]:
  """(sum over lists of the mean over valid pairs i < j, lists with a valid pair)."""
  k = dist_BxKxK.shape[-1]
  upper = np.triu(np.ones((k, k), bool), 1)
  ok = ok_BxKxK & upper
  pairs_B = ok.sum(axis=(1, 2))
  sums_B = np.where(ok, dist_BxKxK, 0.0).sum(axis=(1, 2))
  has_B = pairs_B > 0
  return float(np.sum(sums_B[has_B] / pairs_B[has_B])), int(has_B.sum())


def embedding_ild(ids_BxK: np.ndarray, vectors_VxE: np.ndarray) -> tuple[float, int]:
  """(sum of per-list mean cosine distances, lists counted); slots with id 0 are skipped.

  Example: one list of items with vectors [1, 0], [0, 1], [1, 0] -> distances 1, 0, 1 -> 2/3.
  """
  ids = np.asarray(ids_BxK)
  v = np.asarray(vectors_VxE, np.float64)[ids]
  v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  dist = 1.0 - np.einsum("bie,bje->bij", v, v)
  ok = (ids[:, :, None] > 0) & (ids[:, None, :] > 0)
  return _pairwise_mean(dist, ok)


def attribute_ild(ids_BxK: np.ndarray, attrs_VxA: np.ndarray) -> tuple[float, int]:
  """(sum of per-list mean Jaccard distances of attribute sets, lists counted).

  Pairs where either item has no attribute (or is an empty slot) are skipped.
  Example: attribute sets {1, 2}, {2, 3} -> Jaccard distance 1 - 1/3 = 2/3.
  """
  ids = np.asarray(ids_BxK)
  a = np.asarray(attrs_VxA)[ids]  # B x K x A, 0 = padding
  # |A_i & A_j| by comparing attribute lists (no multi-hot over the attribute vocabulary).
  eq = (a[:, :, None, :, None] == a[:, None, :, None, :]) & (a[:, :, None, :, None] > 0)
  inter = eq.any(axis=-1).sum(axis=-1).astype(np.float64)  # B x K x K (sets: unique ids)
  size = (a > 0).sum(axis=-1).astype(np.float64)
  union = size[:, :, None] + size[:, None, :] - inter
  ok = (size[:, :, None] > 0) & (size[:, None, :] > 0) & (ids[:, :, None] > 0) & (
      ids[:, None, :] > 0)
  dist = 1.0 - inter / np.maximum(union, 1.0)
  return _pairwise_mean(dist, ok)


class BeyondAccumulator:
  """Folds top-K lists, batch by batch, into the metrics of the module docstring.

  Args:
    item_counts_V: training interaction counts (popularity, the long tail, novelty).
    k: K, the list length the metrics are reported at.
    vectors_VxE: learned item vectors for the embedding ILD (None: not reported).
    attrs_VxA: padded attribute ids for the attribute ILD (None: the dataset has none).
  """

  def __init__(self, item_counts_V: np.ndarray, *, k: int, vectors_VxE: np.ndarray | None = None,
               attrs_VxA: np.ndarray | None = None):
    self.k = int(k)
    counts = np.asarray(item_counts_V, np.float64)
    self.num_items = len(counts)
    self.counts_V = counts
    self.tail_V = long_tail_mask(counts)
    total = max(counts[1:].sum(), 1.0)
    self.info_V = -np.log2(np.maximum(counts, 1.0) / total)
    self.vectors_VxE = vectors_VxE
    self.attrs_VxA = attrs_VxA if attrs_VxA is not None and np.any(attrs_VxA > 0) else None
    self.rec_V = np.zeros(self.num_items, np.int64)
    self.users = self.slots = 0
    self.sums = {"arp": 0.0, "tail": 0.0, "novelty": 0.0, "ild_emb": 0.0, "ild_attr": 0.0}
    self.lists = {"ild_emb": 0, "ild_attr": 0}

  def add(self, ids_BxK: np.ndarray, scores_BxK: np.ndarray | None = None) -> None:
    """One batch of real users' lists (padding rows already dropped)."""
    ids = np.asarray(ids_BxK, np.int64)[:, :self.k].copy()
    if scores_BxK is not None:
      ids[~np.isfinite(np.asarray(scores_BxK)[:, :self.k])] = 0  # empty slots
    ids[(ids < 0) | (ids >= self.num_items)] = 0
    self.users += ids.shape[0]
    filled = ids > 0
    self.slots += int(filled.sum())
    np.add.at(self.rec_V, ids[filled], 1)
    self.sums["arp"] += float(self.counts_V[ids][filled].sum())
    self.sums["tail"] += float(self.tail_V[ids][filled].sum())
    self.sums["novelty"] += float(self.info_V[ids][filled].sum())
    if self.vectors_VxE is not None:
      s, n = embedding_ild(ids, self.vectors_VxE)
      self.sums["ild_emb"] += s
      self.lists["ild_emb"] += n
    if self.attrs_VxA is not None:
      s, n = attribute_ild(ids, self.attrs_VxA)
      self.sums["ild_attr"] += s
      self.lists["ild_attr"] += n

  def result(self) -> dict[str, Any]:
    """The metrics (None where nothing was measured), named with @K."""
    k, slots = self.k, self.slots
    mean = lambda key: self.sums[key] / slots if slots else None
    per_list = lambda key: (self.sums[key] / self.lists[key] if self.lists[key] else None)
    out = {f"coverage@{k}": (float(np.count_nonzero(self.rec_V[1:])) / (self.num_items - 1)
                             if slots else None),
           f"gini@{k}": gini(self.rec_V[1:]) if slots else None,
           f"ARP@{k}": mean("arp"), f"tail_share@{k}": mean("tail"),
           f"novelty@{k}": mean("novelty"),
           f"personalization@{k}": personalization(self.rec_V, self.users, k) if slots else None,
           "users": self.users, "filled_slots": slots}
    if self.vectors_VxE is not None:
      out[f"ILD@{k}"] = per_list("ild_emb")
    if self.attrs_VxA is not None:
      out[f"ILD_attr@{k}"] = per_list("ild_attr")
    return out


def item_vectors(graphdef, params, consts) -> np.ndarray:
  """The model's output item table (V x E, host f32): the vectors of the embedding ILD."""
  model = nnx.merge(graphdef, params, consts)
  return np.asarray(jax.device_get(model.item_tables()[1]), np.float32)


def dataset_attributes(dataset) -> np.ndarray | None:
  """Padded attribute ids [V, A] when the dataset has item attributes, else None."""
  if not getattr(dataset, "num_attrs", 0) or dataset.num_attrs <= 1:
    return None
  # Every item's attributes count for diversity, also items with no training event.
  return content.attribute_array(dataset, known_V=np.ones(dataset.num_items, bool))


@functools.partial(jax.jit, static_argnames=("k", "exclude_seen", "chunk_size"))
def _popularity_top_k(counts_V, seen_BxS, *, k, exclude_seen, chunk_size):
  b = seen_BxS.shape[0]
  table = jnp.zeros((counts_V.shape[0], 1), jnp.float32)
  return ranks_lib.top_k_items(jnp.zeros((b, 1)), table, counts_V, k, seen_BxS,
                             exclude_seen=exclude_seen, chunk_size=chunk_size)


def popularity_lists(item_counts_V: np.ndarray, split, *, k: int, exclude_seen: bool,
                     chunk_size: int = 8192, batch_size: int = 1024):
  """Yields (ids_BxK, scores_BxK) of the popularity baseline per batch of a split's users."""
  counts = jnp.asarray(item_counts_V, jnp.float32)
  offsets, items = split.history.offsets_U1, split.history.items_N
  n = len(split.targets_U)
  for lo in range(0, n, batch_size):
    hi = min(lo + batch_size, n)
    lengths = offsets[lo + 1:hi + 1] - offsets[lo:hi]
    seen = np.zeros((batch_size, max(int(lengths.max(initial=1)), 1)), np.int32)
    for r in range(hi - lo):
      seen[r, :lengths[r]] = items[offsets[lo + r]:offsets[lo + r + 1]]
    ids, scores = _popularity_top_k(counts, seen, k=k, exclude_seen=exclude_seen,
                                    chunk_size=chunk_size)
    yield np.asarray(ids)[:hi - lo], np.asarray(scores)[:hi - lo]


BEYOND_KEYS = ("coverage@{k}", "gini@{k}", "ARP@{k}", "tail_share@{k}", "novelty@{k}", "ILD@{k}",
               "ILD_attr@{k}", "personalization@{k}")


def format_beyond(report: dict[str, Any]) -> str:
  """The beyond-accuracy rows of a report (model and popularity per split); '' when absent."""
  rows = []
  for split_name, split_rep in report.get("splits", {}).items():
    for scorer in ("model", "popularity"):
      b = split_rep.get(scorer, {}).get("beyond")
      if b is not None:
        rows.append((split_name, scorer, b))
  if not rows:
    return ""
  k = report.get("beyond_k", 10)
  keys = [key.format(k=k) for key in BEYOND_KEYS if any(key.format(k=k) in r[2] for r in rows)]
  widths = [len(key) + 2 for key in keys]
  lines = [f"\nbeyond accuracy (top-{k} lists)",
           f"{'split':<8}{'scorer':<12}" + "".join(f"{key:>{w}}" for key, w in zip(keys, widths))]
  for split_name, scorer, b in rows:
    cells = []
    for key, w in zip(keys, widths):
      v = b.get(key)
      cells.append(f"{'-':>{w}}" if v is None else
                   f"{v:>{w}.1f}" if key.startswith("ARP") else f"{v:>{w}.4f}")
    lines.append(f"{split_name:<8}{scorer:<12}" + "".join(cells))
  return "\n".join(lines)
