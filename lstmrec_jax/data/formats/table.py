"""A generic CSV / TSV / Parquet interaction log with configurable columns (`Columns`)."""

from __future__ import annotations

import csv
import collections
import dataclasses
import datetime
import functools
import pathlib
from collections.abc import Mapping
from typing import Any

from absl import logging
import numpy as np

from lstmrec_jax.data import log as log_lib
from lstmrec_jax.errors import DataError
from lstmrec_jax.errors import data_error
from lstmrec_jax.data.log import Columns
from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide
from lstmrec_jax.data.log import PathLike

TABLE_FORMATS = ("csv", "tsv", "parquet")

EXPECTED = {
    "csv": "a CSV file with a header naming the columns set in 'columns'",
    "tsv": "a TSV file with a header naming the columns set in 'columns'",
    "parquet": "a Parquet file with the columns set in 'columns'",
}


def read_table(path: PathLike, *, format: str = "csv",  # pylint: disable=redefined-builtin
               columns: Columns | Mapping[str, Any] | None = None) -> InteractionLog:
  """Reads a generic CSV / TSV / Parquet interaction log with configurable columns.

  Args:
    path: the file.
    format: "csv", "tsv" or "parquet".
    columns: a `Columns` or a dict of its fields. Ids that are all canonical integers become
      int64 keys, others stay strings. Times may be integers, floats (scaled to microseconds
      unless all integral), dates, timestamps or ISO-8601 strings (zone offsets: as UTC);
      without a time column file order is time order.

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
  log_lib.require_file(path, f"{format} interaction log")
  if path.stat().st_size == 0:
    raise data_error(path, 1, "empty file")
  if format == "parquet":
    table, error_at = _read_parquet(path, cols)
  else:
    table, error_at = _read_csv(path, cols, "\t" if format == "tsv" else cols.delimiter)
  if table.num_rows == 0:
    raise data_error(path, 2 if cols.header and format != "parquet" else 1, "no rows")
  names = {role: _column_name(col, cols, format) for role, col in cols.used().items()}
  get = lambda role: table[names[role]]

  items = _key_column(get("item"), "item", error_at)
  seq_keys = None
  if cols.user is not None:
    seq_keys = _key_column(get("user"), "user", error_at)
  if cols.session is not None:
    sessions = _key_column(get("session"), "session", error_at).astype(str)
    seq_keys = sessions if seq_keys is None else np.char.add(
        np.char.add(seq_keys.astype(str), ":"), sessions)
  timestamps = None
  if cols.time is not None:
    timestamps = _time_column(path, get("time"), error_at)
  ratings = None
  if cols.rating is not None:
    ratings = _numeric_column(path, get("rating"), "rating", error_at).astype(np.float32)
  feedback = None
  if cols.feedback is not None:
    feedback = _label_column(get("feedback"), error_at)

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
                       source=str(path), ratings=ratings, feedback=feedback,
                       fingerprint=log_lib.fingerprint_files(format, [path],
                                                             _columns_options(cols, format)))
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
  offset = 2 if cols.header else 1  # 1-based, counting the header line
  return table, lambda row, problem: data_error(path, int(row) + offset, problem)


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
          log_lib.to_float(path, reader.line_num, row[rating_at], "rating")
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
  return table, functools.partial(_parquet_error, path)


def _parquet_error(path: pathlib.Path, row: int, problem: str) -> DataError:
  """`<file>: row <n>: <problem>` with the 1-based row: a Parquet file has no lines."""
  return DataError(f"{path}: row {int(row) + 1}: {problem}", file=str(path), line=int(row) + 1)


def _first_bad(mask: np.ndarray) -> int | None:
  bad = np.flatnonzero(mask)
  return int(bad[0]) if bad.size else None


def _key_column(column, role: str, error_at) -> np.ndarray:
  """Raw keys of a user / item / session column: int64 where possible, else str."""
  import pyarrow as pa
  import pyarrow.compute as pc

  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  row = _first_bad(column.is_null().to_numpy(zero_copy_only=False))
  if row is None and pa.types.is_string(column.type):
    row = _first_bad(pc.equal(pc.utf8_trim_whitespace(column), "").to_numpy(
        zero_copy_only=False))
  if row is not None:
    raise error_at(row, f"missing {role} id")
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


def _label_column(column, error_at) -> np.ndarray:
  """The feedback labels as str (numbers too: `reward.labels` is keyed by their text)."""
  import pyarrow as pa
  import pyarrow.compute as pc

  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  row = _first_bad(column.is_null().to_numpy(zero_copy_only=False))
  if row is not None:
    raise error_at(row, "missing feedback label")
  if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
    column = column.cast(pa.string())
  return np.asarray(pc.utf8_trim_whitespace(column).to_numpy(zero_copy_only=False), dtype=str)


def _numeric_column(path, column, role: str, error_at) -> np.ndarray:
  import pyarrow as pa

  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  row = _first_bad(column.is_null().to_numpy(zero_copy_only=False))
  if row is not None:
    raise error_at(row, f"missing {role}")
  try:
    return column.cast(pa.float64()).to_numpy()
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    values = column.to_pylist()
    for row, v in enumerate(values):
      try:
        float(v)
      except (TypeError, ValueError):
        raise error_at(row, f"non-numeric {role} {v!r}") from None
    raise data_error(path, None, f"{role} column of type {column.type} is not numeric") from None


def _time_column(path, column, error_at) -> np.ndarray:
  """int64 times; only their order matters (ties keep file order)."""
  import pyarrow as pa
  import pyarrow.compute as pc

  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  row = _first_bad(column.is_null().to_numpy(zero_copy_only=False))
  if row is not None:
    raise error_at(row, "missing time")
  t = column.type
  if pa.types.is_integer(t):
    return column.cast(pa.int64()).to_numpy()
  if pa.types.is_timestamp(t) or pa.types.is_date(t):
    return column.cast(pa.int64() if pa.types.is_timestamp(t) or pa.types.is_date64(t)
                       else pa.int32()).to_numpy().astype(np.int64)
  if pa.types.is_floating(t):
    values = column.to_numpy()
    if not np.all(np.isfinite(values)):
      raise error_at(_first_bad(~np.isfinite(values)), "non-finite time")
    if np.all(values == np.round(values)):
      return values.astype(np.int64)
    return np.round(values * 1e6).astype(np.int64)  # fractional seconds -> microseconds
  if pa.types.is_string(t) or pa.types.is_large_string(t):
    # One bad value turns the whole column into strings when pyarrow infers its type: try
    # each kind of time on all of it before looking for the value that breaks it.
    column = pc.utf8_trim_whitespace(column)
    for kind in (pa.timestamp("us"), pa.int64(), pa.float64()):
      try:
        parsed = column.cast(kind)
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        continue
      return _time_column(path, parsed, error_at)
    return _python_times(path, column.to_pylist(), error_at)
  raise data_error(path, None, f"time column of type {t} is not a time")


def _time_kind(value: str) -> str:
  """"number", "naive" / "aware" (ISO-8601 without / with a zone), "missing" or "bad"."""
  if not value:
    return "missing"
  try:
    float(value)
    return "number"
  except ValueError:
    pass
  try:
    return "aware" if datetime.datetime.fromisoformat(value).tzinfo else "naive"
  except ValueError:
    return "bad"


_KIND_NAMES = {"number": ("a number", "numbers"),
               "naive": ("an ISO-8601 date-time without a zone", "ISO-8601 without a zone"),
               "aware": ("an ISO-8601 date-time with a zone", "ISO-8601 with a zone")}


def _python_times(path, values: list[str], error_at) -> np.ndarray:
  """Times pyarrow could not cast as one kind: the odd value's row, or parsed one by one.

  The column's kind is that of most values (ties: the earliest); the first value of another kind
  is the error, e.g. ["100", "1o5", "102"] names "1o5" and not "100". All ISO-8601 with zones
  (which pyarrow's cast refuses) become UTC microseconds; naive ones are taken as UTC.
  """
  kinds = [_time_kind(v) for v in values]
  counts = collections.Counter(k for k in kinds if k in _KIND_NAMES)
  if not counts:
    raise error_at(0, "missing time" if kinds[0] == "missing" else f"unparseable time"
                   f" {values[0]!r} (expected an integer, a number or an ISO-8601 date-time)")
  kind = counts.most_common(1)[0][0]  # ties keep first-seen order
  for row, (k, v) in enumerate(zip(kinds, values)):
    if k == kind:
      continue
    if k == "missing":
      raise error_at(row, "missing time")
    if k == "bad":
      raise error_at(row, f"unparseable time {v!r} (expected an integer, a number or an ISO-8601"
                     f" date-time; most times here are {_KIND_NAMES[kind][1]})")
    raise error_at(row, f"time {v!r} is {_KIND_NAMES[k][0]}; most times here are"
                   f" {_KIND_NAMES[kind][1]}")
  if kind == "number":
    import pyarrow as pa
    return _time_column(path, pa.array([float(v) for v in values]), error_at)
  epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
  one_us = datetime.timedelta(microseconds=1)
  times = []
  for v in values:
    t = datetime.datetime.fromisoformat(v)
    times.append((t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)) - epoch)
  return np.asarray([t // one_us for t in times], np.int64)


def _split_list(value, sep: str) -> list[str]:
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value if v is not None and str(v) != ""]
  return [v.strip() for v in str(value).split(sep) if v.strip()]



def source_fingerprint(path: PathLike, *, format: str = "csv",  # pylint: disable=redefined-builtin
                       columns: Columns | Mapping[str, Any] | None = None) -> str:
  """The fingerprint `read_table(path, format=, columns=)` gives its log, without parsing."""
  path = pathlib.Path(path)
  log_lib.require_file(path, f"{format} interaction log")
  return log_lib.fingerprint_files(format, [path],
                                   _columns_options(Columns.from_mapping(columns), format))
