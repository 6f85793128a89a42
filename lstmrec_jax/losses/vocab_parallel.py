"""Vocabulary-parallel softmax and ranking: the item table split over a `model` mesh axis.

Shape legend: N flattened positions, B users, E embedding size, V catalog size (row 0 = padding),
M shards of the `model` axis, W = ceil(V / M) rows per shard, C items per local chunk,
K = ceil(W / C) local chunks, S seen items per user.

For catalogs whose table (and its gradient and optimizer moments) do not fit one device, the
V x E table is split row-wise over the `model` axis of a mesh (e.g. `data x model`): shard m holds
global rows [m*W, (m+1)*W). Inside `jax.shard_map` each shard scores the positions of its `data`
slice against its own rows only, then the shards combine per-position scalars:

  loss:    lse   = pmax_m(lse_m) + log psum_m exp(lse_m - pmax_m(lse_m))
           logit = psum_m(target logit on the shard that owns the target, 0 elsewhere)
  ranking: rank  = psum_m(items on shard m scoring >= the target's score)

so no device ever holds more than N/D x C logits or W x E table rows (D = data-axis size), and the
only traffic over `model` is a few length-N vectors. The global table is padded to M*W rows when
V is not a multiple of M; padded rows are never a class and never ranked. Gradients are plain
autodiff through shard_map (check_vma=True makes the transposes of psum/pcast exact): the table
gradient comes out sharded like the table, the user-state gradient summed over shards.

Only the sharding of the table and the batch differs from `core.softmax_cross_entropy` (and,
for ranking, `scoring/vocab_parallel.py` from `scoring.ranks.target_ranks`): same values (up to
f32 summation order), same gradients, same ranks. The table's shardings are `mesh.py`'s
(`state_shardings`); the train step reaches this loss through the registry
(`core.get_loss(kind, vocab_parallel=True)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax.losses import core
from lstmrec_jax.mesh import MODEL_AXIS, pad_rows

# Finite "minus infinity" for masked logits: exp() of it is exactly 0 in f32, and unlike -inf a
# shard or chunk with no real item gets a finite log-sum-exp, so no inf - inf reaches a gradient.
_MASKED_LOGIT = -1e30


def _pad_rows(table_VxE, bias_V, rows: int, bias_fill: float):
  """Pads the item axis to `rows`; padded bias entries get `bias_fill`."""
  return pad_rows(table_VxE, rows), pad_rows(bias_V, rows, bias_fill)


def _local_lse(user_NxE, rows_WxE, bias_W, lo, num_items, chunk_size):
  """log sum exp of this shard's real items' logits per position, one chunk of C rows at a time.

  A `lax.scan` over chunks with a rematerialised body: autodiff keeps only each chunk's length-N
  log-sum-exp and recomputes the N x C logits in the backward pass, so neither pass holds N x W.
  """
  width = rows_WxE.shape[0]
  chunk = min(chunk_size, width)
  num_chunks = -(-width // chunk)
  pad = num_chunks * chunk - width
  if pad:  # local padding, masked below like the global padding rows
    rows_WxE = jnp.pad(rows_WxE, ((0, pad), (0, 0)))
    bias_W = jnp.pad(bias_W, (0, pad))
  rows_KxCxE = rows_WxE.reshape(num_chunks, chunk, -1)
  bias_KxC = bias_W.reshape(num_chunks, chunk)
  user_f32 = user_NxE.astype(jnp.float32)

  @jax.checkpoint
  def chunk_lse(index, rows_CxE, bias_C):
    logits_NxC = user_f32 @ rows_CxE.astype(jnp.float32).T + bias_C.astype(jnp.float32)
    ids_C = lo + index * chunk + jnp.arange(chunk)
    real_C = (ids_C >= 1) & (ids_C < num_items) & (index * chunk + jnp.arange(chunk) < width)
    logits_NxC = jnp.where(real_C, logits_NxC, _MASKED_LOGIT)
    return jax.nn.logsumexp(logits_NxC, axis=1)

  def body(_, xs):
    return None, chunk_lse(*xs)

  _, lse_KxN = jax.lax.scan(body, None, (jnp.arange(num_chunks), rows_KxCxE, bias_KxC))
  return jax.nn.logsumexp(lse_KxN, axis=0)


def vocab_parallel_softmax_cross_entropy(
    user_NxE: jax.Array, item_table_VxE: jax.Array, item_bias_V: jax.Array | None,
    targets_N: jax.Array, weights_N: jax.Array, *, mesh: Mesh, model_axis: str = MODEL_AXIS,
    chunk_size: int = 8192, label_smoothing: float = 0.0,
    num_items: int | None = None) -> tuple[jax.Array, dict]:
  """`core.softmax_cross_entropy` with the item table split over the `model` mesh axis.

  Args:
    user_NxE: user states (any leading shape, flattened); N must divide evenly over the mesh
      axes other than `model_axis` (they split the positions).
    item_table_VxE: output item table; row 0 is padding and never a class. Best passed already
      sharded by `table_sharding(mesh)` with V a multiple of M (`padded_num_items`); otherwise it
      is padded and resharded inside the computation.
    item_bias_V: per-item bias or None.
    targets_N: next-item ids; 0 means no target (weight forced to 0).
    weights_N: per-position weights.
    mesh: a mesh with a `model_axis` axis (e.g. `make_mesh(data, model)`).
    model_axis: the mesh axis the table rows are split over.
    chunk_size: items per local chunk (bounds each device's logits at N/D x C).
    label_smoothing: eps of the uniform mass spread over the real items 1..V-1.
    num_items: V when the table already carries padding rows past it (the model's
      `item_tables(padded=True)`, `ModelConfig.table_rows`): those rows are never a class.
      None: every row of the table is an item.

  Returns:
    (weighted mean loss, aux dict with loss_sum, nll_sum, weight_sum), replicated; as in
    `core.softmax_cross_entropy`.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  num_shards, batch_axes = mesh_lib.split_axes(mesh, model_axis)
  num_items = item_table_VxE.shape[0] if num_items is None else num_items
  if item_bias_V is not None and item_bias_V.shape[0] != item_table_VxE.shape[0]:
    raise ValueError(f"item_bias_V has {item_bias_V.shape[0]} rows, the table "
                     f"{item_table_VxE.shape[0]}")
  # Flattened, checked, and weights zeroed where the target is the padding item 0.
  user_NxE, targets_N, weights_N = core.flatten_positions(user_NxE, targets_N, weights_N)
  mesh_lib.check_split_batch(targets_N.shape[0], mesh, batch_axes, "positions")
  # Rows per shard cover the whole table (its own padding rows past num_items included).
  width = mesh_lib.padded_num_items(item_table_VxE.shape[0], num_shards) // num_shards
  has_bias = item_bias_V is not None
  bias_V = item_bias_V if has_bias else jnp.zeros((item_table_VxE.shape[0],), jnp.float32)
  table_VxE, bias_V = _pad_rows(item_table_VxE, bias_V, width * num_shards, 0.0)
  data_spec = P(batch_axes) if batch_axes else P()

  def local(user_NxE, rows_WxE, bias_W, targets_N, weights_N):
    lo = jax.lax.axis_index(model_axis) * width
    # This shard's share of every position's normaliser, then the exact global log-sum-exp; the
    # max is a constant of the gradient (d lse / d lse_m does not depend on it).
    lse_m_N = _local_lse(user_NxE, rows_WxE, bias_W, lo, num_items, chunk_size)
    max_N = jax.lax.pmax(jax.lax.stop_gradient(lse_m_N), model_axis)
    lse_N = max_N + jnp.log(jax.lax.psum(jnp.exp(lse_m_N - max_N), model_axis))
    # The target's logit from the one shard that holds its row (a gather, not an N x W product).
    owned_N = (targets_N >= lo) & (targets_N < lo + width)
    local_N = jnp.where(owned_N, targets_N - lo, 0)
    logit_N = jnp.einsum("ne,ne->n", user_NxE.astype(jnp.float32),
                         jnp.take(rows_WxE, local_N, axis=0).astype(jnp.float32))
    if has_bias:
      logit_N = logit_N + jnp.take(bias_W, local_N).astype(jnp.float32)
    target_logit_N = jax.lax.psum(jnp.where(owned_N, logit_N, 0.0), model_axis)
    nll_N = lse_N - target_logit_N
    loss_N = nll_N
    if label_smoothing:
      # Mean logit over the real items is linear in the table: psum of masked row sums.
      ids_W = lo + jnp.arange(width)
      real_W = (ids_W >= 1) & (ids_W < num_items)
      num_real = num_items - 1
      mean_emb_E = jax.lax.psum(
          jnp.where(real_W[:, None], rows_WxE.astype(jnp.float32), 0.0).sum(0), model_axis)
      mean_N = user_NxE.astype(jnp.float32) @ (mean_emb_E / num_real)
      if has_bias:
        mean_N = mean_N + jax.lax.psum(
            jnp.where(real_W, bias_W.astype(jnp.float32), 0.0).sum(), model_axis) / num_real
      loss_N = (1.0 - label_smoothing) * nll_N + label_smoothing * (lse_N - mean_N)
    sums = {"loss_sum": jnp.where(weights_N > 0, weights_N * loss_N, 0.0).sum(),
            "nll_sum": jnp.where(weights_N > 0, weights_N * nll_N, 0.0).sum(),
            "weight_sum": weights_N.sum()}
    if batch_axes:
      sums = jax.lax.psum(sums, batch_axes)
    return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1e-12), sums

  fn = jax.shard_map(
      local, mesh=mesh,
      in_specs=(data_spec, P(model_axis), P(model_axis), data_spec, data_spec),
      out_specs=(P(), P()))
  return fn(user_NxE, table_VxE, bias_V, targets_N, weights_N)


@core.register_vocab_parallel("full")
@core.register_vocab_parallel("chunked")
def _split_softmax(user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg: core.LossConfig,
                   key, log_q_V, item_mask_V, mesh: Mesh, num_items: int):
  """"full" / "chunked" over a table split over `model` (its rows padded to a multiple)."""
  del key, log_q_V
  mask_V = None if item_mask_V is None else pad_rows(item_mask_V, table_VxE.shape[0], False)
  return vocab_parallel_softmax_cross_entropy(
      user_NxE, table_VxE, core.candidate_bias(bias_V, mask_V), targets_N, weights_N, mesh=mesh,
      chunk_size=cfg.chunk_size, label_smoothing=cfg.label_smoothing, num_items=num_items)[0]
