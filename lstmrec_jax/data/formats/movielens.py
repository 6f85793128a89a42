"""MovieLens raw releases: 100K, 1M, 10M (`::`-separated), 20M / 25M / 32M (CSV).

100K ships `u.data`, `u.item`, `u.genre`; 1M and 10M `ratings.dat`, `movies.dat`; the CSV
releases `ratings.csv`, `movies.csv`. The release is detected from the files in the folder, and
only `locate(..., download=True)` fetches a missing one.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib

from absl import logging
import numpy as np

from lstmrec_jax.data import download as download_lib
from lstmrec_jax.data import log as log_lib
from lstmrec_jax.errors import DataError
from lstmrec_jax.errors import data_error
from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide
from lstmrec_jax.data.log import PathLike

EXPECTED = ("a MovieLens release folder: u.data + u.item (100K), ratings.dat + movies.dat"
            " (1M, 10M) or ratings.csv + movies.csv (20M, 25M, 32M)")

# Genre names of the 100K release in u.genre order; used only when u.genre is absent.
_ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                  "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                  "Romance", "Sci-Fi", "Thriller", "War", "Western")
_NO_GENRES = "(no genres listed)"
# "key": ids beyond int64 (e.g. 20 digits) keep that column as strings instead of overflowing.
_RATING_FIELDS = (("user", "key"), ("item", "key"), ("rating", "float"), ("timestamp", "int"))


def movielens_layout(path: PathLike) -> tuple[str, dict[str, pathlib.Path]]:
  """Detects the MovieLens release in a folder from its files.

  Args:
    path: the release's folder (or any file inside it).

  Returns:
    (release, files): release is "ml-100k", "ml-1m", "ml-10m" or the folder name of a CSV
    release ("ml-20m", "ml-25m", "ml-32m", ...); files maps "ratings", "items" and, for 100K,
    "genres" to paths (the last two may be absent on disk).
  """
  folder = pathlib.Path(path)
  if folder.is_file():
    folder = folder.parent
  if not folder.is_dir():
    raise data_error(folder, None, "folder not found (a MovieLens release: u.data, ratings.dat or"
                     " ratings.csv)")
  if (folder / "u.data").is_file():
    return "ml-100k", {"ratings": folder / "u.data", "items": folder / "u.item",
                       "genres": folder / "u.genre"}
  if (folder / "ratings.dat").is_file():
    # Only 1M ships users.dat; 10M ships tags.dat instead.
    release = "ml-1m" if (folder / "users.dat").is_file() else "ml-10m"
    return release, {"ratings": folder / "ratings.dat", "items": folder / "movies.dat"}
  if (folder / "ratings.csv").is_file():
    name = folder.name.lower()
    release = name if name.startswith("ml-") else "ml-csv"
    return release, {"ratings": folder / "ratings.csv", "items": folder / "movies.csv"}
  raise data_error(folder, None, "no MovieLens ratings here: expected u.data (100K), ratings.dat"
                   " (1M, 10M) or ratings.csv (20M, 25M, 32M)")


def read_movielens(path: PathLike) -> InteractionLog:
  """Reads a raw MovieLens release folder (100K, 1M, 10M, 20M, 25M, 32M).

  Args:
    path: the unzipped release folder, e.g. `.../ml-1m` (see `download.py` to fetch one).

  Returns:
    An `InteractionLog` with int64 user and movie ids (a column with an id beyond int64
      keeps its ids as strings), unix-second timestamps, float32 ratings,
    titles in `item_side.titles` and genre names in `item_side.attributes`. A missing movies
    file is logged and leaves the side data empty.
  """
  release, files = movielens_layout(path)
  ratings_path, items_path = files["ratings"], files["items"]
  if release == "ml-100k":
    cols = log_lib.read_numeric(ratings_path, delimiter="\t", split=str.split,
                                layout="user item rating timestamp", fields=_RATING_FIELDS)
  elif release in ("ml-1m", "ml-10m"):
    # "::" read as ':' leaves an empty field between each pair of real ones.
    cols = log_lib.read_numeric(ratings_path, delimiter=":",
                                split=lambda line: line.split("::"),
                                layout="user::item::rating::timestamp", fields=_RATING_FIELDS)
  else:
    cols = log_lib.read_numeric(ratings_path, delimiter=",",
                                header=("userId", "movieId", "rating", "timestamp"),
                                layout="userId,movieId,rating,timestamp", fields=_RATING_FIELDS)
  side = ItemSide()
  if not items_path.is_file():
    logging.warning("%s: no %s; items have no titles or genres", items_path.parent,
                    items_path.name)
  elif release == "ml-100k":
    side = _read_ml100k_items(items_path, files["genres"])
  elif release in ("ml-1m", "ml-10m"):
    # 1M is latin-1 (documented); 10M's movies.dat is UTF-8 where it is not plain ASCII.
    side = _read_movies_dat(items_path, "latin-1" if release == "ml-1m" else "utf-8")
  else:
    side = _read_movies_csv(items_path)
  if cols["item"].dtype.kind == "U":
    side = _string_keys(side)  # the ratings' movie ids are strings: match them
  existing = [f for f in files.values() if f.is_file()]
  log = InteractionLog(
      users=cols["user"], items=cols["item"], timestamps=cols["timestamp"], item_side=side,
      source=f"movielens {release} ({pathlib.Path(ratings_path).parent})",
      ratings=cols["rating"].astype(np.float32),
      fingerprint=log_lib.fingerprint_files("movielens", existing, {}))
  logging.info("%s: %d ratings, %d movies with titles", log.source, len(log), len(side.titles))
  return log


def _string_keys(side: ItemSide) -> ItemSide:
  """`side` keyed by `str(movie id)`, as the ratings are when an id is beyond int64."""
  return ItemSide(titles={str(k): v for k, v in side.titles.items()},
                  attributes={str(k): v for k, v in side.attributes.items()},
                  attribute_names=side.attribute_names)


def _read_ml100k_items(items_path: pathlib.Path, genres_path: pathlib.Path) -> ItemSide:
  """u.item (latin-1, `id|title|release|video release|url|19 genre flags`) + u.genre names."""
  genres = list(_ML100K_GENRES)
  if genres_path.is_file():
    genres = []
    for lineno, line in log_lib.lines(log_lib.read_text(genres_path, "latin-1")):
      name, sep, index = line.rpartition("|")
      if not sep or log_lib.to_int(genres_path, lineno, index, "genre index") != len(genres):
        raise data_error(genres_path, lineno, f"expected 'name|{len(genres)}', got {line!r}")
      genres.append(name)
  side = ItemSide()
  expected = 5 + len(genres)
  for lineno, line in log_lib.lines(log_lib.read_text(items_path, "latin-1")):
    fields = line.split("|")
    if len(fields) != expected:
      raise data_error(items_path, lineno,
                       f"expected {expected} '|'-separated fields (id, title, release, video"
                       f" release, url, {len(genres)} genre flags), got {len(fields)}")
    item = log_lib.to_int(items_path, lineno, fields[0], "movie id")
    flags = fields[5:]
    if any(f not in ("0", "1") for f in flags):
      raise data_error(items_path, lineno, "genre flags must be 0 or 1")
    side.titles[item] = fields[1]
    side.attributes[item] = [g for g, f in zip(genres, flags) if f == "1"]
  return side


def _read_movies_dat(path: pathlib.Path, encoding: str) -> ItemSide:
  """movies.dat of 1M / 10M: `id::title::Genre1|Genre2`."""
  try:
    text = log_lib.read_text(path, encoding)
  except DataError:
    if encoding == "latin-1":
      raise
    text = None
  if text is None:
    text = log_lib.read_text(path, "latin-1")  # latin-1 decodes any byte: the last resort
  side = ItemSide()
  for lineno, line in log_lib.lines(text):
    fields = line.split("::")
    if len(fields) < 3:
      raise data_error(path, lineno, f"expected 'id::title::genres', got {line[:80]!r}")
    item = log_lib.to_int(path, lineno, fields[0], "movie id")
    side.titles[item] = "::".join(fields[1:-1])
    side.attributes[item] = [g for g in fields[-1].split("|") if g and g != _NO_GENRES]
  return side


def _read_movies_csv(path: pathlib.Path) -> ItemSide:
  """movies.csv of 20M / 25M / 32M: `movieId,title,genres` with quoted titles."""
  text = log_lib.read_text(path)
  reader = csv.reader(io.StringIO(text, newline=""))
  try:
    header = [h.strip() for h in next(reader)]
  except StopIteration:
    raise data_error(path, 1, "empty file") from None
  for name in ("movieId", "title", "genres"):
    if name not in header:
      raise data_error(path, 1, f"missing column {name!r} (the header has {', '.join(header)})")
  i_id, i_title, i_genres = (header.index(n) for n in ("movieId", "title", "genres"))
  side = ItemSide()
  try:
    for row in reader:
      if not row:
        continue
      if len(row) != len(header):
        raise data_error(path, reader.line_num, f"expected {len(header)} fields, got {len(row)}"
                         " (quote titles with commas)")
      item = log_lib.to_int(path, reader.line_num, row[i_id], "movieId")
      side.titles[item] = row[i_title]
      side.attributes[item] = [g for g in row[i_genres].split("|") if g and g != _NO_GENRES]
  except csv.Error as e:
    raise data_error(path, reader.line_num, f"bad CSV: {e}") from None
  return side



def source_fingerprint(path: PathLike) -> str:
  """The fingerprint `read_movielens(path)` gives its log, computed without parsing."""
  _, files = movielens_layout(path)
  return log_lib.fingerprint_files("movielens", [f for f in files.values() if f.is_file()], {})


def locate(path: PathLike | None, *, download: bool = False) -> pathlib.Path:
  """The release folder (downloaded first when missing and `download`), else a DataError."""
  if path is None:
    raise DataError(f"data config: path is not set; format 'movielens' reads {EXPECTED} (or set"
                    " download=True with a path like data/ml-1m)")
  path = pathlib.Path(os.path.expanduser(os.fspath(path)))
  try:
    movielens_layout(path)
    return path
  except DataError:
    if download:
      return download_lib.download_movielens(path)
    try:
      how = download_lib.manual_instructions(path, download_lib.release_for_path(path))
    except DataError:
      how = "point path at the unzipped release folder"
    raise DataError(f"{path}: no MovieLens release here; expected {EXPECTED}. Set"
                    f" download=True to fetch it, or {how}") from None
