"""The one error family for everything a user can cause and fix.

`LstmrecError` is the base: the entry points print any of them as one line (`error: ...`) instead
of a traceback, tuning and serving catch the base or the precise subclass (never a name string).
Anything else that escapes is a bug and keeps its traceback.

  LstmrecError
    ConfigError       a config that cannot run: unknown, missing or bad keys (all named at once)
    DataError         bad input data: the message names the file and the 1-based line
    CheckpointError   a checkpoint that cannot be used, a checkpoint of other shapes, a busy workdir
    DivergenceError   training diverged (a non-finite or exploding loss, non-finite parameters)
    PluginError       a --plugins module or file that cannot be imported
    RequestError      a bad serving request (answered 4xx with the message)

ConfigError and DataError are also ValueErrors, DivergenceError a FloatingPointError, PluginError an
ImportError: code that caught the built-in kinds keeps working.

This module imports nothing, so every layer may raise these.
"""

from __future__ import annotations

import os


class LstmrecError(Exception):
  """Something the user can fix: printed as one line by the entry points."""


class ConfigError(LstmrecError, ValueError):
  """A config that cannot run: every bad key of every group, in one message."""


class DataError(LstmrecError, ValueError):
  """Bad input data or data config; the message names the file and the 1-based line."""

  def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
    super().__init__(message)
    self.file = file
    self.line = line


class CheckpointError(LstmrecError):
  """A checkpoint that cannot be used (missing, broken, non-finite, other shapes) or a busy workdir."""


class DivergenceError(LstmrecError, FloatingPointError):
  """Training diverged: a non-finite or exploding loss (or non-finite parameters)."""


class PluginError(LstmrecError, ImportError):
  """A plug-in module or file that cannot be imported."""


class RequestError(LstmrecError):
  """A request the server answers with a 4xx status and this message."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


def data_error(file: str | os.PathLike[str], line: int | None, problem: str) -> DataError:
  """Builds `DataError("<file>:<line>: <problem>")`; without a line, `"<file>: <problem>"`.

  Example: `data_error("u.data", 3, "expected 4 fields, got 2")` has the message
  `u.data:3: expected 4 fields, got 2`.
  """
  file = os.fspath(file)
  where = file if line is None else f"{file}:{line}"
  return DataError(f"{where}: {problem}", file=file, line=line)
