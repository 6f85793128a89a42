"""Small pure helpers shared by the recurrences and the model's modules."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(key: jax.Array | None, x: jax.Array, rate: float) -> jax.Array:
  """Inverted dropout; the identity when `key` is None or `rate` is 0.

  Example: dropout(None, x, 0.5) is x; dropout(key, ones(4), 0.5) is 0 or 2 per entry.
  """
  if key is None or rate == 0.0:
    return x
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def locked_dropout(key: jax.Array | None, x_BxLxE: jax.Array, rate: float,
                   segments_BxL: jax.Array) -> jax.Array:
  """Variational ("locked") inverted dropout: one mask per history, shared by all its positions.

  Gal & Ghahramani's recurrent dropout as AWD-LSTM applies it to the inputs and outputs: the same
  features are dropped at every position of one user's history, where `dropout` draws a new mask
  at each position. `segments_BxL` (`segment_ids`) tells the packed histories of a row apart, so
  two users sharing a row get their own masks. The identity when `key` is None or `rate` is 0.

  Example: x ones (1, 4, 2), segments [[0, 0, 1, 1]]: positions 0 and 1 get one mask, 2 and 3
  another, each entry 0 or 1 / (1 - rate).
  """
  if key is None or rate == 0.0:
    return x_BxLxE
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  # One mask per (row, history); a row holds at most L histories, so index L's masks by segment.
  keep_BxLxE = jax.random.bernoulli(key, 1.0 - rate, x_BxLxE.shape)
  keep_BxLxE = jnp.take_along_axis(keep_BxLxE, segments_BxL[..., None].astype(jnp.int32), axis=1)
  return jnp.where(keep_BxLxE, x_BxLxE / (1.0 - rate), 0.0).astype(x_BxLxE.dtype)


def segment_ids(mask_BxL: jax.Array, resets_BxL: jax.Array | None) -> jax.Array:
  """int32 (B, L): which packed history each position belongs to (a new one at each reset).

  Example: resets [[F, F, T, F]] -> [[0, 0, 1, 1]].
  """
  if resets_BxL is None:
    return jnp.zeros(mask_BxL.shape, jnp.int32)
  return jnp.cumsum(resets_BxL.astype(jnp.int32), axis=1)


def segment_positions(resets_BxL: jax.Array | None, shape: tuple[int, int]) -> jax.Array:
  """int32 (B, L): each position's index inside its packed history.

  Example: resets [[F, F, T, F, F]] -> [[0, 1, 0, 1, 2]].
  """
  index_BxL = jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32), shape)
  if resets_BxL is None:
    return index_BxL
  start_BxL = jax.lax.cummax(jnp.where(resets_BxL, index_BxL, 0), axis=1)
  return index_BxL - start_BxL
