"""Item parameter tables with padding rows: V real rows, zeros up to `ModelConfig.table_rows`.

The zero rows make a table split evenly over the `model` axis of a data x model mesh (every
shard the same number of rows, as `jax.sharding` requires); they are never an input, a class or
a ranked item.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def table_param(key: jax.Array, num_items: int, rows: int, embed_dim: int, param_dtype
                ) -> jax.Array:
  """A (rows, E) item table: N(0, 1/E) for the V = num_items real rows, zeros below them.

  The real rows do not depend on `rows`, so a model split over `vocab_shards` devices starts
  from the same values as the unsplit one (ModelConfig.table_rows).
  """
  init = jax.nn.initializers.normal(stddev=embed_dim ** -0.5)
  return jnp.pad(init(key, (num_items, embed_dim), param_dtype), ((0, rows - num_items), (0, 0)))
