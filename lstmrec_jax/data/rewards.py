"""Rewards from logged feedback: the `reward` config group and the reward of every event.

Shape legend: `N` events in the log.

A reward is a float per event, computed once from the log (`event_rewards`) and carried through
filtering, ordering and the split beside the item ids (`preprocess.build_dataset`), into the
training batches (`rewards_BxL`, the reward of each position's target) and the evaluation
splits (`EvalSplit.rewards_U`, the reward of each target). The split, the ranking and the
metrics do not depend on it; the offline RL losses (`losses/rl.py`) and the reward-aware
evaluation (high-reward targets, reward of the hits) read it.

Kinds (`reward.kind`):
  constant   every event earns `constant` (implicit feedback: a click, a purchase)
  rating     `scale` x the event's rating (MovieLens, or a CSV / Parquet `columns.rating`
             column holding any value, e.g. a price)
  threshold  `above` for a rating >= `threshold`, else `below` (e.g. 1.0 for >= 4, 0.2 below)
  labels     the event's label in the `columns.feedback` column (CSV / Parquet) mapped by
             `labels`, e.g. {"click": 0.2, "purchase": 1.0}; a label not in the map is an error
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from lstmrec_jax import config_keys
from lstmrec_jax.errors import DataError

KINDS = ("constant", "rating", "threshold", "labels")


def _finite(value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or (
      not math.isfinite(value)):
    raise config_keys.Invalid(f"={value!r} must be a finite number")
  return float(value)


def _labels(value) -> Mapping[str, float]:
  if not isinstance(value, Mapping):
    raise config_keys.Invalid(f"={value!r} must be a mapping of label -> reward")
  out, problems = {}, []
  for label, reward in value.items():
    try:
      out[str(label)] = _finite(reward)
    except config_keys.Invalid as e:
      problems.append(f".{label}{e.problems[0]}")
  if problems:
    raise config_keys.Invalid(*problems)
  return types.MappingProxyType(out)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """The `reward` group of configs/base.py (each key's meaning is there)."""

  kind: str = config_keys.key(choices=KINDS)
  constant: float = config_keys.key(convert=_finite)  # constant: every event's reward
  scale: float = config_keys.key(convert=_finite)  # rating: reward = scale x rating
  threshold: float = config_keys.key(convert=_finite)  # threshold: the rating cut
  above: float = config_keys.key(convert=_finite)  # threshold: reward of a rating >= threshold
  below: float = config_keys.key(convert=_finite)  # threshold: reward below it
  labels: Mapping[str, float] = config_keys.key(convert=_labels)  # labels: label -> reward
  # Evaluation: targets with reward >= high_min are the high-reward targets of the report.
  high_min: float = config_keys.key(convert=_finite)

  def __post_init__(self):
    if self.kind == "labels" and not self.labels:
      raise ValueError("reward.kind='labels' needs reward.labels, e.g. {'click': 0.2, "
                       "'purchase': 1.0}")

  @classmethod
  def from_mapping(cls, group: Mapping[str, Any] | RewardConfig) -> RewardConfig:
    """The `reward` group validated (`config_keys.build_group`: every bad key named)."""
    if isinstance(group, RewardConfig):
      return group
    return config_keys.build_group(cls, "reward", group)

  def options(self) -> dict[str, Any]:
    """The keys that decide the rewards (the dataset cache key), e.g. {"kind": "constant",
    "constant": 1.0}; `high_min` only reads them."""
    keys = {"constant": ("constant",), "rating": ("scale",),
            "threshold": ("threshold", "above", "below"), "labels": ("labels",)}[self.kind]
    return {"kind": self.kind, **{k: (dict(getattr(self, k)) if k == "labels" else
                                      getattr(self, k)) for k in keys}}


CONSTANT_ONE = {"kind": "constant", "constant": 1.0}  # `options()` of no reward config


def event_rewards(log, cfg: RewardConfig | None) -> np.ndarray:
  """float32 [N]: each event's reward under `cfg` (None: 1.0 for every event).

  Example: ratings [5, 3, 4], kind "threshold" (4, above 1.0, below 0.2) -> [1.0, 0.2, 1.0].

  Raises:
    DataError: a kind that needs ratings (or labels) on a log without them, a non-finite
      rating, or a label missing from `labels` (named, with its count).
  """
  n = len(log)
  if cfg is None or cfg.kind == "constant":
    return np.full(n, 1.0 if cfg is None else cfg.constant, np.float32)
  if cfg.kind in ("rating", "threshold"):
    if log.ratings is None:
      raise DataError(f"{log.source}: reward.kind={cfg.kind!r} needs ratings and this log has "
                      "none (set data.columns.rating for CSV / Parquet, or reward.kind="
                      "'constant')")
    ratings_N = np.asarray(log.ratings, np.float64)
    bad = np.flatnonzero(~np.isfinite(ratings_N))
    if bad.size:
      raise DataError(f"{log.source}: event {int(bad[0])} has the rating {ratings_N[bad[0]]}; "
                      f"reward.kind={cfg.kind!r} needs finite ratings")
    if cfg.kind == "rating":
      return (cfg.scale * ratings_N).astype(np.float32)
    return np.where(ratings_N >= cfg.threshold, cfg.above, cfg.below).astype(np.float32)
  feedback = getattr(log, "feedback", None)
  if feedback is None:
    raise DataError(f"{log.source}: reward.kind='labels' needs a feedback column (set "
                    "data.columns.feedback for CSV / Parquet) and this log has none")
  labels_N = np.asarray(feedback).astype(str)
  names, inverse = np.unique(labels_N, return_inverse=True)
  missing = [(str(name), int((inverse == i).sum())) for i, name in enumerate(names)
             if str(name) not in cfg.labels]
  if missing:
    listed = ", ".join(f"{name!r} ({count} event{'s' * (count != 1)})"
                       for name, count in missing[:5])
    raise DataError(f"{log.source}: feedback label(s) {listed} not in reward.labels "
                    f"({', '.join(map(repr, cfg.labels))})")
  values = np.asarray([cfg.labels[str(name)] for name in names], np.float32)
  return values[inverse.reshape(-1)]
