"""Full-ranking evaluation of parameters over a dataset's splits: ranks per split, reports, top-k
files. The steps themselves are `scoring.steps`; a workdir's checkpoint is `workdir.py`'s.

Shape legend: B users per batch, L history length, E embedding size, V catalog size, S seen
items per user, U users in a split, K top-k.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax import paths
from lstmrec_jax.data import pipeline
from lstmrec_jax.data import preprocess
from lstmrec_jax.evaluation import baselines
from lstmrec_jax.evaluation import beyond
from lstmrec_jax.evaluation import metrics as metrics_lib
from lstmrec_jax.evaluation import reports
from lstmrec_jax.scoring import steps as scoring

# What a scoring step reads of an evaluation batch (the domain and candidates where present).
_MODEL_KEYS = ("inputs_BxL", "mask_BxL", "targets_B", "seen_BxS", "domains_B", "candidates_BxM")


def _gather(x: np.ndarray) -> np.ndarray:
  """Concatenates a per-process host array over processes (identity with one process)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _eval_batches(split, *, batch_size: int, max_len: int, candidates_UxM=None,
                  by_length: bool = True, only=None):
  """This process's batches; by default grouped by history length (`pipeline.eval_batches`):
  the ranking passes match outputs to users by `users_B`, and short batches cost less."""
  return pipeline.eval_batches(split, batch_size=batch_size, max_len=max_len,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               candidates_UxM=candidates_UxM, by_length=by_length, only=only)


def batch_shapes(split, *, batch_size: int, max_len: int) -> list[dict[str, np.ndarray]]:
  """One model-input batch of each shape a ranking pass over `split` feeds (`rank_split`'s
  batches), for `scoring.BatchFn.compile_ahead`: the first and the last batch hold them all."""
  shapes = {}
  for batch in _eval_batches(split, batch_size=batch_size, max_len=max_len, only=(0, -1)):
    inputs = {k: batch[k] for k in _MODEL_KEYS if k in batch}
    shapes.setdefault(tuple((k, v.shape) for k, v in sorted(inputs.items())), inputs)
  return list(shapes.values())


def run_split(fn: Callable, params: Any, consts: Any, split, *, batch_size: int, max_len: int,
              mesh: Mesh, candidates_UxM: np.ndarray | None = None
              ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
  """(users_U, outputs): a scoring step's per-user outputs over a split, each user once.

  `fn(params, consts, batch)` returns one [B] array or a tuple of them (e.g.
  `scoring.sampled_step`'s ranks and ties); `candidates_UxM` feeds the batches' candidates_BxM.
  """
  users, outs = [], []
  for batch in _eval_batches(split, batch_size=batch_size, max_len=max_len,
                             candidates_UxM=candidates_UxM):
    inputs = {k: batch[k] for k in _MODEL_KEYS if k in batch}
    out = fn(params, consts, mesh_lib.to_global(inputs, mesh))
    out = out if isinstance(out, tuple) else (out,)
    valid_B = _gather(batch["valid_B"])
    users.append(_gather(batch["users_B"])[valid_B])
    outs.append(tuple(np.asarray(o)[valid_B] for o in out))
  users_U = np.concatenate(users)
  if len(np.unique(users_U)) != len(users_U):
    raise AssertionError("a user was evaluated twice; the evaluation batches are wrong")
  return users_U, tuple(np.concatenate(parts) for parts in zip(*outs))


def rank_split(rank_fn: Callable, params: Any, consts: Any, split, *, batch_size: int,
               max_len: int, mesh: Mesh, on_lists: Callable | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Ranks of every user's target in a split; returns (users_U, ranks_U), each user once.

  With a `rank_topk_step` rank_fn, `on_lists(ids_BxK, scores_BxK)` gets each batch's real users'
  top-K lists (the beyond-accuracy metrics), from the same pass.
  """
  users, ranks = [], []
  for batch in _eval_batches(split, batch_size=batch_size, max_len=max_len):
    inputs = {k: batch[k] for k in _MODEL_KEYS if k in batch}
    out = rank_fn(params, consts, mesh_lib.to_global(inputs, mesh))
    ranks_B = np.asarray(out[0] if isinstance(out, tuple) else out)
    valid_B = _gather(batch["valid_B"])
    if on_lists is not None:
      on_lists(np.asarray(out[1])[valid_B], np.asarray(out[2])[valid_B])
    users.append(_gather(batch["users_B"])[valid_B])
    ranks.append(ranks_B[valid_B])
  users_U, ranks_U = np.concatenate(users), np.concatenate(ranks)
  if len(np.unique(users_U)) != len(users_U):
    raise AssertionError("a user was evaluated twice; the evaluation batches are wrong")
  return users_U, ranks_U


def evaluate_params(graphdef, params, consts, dataset, *, splits: Sequence[str], mesh: Mesh,
                    batch_size: int, max_len: int, exclude_seen: bool,
                    chunk_size: int, seen_targets: str = "miss",
                    beyond_k: int = 10, high_reward_min: float | None = None,
                    q_head: bool = False) -> dict[str, Any]:
  """Model and popularity metrics for each named split ('valid', 'test').

  seen_targets: `eval.seen_targets`, "miss" (a target already in the history counts as a miss:
  the published protocol) or "rankable"; with exclude_seen False every target is rankable. Where a
  split has repeated targets its report holds both (`reports.split_report`).

  beyond_k: K of the beyond-accuracy metrics (coverage, Gini, ARP, novelty, ILD, ...) of the
  top-K lists, computed in the ranking pass (`beyond.py`); 0 = accuracy only.

  high_reward_min: the report also splits each scorer's metrics by target reward (reward >=
  this: the high-reward targets) and gives the reward of the hits (`reports.split_report`).
  q_head: the model has Q heads (`model.q_head`): each split also gets `model_q`, the same
  metrics with the items ranked by the Q head (`scoring.steps`, head="q").
  """
  if beyond_k:
    rank_fn = scoring.jit_over_batch(functools.partial(
        scoring.rank_topk_step, graphdef=graphdef, k=beyond_k, exclude_seen=exclude_seen,
        chunk_size=chunk_size), mesh, dataset.item_counts_V)
    extra = dict(k=beyond_k, vectors_VxE=beyond.item_vectors(graphdef, params, consts),
                 attrs_VxA=beyond.dataset_attributes(dataset))
  else:
    rank_fn = scoring.compile_rank_fn(graphdef, mesh, exclude_seen=exclude_seen,
                                      chunk_size=chunk_size, popularity_V=dataset.item_counts_V)
  seen_targets = reports.effective_seen_targets(exclude_seen, seen_targets)
  report: dict[str, Any] = {"protocol": reports.protocol(exclude_seen, seen_targets),
                            "exclude_seen": exclude_seen, "seen_targets": seen_targets,
                            "num_items": int(dataset.num_items) - 1, "splits": {}}
  if beyond_k:
    report["beyond_k"] = beyond_k
  q_rank_fn = (scoring.compile_rank_fn(graphdef, mesh, exclude_seen=exclude_seen,
                                        chunk_size=chunk_size,
                                        popularity_V=dataset.item_counts_V, head="q")
               if q_head else None)
  for name in splits:
    split = getattr(dataset, name)
    acc = beyond.BeyondAccumulator(dataset.item_counts_V, **extra) if beyond_k else None
    users_U, ranks_U = rank_split(rank_fn, params, consts, split, batch_size=batch_size,
                                  max_len=max_len, mesh=mesh, on_lists=acc and acc.add)
    pop_U = baselines.popularity_ranks(dataset.item_counts_V, split, exclude_seen=exclude_seen,
                                       chunk_size=chunk_size)
    by_reward = {"seen_targets": seen_targets, "high_reward_min": high_reward_min}
    report["splits"][name] = {
        "model": reports.split_report(ranks_U, users_U, split, **by_reward),
        "popularity": reports.split_report(pop_U, np.asarray(split.users_U), split,
                                           **by_reward),
        "candidates": candidate_counts(split, int(dataset.num_items) - 1, exclude_seen)}
    few = report["splits"][name]["candidates"]
    if few["users_at_most_max_k"]:
      logging.warning(
          "%s: %d of %d users had at most %d candidate items once their history was removed "
          "(fewest: %d of %d items): HR@k and NDCG@k there are high by construction, not by "
          "the model", name, few["users_at_most_max_k"], len(split.users_U), few["max_k"],
          few["min"], int(dataset.num_items) - 1)
    if q_rank_fn is not None:
      q_users_U, q_ranks_U = rank_split(q_rank_fn, params, consts, split, batch_size=batch_size,
                                        max_len=max_len, mesh=mesh)
      report["splits"][name]["model_q"] = reports.split_report(q_ranks_U, q_users_U, split,
                                                               **by_reward)
    if beyond_k:
      pop_acc = beyond.BeyondAccumulator(dataset.item_counts_V, **extra)
      for ids_BxK, scores_BxK in beyond.popularity_lists(
          dataset.item_counts_V, split, k=beyond_k, exclude_seen=exclude_seen,
          chunk_size=chunk_size):
        pop_acc.add(ids_BxK, scores_BxK)
      report["splits"][name]["model"]["beyond"] = acc.result()
      report["splits"][name]["popularity"]["beyond"] = pop_acc.result()
  return report


def candidate_counts(split, num_items: int, exclude_seen: bool,
                     max_k: int = max(metrics_lib.DEFAULT_KS)) -> dict[str, int]:
  """How many items each user's target is ranked among (its other history items removed).

  A catalog of 5 items and a history of 4 leaves 1 candidate: NDCG@10 is 1.0 whatever the model.
  Example: num_items 5, histories [[1, 2, 3, 4]] with target 5 -> min 1.
  """
  users = len(split.users_U)
  if not users:
    return {"min": num_items, "median": num_items, "users_at_most_max_k": 0, "max_k": max_k}
  if exclude_seen:
    lengths_U = split.history.lengths_U
    row_N = np.repeat(np.arange(users), lengths_U)
    items_N = np.asarray(split.history.items_N, np.int64)
    # The target itself stays rankable: only the other distinct history items are removed.
    other_N = items_N != np.asarray(split.targets_U, np.int64)[row_N]
    distinct = np.unique(row_N[other_N] * (num_items + 1) + items_N[other_N]) // (num_items + 1)
    removed_U = np.bincount(distinct, minlength=users)
  else:
    removed_U = np.zeros(users, np.int64)
  candidates_U = num_items - removed_U
  return {"min": int(candidates_U.min()), "median": int(np.median(candidates_U)),
          "users_at_most_max_k": int((candidates_U <= max_k).sum()), "max_k": max_k}


def whole_histories(dataset):
  """An EvalSplit of every user's whole history (train + valid + test, time order), no target.

  A user in the test split has its test history plus the test target; otherwise its valid
  history plus the valid target; otherwise its training row.
  """
  rows = [np.asarray(dataset.train[u]) for u in range(dataset.num_users)]
  for split in (dataset.valid, dataset.test):  # test last: its history already holds valid
    for k, user in enumerate(split.users_U):
      rows[user] = np.append(split.history[k], split.targets_U[k])
  users_U = np.arange(dataset.num_users, dtype=np.int32)
  return preprocess.EvalSplit(users_U, preprocess.Sequences.from_lists(rows),
                              np.zeros(dataset.num_users, np.int32))


def write_topk(path: str | os.PathLike, graphdef, params, consts, dataset, *, k: int,
               mesh: Mesh, batch_size: int, max_len: int, chunk_size: int,
               streams: bool) -> int:
  """Writes each user's top-k next items (raw ids) as TSV `user<TAB>item1,item2,...`.

  Unlike the evaluation (which ranks a held-out target from the events before it), this is what
  to recommend now: the input is each user's whole history (train + valid + test), every item
  the user has seen is removed, and users without history get the popularity fallback. A
  streaming encoder (LSTM, GRU) reads the whole history, as `serving.Recommender` and serve.py
  do; the transformer reads its last `max_len` events, as it was trained.
  """
  whole = whole_histories(dataset)
  window = pipeline.seen_width(whole) if streams else max_len
  fn = scoring.jit_over_batch(functools.partial(scoring.topk_step, graphdef=graphdef, k=k,
                                                exclude_seen=True, chunk_size=chunk_size),
                              mesh, dataset.item_counts_V)
  lines = []
  # In user order (the file's lines follow it), at the full window.
  for batch in _eval_batches(whole, batch_size=batch_size, max_len=window, by_length=False):
    inputs = {k_: batch[k_] for k_ in _MODEL_KEYS if k_ in batch}
    ids_BxK, _ = fn(params, consts, mesh_lib.to_global(inputs, mesh))
    ids_BxK = np.asarray(ids_BxK)
    valid_B, users_B = _gather(batch["valid_B"]), _gather(batch["users_B"])
    for user, ids in zip(users_B[valid_B], ids_BxK[valid_B]):
      items = ",".join(str(dataset.item_keys[i]) for i in ids)
      lines.append(f"{dataset.user_keys[user]}\t{items}\n")
  if jax.process_index() == 0:
    paths.replace_text(paths.workdir_path(path), "".join(lines))  # never half a file
  return len(lines)
