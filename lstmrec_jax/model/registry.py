"""Registries of the research plug-ins: sequence encoders and item representations.

A sequence encoder is an NNX module class registered under a name and chosen by `model.encoder`:

  @register_encoder("mean")
  class MeanEncoder(SequenceEncoder):
    def __init__(self, cfg: ModelConfig, input_dim: int, *, rngs: nnx.Rngs): ...
    def __call__(self, x_BxLxE, mask_BxL, resets_BxL, *, dropout_key) -> h_BxLxD: ...

An item representation is a builder `f(cfg, *, rngs, item_content) -> module` with
`table(id_keep_V=None) -> VxE`, registered under a `model.item_mode` name. See docs/extending.md.

This module imports nothing from the model, so every model module can import it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx


class Registry:
  """Names -> builders, with errors that list what is known."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Any] = {}

  def register(self, name: str, *, replace: bool = False) -> Callable[[Any], Any]:
    """Decorator registering `obj` under `name`; a name taken by another object is an error."""
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

    def decorate(obj):
      if name in self._entries and self._entries[name] is not obj and not replace:
        raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r});"
                         " pass replace=True to override it")
      self._entries[name] = obj
      return obj

    return decorate

  def unregister(self, name: str) -> None:
    """Removes `name` (tests, notebooks)."""
    self._entries.pop(name, None)

  def get(self, name: str):
    """The builder registered as `name`; a ValueError naming the known ones otherwise."""
    if name not in self._entries:
      raise ValueError(f"unknown {self.kind} {name!r}; registered: {self.names()}")
    return self._entries[name]

  def names(self) -> tuple[str, ...]:
    return tuple(sorted(self._entries))

  def __contains__(self, name) -> bool:
    return name in self._entries


ENCODERS = Registry("encoder")
ITEM_REPRS = Registry("item representation")


def register_encoder(name: str, *, replace: bool = False):
  """Class decorator: `model.encoder = name` builds `cls(cfg, input_dim, *, rngs)`."""
  return ENCODERS.register(name, replace=replace)


def register_item_repr(name: str, *, replace: bool = False):
  """Decorator on `f(cfg, *, rngs, item_content) -> module with table(id_keep_V) -> VxE`."""
  return ITEM_REPRS.register(name, replace=replace)


class SequenceEncoder(nnx.Module):
  """The interface of a sequence encoder (subclassing it is optional; the methods are the API).

  Shape legend: B batch, L history length, E input size, D output size.

  `__call__(x_BxLxE, mask_BxL, resets_BxL, *, dropout_key) -> h_BxLxD`: causal (the output at t
  depends on inputs up to t only), padding-invariant (masked steps neither move the state nor
  leak into real steps), and packed rows restart at each reset. `dropout_key` None means eval.
  `output_dim` is D; the model projects D back to E when they differ.

  Encoders that set `streams = True` also give O(1)-per-event updates for serving:
  `initial_state(batch) -> state pytree` and `step(state, x_BxE, mask_B) -> (state, h_BxD)`,
  equal (to f32 rounding) to the full-sequence call without dropout.
  """

  streams: bool = False
  output_dim: int

  def initial_state(self, batch: int) -> Any:
    """The state before any event; only for encoders with `streams = True`."""
    raise NotImplementedError(f"{type(self).__name__} does not stream (streams = False)")

  def step(self, state: Any, x_BxE: jax.Array, mask_B: jax.Array) -> tuple[Any, jax.Array]:
    """One event per row; only for encoders with `streams = True`."""
    raise NotImplementedError(f"{type(self).__name__} does not stream (streams = False)")
