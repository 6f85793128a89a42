"""Raw formats -> InteractionLog -> SequenceDataset -> batches (numpy + tensorflow; no flax).

The one call a trainer needs is `load_dataset(cfg)` with a plain dict that starts from
`DATA_DEFAULTS`; the batch classes live in `pipeline` (imported lazily here, because importing
it starts TensorFlow).

  readers     read_movielens / read_seqfile / read_pairs / read_table / read_tfds -> InteractionLog
  preprocess  build_dataset(log, ...) -> SequenceDataset (Sequences, EvalSplit), npz cache
  synthetic   synthetic_log(num_users, num_items, seed, ...) -> InteractionLog
  download    download_movielens(path) (only with download=True)
  pipeline    TrainBatches(...).epoch(e, skip_batches), eval_batches(split, ...)
"""

from __future__ import annotations

import copy
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from absl import logging

from lstmrec_jax.data import download as _download
from lstmrec_jax.data import preprocess as _preprocess
from lstmrec_jax.data import readers as _readers
from lstmrec_jax.data.download import download_movielens
from lstmrec_jax.data.errors import DataError
from lstmrec_jax.data.preprocess import EvalSplit
from lstmrec_jax.data.preprocess import SequenceDataset
from lstmrec_jax.data.preprocess import Sequences
from lstmrec_jax.data.preprocess import build_dataset
from lstmrec_jax.data.readers import Columns
from lstmrec_jax.data.readers import InteractionLog
from lstmrec_jax.data.readers import ItemSide
from lstmrec_jax.data.readers import movielens_layout
from lstmrec_jax.data.readers import read_movielens
from lstmrec_jax.data.readers import read_pairs
from lstmrec_jax.data.readers import read_seqfile
from lstmrec_jax.data.readers import read_table
from lstmrec_jax.data.readers import read_tfds
from lstmrec_jax.data.synthetic import synthetic_log

FORMATS = ("synthetic", "movielens", "seqfile", "pairs", "csv", "tsv", "parquet", "tfds")

DATA_DEFAULTS: dict[str, Any] = {
    "format": "synthetic",  # one of FORMATS
    # Text keys take None or "" for "not set" (config files cannot hold None in a string key).
    # A file (seqfile, pairs, csv, tsv, parquet), a folder (movielens) or "tfds:<name>".
    "path": None,
    # seqfile: {"item": [attribute ids]} JSON; unset looks for <stem>_item2attributes.json
    # beside the file (and logs it), False means none.
    "attributes_path": None,
    "tfds_name": None,  # tfds: e.g. "movielens/1m-ratings"
    "tfds_data_dir": None,  # tfds: data folder; unset is tfds' default
    "download": False,  # movielens: fetch the release named by the folder when it is missing
    "columns": {  # csv / tsv / parquet (see readers.Columns)
        "user": "user", "item": "item", "time": None, "session": None, "rating": None,
        "title": None, "lists": (), "delimiter": ",", "list_separator": "|", "header": True,
    },
    "min_rating": None,  # keep events rated >= this (needs ratings); None or 0 keeps all
    "min_user_events": 1,  # k-core: events per user (<= 1: no filter)
    "min_item_events": 1,  # k-core: events per item (<= 1: no filter)
    "split": "loo",  # "loo" (leave-one-out) or "temporal" (global time cut points)
    "temporal_fractions": (0.8, 0.1, 0.1),  # temporal: (train, valid, test) event fractions
    "cache_dir": None,  # folder of .npz dataset caches; unset: no cache
    "synthetic": {"num_users": 3000, "num_items": 1000, "seed": 0},  # synthetic_log kwargs
}

_EXPECTED = {
    "movielens": "a MovieLens release folder: u.data + u.item (100K), ratings.dat + movies.dat"
                 " (1M, 10M) or ratings.csv + movies.csv (20M, 25M, 32M)",
    "seqfile": "a text file with one user per line, 'user item item ...' (e.g. Beauty.txt)",
    "pairs": "a text file with one 'user item' pair per line (e.g. Video.txt)",
    "csv": "a CSV file with a header naming the columns set in 'columns'",
    "tsv": "a TSV file with a header naming the columns set in 'columns'",
    "parquet": "a Parquet file with the columns set in 'columns'",
}

_LAZY = ("TrainBatches", "eval_batches", "num_eval_batches", "seen_width", "first_fit_decreasing")


def __getattr__(name: str):
  # The pipeline imports TensorFlow: only pay for it when batches are asked for.
  if name in _LAZY:
    from lstmrec_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return getattr(pipeline, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain(value: Any) -> Any:
  """A ConfigDict / Mapping as a plain dict (recursively)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  return value


def resolve_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
  """DATA_DEFAULTS overridden by `cfg` (nested dicts merged); unknown keys are errors."""
  cfg = _plain(cfg or {})
  unknown = sorted(set(cfg) - set(DATA_DEFAULTS))
  if unknown:
    raise DataError(f"data config: unknown key(s) {unknown}; known: {sorted(DATA_DEFAULTS)}")
  out = copy.deepcopy(DATA_DEFAULTS)
  for key, value in cfg.items():
    if key in ("columns", "synthetic") and value is not None:
      if not isinstance(value, Mapping):
        raise DataError(f"data config: {key} must be a dict, got {value!r}")
      if key == "columns":
        Columns.from_mapping(value)  # names the unknown keys
      out[key] = {**out[key], **value}
    else:
      out[key] = value
  for key in ("path", "attributes_path", "tfds_name", "tfds_data_dir", "cache_dir"):
    if out[key] == "":
      out[key] = None
  if not out["min_rating"]:
    out["min_rating"] = None  # 0 keeps all, also for logs without ratings
  if out["format"] not in FORMATS:
    raise DataError(f"data config: unknown format {out['format']!r}; expected one of"
                    f" {', '.join(FORMATS)}")
  return out


def load_dataset(cfg: Mapping[str, Any] | None = None) -> SequenceDataset:
  """Reads, filters, splits (and caches) the dataset a data config describes.

  Args:
    cfg: a plain dict (or ConfigDict) with keys of `DATA_DEFAULTS`; missing keys take their
      defaults.

  Returns:
    The `SequenceDataset`. With `cache_dir`, a second call with the same source bytes and
    options loads the `.npz` cache without parsing the source.

  Raises:
    DataError: unknown keys or format, a missing path (naming where files are expected, or
      downloading a MovieLens release when `download` is set), or any problem in the files.
  """
  cfg = resolve_config(cfg)
  fmt, path = cfg["format"], cfg["path"]
  build_kwargs = {k: cfg[k] for k in ("min_rating", "min_user_events", "min_item_events",
                                      "split", "temporal_fractions")}
  options = _preprocess.build_options(**build_kwargs)
  cache_dir = cfg["cache_dir"]
  if isinstance(path, str) and path.startswith("tfds:"):
    fmt, cfg["tfds_name"] = "tfds", path.removeprefix("tfds:")

  if fmt == "synthetic":
    log = synthetic_log(**cfg["synthetic"])
  elif fmt == "tfds":
    if not cfg["tfds_name"]:
      raise DataError("data config: format 'tfds' needs tfds_name, e.g. 'movielens/1m-ratings'")
    log = read_tfds(cfg["tfds_name"], data_dir=cfg["tfds_data_dir"], download=cfg["download"])
  else:
    path = _existing_path(fmt, path, cfg["download"])
    attributes_path = _attributes_path(fmt, path, cfg["attributes_path"])
    fingerprint = _readers.source_fingerprint(fmt, path, attributes_path=attributes_path,
                                              columns=cfg["columns"])
    if cache_dir is not None:
      cached = _preprocess.load_cached(cache_dir, _preprocess.cache_key(fingerprint, options))
      if cached is not None:
        return cached
    if fmt == "movielens":
      log = read_movielens(path)
    elif fmt == "seqfile":
      log = read_seqfile(path, attributes_path)
    elif fmt == "pairs":
      log = read_pairs(path)
    else:
      log = read_table(path, format=fmt, columns=cfg["columns"])
  return build_dataset(log, **build_kwargs, cache_dir=cache_dir)


def _existing_path(fmt: str, path, download: bool) -> pathlib.Path:
  """The data path, downloaded first for MovieLens when asked; else a DataError saying where."""
  if path is None or str(path) == "":
    hint = " (or set download=True with a path like data/ml-1m)" if fmt == "movielens" else ""
    raise DataError(f"data config: path is not set; format {fmt!r} reads {_EXPECTED[fmt]}{hint}")
  path = pathlib.Path(os.path.expanduser(os.fspath(path)))
  if fmt == "movielens":
    try:
      movielens_layout(path)
      return path
    except DataError:
      if download:
        return download_movielens(path)
      try:
        how = _download.manual_instructions(path, _download.release_for_path(path))
      except DataError:
        how = "point path at the unzipped release folder"
      raise DataError(f"{path}: no MovieLens release here; expected {_EXPECTED[fmt]}. Set"
                      f" download=True to fetch it, or {how}") from None
  if not path.exists():
    extra = " (download=True only fetches MovieLens releases)" if download else ""
    raise DataError(f"{path}: file not found; format {fmt!r} reads {_EXPECTED[fmt]}{extra}")
  return path


def _attributes_path(fmt: str, path: pathlib.Path, attributes_path) -> pathlib.Path | None:
  if fmt != "seqfile" or attributes_path is False:
    return None
  if attributes_path is not None:
    attributes_path = pathlib.Path(os.path.expanduser(os.fspath(attributes_path)))
    if not attributes_path.is_file():
      raise DataError(f"{attributes_path}: file not found (attributes_path: a JSON"
                      ' {"item": [attribute ids]})')
    return attributes_path
  beside = path.with_name(f"{path.stem}_item2attributes.json")
  if beside.is_file():
    logging.info("%s: using item attributes from %s", path, beside.name)
    return beside
  return None


__all__ = [
    "DATA_DEFAULTS", "FORMATS", "Columns", "DataError", "EvalSplit", "InteractionLog",
    "ItemSide", "SequenceDataset", "Sequences", "build_dataset", "download_movielens",
    "load_dataset", "movielens_layout", "read_movielens", "read_pairs", "read_seqfile",
    "read_table", "read_tfds", "resolve_config", "synthetic_log", *_LAZY,
]
