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

from lstmrec_jax import config_keys
from lstmrec_jax.data import formats
from lstmrec_jax.errors import DataError
from lstmrec_jax.data.formats import synthetic as synthetic_format
from lstmrec_jax.data.log import Columns
from lstmrec_jax.data.preprocess import SPLITS


def _format(value) -> str:
  names = formats.format_names()
  if value not in names:
    raise config_keys.Invalid(f": unknown format {value!r}; expected one of {', '.join(names)}")
  return value


def _text(value) -> str | None:
  """A text key: "" means unset (a ConfigDict string key cannot hold None)."""
  if value is None or value == "":
    return None
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  if not isinstance(value, str):
    raise config_keys.Invalid(f": expected a string (\"\" for unset), got {value!r}")
  return value


def _attributes_path(value) -> str | bool | None:
  return False if value is False else _text(value)


def _bool(value) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise config_keys.Invalid(f": expected True or False, got {value!r}")
  return bool(value)


def _columns(value) -> Columns:
  if not isinstance(value, Mapping):
    raise config_keys.Invalid(f": expected a mapping of column roles, got {value!r}")
  known = [f.name for f in dataclasses.fields(Columns)]
  problems = [f".{k}: unknown key" for k in value if k not in known]
  problems += [f".{k}: missing" for k in known if k not in value]
  if problems:
    raise config_keys.Invalid(*problems)
  try:
    return Columns.from_mapping(value)
  except (TypeError, ValueError) as e:
    raise config_keys.Invalid(f": {e}") from None


def _names(value) -> tuple[str, ...]:
  if isinstance(value, str):
    value = [v.strip() for v in value.split(",")] if value else []
  if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
    raise config_keys.Invalid(f": expected a list of non-empty names (or \"\"), got {value!r}")
  if len(set(value)) != len(value):
    raise config_keys.Invalid(f": names must differ, got {value!r}")
  return tuple(value)


def _min_rating(value) -> float | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or (
      not math.isfinite(value)):
    raise config_keys.Invalid(f": expected a number (0 keeps all), got {value!r}")
  return float(value) if value else None  # 0 keeps all, also for logs without ratings


def _count(value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise config_keys.Invalid(f": expected a non-negative integer (0 = off), got {value!r}")
  return int(value)


def _split(value) -> str:
  if value not in SPLITS:
    raise config_keys.Invalid(f": unknown split {value!r}; expected one of {' | '.join(SPLITS)}")
  return value


def _fractions(value) -> tuple[float, float, float]:
  try:
    fractions = tuple(float(f) for f in value)
  except (TypeError, ValueError):
    fractions = ()
  if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
    raise config_keys.Invalid(": expected three positive numbers (train, valid, test) summing to 1, got"
                   f" {value!r}")
  return fractions


def _synthetic(value) -> dict[str, Any]:
  if not isinstance(value, Mapping):
    raise config_keys.Invalid(f": expected a mapping of synthetic_log arguments, got {value!r}")
  unknown = [f".{k}: unknown key (synthetic_log takes {', '.join(synthetic_format.ARGUMENTS)})"
             for k in value if k not in synthetic_format.ARGUMENTS]
  if unknown:
    raise config_keys.Invalid(*unknown)
  return dict(value)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `data` config group, validated (see configs/base.py for each key's meaning)."""

  format: str = config_keys.key(convert=_format)  # a registered format
  path: str | None = config_keys.key(convert=_text)  # raw data; "tfds:<name>" reads tfds
  # seqfile: None looks beside the file, False: none
  attributes_path: str | bool | None = config_keys.key(convert=_attributes_path)
  # crossdomain: the item -> domain JSON map (None: map_item.json beside the file)
  domains_path: str | None = config_keys.key(convert=_text)
  domain_names: tuple[str, ...] = config_keys.key(convert=_names)  # () = as the map names them
  # keep one domain's events only (a single-domain run on a multi-domain log); None keeps all
  domain: str | None = config_keys.key(convert=_text)
  tfds_name: str | None = config_keys.key(convert=_text)  # e.g. "movielens/1m-ratings"
  tfds_data_dir: str | None = config_keys.key(convert=_text)  # None: tfds' default
  download: bool = config_keys.key(convert=_bool)  # movielens: fetch the release
  columns: Columns = config_keys.key(convert=_columns)  # csv / tsv / parquet
  dedupe: bool = config_keys.key(convert=_bool)  # drop duplicate events (counted)
  min_rating: float | None = config_keys.key(convert=_min_rating)  # None keeps all
  min_user_events: int = config_keys.key(convert=_count)  # k-core on users, >= 0
  min_item_events: int = config_keys.key(convert=_count)  # k-core on items, >= 0
  split: str = config_keys.key(convert=_split)  # one of preprocess.SPLITS
  # train / valid / test shares of the temporal split, summing to 1
  temporal_fractions: tuple[float, float, float] = config_keys.key(convert=_fractions)
  cache_dir: str | None = config_keys.key(convert=_text)  # None: no cache
  synthetic: Mapping[str, Any] = config_keys.key(convert=_synthetic)  # synthetic_log kwargs

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
        (`config_keys.build_group`: `unknown key data.x; data.<key>: <problem>; ...`).
    """
    if isinstance(group, DataConfig):
      return group
    return config_keys.build_group(cls, "data", group, error=DataError)

  def build_kwargs(self) -> dict[str, Any]:
    """The keyword arguments of `preprocess.build_dataset` this config sets (no cache_dir)."""
    return {"dedupe": self.dedupe, "min_rating": self.min_rating,
            "min_user_events": self.min_user_events, "min_item_events": self.min_item_events,
            "split": self.split,
            "temporal_fractions": self.temporal_fractions}
