"""Raw interaction files -> `InteractionLog`, one reader per format.

Shape legend: `N` events in the log.

Formats:
  * MovieLens raw releases (`read_movielens`): 100K (`u.data`, `u.item`, `u.genre`), 1M and 10M
    (`ratings.dat`, `movies.dat`, `::`-separated), 20M / 25M / 32M (`ratings.csv`, `movies.csv`).
    The release is detected from the files in the folder.
  * One user per line, `user item item ...` in time order (`read_seqfile`), with an optional
    `{"item": [attribute ids]}` JSON file (the S3-Rec `*_item2attributes.json`).
  * One pair per line, `user item`, lines in time order per user (`read_pairs`, SASRec's files).
  * A generic CSV / TSV / Parquet log with named columns (`read_table`, `Columns`).
  * `tfds:movielens/<variant>-ratings` through tensorflow_datasets (`read_tfds`).

Every problem in a file is a `DataError` whose message is `<file>:<line>: <problem>` (1-based
lines; for Parquet the number is the 1-based row; in a CSV with newlines inside quoted fields,
a row's reported line counts rows, not physical lines). Big numeric files go through pyarrow
first and, only when that fails, through a line-by-line parser whose job is to name the bad
line.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np

from lstmrec_jax.data.errors import DataError
from lstmrec_jax.data.errors import data_error

PathLike = str | os.PathLike[str]
Key = int | str


@dataclasses.dataclass
class ItemSide:
  """Side data keyed by raw item key; attribute keys are raw too (genre names, attribute ids)."""

  titles: dict[Key, str] = dataclasses.field(default_factory=dict)
  attributes: dict[Key, list[Key]] = dataclasses.field(default_factory=dict)
  # Readable names of raw attribute keys, where the file has them; other keys name themselves.
  attribute_names: dict[Key, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class InteractionLog:
  """Raw events, one entry per interaction, in file order.

  `users` / `items` hold raw keys (int64, or str where the file's ids are not all integers);
  `timestamps` is int64 or None (None: file order is time order within each user); `ratings`
  is float32 or None. `fingerprint` identifies the source bytes and reader options (cache key).
  """

  users: np.ndarray
  items: np.ndarray
  timestamps: np.ndarray | None
  item_side: ItemSide
  source: str
  ratings: np.ndarray | None = None
  fingerprint: str = ""

  def __post_init__(self):
    n = len(self.users)
    for name in ("items", "timestamps", "ratings"):
      value = getattr(self, name)
      if value is not None and len(value) != n:
        raise DataError(f"{self.source}: {name} has {len(value)} entries, users has {n}")

  def __len__(self) -> int:
    return len(self.users)


# ----------------------------------------------------------------------------- file helpers


def _fingerprint(kind: str, files: Sequence[pathlib.Path], options: Mapping[str, Any]) -> str:
  """sha256 over the reader, its options and each file's name and bytes (not its folder)."""
  h = hashlib.sha256(json.dumps({"kind": kind, "options": options}, sort_keys=True,
                                default=str).encode())
  for f in files:
    h.update(f.name.encode() + b"\0")
    try:
      with open(f, "rb") as fh:
        h.update(hashlib.file_digest(fh, "sha256").digest())
    except OSError as e:
      raise data_error(f, None, f"cannot read: {e.strerror or e}") from None
  return h.hexdigest()


def _require_file(path: pathlib.Path, what: str) -> None:
  if not path.is_file():
    problem = "is a folder, expected a file" if path.is_dir() else "file not found"
    raise data_error(path, None, f"{problem} ({what})")


def _read_text(path: pathlib.Path, encoding: str = "utf-8") -> str:
  """The whole file decoded; a decode error names the line and the byte."""
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    raise data_error(path, None, "file not found") from None
  except OSError as e:
    raise data_error(path, None, f"cannot read: {e.strerror or e}") from None
  if not data.strip():
    raise data_error(path, 1, "empty file")
  try:
    return data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise data_error(path, line, f"not valid {encoding} text (byte 0x{data[e.start]:02x})"
                     ) from None


def _lines(text: str):
  """(1-based line number, line) for non-blank lines; only '\\n' ends a line."""
  for lineno, line in enumerate(text.split("\n"), 1):
    line = line.rstrip("\r")
    if line.strip():
      yield lineno, line


def _to_int(path, lineno: int, token: str, what: str) -> int:
  try:
    return int(token)
  except ValueError:
    raise data_error(path, lineno, f"non-integer {what} {token!r}") from None


def _to_float(path, lineno: int, token: str, what: str) -> float:
  try:
    return float(token)
  except ValueError:
    raise data_error(path, lineno, f"non-numeric {what} {token!r}") from None


# Field kinds for `_parse_fields`: "int", "float", "skip".
_Fields = Sequence[tuple[str, str]]


def _parse_fields(path: pathlib.Path, text: str, split: Callable[[str], list[str]],
                  fields: _Fields, layout: str) -> dict[str, np.ndarray]:
  """Line-by-line parser of a delimited numeric file; the reference the fast path must match."""
  out: dict[str, list] = {name: [] for name, kind in fields if kind != "skip"}
  for lineno, line in _lines(text):
    parts = split(line)
    if len(parts) != len(fields):
      raise data_error(path, lineno,
                       f"expected {len(fields)} fields ({layout}), got {len(parts)}: {line[:80]!r}")
    for (name, kind), token in zip(fields, parts):
      if kind == "int":
        out[name].append(_to_int(path, lineno, token, name))
      elif kind == "float":
        out[name].append(_to_float(path, lineno, token, name))
  if not any(out.values()):
    raise data_error(path, 1, "empty file")
  return {name: np.asarray(values, np.float64 if dict(fields)[name] == "float" else np.int64)
          for name, values in out.items()}


def _arrow_fields(path: pathlib.Path, delimiter: str, fields: _Fields, *,
                  skip_rows: int = 0) -> dict[str, np.ndarray] | None:
  """Fast pyarrow read of a delimited numeric file; None when it does not parse cleanly.

  A None sends the caller to `_parse_fields`, which either names the bad line or (for layouts
  pyarrow cannot express, e.g. several spaces between fields) parses the file itself.
  """
  import pyarrow as pa
  import pyarrow.csv as pacsv

  names = [name if kind != "skip" else f"_skip{i}" for i, (name, kind) in enumerate(fields)]
  types = {name: (pa.int64() if kind == "int" else pa.float64())
           for name, kind in fields if kind != "skip"}
  try:
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip_rows),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types)))
  except (pa.ArrowException, OSError, ValueError):
    return None
  if table.num_rows == 0 or any(table[name].null_count for name in types):
    return None
  return {name: table[name].to_numpy() for name in types}


def _read_numeric(path: pathlib.Path, *, delimiter: str, fields: _Fields, layout: str,
                  header: Sequence[str] | None = None, encoding: str = "utf-8",
                  split: Callable[[str], list[str]] | None = None) -> dict[str, np.ndarray]:
  """A delimited numeric file as columns: pyarrow when it parses, else the exact line parser."""
  _require_file(path, layout)
  if path.stat().st_size == 0:
    raise data_error(path, 1, "empty file")
  if header is not None:
    found = _check_header(path, delimiter, header, encoding)
    if found != list(header):
      raise data_error(path, 1, f"expected the header {','.join(header)}, got {','.join(found)}")
  columns = _arrow_fields(path, delimiter, fields, skip_rows=1 if header is not None else 0)
  if columns is not None:
    return columns
  text = _read_text(path, encoding)
  if header is not None:
    # Keep line numbers right: blank out the header instead of removing it.
    text = "\n" + text.split("\n", 1)[1] if "\n" in text else ""
  if split is None:
    split = lambda line: line.split(delimiter)
  return _parse_fields(path, text, split, fields, layout)


def _check_header(path: pathlib.Path, delimiter: str, expected: Sequence[str],
                  encoding: str) -> list[str]:
  """The header row; a missing expected column is an error at line 1."""
  try:
    with open(path, encoding="utf-8-sig" if encoding == "utf-8" else encoding,
              newline="") as f:
      header = next(csv.reader(f, delimiter=delimiter), None)
  except UnicodeDecodeError:
    raise data_error(path, 1, f"not valid {encoding} text") from None
  except csv.Error as e:
    raise data_error(path, 1, f"bad header: {e}") from None
  if not header:
    raise data_error(path, 1, "empty file")
  header = [h.strip() for h in header]
  for name in expected:
    if name not in header:
      raise data_error(path, 1, f"missing column {name!r} (the header has {', '.join(header)})")
  return header


def _keys_from_bytes(values: np.ndarray) -> np.ndarray:
  """int64 keys when every id is a canonical integer (no leading zeros), else str keys."""
  values = np.asarray(values, dtype="S")
  try:
    ints = values.astype(np.int64)
  except (ValueError, OverflowError):
    ints = None
  # Round-trip check: "007" and "7" must not become the same key.
  if ints is not None and np.array_equal(ints.astype("S"), values):
    return ints
  return np.char.decode(values, "utf-8")


# ----------------------------------------------------------------------------- MovieLens

# Genre names of the 100K release in u.genre order; used only when u.genre is absent.
_ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                  "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                  "Romance", "Sci-Fi", "Thriller", "War", "Western")
_NO_GENRES = "(no genres listed)"


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
    An `InteractionLog` with int64 user and movie ids, unix-second timestamps, float32 ratings,
    titles in `item_side.titles` and genre names in `item_side.attributes`. A missing movies
    file is logged and leaves the side data empty.
  """
  release, files = movielens_layout(path)
  ratings_path, items_path = files["ratings"], files["items"]
  if release == "ml-100k":
    cols = _read_numeric(ratings_path, delimiter="\t", split=str.split,
                         layout="user item rating timestamp",
                         fields=(("user", "int"), ("item", "int"), ("rating", "float"),
                                 ("timestamp", "int")))
  elif release in ("ml-1m", "ml-10m"):
    # "::" read as ':' leaves an empty field between each pair of real ones.
    cols = _read_numeric(ratings_path, delimiter=":", split=lambda line: line.split("::"),
                         layout="user::item::rating::timestamp",
                         fields=(("user", "int"), ("item", "int"), ("rating", "float"),
                                 ("timestamp", "int")))
  else:
    cols = _read_numeric(ratings_path, delimiter=",", header=("userId", "movieId", "rating",
                                                              "timestamp"),
                         layout="userId,movieId,rating,timestamp",
                         fields=(("user", "int"), ("item", "int"), ("rating", "float"),
                                 ("timestamp", "int")))
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
  existing = [f for f in files.values() if f.is_file()]
  log = InteractionLog(
      users=cols["user"], items=cols["item"], timestamps=cols["timestamp"], item_side=side,
      source=f"movielens {release} ({pathlib.Path(ratings_path).parent})",
      ratings=cols["rating"].astype(np.float32),
      fingerprint=_fingerprint("movielens", existing, {}))
  logging.info("%s: %d ratings, %d movies with titles", log.source, len(log), len(side.titles))
  return log


def _read_ml100k_items(items_path: pathlib.Path, genres_path: pathlib.Path) -> ItemSide:
  """u.item (latin-1, `id|title|release|video release|url|19 genre flags`) + u.genre names."""
  genres = list(_ML100K_GENRES)
  if genres_path.is_file():
    genres = []
    for lineno, line in _lines(_read_text(genres_path, "latin-1")):
      name, sep, index = line.rpartition("|")
      if not sep or _to_int(genres_path, lineno, index, "genre index") != len(genres):
        raise data_error(genres_path, lineno, f"expected 'name|{len(genres)}', got {line!r}")
      genres.append(name)
  side = ItemSide()
  expected = 5 + len(genres)
  for lineno, line in _lines(_read_text(items_path, "latin-1")):
    fields = line.split("|")
    if len(fields) != expected:
      raise data_error(items_path, lineno,
                       f"expected {expected} '|'-separated fields (id, title, release, video"
                       f" release, url, {len(genres)} genre flags), got {len(fields)}")
    item = _to_int(items_path, lineno, fields[0], "movie id")
    flags = fields[5:]
    if any(f not in ("0", "1") for f in flags):
      raise data_error(items_path, lineno, "genre flags must be 0 or 1")
    side.titles[item] = fields[1]
    side.attributes[item] = [g for g, f in zip(genres, flags) if f == "1"]
  return side


def _read_movies_dat(path: pathlib.Path, encoding: str) -> ItemSide:
  """movies.dat of 1M / 10M: `id::title::Genre1|Genre2`."""
  try:
    text = _read_text(path, encoding)
  except DataError:
    if encoding == "latin-1":
      raise
    text = None
  if text is None:
    text = _read_text(path, "latin-1")  # latin-1 decodes any byte: the last resort
  side = ItemSide()
  for lineno, line in _lines(text):
    fields = line.split("::")
    if len(fields) < 3:
      raise data_error(path, lineno, f"expected 'id::title::genres', got {line[:80]!r}")
    item = _to_int(path, lineno, fields[0], "movie id")
    side.titles[item] = "::".join(fields[1:-1])
    side.attributes[item] = [g for g in fields[-1].split("|") if g and g != _NO_GENRES]
  return side


def _read_movies_csv(path: pathlib.Path) -> ItemSide:
  """movies.csv of 20M / 25M / 32M: `movieId,title,genres` with quoted titles."""
  text = _read_text(path)
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
      item = _to_int(path, reader.line_num, row[i_id], "movieId")
      side.titles[item] = row[i_title]
      side.attributes[item] = [g for g in row[i_genres].split("|") if g and g != _NO_GENRES]
  except csv.Error as e:
    raise data_error(path, reader.line_num, f"bad CSV: {e}") from None
  return side


# ----------------------------------------------------------------------------- benchmark files


def read_seqfile(path: PathLike, attributes_path: PathLike | None = None) -> InteractionLog:
  """Reads the one-user-per-line benchmark format: `user item item ...`, items in time order.

  Args:
    path: the text file (e.g. S3-Rec's `Beauty.txt`); ids are integers.
    attributes_path: optional JSON `{"item": [attribute ids]}` (e.g. `Beauty_item2attributes.json`).

  Returns:
    An `InteractionLog` without timestamps (file order is time order).
  """
  path = pathlib.Path(path)
  _require_file(path, "one user per line: 'user item item ...'")
  users: list[int] = []
  items: list[int] = []
  first_line: dict[int, int] = {}
  for lineno, line in _lines(_read_text(path)):
    parts = line.split()
    if len(parts) < 2:
      raise data_error(path, lineno, f"expected 'user item [item ...]', got {line[:80]!r}")
    user = _to_int(path, lineno, parts[0], "user id")
    if user in first_line:
      raise data_error(path, lineno, f"user {user} already has a line ({first_line[user]})")
    first_line[user] = lineno
    try:
      row = [int(t) for t in parts[1:]]
    except ValueError:
      bad = next(t for t in parts[1:] if not _is_int(t))
      raise data_error(path, lineno, f"non-integer item id {bad!r}") from None
    items.extend(row)
    users.extend([user] * len(row))
  files = [path]
  side = ItemSide()
  if attributes_path is not None:
    attributes_path = pathlib.Path(attributes_path)
    side = _read_item2attributes(attributes_path)
    files.append(attributes_path)
  log = InteractionLog(users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
                       timestamps=None, item_side=side, source=str(path),
                       fingerprint=_fingerprint("seqfile", files, {}))
  logging.info("%s: %d users, %d events", path, len(first_line), len(log))
  return log


def _is_int(token: str) -> bool:
  try:
    int(token)
  except ValueError:
    return False
  return True


def _read_item2attributes(path: pathlib.Path) -> ItemSide:
  """`{"item": [attr, ...]}` -> ItemSide.attributes; integer item keys, int or str attributes."""
  _require_file(path, 'JSON {"item": [attribute ids]}')
  text = _read_text(path)
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise data_error(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
  if not isinstance(data, dict):
    raise data_error(path, 1, 'expected a JSON object {"item": [attribute ids]}')
  side = ItemSide()
  for key, attrs in data.items():
    if not _is_int(key):
      raise data_error(path, _line_of_key(text, key), f"non-integer item id {key!r}")
    if not isinstance(attrs, list) or not all(
        isinstance(a, (int, str)) and not isinstance(a, bool) for a in attrs):
      raise data_error(path, _line_of_key(text, key),
                       f"item {key}: expected a list of attribute ids, got {attrs!r}"[:200])
    side.attributes[int(key)] = list(attrs)
  return side


def _line_of_key(text: str, key: str) -> int:
  """1-based line of a JSON object key's first appearance (json reports no line for values)."""
  at = text.find(json.dumps(key))
  return text.count("\n", 0, max(at, 0)) + 1


def read_pairs(path: PathLike) -> InteractionLog:
  """Reads the one-pair-per-line format: `user item`, lines in time order per user.

  Args:
    path: the text file (e.g. SASRec's `Video.txt`); integer ids separated by whitespace.

  Returns:
    An `InteractionLog` without timestamps (file order is time order).
  """
  path = pathlib.Path(path)
  cols = _read_numeric(path, delimiter=" ", split=str.split, layout="user item",
                       fields=(("user", "int"), ("item", "int")))
  log = InteractionLog(users=cols["user"], items=cols["item"], timestamps=None,
                       item_side=ItemSide(), source=str(path),
                       fingerprint=_fingerprint("pairs", [path], {}))
  logging.info("%s: %d events", path, len(log))
  return log


# ----------------------------------------------------------------------------- generic tables


@dataclasses.dataclass(frozen=True)
class Columns:
  """Column names of a generic log (0-based ints, or digit strings, when `header=False`).

  A column set to None or "" is absent; `delimiter` "" means ",".

  With a `session` column each session is one sequence, keyed `"<user>:<session>"` (or just the
  session when `user` is None): the session-based setting. `lists` are columns of attributes or
  tags, either Parquet lists or strings split on `list_separator`; with several list columns
  each raw attribute is prefixed with its column name (`"genres:Comedy"`) so they cannot collide.
  """

  user: str | int | None = "user"
  item: str | int = "item"
  time: str | int | None = None
  session: str | int | None = None
  rating: str | int | None = None
  title: str | int | None = None
  lists: tuple[str | int, ...] = ()
  delimiter: str = ","  # CSV only; TSV is always a tab
  list_separator: str = "|"
  header: bool = True  # CSV / TSV: the first line names the columns

  @classmethod
  def from_mapping(cls, spec: Mapping[str, Any] | Columns | None) -> Columns:
    """Columns from a plain dict (e.g. the `columns` config key); unknown keys are errors."""
    if spec is None:
      return cls()
    if isinstance(spec, Columns):
      return spec
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - known)
    if unknown:
      raise DataError(f"columns: unknown key(s) {unknown}; known: {sorted(known)}")
    # Config files write "" for an absent column (ConfigDict cannot hold None for a string).
    spec = {k: (None if v == "" else v) for k, v in dict(spec).items()}
    if "lists" in spec:
      lists = spec["lists"]
      spec["lists"] = (lists,) if isinstance(lists, (str, int)) else tuple(lists or ())
    for name in ("delimiter", "list_separator", "header"):
      if spec.get(name, "set") is None:
        del spec[name]  # "" means the default
    return cls(**spec)

  def used(self) -> dict[str, str | int]:
    """Role -> column for each configured column (list columns as `list0`, `list1`, ...)."""
    roles = {"user": self.user, "item": self.item, "time": self.time, "session": self.session,
             "rating": self.rating, "title": self.title}
    roles.update({f"list{i}": c for i, c in enumerate(self.lists)})
    return {role: col for role, col in roles.items() if col is not None}


def read_table(path: PathLike, *, format: str = "csv",  # pylint: disable=redefined-builtin
               columns: Columns | Mapping[str, Any] | None = None) -> InteractionLog:
  """Reads a generic CSV / TSV / Parquet interaction log with configurable columns.

  Args:
    path: the file.
    format: "csv", "tsv" or "parquet".
    columns: a `Columns` or a dict of its fields. Ids that are all canonical integers become
      int64 keys, others stay strings. Times may be integers, floats (scaled to microseconds
      unless all integral), dates, timestamps or ISO-8601 strings; without a time column file
      order is time order.

  Returns:
    An `InteractionLog`; titles and list columns of each item come from its first row.
  """
  import pyarrow as pa

  path = pathlib.Path(path)
  cols = Columns.from_mapping(columns)
  if format not in ("csv", "tsv", "parquet"):
    raise DataError(f"{path}: unknown table format {format!r}; expected csv, tsv or parquet")
  if cols.user is None and cols.session is None:
    raise DataError(f"{path}: columns need a user or a session column")
  _require_file(path, f"{format} interaction log")
  if path.stat().st_size == 0:
    raise data_error(path, 1, "empty file")
  if format == "parquet":
    table, line_of = _read_parquet(path, cols)
  else:
    table, line_of = _read_csv(path, cols, "\t" if format == "tsv" else cols.delimiter)
  if table.num_rows == 0:
    raise data_error(path, 2 if cols.header and format != "parquet" else 1, "no rows")
  names = {role: _column_name(col, cols, format) for role, col in cols.used().items()}
  get = lambda role: table[names[role]]

  items = _key_column(path, get("item"), "item", line_of)
  seq_keys = None
  if cols.user is not None:
    seq_keys = _key_column(path, get("user"), "user", line_of)
  if cols.session is not None:
    sessions = _key_column(path, get("session"), "session", line_of).astype(str)
    seq_keys = sessions if seq_keys is None else np.char.add(
        np.char.add(seq_keys.astype(str), ":"), sessions)
  timestamps = None
  if cols.time is not None:
    timestamps = _time_column(path, get("time"), line_of)
  ratings = None
  if cols.rating is not None:
    ratings = _numeric_column(path, get("rating"), "rating", line_of).astype(np.float32)

  side = ItemSide()
  if cols.title is not None or cols.lists:
    # Side data from each item's first row only: items repeat on every interaction.
    _, first_rows = np.unique(items, return_index=True)
    first_rows = np.sort(first_rows)
    first_keys = items[first_rows].tolist()
    take = pa.array(first_rows)
    if cols.title is not None:
      titles = get("title").take(take).to_pylist()
      side.titles = {k: t for k, t in zip(first_keys, titles) if t}
    for i, col in enumerate(cols.lists):
      values = get(f"list{i}").take(take).to_pylist()
      prefix = f"{col}:" if len(cols.lists) > 1 else ""
      for key, value in zip(first_keys, values):
        attrs = _split_list(value, cols.list_separator)
        side.attributes.setdefault(key, []).extend(prefix + a for a in attrs)

  log = InteractionLog(users=seq_keys, items=items, timestamps=timestamps, item_side=side,
                       source=str(path), ratings=ratings,
                       fingerprint=_fingerprint(format, [path], _columns_options(cols, format)))
  logging.info("%s: %d events", path, len(log))
  return log


def _columns_options(cols: Columns, fmt: str) -> dict[str, Any]:
  options = dataclasses.asdict(cols)
  if fmt == "parquet":  # CSV-only options do not change how a Parquet file reads
    options.pop("delimiter")
    options.pop("header")
  return options


def _column_name(col: str | int, cols: Columns, fmt: str) -> str:
  return str(col) if (fmt == "parquet" or cols.header) else f"c{int(col)}"


def _read_csv(path: pathlib.Path, cols: Columns, delimiter: str):
  """pyarrow CSV read of the used columns; a parse error is re-read with `csv` to name its line."""
  import pyarrow as pa
  import pyarrow.csv as pacsv

  header_row = _first_row(path, delimiter)
  if cols.header:
    header = [h.strip() for h in header_row]
    for role, col in cols.used().items():
      if str(col) not in header:
        raise data_error(path, 1, f"missing {role} column {str(col)!r} (the header has"
                         f" {', '.join(header)})")
    names = header
  else:
    names = [f"c{i}" for i in range(len(header_row))]
    for role, col in cols.used().items():
      if not (isinstance(col, int) or str(col).isdigit()) or int(col) >= len(names):
        raise data_error(path, 1, f"{role} column {col!r}: without a header columns are 0-based"
                         f" indices below {len(names)}")
  used = {_column_name(c, cols, "csv") for c in cols.used().values()}
  strings = {_column_name(c, cols, "csv") for role, c in cols.used().items()
             if role not in ("time", "rating")}
  types = {n: pa.string() for n in strings}
  if cols.rating is not None:
    types[_column_name(cols.rating, cols, "csv")] = pa.float64()
  failure = None
  try:
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if cols.header else 0),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(column_types=types, include_columns=sorted(used)))
  except (pa.ArrowException, OSError) as e:
    failure = str(e).splitlines()[0] if str(e) else type(e).__name__
  if failure is not None:
    # Outside the except block, so the DataError carries no pyarrow traceback.
    _locate_csv_error(path, delimiter, len(names), cols)
    raise data_error(path, None, f"cannot parse: {failure}")
  offset = 2 if cols.header else 1
  return table, lambda row: int(row) + offset


def _first_row(path: pathlib.Path, delimiter: str) -> list[str]:
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      row = next(csv.reader(f, delimiter=delimiter), None)
  except UnicodeDecodeError:
    raise data_error(path, 1, "not valid utf-8 text") from None
  except csv.Error as e:
    raise data_error(path, 1, f"bad CSV: {e}") from None
  if not row:
    raise data_error(path, 1, "empty file")
  return row


def _locate_csv_error(path: pathlib.Path, delimiter: str, num_fields: int, cols: Columns) -> None:
  """Re-reads a CSV that pyarrow rejected and raises the DataError for its first bad line."""
  rating_at = None
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      reader = csv.reader(f, delimiter=delimiter)
      header = next(reader, None)
      if cols.rating is not None:
        rating_at = header.index(str(cols.rating)) if cols.header else int(cols.rating)
      rows = reader if cols.header else _chain_first(header, reader)
      for row in rows:
        if not row:
          continue
        if len(row) != num_fields:
          raise data_error(path, reader.line_num, f"expected {num_fields} fields, got {len(row)}")
        if rating_at is not None and row[rating_at].strip():
          _to_float(path, reader.line_num, row[rating_at], "rating")
  except UnicodeDecodeError as e:
    raise data_error(path, None, f"not valid utf-8 text ({e.reason})") from None
  except csv.Error as e:
    raise data_error(path, reader.line_num, f"bad CSV: {e}") from None


def _chain_first(first, rest):
  yield first
  yield from rest


def _read_parquet(path: pathlib.Path, cols: Columns):
  import pyarrow as pa
  import pyarrow.parquet as pq

  try:
    schema = pq.read_schema(path)
  except (pa.ArrowException, OSError) as e:
    raise data_error(path, None, f"not a readable Parquet file: {str(e).splitlines()[0]}"
                     ) from None
  for role, col in cols.used().items():
    if str(col) not in schema.names:
      raise data_error(path, None, f"missing {role} column {str(col)!r} (the file has"
                       f" {', '.join(schema.names)})")
  try:
    table = pq.read_table(path, columns=sorted({str(c) for c in cols.used().values()}))
  except (pa.ArrowException, OSError) as e:
    raise data_error(path, None, f"cannot read: {str(e).splitlines()[0]}") from None
  return table, lambda row: int(row) + 1


def _first_bad(mask: np.ndarray) -> int | None:
  bad = np.flatnonzero(mask)
  return int(bad[0]) if bad.size else None


def _key_column(path, column, role: str, line_of) -> np.ndarray:
  """Raw keys of a user / item / session column: int64 where possible, else str."""
  import pyarrow as pa
  import pyarrow.compute as pc

  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  row = _first_bad(column.is_null().to_numpy(zero_copy_only=False))
  if row is None and pa.types.is_string(column.type):
    row = _first_bad(pc.equal(pc.utf8_trim_whitespace(column), "").to_numpy(
        zero_copy_only=False))
  if row is not None:
    raise data_error(path, line_of(row), f"missing {role} id")
  if pa.types.is_integer(column.type):
    return column.to_numpy().astype(np.int64)
  if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
    column = column.cast(pa.string())
  column = pc.utf8_trim_whitespace(column)
  if pc.all(pc.match_substring_regex(column, r"^-?(0|[1-9][0-9]*)$")).as_py():
    try:
      return column.cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid:  # beyond int64: keep the strings
      pass
  return np.asarray(column.to_numpy(zero_copy_only=False), dtype=str)


def _numeric_column(path, column, role: str, line_of) -> np.ndarray:
  import pyarrow as pa

  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  row = _first_bad(column.is_null().to_numpy(zero_copy_only=False))
  if row is not None:
    raise data_error(path, line_of(row), f"missing {role}")
  try:
    return column.cast(pa.float64()).to_numpy()
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    values = column.to_pylist()
    for row, v in enumerate(values):
      try:
        float(v)
      except (TypeError, ValueError):
        raise data_error(path, line_of(row), f"non-numeric {role} {v!r}") from None
    raise data_error(path, None, f"{role} column of type {column.type} is not numeric") from None


def _time_column(path, column, line_of) -> np.ndarray:
  """int64 times; only their order matters (ties keep file order)."""
  import pyarrow as pa
  import pyarrow.compute as pc

  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  row = _first_bad(column.is_null().to_numpy(zero_copy_only=False))
  if row is not None:
    raise data_error(path, line_of(row), "missing time")
  t = column.type
  if pa.types.is_integer(t):
    return column.cast(pa.int64()).to_numpy()
  if pa.types.is_timestamp(t) or pa.types.is_date(t):
    return column.cast(pa.int64() if pa.types.is_timestamp(t) or pa.types.is_date64(t)
                       else pa.int32()).to_numpy().astype(np.int64)
  if pa.types.is_floating(t):
    values = column.to_numpy()
    if not np.all(np.isfinite(values)):
      raise data_error(path, line_of(_first_bad(~np.isfinite(values))), "non-finite time")
    if np.all(values == np.round(values)):
      return values.astype(np.int64)
    return np.round(values * 1e6).astype(np.int64)  # fractional seconds -> microseconds
  if pa.types.is_string(t) or pa.types.is_large_string(t):
    try:
      return pc.cast(pc.utf8_trim_whitespace(column), pa.timestamp("us")).cast(
          pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      for row, v in enumerate(column.to_pylist()):
        try:
          datetime.datetime.fromisoformat(v.strip())
        except ValueError:
          raise data_error(path, line_of(row), f"unparseable time {v!r} (expected an integer,"
                           " a number or an ISO-8601 date-time)") from None
      raise data_error(path, None, "time column: mixed time zones or formats") from None
  raise data_error(path, None, f"time column of type {t} is not a time")


def _split_list(value, sep: str) -> list[str]:
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value if v is not None and str(v) != ""]
  return [v.strip() for v in str(value).split(sep) if v.strip()]


# ----------------------------------------------------------------------------- tfds

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
  # The pipeline module hides accelerators from TensorFlow before tfds starts it.
  from lstmrec_jax.data import pipeline  # pylint: disable=unused-import,g-import-not-at-top
  import tensorflow as tf
  import tensorflow_datasets as tfds

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
  user_keys = _keys_from_bytes(np.concatenate(users))
  item_keys = _keys_from_bytes(np.concatenate(items))
  if item_keys.dtype == np.int64:
    side.titles = {int(k): v for k, v in side.titles.items()}
    side.attributes = {int(k): v for k, v in side.attributes.items()}
  version = builder.info.version
  log = InteractionLog(users=user_keys, items=item_keys, timestamps=np.concatenate(times),
                       item_side=side, source=source,
                       ratings=np.concatenate(ratings) if ratings else None,
                       fingerprint=_tfds_fingerprint(name, data_dir, version))
  logging.info("%s: %d ratings, %d movies", source, len(log), len(side.titles))
  return log


def _tfds_fingerprint(name: str, data_dir, version) -> str:
  # Prepared tfds versions are immutable, so name@version identifies the bytes.
  base = name.split(":")[0]
  return hashlib.sha256(json.dumps({"kind": "tfds", "name": base, "version": str(version),
                                    "data_dir": os.fspath(data_dir or "")}).encode()).hexdigest()


# ----------------------------------------------------------------------------- fingerprints


def source_fingerprint(fmt: str, path: PathLike | None, *,
                       attributes_path: PathLike | None = None,
                       columns: Columns | Mapping[str, Any] | None = None) -> str:
  """The fingerprint the reader of `fmt` will give its log, computed without parsing.

  Lets `load_dataset` look up its cache before paying for a parse; equal to `log.fingerprint`
  of the matching reader call (tested).
  """
  if fmt == "movielens":
    _, files = movielens_layout(path)
    return _fingerprint("movielens", [f for f in files.values() if f.is_file()], {})
  path = pathlib.Path(path)
  if fmt == "seqfile":
    _require_file(path, "one user per line: 'user item item ...'")
    files = [path] + ([pathlib.Path(attributes_path)] if attributes_path else [])
    for f in files:
      _require_file(f, "data file")
    return _fingerprint("seqfile", files, {})
  if fmt == "pairs":
    _require_file(path, "one pair per line: 'user item'")
    return _fingerprint("pairs", [path], {})
  if fmt in ("csv", "tsv", "parquet"):
    _require_file(path, f"{fmt} interaction log")
    return _fingerprint(fmt, [path], _columns_options(Columns.from_mapping(columns), fmt))
  raise DataError(f"no file fingerprint for format {fmt!r}")
