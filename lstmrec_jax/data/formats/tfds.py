"""`movielens/<variant>-ratings` through tensorflow_datasets (`tfds:` paths)."""

from __future__ import annotations

import hashlib
import json
import os
import re

from absl import logging
import numpy as np

from lstmrec_jax.data import log as log_lib
from lstmrec_jax.errors import DataError
from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide
from lstmrec_jax.data.log import PathLike
from lstmrec_jax.data.tf_setup import import_tensorflow

EXPECTED = "a tfds dataset named by tfds_name (or a path 'tfds:<name>'), e.g. movielens/1m-ratings"
_NO_GENRES = "(no genres listed)"
_TFDS_NAME = re.compile(r"movielens/[0-9a-z-]+-ratings(:[0-9.]+)?")


def read_tfds(name: str, *, data_dir: PathLike | None = None,
              download: bool = False) -> InteractionLog:
  """Reads `movielens/<variant>-ratings` from tensorflow_datasets.

  Args:
    name: e.g. "movielens/100k-ratings" (a leading "tfds:" is accepted, and ":0.1.1" pins the
      version).
    data_dir: tfds data folder; None uses tfds' default (~/tensorflow_datasets).
    download: let tfds download and prepare the dataset when it is not there yet.

  Returns:
    An `InteractionLog` keyed by tfds' `user_id` / `movie_id`, with timestamps, ratings, titles
    and genre names.
  """
  name = name.removeprefix("tfds:")
  source = f"tfds:{name}"
  if not _TFDS_NAME.fullmatch(name):
    raise DataError(f"{source}: only tfds movielens/<variant>-ratings datasets are supported"
                    " (e.g. movielens/1m-ratings)")
  # Accelerators hidden from TensorFlow before tfds starts it.
  tf = import_tensorflow()
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"{source}: needs tensorflow-datasets ({e}): pip install -r "
                    "requirements/tf.txt (or pip install 'lstmrec-jax[tf]')") from None

  try:
    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    if download:
      builder.download_and_prepare()
    ds = builder.as_dataset(split="train", shuffle_files=False)
    genre_names = list(builder.info.features["movie_genres"].feature.names)
  except Exception as e:  # pylint: disable=broad-except  # tfds raises many types; say which
    hint = "" if download else " (set download=True to let tfds fetch and prepare it)"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise DataError(f"{source}: cannot load: {type(e).__name__}: {msg}{hint}") from None
  wanted = ["user_id", "movie_id", "timestamp", "movie_title", "movie_genres", "user_rating"]
  spec = ds.element_spec
  missing = [k for k in wanted[:5] if k not in spec]
  if missing:
    raise DataError(f"{source}: examples lack feature(s) {missing}")
  keys = [k for k in wanted if k in spec]
  ds = ds.map(lambda ex: {k: ex[k] for k in keys})
  # Genres are a variable-length list: pad with -1, which no class label uses.
  padding = {k: tf.constant(-1 if k == "movie_genres" else ("" if spec[k].dtype == tf.string
                                                             else 0), spec[k].dtype)
             for k in keys}
  ds = ds.padded_batch(65536, padding_values=padding)
  users, items, times, ratings = [], [], [], []
  side = ItemSide()
  for batch in tfds.as_numpy(ds):
    users.append(np.asarray(batch["user_id"], dtype="S"))
    items.append(np.asarray(batch["movie_id"], dtype="S"))
    times.append(batch["timestamp"].astype(np.int64))
    if "user_rating" in batch:
      ratings.append(batch["user_rating"].astype(np.float32))
    # Side data once per movie: its first row (every rating row repeats it).
    movies, first = np.unique(items[-1], return_index=True)
    for movie, row in zip(movies.tolist(), first.tolist()):
      movie = movie.decode()
      if movie not in side.titles:
        side.titles[movie] = batch["movie_title"][row].decode()
        side.attributes[movie] = [genre_names[g] for g in batch["movie_genres"][row]
                                  if 0 <= g < len(genre_names) and
                                  genre_names[g] != _NO_GENRES]
  if not users:
    raise DataError(f"{source}: the train split is empty")
  user_keys = log_lib.keys_from_bytes(np.concatenate(users))
  item_keys = log_lib.keys_from_bytes(np.concatenate(items))
  if item_keys.dtype == np.int64:
    side.titles = {int(k): v for k, v in side.titles.items()}
    side.attributes = {int(k): v for k, v in side.attributes.items()}
  version = builder.info.version
  log = InteractionLog(users=user_keys, items=item_keys, timestamps=np.concatenate(times),
                       item_side=side, source=source,
                       ratings=np.concatenate(ratings) if ratings else None,
                       fingerprint=source_fingerprint(name, data_dir, version))
  logging.info("%s: %d ratings, %d movies", source, len(log), len(side.titles))
  return log


def source_fingerprint(name: str, data_dir: PathLike | None, version) -> str:
  """The log fingerprint of a prepared tfds dataset: its name, version and data folder."""
  # Prepared tfds versions are immutable, so name@version identifies the bytes.
  base = name.split(":")[0]
  return hashlib.sha256(json.dumps({"kind": "tfds", "name": base, "version": str(version),
                                    "data_dir": os.fspath(data_dir or "")}).encode()).hexdigest()

