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
from lstmrec_jax.evaluation import metrics

PROTOCOL = ("leave-one-out next-item; ranking over all items (padding excluded); the user's "
            "history items removed from the ranking except the target itself; ties count "
            "against the target")


def history_lengths(split) -> np.ndarray:
  """Events before each user's target, in the split's order."""
  return np.diff(split.history.offsets_U1)


def split_report(ranks_U: np.ndarray, users_U: np.ndarray, split, *,
                 ks: Sequence[int] = metrics.DEFAULT_KS) -> dict[str, Any]:
  """Overall metrics and the history-length breakdown for one split."""
  position = {int(u): i for i, u in enumerate(split.users_U)}
  lengths = history_lengths(split)[[position[int(u)] for u in users_U]]
  return {"overall": metrics.metrics_from_ranks(ranks_U, ks),
          "by_history_length": metrics.metrics_by_history_length(ranks_U, lengths)}


def _cell(value: float | None, width: int) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def format_table(report: dict[str, Any], keys: Sequence[str] = (
    "HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")) -> str:
  """A plain-text table of model vs popularity per split, then the history-length breakdown."""
  lines = [f"{'split':<8}{'scorer':<12}" + "".join(f"{k:>9}" for k in keys)]
  for split_name, split_rep in report["splits"].items():
    for scorer in ("model", "popularity"):
      row = split_rep[scorer]["overall"]
      lines.append(f"{split_name:<8}{scorer:<12}" + "".join(f"{row[k]:>9.4f}" for k in keys))
  for split_name, split_rep in report["splits"].items():
    lines.append(f"\n{split_name}: by history length (events before the target)")
    lines.append(f"  {'bucket':<8}{'users':>7}{'HR@10':>9}{'NDCG@10':>9}"
                 f"{'pop HR@10':>11}{'pop NDCG@10':>13}")
    for bucket, row in split_rep["model"]["by_history_length"].items():
      pop = split_rep["popularity"]["by_history_length"][bucket]
      cells = [_cell(row["HR@10"], 9), _cell(row["NDCG@10"], 9), _cell(pop["HR@10"], 11),
               _cell(pop["NDCG@10"], 13)]
      lines.append(f"  {bucket:<8}{row['users']:>7}" + "".join(cells))
  from lstmrec_jax.evaluation import beyond  # pylint: disable=g-import-not-at-top
  extra = beyond.format_beyond(report)  # coverage, Gini, ARP, novelty, ILD, personalization
  return "\n".join(lines) + (("\n" + extra) if extra else "")


SUMMARY_KEYS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")


def summarize_reports(reports: Sequence[dict[str, Any]], split: str = "test",
                      keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
  """Mean and sample standard deviation (ddof 1; 0 for one run) of each metric over runs.

  `reports` are the JSON reports `evaluate_checkpoint` writes (e.g. the same config, seeds 0-2).
  Returns {"runs": n, "model": {key: (mean, std)}, "popularity": {...}, "per_run": [...]}.
  """
  if not reports:
    raise ValueError("no reports to summarize")
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
    paths.workdir_path(path).write_text(json.dumps(report, indent=2, sort_keys=True))
    logging.info("wrote %s", path)
