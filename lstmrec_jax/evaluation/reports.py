"""Evaluation reports: per-split metrics with the history-length breakdown, the plain-text
table, the mean +- std summary over runs, and the JSON file.

Shape legend: U users in a split.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from lstmrec_jax import paths
from lstmrec_jax.evaluation import beyond
from lstmrec_jax.evaluation import metrics

PROTOCOL = ("leave-one-out next-item; ranking over all items (padding excluded); the user's "
            "history items removed from the ranking except the target itself; ties count "
            "against the target")
# How format_table labels the other protocol's row where a split has repeated targets.
OTHER_LABEL = {"miss": "repeat-aware", "rankable": "repeats=miss"}
_RANKING = "leave-one-out next-item; ranking over all items (padding excluded); "
_TIES = "; ties count against the target"


def protocol(exclude_seen: bool, seen_targets: str) -> str:
  """The report's protocol line for `eval.exclude_seen` and the effective `eval.seen_targets`."""
  if not exclude_seen:
    return _RANKING + "the user's history items kept in the ranking" + _TIES
  if seen_targets == "miss":
    return (_RANKING + "the user's history items removed from the ranking; a target already in "
            "the history counts as a miss (the published protocol)" + _TIES)
  return PROTOCOL + " (repeat-aware: a target already in the history stays rankable)"


def effective_seen_targets(exclude_seen: bool, seen_targets: str) -> str:
  """`seen_targets` in force: with nothing removed (exclude_seen False) every target is rankable."""
  if seen_targets not in metrics.SEEN_TARGETS:
    raise ValueError(f"seen_targets={seen_targets!r} must be one of "
                     f"{', '.join(metrics.SEEN_TARGETS)}")
  return seen_targets if exclude_seen else "rankable"


def history_lengths(split) -> np.ndarray:
  """Events before each user's target, in the split's order."""
  return np.diff(split.history.offsets_U1)


def repeated_targets(split) -> np.ndarray:
  """bool [U], in the split's order: the user's target is already in the user's history."""
  return metrics.repeated_targets(split.history.offsets_U1, split.history.items_N,
                                  split.targets_U)


def protocol_ranks(ranks_U: np.ndarray, users_U: np.ndarray, split,
                   seen_targets: str) -> np.ndarray:
  """`ranks_U` (of `users_U`, from `target_ranks`) under `seen_targets` ("miss" | "rankable")."""
  position = {int(u): i for i, u in enumerate(split.users_U)}
  repeated_U = repeated_targets(split)[[position[int(u)] for u in users_U]]
  return metrics.apply_seen_targets(ranks_U, repeated_U, seen_targets)


def split_report(ranks_U: np.ndarray, users_U: np.ndarray, split, *, seen_targets: str,
                 ks: Sequence[int] = metrics.DEFAULT_KS,
                 high_reward_min: float | None = None) -> dict[str, Any]:
  """Overall metrics and the history-length breakdown for one split, under `seen_targets`.

  With `high_reward_min` and a split that carries its targets' rewards (`EvalSplit.rewards_U`),
  also the metrics over the high-reward targets (reward >= high_reward_min: ratings >= 4 on
  MovieLens under the threshold reward) and over the others, and the reward of the hits
  (`metrics.reward_metrics`), all from the same ranks.

  `ranks_U` keep repeated targets rankable (`ranks.target_ranks`); `seen_targets` = "miss"
  turns them into misses. `repeated_targets` counts them; where there are any, `by_seen_targets`
  holds the overall metrics under both protocols (the other one is not comparable with
  published numbers when it is "rankable", but repeat consumption is real: both are kept).
  """
  position = {int(u): i for i, u in enumerate(split.users_U)}
  rows = [position[int(u)] for u in users_U]
  lengths = history_lengths(split)[rows]
  repeated_U = repeated_targets(split)[rows]
  ranks = metrics.apply_seen_targets(ranks_U, repeated_U, seen_targets)
  out = {"overall": metrics.metrics_from_ranks(ranks, ks),
         "by_history_length": metrics.metrics_by_history_length(ranks, lengths),
         "repeated_targets": int(repeated_U.sum())}
  if high_reward_min is not None and getattr(split, "rewards_U", None) is not None:
    rewards_U = np.asarray(split.rewards_U, np.float64)[rows]
    high_U = rewards_U >= high_reward_min
    out["high_reward"] = metrics.metrics_from_ranks(ranks[high_U], ks)
    out["low_reward"] = metrics.metrics_from_ranks(ranks[~high_U], ks)
    out["reward"] = {**metrics.reward_metrics(ranks, rewards_U), "high_reward_min":
                     float(high_reward_min), "mean_target_reward": float(rewards_U.mean())
                     if rewards_U.size else None}
  if repeated_U.any():
    out["by_seen_targets"] = {
        name: metrics.metrics_from_ranks(metrics.apply_seen_targets(ranks_U, repeated_U, name), ks)
        for name in metrics.SEEN_TARGETS}
  return out


def _cell(value: float | None, width: int) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def format_table(report: dict[str, Any], keys: Sequence[str] = (
    "HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR@10", "MRR")) -> str:
  """A plain-text table of model vs popularity per split, then the history-length breakdown."""
  if is_domain_report(report):
    return format_domain_table(report)
  seen_targets = report.get("seen_targets", "rankable")  # reports from before the key: rankable
  other = [s for s in metrics.SEEN_TARGETS if s != seen_targets][0]
  lines = [f"{'split':<8}{'scorer':<26}" + "".join(f"{k:>9}" for k in keys)]
  notes = []
  for split_name, split_rep in report["splits"].items():
    for scorer in ("model", "popularity"):
      row = split_rep[scorer]["overall"]
      # .get: a report saved before a metric existed (MRR@10) shows "-" there
      lines.append(f"{split_name:<8}{scorer:<26}" + "".join(_cell(row.get(k), 9) for k in keys))
      both = split_rep[scorer].get("by_seen_targets")
      if both:  # repeated targets in this split: the other protocol's numbers too
        label = f"{scorer}, {OTHER_LABEL[seen_targets]}"
        lines.append(f"{split_name:<8}{label:<26}"
                     + "".join(_cell(both[other].get(k), 9) for k in keys))
    n = split_rep["model"].get("repeated_targets", 0)
    if n:
      notes.append(f"{split_name}: {n} of {split_rep['model']['overall']['users']} targets repeat "
                   f"an item of the user's history; rows under seen_targets={seen_targets}, "
                   f"'{OTHER_LABEL[seen_targets]}' rows under seen_targets={other}")
  lines.extend(notes)
  for split_name, split_rep in report["splits"].items():
    lines.append(f"\n{split_name}: by history length (events before the target)")
    lines.append(f"  {'bucket':<8}{'users':>7}{'HR@10':>9}{'NDCG@10':>9}"
                 f"{'pop HR@10':>11}{'pop NDCG@10':>13}")
    for bucket, row in split_rep["model"]["by_history_length"].items():
      pop = split_rep["popularity"]["by_history_length"][bucket]
      cells = [_cell(row["HR@10"], 9), _cell(row["NDCG@10"], 9), _cell(pop["HR@10"], 11),
               _cell(pop["NDCG@10"], 13)]
      lines.append(f"  {bucket:<8}{row['users']:>7}" + "".join(cells))
  lines.extend(_format_rewards(report))
  extra = beyond.format_beyond(report)  # coverage, Gini, ARP, novelty, ILD, personalization
  return "\n".join(lines) + (("\n" + extra) if extra else "")


def _format_rewards(report: dict[str, Any]) -> list[str]:
  """The high-reward / low-reward targets' metrics and the reward of the hits, where present."""
  keys = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")
  lines = []
  for split_name, split_rep in report["splits"].items():
    scorers = [s for s in ("model", "model_q", "popularity") if "reward" in split_rep.get(s, {})]
    if not scorers or not all(split_rep[scorers[0]][part]["users"]
                              for part in ("high_reward", "low_reward")):
      continue  # one reward for every target (implicit data): the table repeats the overall one
    high_min = split_rep[scorers[0]]["reward"]["high_reward_min"]
    lines.append(f"\n{split_name}: by target reward (high: reward >= {high_min:g})")
    lines.append(f"  {'scorer':<12}{'targets':<9}{'users':>7}" + "".join(f"{k:>9}" for k in keys)
                 + f"{'hit_rew@10':>11}{'rew@10':>9}")
    for scorer in scorers:
      rep = split_rep[scorer]
      for part in ("overall", "high_reward", "low_reward"):
        row = rep[part]
        extra = ""
        if part == "overall":
          extra = _cell(rep["reward"]["hit_reward@10"], 11) + _cell(rep["reward"]["reward@10"], 9)
        lines.append(f"  {scorer:<12}{part.split('_')[0]:<9}{row['users']:>7}"
                     + "".join(_cell(row[k], 9) for k in keys) + extra)
  return lines


SUMMARY_KEYS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR@10", "MRR")
LATER_KEYS = ("MRR@10",)  # reports written before 2026-12-04 lack them


PROTOCOLS = ("full", "sampled")


def is_domain_report(report: dict[str, Any]) -> bool:
  """Whether a report is per domain (a multi-domain dataset, `evaluation.cross_domain`)."""
  return any("by_domain" in rep for rep in report.get("splits", {}).values())


def format_domain_table(report: dict[str, Any], keys: Sequence[str] = SUMMARY_KEYS) -> str:
  """Per split, domain, protocol and scorer (never pooled), then the model's metrics by
  target-domain events before the target."""
  lines = [f"protocol {name}: {text}" for name, text in report.get("protocols", {}).items()]
  lines.append(f"{'split':<7}{'domain':<14}{'protocol':<9}{'scorer':<12}{'users':>6}"
               + "".join(f"{k:>9}" for k in keys))
  for split_name, split_rep in report["splits"].items():
    for domain, entry in split_rep["by_domain"].items():
      for protocol in PROTOCOLS:
        for scorer in ("model", "model_q", "popularity"):
          if scorer not in entry.get(protocol, {}):
            continue
          row = entry[protocol][scorer]["overall"]
          lines.append(f"{split_name:<7}{domain:<14}{protocol:<9}{scorer:<12}{row['users']:>6}"
                       + "".join(_cell(row.get(k), 9) for k in keys))
  for split_name, split_rep in report["splits"].items():
    lines.append(f"\n{split_name}: model by target-domain events before the target")
    lines.append(f"  {'domain':<14}{'protocol':<9}{'bucket':<7}{'users':>7}{'HR@10':>9}"
                 f"{'NDCG@10':>9}")
    for domain, entry in split_rep["by_domain"].items():
      for protocol in PROTOCOLS:
        for bucket, row in entry.get(protocol, {}).get("model", {}).get(
            "by_target_domain_history", {}).items():
          lines.append(f"  {domain:<14}{protocol:<9}{bucket:<7}{row['users']:>7}"
                       + _cell(row["HR@10"], 9) + _cell(row["NDCG@10"], 9))
    tied = {d: e["sampled"]["model"]["tied_users"] for d, e in split_rep["by_domain"].items()
            if "sampled" in e}
    if any(tied.values()):
      lines.append(f"  sampled: users with a negative tied with the target (counted against "
                   f"it): {tied}")
  return "\n".join(lines)


def summarize_domain_reports(reports: Sequence[dict[str, Any]], split: str = "test",
                             keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
  """Mean and sample std (ddof 1) over runs of each domain's metrics, per protocol and scorer.

  Returns {"runs", "split", "domains": {domain: {protocol: {scorer: {key: (mean, std)}}}},
  "per_run": [{"workdir", "step", domain: {protocol: {key: value}}}]}.
  """
  if not reports:
    raise ValueError("no reports to summarize")
  out: dict[str, Any] = {"runs": len(reports), "split": split, "domains": {}, "per_run": []}
  first = reports[0]["splits"][split]["by_domain"]
  # A metric added later (MRR@10) is left out when a report saved before it lacks it.
  keys = [k for k in keys if k not in LATER_KEYS or all(
      k in entry[p]["model"]["overall"] for r in reports
      for entry in r["splits"][split]["by_domain"].values() for p in PROTOCOLS if p in entry)]
  for domain, entry in first.items():
    for protocol in PROTOCOLS:
      if protocol not in entry:
        continue
      for scorer in ("model", "popularity"):
        values = {}
        for k in keys:
          try:
            xs = np.array([r["splits"][split]["by_domain"][domain][protocol][scorer]["overall"][k]
                           for r in reports], np.float64)
          except KeyError as e:
            raise ValueError(f"a report has no {split}/{domain}/{protocol}/{scorer}/{k}: {e}"
                             ) from e
          values[k] = (float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0)
        out["domains"].setdefault(domain, {}).setdefault(protocol, {})[scorer] = values
  for r in reports:
    row = {"workdir": r.get("workdir"), "step": r.get("step")}
    for domain, entry in r["splits"][split]["by_domain"].items():
      row[domain] = {p: {k: entry[p]["model"]["overall"][k] for k in keys}
                     for p in PROTOCOLS if p in entry}
    out["per_run"].append(row)
  return out


def format_domain_summary(summary: dict[str, Any]) -> str:
  """A Markdown table: one row per domain and protocol, model mean +- std, popularity beside."""
  by_scorer = next(iter(next(iter(summary["domains"].values())).values()))
  keys = [k for k in SUMMARY_KEYS if k in by_scorer["model"]]
  lines = [f"{summary['split']}, {summary['runs']} runs (mean +- std)", "",
           "| domain | protocol | scorer | " + " | ".join(keys) + " |",
           "|---|---|---|" + "---:|" * len(keys)]
  for domain, by_protocol in summary["domains"].items():
    for protocol, by_scorer in by_protocol.items():
      model, pop = by_scorer["model"], by_scorer["popularity"]
      lines.append(f"| {domain} | {protocol} | model | " + " | ".join(
          f"**{model[k][0]:.4f}** +- {model[k][1]:.4f}" for k in keys) + " |")
      lines.append(f"| {domain} | {protocol} | popularity | " + " | ".join(
          f"{pop[k][0]:.4f}" for k in keys) + " |")
  return "\n".join(lines)


def summarize_reports(reports: Sequence[dict[str, Any]], split: str = "test",
                      keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
  """Mean and sample standard deviation (ddof 1; 0 for one run) of each metric over runs.

  `reports` are the JSON reports `evaluate_checkpoint` writes (e.g. the same config, seeds 0-2).
  Returns {"runs": n, "model": {key: (mean, std)}, "popularity": {...}, "per_run": [...]}.
  """
  if not reports:
    raise ValueError("no reports to summarize")
  # A metric added later (MRR@10) is left out when a report saved before it lacks it.
  keys = [k for k in keys if k not in LATER_KEYS or all(
      k in r.get("splits", {}).get(split, {}).get("model", {}).get("overall", {})
      for r in reports)]
  out: dict[str, Any] = {"runs": len(reports), "split": split, "per_run": []}
  for scorer in ("model", "popularity"):
    values = {}
    for k in keys:
      try:
        xs = np.array([r["splits"][split][scorer]["overall"][k] for r in reports], np.float64)
      except KeyError as e:
        raise ValueError(f"a report has no {split}/{scorer}/{k}: {e}") from e
      values[k] = (float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0)
    out[scorer] = values
  for r in reports:
    out["per_run"].append({"workdir": r.get("workdir"), "step": r.get("step"),
                           **{k: r["splits"][split]["model"]["overall"][k] for k in keys}})
  return out


def format_summary(summary: dict[str, Any]) -> str:
  """A Markdown table: one row per run, then mean +- std, then the popularity baseline."""
  keys = [k for k in SUMMARY_KEYS if k in summary["model"]]
  lines = [f"{summary['split']}, {summary['runs']} runs", "",
           "| run | step | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
  for r in summary["per_run"]:
    lines.append(f"| {r['workdir']} | {r['step']} | "
                 + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")
  lines.append("| **mean +- std** | | " + " | ".join(
      f"**{m:.4f}** +- {sd:.4f}" for m, sd in (summary["model"][k] for k in keys)) + " |")
  lines.append("| popularity | | " + " | ".join(
      f"{summary['popularity'][k][0]:.4f}" for k in keys) + " |")
  return "\n".join(lines)


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
  """JSON report, written by process 0 only."""
  if jax.process_index() == 0:
    paths.replace_text(paths.workdir_path(path), json.dumps(report, indent=2, sort_keys=True))
    logging.info("wrote %s", path)


def format_domain_cold_start(report: dict[str, Any]) -> str:
  """The target-domain cold-start buckets: per domain and protocol, HR@10 / NDCG@10 / MRR."""
  lines = [f"protocol {name}: {text}" for name, text in report.get("protocols", {}).items()]
  lines.append("test users by target-domain events before the target (own histories, and "
               f"histories cut to the last m = {report.get('truncations')} of them)")
  lines.append(f"  {'domain':<14}{'protocol':<9}{'bucket':<7}{'pairs':>7}{'HR@10':>9}"
               f"{'NDCG@10':>9}{'MRR':>9}")
  for domain, by_protocol in report["buckets"].items():
    for protocol, buckets in by_protocol.items():
      for bucket, row in buckets.items():
        lines.append(f"  {domain:<14}{protocol:<9}{bucket:<7}{row['users']:>7}"
                     + _cell(row["HR@10"], 9) + _cell(row["NDCG@10"], 9) + _cell(row["MRR"], 9))
  lines.append(f"own histories per bucket: {report.get('natural_counts')}")
  return "\n".join(lines)
