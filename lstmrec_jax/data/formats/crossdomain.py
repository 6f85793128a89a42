"""Merged multi-domain sequences: one user per line, `user item|time item|time ...`, and a JSON
item -> domain map (the cross-domain benchmarks released with ABXI: Food-Kitchen,
Beauty-Electronics; any number of domains).

The map is a JSON object whose values are either `[item id, domain]` (ABXI's `map_item.json`,
keyed by the external ASIN) or a domain keyed by the item id itself (`{"17": "Food"}`). A domain
is an index into `data.domain_names` or one of those names; without names, the indices found
name themselves ("0", "1", ...) and string domains are named in sorted order.

Every problem is one `DataError` naming the file and the 1-based line: a malformed token, an
item of the sequences without a domain in the map, a domain that is not declared, an item given
two domains, times that go backwards within a user's line, a user with two lines.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from absl import logging
import numpy as np

from lstmrec_jax.data import log as log_lib
from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide
from lstmrec_jax.data.log import PathLike
from lstmrec_jax.errors import data_error

EXPECTED = ("a text file with one user per line, 'user item|time item|time ...', and a JSON"
            " item -> domain map (data.domains_path; default map_item.json beside it)")
DEFAULT_MAP = "map_item.json"


def domains_file(path: pathlib.Path, setting: PathLike | None) -> pathlib.Path:
  """The map a crossdomain file reads: `setting`, else `map_item.json` beside `path`."""
  found = pathlib.Path(setting).expanduser() if setting else path.with_name(DEFAULT_MAP)
  log_lib.require_file(found, 'the item -> domain map, JSON {"item": [id, domain]} or '
                       '{"id": domain} (data.domains_path)')
  return found


def read_domain_map(path: pathlib.Path, domain_names: Sequence[str] = ()
                    ) -> tuple[dict[int | str, int], list[str]]:
  """({raw item id: domain index}, domain names) from the JSON map; see the module docstring."""
  text = log_lib.read_text(path)
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise data_error(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
  if not isinstance(data, dict) or not data:
    raise data_error(path, 1, 'expected a non-empty JSON object {"item": [id, domain]} or'
                     ' {"id": domain}')
  raw: dict[int | str, tuple[int | str, str]] = {}  # item -> (domain as given, JSON key)
  for key, value in data.items():
    if isinstance(value, list):
      if len(value) != 2 or not isinstance(value[0], (int, str)) or isinstance(value[0], bool):
        raise data_error(path, log_lib.line_of_json_key(text, key),
                         f"{key!r}: expected [item id, domain], got {value!r}"[:200])
      item, domain = value
    else:
      item, domain = key, value
    if isinstance(item, str) and log_lib.is_int(item):
      item = int(item)
    if isinstance(domain, bool) or not isinstance(domain, (int, str)):
      raise data_error(path, log_lib.line_of_json_key(text, key),
                       f"item {item}: domain must be an index or a name, got {domain!r}")
    if item in raw and raw[item][0] != domain:
      raise data_error(path, log_lib.line_of_json_key(text, key),
                       f"item {item} is given two domains, {raw[item][0]!r} and {domain!r}")
    raw[item] = (domain, key)
  names = [str(n) for n in domain_names]
  given = {d for d, _ in raw.values()}
  if not names:
    if all(isinstance(d, int) for d in given):
      if min(given) < 0:
        bad = min(given)
        key = next(k for d, k in raw.values() if d == bad)
        raise data_error(path, log_lib.line_of_json_key(text, key),
                         f"unknown domain {bad} (a domain index must be >= 0)")
      names = [str(i) for i in range(max(given) + 1)]
    elif all(isinstance(d, str) for d in given):
      names = sorted(given)
    else:
      raise data_error(path, 1, "domains are a mix of indices and names; name them all one way"
                       " (or set data.domain_names)")
  index = {name: i for i, name in enumerate(names)}
  out: dict[int | str, int] = {}
  for item, (domain, key) in raw.items():
    if isinstance(domain, int):
      ok = 0 <= domain < len(names)
      d = domain
    else:
      ok = domain in index
      d = index.get(domain, -1)
    if not ok:
      raise data_error(path, log_lib.line_of_json_key(text, key),
                       f"item {item}: unknown domain {domain!r} (the domains are "
                       f"{', '.join(f'{i} {n}' for i, n in enumerate(names))}; data.domain_names)")
    out[item] = d
  return out, names


def read_crossdomain(path: PathLike, domains_path: PathLike | None = None,
                     domain_names: Sequence[str] = ()) -> InteractionLog:
  """Reads merged multi-domain sequences and their item -> domain map.

  Args:
    path: the sequences, `user item|time item|time ...` per line, times non-decreasing.
    domains_path: the JSON map; None reads `map_item.json` beside `path`.
    domain_names: the domains' names, in index order; empty: from the map.

  Returns:
    An `InteractionLog` in file order with timestamps and `item_side.domains`.
  """
  path = pathlib.Path(path)
  log_lib.require_file(path, "one user per line: 'user item|time item|time ...'")
  map_path = domains_file(path, domains_path)
  domains, names = read_domain_map(map_path, domain_names)
  users: list[int] = []
  items: list[int] = []
  times: list[int] = []
  first_line: dict[int, int] = {}
  for lineno, line in log_lib.lines(log_lib.read_text(path)):
    parts = line.split()
    if len(parts) < 2:
      raise data_error(path, lineno, f"expected 'user item|time [item|time ...]', got "
                       f"{line[:80]!r}")
    user = log_lib.to_int(path, lineno, parts[0], "user id")
    if user in first_line:
      raise data_error(path, lineno, f"user {user} already has a line ({first_line[user]})")
    first_line[user] = lineno
    previous = None
    for token in parts[1:]:
      item_s, bar, time_s = token.partition("|")
      if not bar:
        raise data_error(path, lineno, f"expected 'item|time', got {token!r}")
      item = log_lib.to_int(path, lineno, item_s, "item id")
      time = log_lib.to_int(path, lineno, time_s, "time")
      if item not in domains:
        raise data_error(path, lineno, f"item {item} has no domain in {map_path.name}")
      if previous is not None and time < previous:
        raise data_error(path, lineno, f"times out of order: item {item} at {time} comes after"
                         f" an event at {previous} (a user's events must be in time order)")
      previous = time
      users.append(user)
      items.append(item)
      times.append(time)
  used = set(items)
  side = ItemSide(domains={k: d for k, d in domains.items() if k in used}, domain_names=names)
  log = InteractionLog(
      users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
      timestamps=np.asarray(times, np.int64), item_side=side, source=str(path),
      fingerprint=source_fingerprint(path, map_path, domain_names))
  counts = np.bincount([domains[i] for i in items], minlength=len(names))
  logging.info("%s: %d users, %d events (%s)", path, len(first_line), len(log),
               ", ".join(f"{n} {c}" for n, c in zip(names, counts)))
  return log


def source_fingerprint(path: PathLike, map_path: PathLike, domain_names: Sequence[str]) -> str:
  """The fingerprint `read_crossdomain` gives its log, without parsing."""
  return log_lib.fingerprint_files("crossdomain", [pathlib.Path(path), pathlib.Path(map_path)],
                                   {"domain_names": list(domain_names)})
