"""Evaluation on a multi-domain catalogue: per-domain metrics under two labelled protocols, the
seeded sampled candidates, and the target-domain cold-start buckets.

Shape legend: U users of a split, M = 1 + negatives candidates per user, B users per batch.

Every user of a split is evaluated once, in the domain of their own target (`EvalSplit.domains_U`),
and metrics are reported per domain, never pooled:

  full     the target ranked among all items of its domain, the user's history removed (except
           the target), ties against the target: `scoring.steps.eval_step` with the items'
           domains (`ranks.target_ranks`' per-row restriction);
  sampled  the published protocol (ABXI, WWW 2025): the target ranked against `eval.
           sampled_negatives` (999) items drawn uniformly without replacement from its domain
           among the items the user never touched; `sampled_candidates` draws them from a seed of
           (eval.sampled_seed, split, user), so a rerun, every checkpoint and every model (the
           per-domain baseline included: `data.domain` keeps the catalogue) see the same
           candidates. Ties count against the target here; the published code counts only
           strictly higher negatives, and `tied_users` says for how many users that matters.

Cold start across domains (`domain_cold_start`): the test users' histories cut to their last m
events of the target domain (m = 0..5; the other domain's events kept), so the buckets 0-2 and
3-5 target-domain events before the test item exist even where every user has >= 5 (these data);
6+ is the users' own histories.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.sharding import Mesh

from lstmrec_jax.data import preprocess
from lstmrec_jax.evaluation import baselines
from lstmrec_jax.evaluation import metrics
from lstmrec_jax.evaluation import ranking
from lstmrec_jax.evaluation import reports
from lstmrec_jax.scoring import steps as scoring

SPLIT_IDS = {"valid": 1, "test": 2}  # part of each user's sampling seed
PROTOCOL_FULL = ("full ranking over the target domain's items; the user's history items removed "
                 "except the target; ties count against the target")
PROTOCOL_SAMPLED = ("sampled: the target against {n} negatives drawn uniformly without replacement "
                    "from the target's domain among the items the user never touched (train, "
                    "valid and test events), seed (eval.sampled_seed={seed}, split, user); ties "
                    "count against the target; MRR over the {m}-candidate rank")
BUCKETS = ((0, 2), (3, 5), (6, None))  # target-domain events before the target
TRUNCATIONS = (0, 1, 2, 3, 4, 5)


def is_multi_domain(dataset) -> bool:
  return bool(getattr(dataset, "domain_names", ()))


# ----------------------------------------------------------------------------- candidates


def sampled_candidates(dataset, split_name: str, *, num_negatives: int, seed: int) -> np.ndarray:
  """[U, 1 + num_negatives] int32: each user's target (column 0) and sampled negatives.

  Negatives are drawn uniformly without replacement from the target's domain among the items
  the user never touched (`ranking.whole_histories`: train, valid and test events), with the
  generator seeded by (seed, split, dense user): the same for every model and rerun, and the same
  on a `data.domain` view (which keeps the user's items of that domain and the catalogue). A
  domain with fewer untouched items leaves the last columns 0 (no candidate).
  """
  split = getattr(dataset, split_name)
  if split.domains_U is None:
    raise ValueError(f"{dataset.source}: the sampled protocol needs a multi-domain dataset")
  touched = ranking.whole_histories(dataset).history
  bounds = (*dataset.domain_starts, int(dataset.num_items))
  out = np.zeros((len(split), 1 + num_negatives), np.int32)
  out[:, 0] = split.targets_U
  for k, (user, domain) in enumerate(zip(split.users_U.tolist(), split.domains_U.tolist())):
    lo, hi = bounds[domain], bounds[domain + 1]
    row = touched[user]
    excluded = np.unique(row[(row >= lo) & (row < hi)]) - lo
    pool = (hi - lo) - len(excluded)
    n = min(num_negatives, pool)
    rng = np.random.default_rng([seed, SPLIT_IDS[split_name], user])
    picks = rng.choice(pool, n, replace=False)
    # the c-th untouched offset is c plus the number of touched offsets at or below it
    out[k, 1:1 + n] = lo + picks + np.searchsorted(excluded - np.arange(len(excluded)), picks,
                                                   side="right")
  return out


def sampled_ranks(sampled_fn, params, consts, split, candidates_UxM: np.ndarray, *,
                  batch_size: int, max_len: int, mesh: Mesh
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(users_U, ranks_U, ties_U) of a split under the sampled protocol (`scoring.sampled_step`)."""
  users_U, (ranks_U, ties_U) = ranking.run_split(
      sampled_fn, params, consts, split, batch_size=batch_size, max_len=max_len, mesh=mesh,
      candidates_UxM=candidates_UxM)
  return users_U, ranks_U, ties_U


# ----------------------------------------------------------------------------- reports


def target_domain_counts(split, item_domains_V: np.ndarray) -> np.ndarray:
  """[U] events of each user's target domain in the user's history (before the target)."""
  owner_N = np.repeat(np.arange(len(split)), split.history.lengths_U)
  same_N = item_domains_V[split.history.items_N] == split.domains_U[owner_N]
  return np.bincount(owner_N[same_N], minlength=len(split))


def bucket_name(lo: int, hi: int | None) -> str:
  """'0-2', '3-5', '6+'."""
  return f"{lo}+" if hi is None else f"{lo}-{hi}"


def by_buckets(ranks_U: np.ndarray, counts_U: np.ndarray, ks=metrics.DEFAULT_KS
               ) -> dict[str, Any]:
  """Metrics per bucket of target-domain events before the target."""
  out = {}
  for lo, hi in BUCKETS:
    sel = (counts_U >= lo) & (counts_U <= (np.inf if hi is None else hi))
    out[bucket_name(lo, hi)] = metrics.metrics_from_ranks(ranks_U[sel], ks)
  return out


def _rows_of(split, users_U: np.ndarray) -> np.ndarray:
  position = {int(u): i for i, u in enumerate(split.users_U)}
  return np.asarray([position[int(u)] for u in users_U], np.int64)


def domain_report(dataset, split, *, full: tuple[np.ndarray, np.ndarray],
                  full_popularity: np.ndarray, seen_targets: str,
                  sampled: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                  sampled_popularity: tuple[np.ndarray, np.ndarray] | None = None,
                  full_q: tuple[np.ndarray, np.ndarray] | None = None,
                  high_reward_min: float | None = None) -> dict[str, Any]:
  """{domain name: {"users", "full": {model, popularity[, model_q]}, "sampled": {model,
  popularity}}}.

  full: (users_U, ranks_U) from `ranking.rank_split`; full_popularity: ranks in split order;
  sampled: (users_U, ranks_U, ties_U) from `sampled_ranks`; sampled_popularity: (ranks, ties)
  in split order; full_q: (users_U, ranks_U) ranked by the Q head (a model with Q heads);
  high_reward_min: the full-ranking reports split by target reward (`reports.split_report`).
  """
  counts_U = target_domain_counts(split, dataset.item_domains_V)
  users_U, ranks_U = full
  rows = _rows_of(split, users_U)
  out = {}
  for d, name in enumerate(dataset.domain_names):
    in_d = split.domains_U[rows] == d
    if not in_d.any():
      continue
    by_reward = {"seen_targets": seen_targets, "high_reward_min": high_reward_min}
    model_full = reports.split_report(ranks_U[in_d], users_U[in_d], split, **by_reward)
    model_full["by_target_domain_history"] = by_buckets(
        metrics.apply_seen_targets(ranks_U[in_d], reports.repeated_targets(split)[rows[in_d]],
                                   seen_targets), counts_U[rows[in_d]])
    in_split_d = split.domains_U == d
    pop_full = reports.split_report(full_popularity[in_split_d], split.users_U[in_split_d],
                                    split, **by_reward)
    entry = {"users": int(in_d.sum()), "full": {"model": model_full, "popularity": pop_full}}
    if full_q is not None:
      q_users, q_ranks = full_q
      q_in = split.domains_U[_rows_of(split, q_users)] == d
      entry["full"]["model_q"] = reports.split_report(q_ranks[q_in], q_users[q_in], split,
                                                      **by_reward)
    if sampled is not None:
      s_users, s_ranks, s_ties = sampled
      s_rows = _rows_of(split, s_users)
      s_in = split.domains_U[s_rows] == d
      entry["sampled"] = {
          "model": {"overall": metrics.metrics_from_ranks(s_ranks[s_in]),
                    "tied_users": int((s_ties[s_in] > 0).sum()),
                    "by_target_domain_history": by_buckets(s_ranks[s_in],
                                                           counts_U[s_rows[s_in]])},
          "popularity": {"overall": metrics.metrics_from_ranks(sampled_popularity[0][in_split_d]),
                         "tied_users": int((sampled_popularity[1][in_split_d] > 0).sum())}}
    out[name] = entry
  return out


def evaluate_params(graphdef, params, consts, dataset, *, splits: Sequence[str], mesh: Mesh,
                    batch_size: int, max_len: int, exclude_seen: bool, chunk_size: int,
                    seen_targets: str = "miss", sampled_negatives: int = 999,
                    sampled_seed: int = 0, beyond_k: int = 10,
                    high_reward_min: float | None = None, q_head: bool = False) -> dict[str, Any]:
  """The report of `ranking.evaluate_params`; on a multi-domain dataset, per domain and protocol.

  A single-catalogue dataset goes to `ranking.evaluate_params` unchanged. On a multi-domain one
  the report holds, per split and per domain (never pooled), the full-ranking metrics (model and
  popularity, with the history-length and target-domain-history breakdowns) and, with
  `sampled_negatives` > 0, the sampled protocol's (see the module docstring). Beyond-accuracy
  metrics are not computed there. `high_reward_min` and `q_head` as in `ranking.evaluate_params`
  (on a multi-domain dataset: the full protocol's reports split by target reward, and `model_q`
  beside `model`, ranked by the Q head in the target's domain).
  """
  if not is_multi_domain(dataset):
    return ranking.evaluate_params(graphdef, params, consts, dataset, splits=splits, mesh=mesh,
                                   batch_size=batch_size, max_len=max_len,
                                   exclude_seen=exclude_seen, chunk_size=chunk_size,
                                   seen_targets=seen_targets, beyond_k=beyond_k,
                                   high_reward_min=high_reward_min, q_head=q_head)
  counts_V = dataset.item_counts_V
  rank_fn = scoring.compile_rank_fn(graphdef, mesh, exclude_seen=exclude_seen,
                                    chunk_size=chunk_size, popularity_V=counts_V,
                                    item_domains_V=dataset.item_domains_V)
  q_rank_fn = (scoring.compile_rank_fn(graphdef, mesh, exclude_seen=exclude_seen,
                                        chunk_size=chunk_size, popularity_V=counts_V,
                                        item_domains_V=dataset.item_domains_V, head="q")
               if q_head else None)
  sampled_fn = scoring.compile_sampled_fn(graphdef, mesh, popularity_V=counts_V)
  seen_targets = reports.effective_seen_targets(exclude_seen, seen_targets)
  report: dict[str, Any] = {
      "protocols": {"full": PROTOCOL_FULL},
      "domains": list(dataset.domain_names), "exclude_seen": exclude_seen,
      "seen_targets": seen_targets, "num_items": int(dataset.num_items) - 1,
      "items_by_domain": dict(zip(dataset.domain_names, np.bincount(
          dataset.item_domains_V[1:], minlength=len(dataset.domain_names)).tolist())),
      "splits": {}}
  if dataset.kept_domain is not None:
    report["kept_domain"] = dataset.kept_domain
  if sampled_negatives:
    report["protocols"]["sampled"] = PROTOCOL_SAMPLED.format(
        n=sampled_negatives, seed=sampled_seed, m=sampled_negatives + 1)
    report.update(sampled_negatives=sampled_negatives, sampled_seed=sampled_seed)
  for name in splits:
    split = getattr(dataset, name)
    full = ranking.rank_split(rank_fn, params, consts, split, batch_size=batch_size,
                              max_len=max_len, mesh=mesh)
    pop = baselines.popularity_ranks(counts_V, split, exclude_seen=exclude_seen,
                                     chunk_size=chunk_size,
                                     item_domains_V=dataset.item_domains_V)
    sampled = sampled_pop = None
    if sampled_negatives:
      candidates = sampled_candidates(dataset, name, num_negatives=sampled_negatives,
                                      seed=sampled_seed)
      sampled = sampled_ranks(sampled_fn, params, consts, split, candidates,
                              batch_size=batch_size, max_len=max_len, mesh=mesh)
      sampled_pop = baselines.popularity_candidate_ranks(counts_V, candidates)
    full_q = (ranking.rank_split(q_rank_fn, params, consts, split, batch_size=batch_size,
                                 max_len=max_len, mesh=mesh) if q_rank_fn is not None else None)
    report["splits"][name] = {"by_domain": domain_report(
        dataset, split, full=full, full_popularity=pop, seen_targets=seen_targets,
        sampled=sampled, sampled_popularity=sampled_pop, full_q=full_q,
        high_reward_min=high_reward_min)}
  return report


def validation_metrics(ranks_U: np.ndarray, users_U: np.ndarray, split, domain_names,
                       seen_targets: str) -> dict[str, float]:
  """What model selection reads on a multi-domain split: each domain's full-ranking metrics
  (`<metric>/<domain>`) and their unweighted mean over the domains present (`<metric>`)."""
  ranks = reports.protocol_ranks(ranks_U, users_U, split, seen_targets)
  domains_U = split.domains_U[_rows_of(split, users_U)]
  out: dict[str, float] = {}
  per = []
  for d, name in enumerate(domain_names):
    if (domains_U == d).any():
      m = metrics.metrics_from_ranks(ranks[domains_U == d])
      per.append(m)
      out.update({f"{k}/{name}": v for k, v in m.items() if k != "users"})
  for key in per[0]:
    if key != "users":
      out[key] = float(np.mean([m[key] for m in per]))
  out["users"] = int(len(ranks))
  return out


# ----------------------------------------------------------------------------- cold start


def keep_last_target_domain_events(split, item_domains_V: np.ndarray, keep: int):
  """The split with each history cut to its last `keep` events of the user's target domain
  (the other domains' events stay). Example: history [a1, b1, a2, a3] (target in A), keep 1 ->
  [b1, a3]."""
  rows = []
  for k in range(len(split)):
    hist = split.history[k]
    in_d = np.flatnonzero(item_domains_V[hist] == split.domains_U[k])
    drop = in_d[:max(len(in_d) - keep, 0)]
    rows.append(np.delete(hist, drop))
  return dataclasses.replace(split, history=preprocess.Sequences.from_lists(rows))


def domain_cold_start(graphdef, params, consts, dataset, *, mesh: Mesh, batch_size: int,
                      max_len: int, exclude_seen: bool, chunk_size: int,
                      sampled_negatives: int = 999, sampled_seed: int = 0,
                      seen_targets: str = "miss") -> dict[str, Any]:
  """Test metrics by target-domain events before the test item, per domain and protocol.

  Each test user counts once in the bucket of their own history and, for every m in 0..5 below
  their own count, once more with the history cut to its last m target-domain events
  (`keep_last_target_domain_events`): bucket 0-2 pools m = 0, 1, 2, bucket 3-5 pools m = 3, 4, 5
  (and own histories of 3-5), 6+ is own histories only. Sampled candidates are the test split's.
  """
  split = dataset.test
  counts_U = target_domain_counts(split, dataset.item_domains_V)
  rank_fn = scoring.compile_rank_fn(graphdef, mesh, exclude_seen=exclude_seen,
                                    chunk_size=chunk_size, popularity_V=dataset.item_counts_V,
                                    item_domains_V=dataset.item_domains_V)
  sampled_fn = scoring.compile_sampled_fn(graphdef, mesh, popularity_V=dataset.item_counts_V)
  candidates = (sampled_candidates(dataset, "test", num_negatives=sampled_negatives,
                                   seed=sampled_seed) if sampled_negatives else None)
  seen_targets = reports.effective_seen_targets(exclude_seen, seen_targets)
  # (protocol, domain) -> lists of (count, rank) over (user, truncation) pairs
  pairs: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]] = {}

  def add(view, rows_U, counts):
    users_U, ranks_U = ranking.rank_split(rank_fn, params, consts, view, batch_size=batch_size,
                                          max_len=max_len, mesh=mesh)
    ranks_U = reports.protocol_ranks(ranks_U, users_U, view, seen_targets)
    got = {"full": (_rows_of(view, users_U), ranks_U)}
    if candidates is not None:
      s_users, s_ranks, _ = sampled_ranks(sampled_fn, params, consts, view, candidates[rows_U],
                                          batch_size=batch_size, max_len=max_len, mesh=mesh)
      got["sampled"] = (_rows_of(view, s_users), s_ranks)
    for protocol, (rows_v, ranks_v) in got.items():
      for d in range(len(dataset.domain_names)):
        sel = view.domains_U[rows_v] == d
        pairs.setdefault((protocol, d), []).append((counts[rows_v[sel]], ranks_v[sel]))

  add(split, np.arange(len(split)), counts_U)
  for m in TRUNCATIONS:
    rows_U = np.flatnonzero(counts_U > m)
    if len(rows_U):
      view = keep_last_target_domain_events(split.select(rows_U), dataset.item_domains_V, m)
      add(view, rows_U, np.full(len(rows_U), m))
  out: dict[str, Any] = {"protocols": {"full": PROTOCOL_FULL}, "buckets": {}, "truncations":
                         list(TRUNCATIONS), "natural_counts": {}}
  if candidates is not None:
    out["protocols"]["sampled"] = PROTOCOL_SAMPLED.format(
        n=sampled_negatives, seed=sampled_seed, m=sampled_negatives + 1)
  for (protocol, d), parts in sorted(pairs.items()):
    counts = np.concatenate([c for c, _ in parts])
    ranks = np.concatenate([r for _, r in parts])
    name = dataset.domain_names[d]
    out["buckets"].setdefault(name, {})[protocol] = by_buckets(ranks, counts)
  for d, name in enumerate(dataset.domain_names):
    own = counts_U[split.domains_U == d]
    out["natural_counts"][name] = {bucket_name(lo, hi): int(((own >= lo) & (
        own <= (np.inf if hi is None else hi))).sum()) for lo, hi in BUCKETS}
  return out
