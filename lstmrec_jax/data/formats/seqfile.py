"""One user per line, `user item item ...` in time order (S3-Rec's `Beauty.txt`), with an
optional `{"item": [attribute ids]}` JSON file (S3-Rec's `*_item2attributes.json`)."""

from __future__ import annotations

import json
import os
import pathlib

from absl import logging
import numpy as np

from lstmrec_jax.data import log as log_lib
from lstmrec_jax.errors import data_error
from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide
from lstmrec_jax.data.log import PathLike

EXPECTED = "a text file with one user per line, 'user item item ...' (e.g. Beauty.txt)"


def read_seqfile(path: PathLike, attributes_path: PathLike | None = None) -> InteractionLog:
  """Reads the one-user-per-line benchmark format: `user item item ...`, items in time order.

  Args:
    path: the text file (e.g. S3-Rec's `Beauty.txt`); ids are integers.
    attributes_path: optional JSON `{"item": [attribute ids]}` (e.g. `Beauty_item2attributes.json`).

  Returns:
    An `InteractionLog` without timestamps (file order is time order).
  """
  path = pathlib.Path(path)
  log_lib.require_file(path, "one user per line: 'user item item ...'")
  users: list[int] = []
  items: list[int] = []
  first_line: dict[int, int] = {}
  for lineno, line in log_lib.lines(log_lib.read_text(path)):
    parts = line.split()
    if len(parts) < 2:
      raise data_error(path, lineno, f"expected 'user item [item ...]', got {line[:80]!r}")
    user = log_lib.to_int(path, lineno, parts[0], "user id")
    if user in first_line:
      raise data_error(path, lineno, f"user {user} already has a line ({first_line[user]})")
    first_line[user] = lineno
    try:
      row = [int(t) for t in parts[1:]]
    except ValueError:
      bad = next(t for t in parts[1:] if not log_lib.is_int(t))
      raise data_error(path, lineno, f"non-integer item id {bad!r}") from None
    items.extend(row)
    users.extend([user] * len(row))
  files = [path]
  side = ItemSide()
  if attributes_path is not None:
    attributes_path = pathlib.Path(attributes_path)
    side = _read_item2attributes(attributes_path)
    files.append(attributes_path)
  log = InteractionLog(users=_ids(users), items=_ids(items),
                       timestamps=None, item_side=side, source=str(path),
                       fingerprint=log_lib.fingerprint_files("seqfile", files, {}))
  logging.info("%s: %d users, %d events", path, len(first_line), len(log))
  return log



def _read_item2attributes(path: pathlib.Path) -> ItemSide:
  """`{"item": [attr, ...]}` -> ItemSide.attributes; integer item keys, int or str attributes."""
  log_lib.require_file(path, 'JSON {"item": [attribute ids]}')
  text = log_lib.read_text(path)
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise data_error(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
  if not isinstance(data, dict):
    raise data_error(path, 1, 'expected a JSON object {"item": [attribute ids]}')
  side = ItemSide()
  for key, attrs in data.items():
    if not log_lib.is_int(key):
      raise data_error(path, log_lib.line_of_json_key(text, key), f"non-integer item id {key!r}")
    if not isinstance(attrs, list) or not all(
        isinstance(a, (int, str)) and not isinstance(a, bool) for a in attrs):
      raise data_error(path, log_lib.line_of_json_key(text, key),
                       f"item {key}: expected a list of attribute ids, got {attrs!r}"[:200])
    side.attributes[int(key)] = list(attrs)
  return side



def attributes_file(path: pathlib.Path, setting: PathLike | bool | None, *,
                    announce: bool = False) -> pathlib.Path | None:
  """The attribute file a seqfile reads: `setting`, else `<stem>_item2attributes.json` beside it.

  `setting` None looks beside `path` (and, with `announce`, logs what it found); False means no
  attributes; a path must exist.
  """
  if setting is False:
    return None
  if setting is not None:
    setting = pathlib.Path(os.path.expanduser(os.fspath(setting)))
    if not setting.is_file():
      raise data_error(setting, None, 'file not found (attributes_path: a JSON'
                       ' {"item": [attribute ids]})')
    return setting
  beside = path.with_name(f"{path.stem}_item2attributes.json")
  if beside.is_file():
    if announce:
      logging.info("%s: using item attributes from %s", path, beside.name)
    return beside
  return None


def _ids(values: list[int]) -> np.ndarray:
  """int64 ids, or strings when one is longer than int64 (ids of any length are kept exactly)."""
  try:
    return np.asarray(values, np.int64)
  except OverflowError:
    return np.asarray([str(v) for v in values])


def source_fingerprint(path: PathLike, attributes_path: PathLike | None = None) -> str:
  """The fingerprint `read_seqfile(path, attributes_path)` gives its log, without parsing."""
  path = pathlib.Path(path)
  log_lib.require_file(path, "one user per line: 'user item item ...'")
  files = [path] + ([pathlib.Path(attributes_path)] if attributes_path else [])
  for f in files:
    log_lib.require_file(f, "data file")
  return log_lib.fingerprint_files("seqfile", files, {})
