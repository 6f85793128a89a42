"""Cold-start evaluation: cold items, new users, and the baselines to beat.

Shape legend: B users per batch, L history length, E embedding size, V catalog size, K top-k.

On a dataset from `data.content.cold_item_split` (a random share of the items removed from
training entirely), every user of a split is ranked over all items (seen items removed, the
standard protocol) and the metrics are reported for three groups of users: all, those whose target
is a cold item, those whose target is warm. Cold targets are also ranked among the cold items
only (the usual item cold-start protocol): that ranking tells whether the content separates new
items from each other, whatever their scale against warm items.

Baselines on the same users: popularity (training counts; a cold item scores 0, so it is never
recommended), content popularity (a warm item scores its count, a cold item the mean popularity
of the attributes it carries, where an attribute's popularity is the mean count of the warm items
carrying it) and, among cold items, the rank a random order expects.

New users. A user with an empty history has no LSTM state to score with: they are ranked by
training popularity (`scoring.steps`' fallback, the path `eval.py` and the Recommender share), and
every other user's scores are unchanged.

  python cold_start.py --workdirs runs/ml100k_cold_id,runs/ml100k_cold_sum  (workdir.py drives it)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.sharding import Mesh

from lstmrec_jax.data import content as content_data
from lstmrec_jax.data.preprocess import Sequences
from lstmrec_jax.evaluation import baselines
from lstmrec_jax.evaluation import metrics
from lstmrec_jax.evaluation import ranking
from lstmrec_jax.evaluation import reports as reports_lib
from lstmrec_jax.scoring import steps as scoring

GROUPS = ("all", "cold", "warm")


# ----------------------------------------------------------------------------- baselines


def content_popularity_scores(item_counts_V: np.ndarray, attrs_VxA: np.ndarray | None,
                              known_V: np.ndarray) -> np.ndarray:
  """Warm items: their training count; other items: the mean popularity of their attributes.

  An attribute's popularity is the mean count of the known items carrying it; an item with no
  known attribute gets the mean count of known items.

  Example: counts [0, 4, 2, 0], attrs [[0], [1], [2], [1]], known [F, T, T, F] -> [2, 4, 2, 4]
  (item 3 carries attribute 1, whose only known item has count 4; row 0 is never ranked).
  """
  counts_V = np.asarray(item_counts_V, np.float64)
  known_V = np.asarray(known_V, bool)
  prior = float(counts_V[known_V].mean()) if known_V.any() else 0.0
  scores_V = np.where(known_V, counts_V, prior)
  if attrs_VxA is None:
    return scores_V
  attrs_VxA = np.asarray(attrs_VxA)
  num_attrs = int(attrs_VxA.max(initial=0)) + 1
  real_VxA = attrs_VxA > 0
  on_known = real_VxA & known_V[:, None]
  total_A = np.bincount(attrs_VxA[on_known], weights=np.broadcast_to(
      counts_V[:, None], attrs_VxA.shape)[on_known], minlength=num_attrs)
  carriers_A = np.bincount(attrs_VxA[on_known], minlength=num_attrs)
  pop_A = np.where(carriers_A > 0, total_A / np.maximum(carriers_A, 1), np.nan)
  pop_VxA = np.where(real_VxA, pop_A[attrs_VxA], np.nan)
  has_V = ~np.all(np.isnan(pop_VxA), axis=1)
  estimate_V = np.full(len(counts_V), prior)
  estimate_V[has_V] = np.nanmean(pop_VxA[has_V], axis=1)
  return np.where(known_V, counts_V, estimate_V)


def random_metrics(candidates_U: np.ndarray,
                   ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float | None]:
  """HR@k / NDCG@k of a uniformly random order, exactly, given each user's candidate count.

  With n candidates (the target included) the target is at each 0-based rank r < n with
  probability 1/n. Example: n = 20, k = 10 -> HR@10 = 0.5.
  """
  n_U = np.maximum(np.asarray(candidates_U, np.float64), 1.0)
  if n_U.size == 0:
    return {**{f"HR@{k}": None for k in ks}, **{f"NDCG@{k}": None for k in ks if k > 1},
            "users": 0}
  out: dict[str, Any] = {}
  for k in ks:
    out[f"HR@{k}"] = float(np.mean(np.minimum(k, n_U) / n_U))
  for k in ks:
    if k > 1:
      disc = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
      out[f"NDCG@{k}"] = float(np.mean(disc[np.minimum(k, n_U).astype(int) - 1] / n_U))
  out["users"] = int(n_U.size)
  return out


# ----------------------------------------------------------------------------- the report


def _groups(metric_fn, ranks_U: np.ndarray, cold_U: np.ndarray) -> dict[str, Any]:
  return {"all": metric_fn(ranks_U), "cold": metric_fn(ranks_U[cold_U]),
          "warm": metric_fn(ranks_U[~cold_U])}


def _candidates_left(split, candidates_V: np.ndarray, exclude_seen: bool) -> np.ndarray:
  """Per user: candidate items competing with the target (target included), seen removed."""
  n = np.zeros(len(split), np.int64)
  total = int(candidates_V.sum())
  for x in range(len(split)):
    n[x] = total
    if exclude_seen:
      seen = np.unique(split.history[x])
      n[x] -= int(candidates_V[seen[seen != split.targets_U[x]]].sum())
  return n


def evaluate_cold_start(graphdef, params, consts, dataset, *, mesh: Mesh, batch_size: int,
                        max_len: int, splits: Sequence[str] = ("valid", "test"),
                        exclude_seen: bool = True, chunk_size: int = 8192) -> dict[str, Any]:
  """Cold-item, warm-item and new-user metrics of a model and the baselines.

  Args:
    graphdef, params, consts: the model (as from `model.create_model` + a checkpoint).
    dataset: a SequenceDataset from `data.content.cold_item_split`.
    mesh: the evaluation mesh.
    batch_size, max_len: evaluation batches.
    splits: which splits to report.
    exclude_seen: remove the user's history items from the ranking.
    chunk_size: items per ranking chunk.

  Returns:
    {"cold_items", "splits": {name: {"model" | "popularity" | "content_popularity" | "random":
    {"all_items": {group: metrics}, "cold_candidates": metrics}}, "by_history_length", ...}}.
  """
  cold = content_data.cold_items(dataset)
  if not len(cold):
    raise ValueError(f"{dataset.source}: not a cold-item split (no cold items); train with "
                     "--config.cold_start.item_fraction=0.1")
  cold_V = np.zeros(dataset.num_items, bool)
  cold_V[cold] = True
  counts_V = np.asarray(dataset.item_counts_V)
  if counts_V[cold_V].any():
    raise AssertionError("a cold item has training interactions: the cold split leaked")
  known_V = content_data.known_items(dataset)
  attrs_VxA = (content_data.attribute_array(dataset, known_V=known_V)
               if len(dataset.item_attrs.items_N) else None)
  content_pop_V = content_popularity_scores(counts_V, attrs_VxA, known_V)
  only_cold_V = np.where(cold_V, 0.0, -np.inf)

  rank_all = scoring.compile_rank_fn(graphdef, mesh, exclude_seen=exclude_seen,
                                     chunk_size=chunk_size, popularity_V=counts_V)
  rank_cold = scoring.compile_rank_fn(graphdef, mesh, exclude_seen=exclude_seen,
                                      chunk_size=chunk_size, popularity_V=counts_V,
                                      extra_bias_V=only_cold_V)
  report: dict[str, Any] = {
      "protocol": reports_lib.PROTOCOL, "exclude_seen": exclude_seen,
      "num_items": int(dataset.num_items) - 1, "cold_items": int(len(cold)),
      "cold_fraction": dataset.stats.get("cold_fraction"),
      "cold_seed": dataset.stats.get("cold_seed"), "splits": {}}
  metric_fn = functools.partial(metrics.metrics_from_ranks, ks=(1, 5, 10, 20))
  for name in splits:
    split = getattr(dataset, name)
    model_U = _in_split_order(split, *ranking.rank_split(
        rank_all, params, consts, split, batch_size=batch_size, max_len=max_len, mesh=mesh))
    cold_U = cold_V[split.targets_U]
    cold_split = type(split)(split.users_U[cold_U], _subset(split.history, cold_U),
                             split.targets_U[cold_U])
    cold_ranks = np.zeros(0, np.int32)
    if len(cold_split):
      cold_ranks = _in_split_order(cold_split, *ranking.rank_split(
          rank_cold, params, consts, cold_split, batch_size=batch_size, max_len=max_len,
          mesh=mesh))
    pop_U = baselines.popularity_ranks(counts_V, split, exclude_seen=exclude_seen,
                                      chunk_size=chunk_size)
    cpop_U = baselines.popularity_ranks(content_pop_V, split, exclude_seen=exclude_seen,
                                       chunk_size=chunk_size)
    cpop_cold = (baselines.popularity_ranks(np.where(cold_V, content_pop_V, -np.inf), cold_split,
                                           exclude_seen=exclude_seen, chunk_size=chunk_size)
                 if len(cold_split) else np.zeros(0, np.int32))
    n_cold = _candidates_left(cold_split, cold_V, exclude_seen)
    lengths_U = reports_lib.history_lengths(split)
    report["splits"][name] = {
        "users": int(len(split)), "cold_targets": int(cold_U.sum()),
        "empty_history_users": int((lengths_U == 0).sum()),
        "model": {"all_items": _groups(metric_fn, model_U, cold_U),
                  "cold_candidates": metric_fn(cold_ranks),
                  "by_history_length": metrics.metrics_by_history_length(model_U, lengths_U)},
        "popularity": {"all_items": _groups(metric_fn, pop_U, cold_U),
                       "by_history_length": metrics.metrics_by_history_length(pop_U, lengths_U)},
        "content_popularity": {"all_items": _groups(metric_fn, cpop_U, cold_U),
                               "cold_candidates": metric_fn(cpop_cold)},
        "random": {"cold_candidates": random_metrics(n_cold)},
    }
  return report


def _in_split_order(split, users_U: np.ndarray, ranks_U: np.ndarray) -> np.ndarray:
  """Ranks returned per evaluated user, put back in the split's user order."""
  by_user = np.argsort(users_U)
  where = by_user[np.searchsorted(users_U[by_user], np.asarray(split.users_U))]
  if not np.array_equal(users_U[where], split.users_U):
    raise AssertionError("the evaluation did not return every user of the split")
  return ranks_U[where]


def _subset(seqs, keep_U: np.ndarray):
  """Rows of a Sequences CSR where keep_U is True."""
  rows = np.flatnonzero(keep_U)
  lengths = seqs.lengths_U[rows]
  items = (np.concatenate([seqs[r] for r in rows]) if len(rows)
           else np.zeros(0, np.int32))
  return Sequences.from_lengths(lengths, items)


def _row(name: str, cells: Sequence[float | None], width: int) -> str:
  return f"{name:<{width}}" + "".join(f"{'-':>10}" if c is None else f"{c:>10.4f}" for c in cells)


def format_table(reports: dict[str, dict[str, Any]], split: str = "test") -> str:
  """One table of models (by name) and baselines: HR@10 / NDCG@10 per group of targets."""
  first = next(iter(reports.values()))["splits"][split]
  w = max([26] + [len(name) + 2 for name in reports])
  header = (f"{'':<{w}}{'cold targets, all items':>20}{'cold targets, cold only':>30}"
            f"{'warm targets':>20}{'all targets':>20}")
  sub = f"{'scorer':<{w}}" + "".join(f"{k:>10}" for k in ("HR@10", "NDCG@10") * 4)
  lines = [f"{split}: {first['users']} users, {first['cold_targets']} with a cold target, "
           f"{first['empty_history_users']} with an empty history", header, sub]

  def cells(entry):
    all_items = entry.get("all_items", {})
    out = []
    for group, block in (("cold", all_items), ("cands", entry.get("cold_candidates")),
                         ("warm", all_items), ("all", all_items)):
      row = (block or {}).get(group) if group != "cands" else block
      out += [None, None] if not row else [row.get("HR@10"), row.get("NDCG@10")]
    return out

  for scorer in ("random", "popularity", "content_popularity"):
    lines.append(_row(scorer, cells(first[scorer]), w))
  for name, rep in reports.items():
    lines.append(_row(name, cells(rep["splits"][split]["model"]), w))
  return "\n".join(lines)
