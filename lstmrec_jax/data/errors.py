"""The one exception the data package raises for bad input: `DataError`.

Every problem with a file or a data config ends as one line, `<file>:<line>: <problem>`, so a
user sees where to look without reading a traceback from inside numpy, pyarrow or json.
"""

from __future__ import annotations

import os


class DataError(ValueError):
  """Bad input data or data config; the message names the file and the 1-based line."""

  def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
    super().__init__(message)
    self.file = file
    self.line = line


def data_error(file: str | os.PathLike[str], line: int | None, problem: str) -> DataError:
  """Builds `DataError("<file>:<line>: <problem>")`; without a line, `"<file>: <problem>"`.

  Example: `data_error("u.data", 3, "expected 4 fields, got 2")` has the message
  `u.data:3: expected 4 fields, got 2`.
  """
  file = os.fspath(file)
  where = file if line is None else f"{file}:{line}"
  return DataError(f"{where}: {problem}", file=file, line=line)
