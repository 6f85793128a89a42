"""Raw formats -> InteractionLog -> SequenceDataset -> batches (numpy; tensorflow optional; no flax).

The one call a trainer needs is `load_dataset(DataConfig.from_mapping(config.data))`; the batch
classes live in `pipeline` (imported lazily here; it imports TensorFlow only for input.backend=tf).

  log         InteractionLog, ItemSide, Columns: what every format reader returns
  formats     the registry (name -> Format) and one module per format family: movielens,
              seqfile, pairs, table (csv / tsv / parquet), tfds, synthetic
  config      DataConfig: the `data` config group, validated once
  rewards     RewardConfig (the `reward` group), event_rewards(log, cfg): a reward per event
  preprocess  build_dataset(log, ...) -> SequenceDataset (Sequences, EvalSplit), npz cache
  synthetic   synthetic_log(num_users, num_items, seed, ...) -> InteractionLog
  download    download_movielens(path) (only with download=True)
  pipeline    TrainBatches(..., backend=tf|numpy|auto).epoch(e, skip_batches), eval_batches(...)
"""

from __future__ import annotations

import dataclasses

from lstmrec_jax.data import formats
from lstmrec_jax.data import preprocess as _preprocess
from lstmrec_jax.data.config import DataConfig
from lstmrec_jax.data.download import download_movielens
from lstmrec_jax.errors import DataError
from lstmrec_jax.data.formats import Format
from lstmrec_jax.data.formats import register_format
from lstmrec_jax.data.formats.movielens import movielens_layout
from lstmrec_jax.data.formats.movielens import read_movielens
from lstmrec_jax.data.formats.pairs import read_pairs
from lstmrec_jax.data.formats.seqfile import read_seqfile
from lstmrec_jax.data.formats.table import read_table
from lstmrec_jax.data.formats.tfds import read_tfds
from lstmrec_jax.data.log import Columns
from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide
from lstmrec_jax.data.pipeline import TrainBatches
from lstmrec_jax.data.pipeline import eval_batches
from lstmrec_jax.data.pipeline import first_fit_decreasing
from lstmrec_jax.data.pipeline import num_eval_batches
from lstmrec_jax.data.pipeline import seen_width
from lstmrec_jax.data.preprocess import EvalSplit
from lstmrec_jax.data.preprocess import SequenceDataset
from lstmrec_jax.data.preprocess import Sequences
from lstmrec_jax.data.preprocess import build_dataset
from lstmrec_jax.data.preprocess import keep_domain
from lstmrec_jax.data.formats.crossdomain import read_crossdomain
from lstmrec_jax.data.rewards import RewardConfig
from lstmrec_jax.data.synthetic import synthetic_log


def load_dataset(cfg: DataConfig, reward: RewardConfig | None = None) -> SequenceDataset:
  """Reads, filters, splits (and caches) the dataset a data config describes.

  Args:
    cfg: the validated `data` group, `DataConfig.from_mapping(config.data)`. A `path` of the
      form "tfds:<name>" reads that tfds dataset whatever `format` says.
    reward: the `reward` group (`data/rewards.py`): each event's reward, carried with the
      training events and the evaluation targets; None: 1.0 for every event.

  Returns:
    The `SequenceDataset`. With `cache_dir`, a second call with the same source bytes and
    options loads the `.npz` cache (without parsing the source, for formats with a
    fingerprint). With `domain`, only that domain's events of the split merged log
    (`preprocess.keep_domain`).

  Raises:
    DataError: a missing path (naming what the format expects, or downloading a MovieLens
      release when `download` is set), or any problem in the files.
  """
  if not isinstance(cfg, DataConfig):
    raise TypeError("load_dataset takes a DataConfig; build one with"
                    f" DataConfig.from_mapping(config.data), got {type(cfg).__name__}")
  if cfg.path is not None and cfg.path.startswith("tfds:"):
    cfg = dataclasses.replace(cfg, format="tfds", tfds_name=cfg.path.removeprefix("tfds:"),
                              path=None)
  fmt = formats.get_format(cfg.format)
  build_kwargs = {**cfg.build_kwargs(), "reward": reward}
  path = formats.locate_source(fmt, cfg)
  dataset = None
  if cfg.cache_dir is not None and fmt.fingerprint is not None:
    # Look up the cache before paying for a parse.
    key = _preprocess.cache_key(fmt.fingerprint(path, cfg),
                                _preprocess.build_options(**build_kwargs))
    dataset = _preprocess.load_cached(cfg.cache_dir, key)
  if dataset is None:
    dataset = build_dataset(fmt.read(path, cfg), **build_kwargs, cache_dir=cfg.cache_dir)
  if cfg.domain is not None:
    # The merged log is split first, so the single-domain run has the same users and targets.
    dataset = _preprocess.keep_domain(dataset, cfg.domain)
  return dataset


__all__ = [
    "Columns", "DataConfig", "DataError", "EvalSplit", "Format", "InteractionLog", "ItemSide",
    "RewardConfig", "SequenceDataset", "Sequences", "build_dataset", "download_movielens",
    "keep_domain", "load_dataset", "read_crossdomain",
    "movielens_layout", "read_movielens", "read_pairs", "read_seqfile", "read_table",
    "read_tfds", "register_format", "synthetic_log", "TrainBatches", "eval_batches",
    "num_eval_batches", "seen_width", "first_fit_decreasing",
]
