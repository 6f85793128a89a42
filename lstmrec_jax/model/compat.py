"""Checkpoints written before the encoder registry: their parameter paths, mapped both ways.

Until 2026-12-02 the LSTM layers were `SeqRecModel.lstm_layers[i]`; they are now
`SeqRecModel.encoder.layers[i]` (every other path is unchanged). The optimizer state mirrors the
parameter tree, so the same renaming applies to it. Restoring an old workdir reads it with
`to_legacy(like)` as the target and renames the result back with `from_legacy`: the numbers are
the same, only the names moved.
"""

from __future__ import annotations

from typing import Any

LEGACY_KEY = "lstm_layers"
MARKER = f'"{LEGACY_KEY}"'  # how the old path shows in Orbax's tree metadata


def _map(tree: Any, fn) -> Any:
  """Applies `fn` to every dict of a pytree of dicts, lists, tuples and namedtuples."""
  if isinstance(tree, dict):
    return fn({k: _map(v, fn) for k, v in tree.items()})
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    return type(tree)(*(_map(v, fn) for v in tree))
  if isinstance(tree, (list, tuple)):
    return type(tree)(_map(v, fn) for v in tree)
  return tree


def to_legacy(tree: Any) -> Any:
  """{"encoder": {"layers": X}} -> {"lstm_layers": X}, at any depth.

  Example: to_legacy({"encoder": {"layers": {0: w}}, "norm": n}) ->
  {"lstm_layers": {0: w}, "norm": n}.
  """
  def fn(d):
    enc = d.get("encoder")
    if isinstance(enc, dict) and set(enc) == {"layers"}:
      d = {k: v for k, v in d.items() if k != "encoder"}
      d[LEGACY_KEY] = enc["layers"]
    return d
  return _map(tree, fn)


def from_legacy(tree: Any) -> Any:
  """{"lstm_layers": X} -> {"encoder": {"layers": X}}, at any depth (inverse of `to_legacy`)."""
  def fn(d):
    if LEGACY_KEY in d:
      layers = d[LEGACY_KEY]
      d = {k: v for k, v in d.items() if k != LEGACY_KEY}
      d["encoder"] = {"layers": layers}
    return d
  return _map(tree, fn)
