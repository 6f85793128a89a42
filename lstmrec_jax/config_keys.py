"""The one way every config group is validated: a frozen dataclass and `build_group`.

Each group of configs/base.py (data, input, model, loss, optim, train, eval, cold_start,
adversarial, augment) is a frozen dataclass with no defaults (configs/base.py is the only place
a default lives). `build_group(cls, "model", values)` builds it from the group's mapping and names,
in one error, every unknown key, every missing key and every bad value:

  - a field's type annotation checks and coerces its value (bool, int, float, str, tuple, and
    `X | None`); a field with `convert=` metadata (`key(convert=...)`) converts it instead;
  - a field with `choices=` (`key(choices=...)`) must take one of them: the allowed values of a
    choice are defined once, where the field is (a tuple, or a function of a registry);
  - the dataclass's `__post_init__` checks ranges and keys that depend on each other.

It imports nothing from the project but the errors, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from lstmrec_jax.errors import ConfigError

# A test target already in the user's history: a miss (the published protocol) or rankable.
SEEN_TARGETS = ("miss", "rankable")


class Invalid(ValueError):
  """A converter's problems with one key, each a suffix to `group.key`: `": why"`, `".sub: why"`."""

  def __init__(self, *problems: str):
    super().__init__("; ".join(problems))
    self.problems = problems


def key(*, choices: tuple[Any, ...] | Callable[[], Iterable[Any]] | None = None,
        convert: Callable[[Any], Any] | None = None, doc: str = "") -> Any:
  """A group dataclass field (no default) with its allowed values or its converter.

  choices: the allowed values, or a function returning them (a registry's names).
  convert: value -> the field's value; raises `Invalid` (or ValueError) for a bad value.
  """
  return dataclasses.field(metadata={"choices": choices, "convert": convert, "doc": doc})


def choices_of(cls, name: str) -> tuple[Any, ...]:
  """The allowed values of a choice field, e.g. choices_of(EvalConfig, "seen_targets")."""
  allowed = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]
  return tuple(allowed() if callable(allowed) else allowed)


def key_problems(group: str, names: Iterable[str], values: Mapping[str, Any]) -> list[str]:
  """One line for each unknown and each missing `<group>.<key>` of `values`.

  Example: key_problems("a", ["x"], {"y": 1}) -> ["unknown key a.y", "missing key a.x"].
  """
  names = list(names)
  return ([f"unknown key {group}.{k}" for k in sorted(set(values) - set(names))]
          + [f"missing key {group}.{k}" for k in names if k not in values])


def plain(value: Any) -> Any:
  """A ConfigDict / Mapping as nested plain dicts (tuples stay tuples)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: plain(v) for k, v in value.items()}
  return value


def coerce(value: Any, annotation: Any) -> Any:
  """`value` checked against a field annotation (int, float, bool, str, tuple, optional).

  Raises Invalid with the suffix "=<value> must be ...". Example: coerce(3, float) -> 3.0.
  """
  hint = annotation
  optional = False
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = len(args) < len(typing.get_args(hint))
    hint = args[0] if len(args) == 1 else Any
  if value is None and optional:
    return None
  origin = typing.get_origin(hint) or hint
  where = f"={value!r}"
  if origin is bool:
    if not isinstance(value, (bool, np.bool_)):
      raise Invalid(f"{where} must be true or false")
    return bool(value)
  if origin is int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
      raise Invalid(f"{where} must be an integer")
    return int(value)
  if origin is float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
      raise Invalid(f"{where} must be a number")
    return float(value)
  if origin is str:
    if not isinstance(value, str):
      raise Invalid(f"{where} must be a string")
    return value
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise Invalid(f"{where} must be a list")
    return tuple(value)
  return value


def _prefixed(group: str, message: str) -> str:
  """Messages of a group's own validation, named by group where they do not say it already."""
  return message if f"{group}." in message else f"{group}: {message}"


def build_group(cls, group: str, values: Mapping[str, Any] | Any, *,
                error: type[Exception] = ConfigError, **fixed: Any):
  """The frozen group dataclass `cls` from a mapping, every problem named in one `error`.

  Args:
    cls: the group's dataclass (no defaults; `key()` fields carry choices / converters).
    group: its name in the config ("model"): problems read `model.embed_dim=-1 must be >= 1`.
    values: every key of the group and no other (a dict or a ConfigDict).
    error: the exception raised (ConfigError; DataError for the data group).
    **fixed: fields that do not come from the group (sizes known from the data, e.g. the
      model's `num_items`), passed through unchecked.
  """
  values = plain(values)
  if not isinstance(values, Mapping):
    raise error(f"{group}: expected a mapping of the {group} config keys, got {values!r}")
  hints = typing.get_type_hints(cls)
  fields = [f for f in dataclasses.fields(cls) if f.name not in fixed]
  problems = key_problems(group, [f.name for f in fields], values)
  kwargs = dict(fixed)
  for f in fields:
    if f.name not in values:
      continue
    value, convert, allowed = values[f.name], f.metadata.get("convert"), f.metadata.get("choices")
    try:
      value = convert(value) if convert else coerce(value, hints.get(f.name, Any))
    except Invalid as e:
      problems += [f"{group}.{f.name}{p}" for p in e.problems]
      continue
    except (TypeError, ValueError) as e:
      problems.append(f"{group}.{f.name}: {e}")
      continue
    kwargs[f.name] = value  # a value off its choices still reaches the checks below
    if allowed is not None:
      allowed = tuple(allowed() if callable(allowed) else allowed)
      if value not in allowed:
        problems.append(f"{group}.{f.name}={value!r} must be one of "
                        f"{', '.join(map(str, allowed))}")
  if len(kwargs) == len(fixed) + len(fields):  # every value read: the cross-key checks too
    try:
      built = cls(**kwargs)
    except (TypeError, ValueError) as e:
      problems.append(_prefixed(group, str(e)))
  if problems:
    raise error("; ".join(problems))
  return built
