"""The data contract every format reader fills: `InteractionLog`, `ItemSide`, `Columns`.

Shape legend: `N` events in the log.

Also the parsing helpers the readers in `formats/` share. Every problem in a file is a
`DataError` whose message is `<file>:<line>: <problem>` (1-based lines, a header line counted;
a Parquet file, which has no lines, says `<file>: row <n>: <problem>` with the 1-based row; in
a CSV with newlines inside quoted fields, a row's reported line counts rows, not physical
lines). Big numeric files go through pyarrow first and, only when that
fails, through a line-by-line parser whose job is to name the bad line.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lstmrec_jax.errors import DataError
from lstmrec_jax.errors import data_error

PathLike = str | os.PathLike[str]
Key = int | str


@dataclasses.dataclass
class ItemSide:
  """Side data keyed by raw item key; attribute keys are raw too (genre names, attribute ids)."""

  titles: dict[Key, str] = dataclasses.field(default_factory=dict)
  attributes: dict[Key, list[Key]] = dataclasses.field(default_factory=dict)
  # Readable names of raw attribute keys, where the file has them; other keys name themselves.
  attribute_names: dict[Key, str] = dataclasses.field(default_factory=dict)
  # Multi-domain logs (several catalogues, e.g. Food and Kitchen): raw item key -> domain index
  # into `domain_names`. Empty for a single catalogue. When set, every item of the log has one.
  domains: dict[Key, int] = dataclasses.field(default_factory=dict)
  domain_names: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class InteractionLog:
  """Raw events, one entry per interaction, in file order.

  `users` / `items` hold raw keys (int64, or str where the file's ids are not all integers);
  `timestamps` is int64 or None (None: file order is time order within each user); `ratings`
  is float32 or None; `feedback` is each event's label (str, e.g. "click" / "purchase", from a
  CSV / Parquet `columns.feedback` column) or None. `fingerprint` identifies the source bytes
  and reader options (cache key).
  """

  users: np.ndarray
  items: np.ndarray
  timestamps: np.ndarray | None
  item_side: ItemSide
  source: str
  ratings: np.ndarray | None = None
  fingerprint: str = ""
  feedback: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.users)
    for name in ("items", "timestamps", "ratings", "feedback"):
      value = getattr(self, name)
      if value is not None and len(value) != n:
        raise DataError(f"{self.source}: {name} has {len(value)} entries, users has {n}")

  def __len__(self) -> int:
    return len(self.users)


# ----------------------------------------------------------------------------- file helpers


def fingerprint_files(kind: str, files: Sequence[pathlib.Path],
                      options: Mapping[str, Any]) -> str:
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


def require_file(path: pathlib.Path, what: str) -> None:
  """A DataError naming `path` unless it is a file; `what` says what the file should hold."""
  if not path.is_file():
    problem = "is a folder, expected a file" if path.is_dir() else "file not found"
    raise data_error(path, None, f"{problem} ({what})")


def read_text(path: pathlib.Path, encoding: str = "utf-8") -> str:
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


def lines(text: str):
  """(1-based line number, line) for non-blank lines; only '\\n' ends a line."""
  for lineno, line in enumerate(text.split("\n"), 1):
    line = line.rstrip("\r")
    if line.strip():
      yield lineno, line


def to_int(path, lineno: int, token: str, what: str) -> int:
  """`int(token)`, or a DataError at `path:lineno` naming `what`."""
  try:
    return int(token)
  except ValueError:
    raise data_error(path, lineno, f"non-integer {what} {token!r}") from None


def to_float(path, lineno: int, token: str, what: str) -> float:
  """`float(token)`, or a DataError at `path:lineno` naming `what`."""
  try:
    return float(token)
  except ValueError:
    raise data_error(path, lineno, f"non-numeric {what} {token!r}") from None


# Field kinds for `parse_fields`: "int", "float", "skip", and "key": an integer id, kept as
# strings (the whole column, `str(int(token))`) when one is beyond int64, e.g. 20 digits.
Fields = Sequence[tuple[str, str]]

_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1


def parse_fields(path: pathlib.Path, text: str, split: Callable[[str], list[str]],
                  fields: Fields, layout: str) -> dict[str, np.ndarray]:
  """Line-by-line parser of a delimited numeric file; the reference the fast path must match."""
  out: dict[str, list] = {name: [] for name, kind in fields if kind != "skip"}
  for lineno, line in lines(text):
    parts = split(line)
    if len(parts) != len(fields):
      raise data_error(path, lineno,
                       f"expected {len(fields)} fields ({layout}), got {len(parts)}: {line[:80]!r}")
    for (name, kind), token in zip(fields, parts):
      if kind in ("int", "key"):
        value = to_int(path, lineno, token, name)
        if kind == "int" and not _INT64_MIN <= value <= _INT64_MAX:
          raise data_error(path, lineno, f"{name} {token!r} is beyond the int64 range")
        out[name].append(value)
      elif kind == "float":
        out[name].append(to_float(path, lineno, token, name))
  if not any(out.values()):
    raise data_error(path, 1, "empty file")
  return {name: _column(values, dict(fields)[name]) for name, values in out.items()}


def _column(values: list, kind: str) -> np.ndarray:
  """float64 / int64 values; a "key" column with an id beyond int64 as strings instead."""
  if kind == "float":
    return np.asarray(values, np.float64)
  try:
    return np.asarray(values, np.int64)
  except OverflowError:  # only a "key" gets here: "int" values were range-checked per line
    return np.asarray([str(v) for v in values])


def arrow_fields(path: pathlib.Path, delimiter: str, fields: Fields, *,
                  skip_rows: int = 0) -> dict[str, np.ndarray] | None:
  """Fast pyarrow read of a delimited numeric file; None when it does not parse cleanly.

  A None sends the caller to `parse_fields`, which either names the bad line or (for layouts
  pyarrow cannot express, e.g. several spaces between fields) parses the file itself.
  """
  import pyarrow as pa
  import pyarrow.csv as pacsv

  names = [name if kind != "skip" else f"_skip{i}" for i, (name, kind) in enumerate(fields)]
  types = {name: (pa.float64() if kind == "float" else pa.int64())
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


def read_numeric(path: pathlib.Path, *, delimiter: str, fields: Fields, layout: str,
                  header: Sequence[str] | None = None, encoding: str = "utf-8",
                  split: Callable[[str], list[str]] | None = None) -> dict[str, np.ndarray]:
  """A delimited numeric file as columns: pyarrow when it parses, else the exact line parser."""
  require_file(path, layout)
  if path.stat().st_size == 0:
    raise data_error(path, 1, "empty file")
  if header is not None:
    found = check_header(path, delimiter, header, encoding)
    if found != list(header):
      raise data_error(path, 1, f"expected the header {','.join(header)}, got {','.join(found)}")
  columns = arrow_fields(path, delimiter, fields, skip_rows=1 if header is not None else 0)
  if columns is not None:
    return columns
  text = read_text(path, encoding)
  if header is not None:
    # Keep line numbers right: blank out the header instead of removing it.
    text = "\n" + text.split("\n", 1)[1] if "\n" in text else ""
  if split is None:
    split = lambda line: line.split(delimiter)
  return parse_fields(path, text, split, fields, layout)


def check_header(path: pathlib.Path, delimiter: str, expected: Sequence[str],
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


def keys_from_bytes(values: np.ndarray) -> np.ndarray:
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


def line_of_json_key(text: str, key: str) -> int:
  """1-based line of a JSON object key's first appearance (json reports no line for values).

  Example: line_of_json_key('{\n "a": 1,\n "b": 2}', "b") -> 3.
  """
  at = text.find(json.dumps(key))
  return text.count("\n", 0, max(at, 0)) + 1


def is_int(token: str) -> bool:
  """Whether `int(token)` parses."""
  try:
    int(token)
  except ValueError:
    return False
  return True


# ----------------------------------------------------------------------------- generic tables


@dataclasses.dataclass(frozen=True)
class Columns:
  """Column names of a generic log (0-based ints, or digit strings, when `header=False`).

  A column set to None or "" is absent; `delimiter` "" means ",". The field defaults serve
  direct `read_table` calls only: a data config names every key (configs/base.py).

  With a `session` column each session is one sequence, keyed `"<user>:<session>"` (or just the
  session when `user` is None): the session-based setting. `lists` are columns of attributes or
  tags, either Parquet lists or strings split on `list_separator`; with several list columns
  each raw attribute is prefixed with its column name (`"genres:Comedy"`) so they cannot collide.
  `feedback` is a column of event labels (a click / purchase type) that `reward.kind="labels"`
  maps to rewards (data/rewards.py).
  """

  user: str | int | None = "user"
  item: str | int = "item"
  time: str | int | None = None
  session: str | int | None = None
  rating: str | int | None = None
  feedback: str | int | None = None
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
             "rating": self.rating, "feedback": self.feedback, "title": self.title}
    roles.update({f"list{i}": c for i, c in enumerate(self.lists)})
    return {role: col for role, col in roles.items() if col is not None}

