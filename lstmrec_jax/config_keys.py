"""The key check every config group's dataclass shares (run.py, model/config.py, losses.py).

It imports nothing from the project, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def key_problems(group: str, names: Iterable[str], values: Mapping[str, Any]) -> list[str]:
  """One line for each unknown and each missing `<group>.<key>` of `values`.

  Example: key_problems("a", ["x"], {"y": 1}) -> ["unknown key a.y", "missing key a.x"].
  """
  names = list(names)
  return ([f"unknown key {group}.{k}" for k in sorted(set(values) - set(names))]
          + [f"missing key {group}.{k}" for k in names if k not in values])
