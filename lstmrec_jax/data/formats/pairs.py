"""One `user item` pair per line, lines in time order per user (SASRec's `Video.txt`)."""

from __future__ import annotations

import pathlib

from absl import logging

from lstmrec_jax.data import log as log_lib
from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide
from lstmrec_jax.data.log import PathLike

EXPECTED = "a text file with one 'user item' pair per line (e.g. Video.txt)"


def read_pairs(path: PathLike) -> InteractionLog:
  """Reads the one-pair-per-line format: `user item`, lines in time order per user.

  Args:
    path: the text file (e.g. SASRec's `Video.txt`); integer ids separated by whitespace
      (int64 keys; a column with an id beyond int64 keeps its ids as strings).

  Returns:
    An `InteractionLog` without timestamps (file order is time order).
  """
  path = pathlib.Path(path)
  # "key": a column with an id beyond int64 (e.g. 20 digits) is kept as strings.
  cols = log_lib.read_numeric(path, delimiter=" ", split=str.split, layout="user item",
                              fields=(("user", "key"), ("item", "key")))
  log = InteractionLog(users=cols["user"], items=cols["item"], timestamps=None,
                       item_side=ItemSide(), source=str(path),
                       fingerprint=log_lib.fingerprint_files("pairs", [path], {}))
  logging.info("%s: %d events", path, len(log))
  return log


def source_fingerprint(path: PathLike) -> str:
  """The fingerprint `read_pairs(path)` gives its log, computed without parsing."""
  path = pathlib.Path(path)
  log_lib.require_file(path, "one pair per line: 'user item'")
  return log_lib.fingerprint_files("pairs", [path], {})
