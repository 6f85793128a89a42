"""`DataConfig`: the `data` config group, validated once into a frozen record.

The keys and their defaults live in configs/base.py only (the library never imports configs/):
`DataConfig.from_mapping` takes the whole group, every key required, so a config written
against an older base fails with the names of what it lacks instead of silently taking a
second set of defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from lstmrec_jax.data import formats
from lstmrec_jax.data.errors import DataError
from lstmrec_jax.data.formats import synthetic as synthetic_format
from lstmrec_jax.data.log import Columns
from lstmrec_jax.data.preprocess import SPLITS

# Keys whose "" means unset (a ConfigDict string key cannot hold None).
_TEXT_KEYS = ("path", "attributes_path", "tfds_name", "tfds_data_dir", "cache_dir")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `data` config group, validated (see configs/base.py for each key's meaning)."""

  format: str  # a registered format (`formats.format_names()`)
  path: str | None  # file or folder of the raw data; "tfds:<name>" reads tfds
  attributes_path: str | bool | None  # seqfile: None looks beside the file, False: none
  tfds_name: str | None  # tfds: e.g. "movielens/1m-ratings"
  tfds_data_dir: str | None  # tfds: data folder; None: tfds' default
  download: bool  # movielens: fetch the release when `path` holds none
  columns: Columns  # csv / tsv / parquet
  dedupe: bool  # drop duplicate events (preprocess.build_dataset); counted either way
  min_rating: float | None  # keep events rated >= this; None keeps all
  min_user_events: int  # k-core on users, >= 0 (<= 1: off)
  min_item_events: int  # k-core on items, >= 0 (<= 1: off)
  split: str  # one of preprocess.SPLITS
  temporal_fractions: tuple[float, float, float]  # train / valid / test shares, sum 1
  cache_dir: str | None  # dataset caches; None: no cache
  synthetic: Mapping[str, Any]  # synthetic_log kwargs (the rest take its defaults)

  @classmethod
  def from_mapping(cls, group: Mapping[str, Any] | DataConfig) -> DataConfig:
    """Validates a `data` group (a dict or ConfigDict) into a DataConfig.

    Args:
      group: every key of the `data` group of configs/base.py, and no other; text keys take
        "" for unset, `min_rating` 0 keeps all, `columns` names every `Columns` field.

    Returns:
      The frozen DataConfig.

    Raises:
      DataError: one message naming every unknown, missing or invalid key
        (`data.<key>: <problem>; ...`).
    """
    if isinstance(group, DataConfig):
      return group
    group = _plain(group)
    if not isinstance(group, Mapping):
      raise DataError(f"data: expected a mapping of the data config keys, got {group!r}")
    problems: list[str] = []
    fields = [f.name for f in dataclasses.fields(cls)]
    problems += [f"data.{k}: unknown key" for k in group if k not in fields]
    problems += [f"data.{k}: missing" for k in fields if k not in group]
    values = {}
    for key in fields:
      if key not in group:
        continue
      try:
        values[key] = _CHECKS[key](group[key])
      except _Invalid as e:
        problems += [f"data.{key}{p}" for p in e.problems]
    if problems:
      raise DataError("; ".join(problems))
    return cls(**values)

  def build_kwargs(self) -> dict[str, Any]:
    """The keyword arguments of `preprocess.build_dataset` this config sets (no cache_dir)."""
    return {"dedupe": self.dedupe, "min_rating": self.min_rating,
            "min_user_events": self.min_user_events, "min_item_events": self.min_item_events,
            "split": self.split,
            "temporal_fractions": self.temporal_fractions}


class _Invalid(Exception):
  """Problems of one key, each `": <problem>"` or `".<sub key>: <problem>"`."""

  def __init__(self, *problems: str):
    super().__init__(problems)
    self.problems = problems


def _plain(value: Any) -> Any:
  """A ConfigDict / Mapping as a plain dict (recursively)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  return value


def _format(value) -> str:
  names = formats.format_names()
  if value not in names:
    raise _Invalid(f": unknown format {value!r}; expected one of {', '.join(names)}")
  return value


def _text(value) -> str | None:
  if value is None or value == "":
    return None
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  if not isinstance(value, str):
    raise _Invalid(f": expected a string (\"\" for unset), got {value!r}")
  return value


def _attributes_path(value) -> str | bool | None:
  return False if value is False else _text(value)


def _bool(value) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise _Invalid(f": expected True or False, got {value!r}")
  return bool(value)


def _columns(value) -> Columns:
  if not isinstance(value, Mapping):
    raise _Invalid(f": expected a mapping of column roles, got {value!r}")
  known = [f.name for f in dataclasses.fields(Columns)]
  problems = [f".{k}: unknown key" for k in value if k not in known]
  problems += [f".{k}: missing" for k in known if k not in value]
  if problems:
    raise _Invalid(*problems)
  try:
    return Columns.from_mapping(value)
  except (TypeError, ValueError) as e:
    raise _Invalid(f": {e}") from None


def _min_rating(value) -> float | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or (
      not math.isfinite(value)):
    raise _Invalid(f": expected a number (0 keeps all), got {value!r}")
  return float(value) if value else None  # 0 keeps all, also for logs without ratings


def _count(value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise _Invalid(f": expected a non-negative integer (0 = off), got {value!r}")
  return int(value)


def _split(value) -> str:
  if value not in SPLITS:
    raise _Invalid(f": unknown split {value!r}; expected one of {' | '.join(SPLITS)}")
  return value


def _fractions(value) -> tuple[float, float, float]:
  try:
    fractions = tuple(float(f) for f in value)
  except (TypeError, ValueError):
    fractions = ()
  if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
    raise _Invalid(": expected three positive numbers (train, valid, test) summing to 1, got"
                   f" {value!r}")
  return fractions


def _synthetic(value) -> dict[str, Any]:
  if not isinstance(value, Mapping):
    raise _Invalid(f": expected a mapping of synthetic_log arguments, got {value!r}")
  unknown = [f".{k}: unknown key (synthetic_log takes {', '.join(synthetic_format.ARGUMENTS)})"
             for k in value if k not in synthetic_format.ARGUMENTS]
  if unknown:
    raise _Invalid(*unknown)
  return dict(value)


_CHECKS = {
    "format": _format, "path": _text, "attributes_path": _attributes_path, "tfds_name": _text,
    "tfds_data_dir": _text, "download": _bool, "columns": _columns, "dedupe": _bool,
    "min_rating": _min_rating,
    "min_user_events": _count, "min_item_events": _count, "split": _split,
    "temporal_fractions": _fractions, "cache_dir": _text, "synthetic": _synthetic,
}
