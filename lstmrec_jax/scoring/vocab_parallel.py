"""Vocabulary-parallel ranking: `ranks.target_ranks` with the item table split over `model`.

Shape legend: B users, E embedding size, V catalog size (row 0 = padding), M shards of the
`model` axis, W = ceil(V / M) rows per shard, C items per local chunk, S seen items per user.

Each shard counts, in chunks of its own rows, the items that outrank the target; the target's
score comes from the shard that owns its row; a psum over `model` adds the counts (see
`losses/vocab_parallel.py` for the layout: shard m holds global rows [m*W, (m+1)*W)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax.mesh import MODEL_AXIS, pad_rows
from lstmrec_jax.scoring import ranks as ranks_lib


def vocab_parallel_target_ranks(
    user_BxE: jax.Array, table_VxE: jax.Array, bias_V: jax.Array | None,
    targets_B: jax.Array, seen_BxS: jax.Array | None = None, *, mesh: Mesh,
    model_axis: str = MODEL_AXIS, exclude_seen: bool = True,
    chunk_size: int = 8192) -> jax.Array:
  """`ranks.target_ranks` with the table split over `model`: a psum of per-shard counts.

  Each shard counts, in chunks of its own rows, the items that outrank the target (same rules as
  `ranks.target_ranks`: ties count against the target, item 0, the target itself and seen
  items never count); the target's score comes from the shard that owns its row. Users are split
  over the other mesh axes (B must divide evenly). Returns int32 [B].
  """
  num_shards, batch_axes = mesh_lib.split_axes(mesh, model_axis)
  num_items = table_VxE.shape[0]
  mesh_lib.check_split_batch(user_BxE.shape[0], mesh, batch_axes, "users")
  width = mesh_lib.padded_num_items(num_items, num_shards) // num_shards
  has_bias = bias_V is not None
  bias = bias_V.astype(jnp.float32) if has_bias else jnp.zeros((num_items,), jnp.float32)
  # Padded rows score -inf: never ahead of a (finite) target.
  table, bias = pad_rows(table_VxE, width * num_shards), pad_rows(bias, width * num_shards, -jnp.inf)
  data_spec = P(batch_axes) if batch_axes else P()
  has_seen = seen_BxS is not None
  if not has_seen:
    seen_BxS = jnp.zeros((user_BxE.shape[0], 1), jnp.int32)

  def local(user_BxE, rows_WxE, bias_W, targets_B, seen_BxS):
    lo = jax.lax.axis_index(model_axis) * width
    user = user_BxE.astype(jnp.float32)
    # Same arithmetic as ranks.target_ranks, so exact ties resolve the same way.
    owned_B = (targets_B >= lo) & (targets_B < lo + width)
    local_B = jnp.where(owned_B, targets_B - lo, 0)
    score_B = jnp.einsum("be,be->b", user, rows_WxE[local_B].astype(jnp.float32))
    if has_bias:
      score_B = score_B + bias_W[local_B]
    target_score_B = jax.lax.psum(jnp.where(owned_B, score_B, 0.0), model_axis)
    chunk = min(chunk_size, width)
    tables, biases = ranks_lib.pad_items(rows_WxE, bias_W, chunk)  # pads with -inf scores
    seen = seen_BxS if has_seen else None

    def body(count_B, xs):
      index, table_CxE, bias_C = xs
      first = lo + index * chunk
      scores_BxC = ranks_lib.chunk_scores(user, table_CxE, bias_C, first, seen, targets_B,
                                         exclude_seen)
      ids_C = first + jnp.arange(chunk)
      ahead = (scores_BxC >= target_score_B[:, None]) & (ids_C[None, :] != targets_B[:, None])
      return count_B + ahead.sum(axis=1, dtype=jnp.int32), None

    init = jax.lax.pcast(jnp.zeros(targets_B.shape, jnp.int32), (model_axis, *batch_axes),
                         to="varying")
    count_B, _ = jax.lax.scan(body, init, (jnp.arange(tables.shape[0]), tables, biases))
    return jax.lax.psum(count_B, model_axis)

  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(data_spec, P(model_axis), P(model_axis), data_spec, data_spec),
                     out_specs=data_spec)
  return fn(user_BxE, table, bias, targets_B.astype(jnp.int32), seen_BxS.astype(jnp.int32))
