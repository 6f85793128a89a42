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

Only the sharding of the table and the batch differs from `losses.softmax_cross_entropy` and
`metrics.target_ranks`: same values (up to f32 summation order), same gradients, same ranks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lstmrec_jax import losses
from lstmrec_jax.evaluation import metrics
from lstmrec_jax.mesh import DATA_AXIS, MODEL_AXIS, make_data_model_mesh  # noqa: F401
from lstmrec_jax.model.tables import pad_rows

# Finite "minus infinity" for masked logits: exp() of it is exactly 0 in f32, and unlike -inf a
# shard or chunk with no real item gets a finite log-sum-exp, so no inf - inf reaches a gradient.
_MASKED_LOGIT = -1e30


def padded_num_items(num_items: int, num_shards: int) -> int:
  """Rows of the padded table: the smallest multiple of `num_shards` >= `num_items`.

  Example: padded_num_items(101, 4) == 104 (3 padding rows, 26 per shard).
  """
  return -(-num_items // num_shards) * num_shards


def table_sharding(mesh: Mesh, model_axis: str = MODEL_AXIS) -> NamedSharding:
  """Sharding of a V x E table (or a V bias): rows split over `model`, copies over other axes."""
  return NamedSharding(mesh, P(model_axis))


def _axes(mesh: Mesh, model_axis: str) -> tuple[int, tuple[str, ...]]:
  """(shards along `model_axis`, the other mesh axes, which split the batch)."""
  if model_axis not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no {model_axis!r} axis")
  batch_axes = tuple(a for a in mesh.axis_names if a != model_axis)
  return mesh.shape[model_axis], batch_axes


def _check_batch(rows: int, mesh: Mesh, batch_axes: tuple[str, ...], what: str) -> None:
  split = math.prod(mesh.shape[a] for a in batch_axes)
  if rows % split:
    raise ValueError(f"{rows} {what} cannot be split evenly over the {split} devices of mesh "
                     f"axes {batch_axes}; use a multiple of {split}")


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
  """`losses.softmax_cross_entropy` with the item table split over the `model` mesh axis.

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
    `losses.softmax_cross_entropy`.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  num_shards, batch_axes = _axes(mesh, model_axis)
  num_items = item_table_VxE.shape[0] if num_items is None else num_items
  if item_bias_V is not None and item_bias_V.shape[0] != item_table_VxE.shape[0]:
    raise ValueError(f"item_bias_V has {item_bias_V.shape[0]} rows, the table "
                     f"{item_table_VxE.shape[0]}")
  # Flattened, checked, and weights zeroed where the target is the padding item 0.
  user_NxE, targets_N, weights_N = losses._flatten(user_NxE, targets_N, weights_N)
  _check_batch(targets_N.shape[0], mesh, batch_axes, "positions")
  # Rows per shard cover the whole table (its own padding rows past num_items included).
  width = padded_num_items(item_table_VxE.shape[0], num_shards) // num_shards
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


# The item parameters with one row per item (model/modules.py, model/content.py), by their path
# of dict keys in the parameter tree; optimizer moments mirror these paths.
TABLE_PARAM_PATHS = (("item_repr", "embedding"), ("output_embedding",), ("bias",))


def _dict_keys(path) -> tuple[str, ...]:
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(tree, mesh: Mesh, table_rows: int, model_axis: str = MODEL_AXIS):
  """NamedShardings for a parameter or train-state tree: item tables split over `model`.

  A leaf is split row-wise when its dict-key path is one of `TABLE_PARAM_PATHS` (the parameter
  itself, or an optimizer moment of it: optax nests moments in tuples, not dicts) and its first
  axis has `table_rows` rows; everything else (the encoder, step counters, the rng) is
  replicated. On a mesh without `model_axis` every leaf is replicated.
  """
  repl = NamedSharding(mesh, P())
  if model_axis not in mesh.axis_names:
    return jax.tree.map(lambda _: repl, tree)
  split = table_sharding(mesh, model_axis)

  def pick(path, leaf):
    keys = _dict_keys(path)
    is_table = keys in TABLE_PARAM_PATHS
    shape = getattr(leaf, "shape", ())
    return split if is_table and len(shape) >= 1 and shape[0] == table_rows else repl

  return jax.tree_util.tree_map_with_path(pick, tree)


def vocab_parallel_target_ranks(
    user_BxE: jax.Array, table_VxE: jax.Array, bias_V: jax.Array | None,
    targets_B: jax.Array, seen_BxS: jax.Array | None = None, *, mesh: Mesh,
    model_axis: str = MODEL_AXIS, exclude_seen: bool = True,
    chunk_size: int = 8192) -> jax.Array:
  """`metrics.target_ranks` with the table split over `model`: a psum of per-shard counts.

  Each shard counts, in chunks of its own rows, the items that outrank the target (same rules as
  `metrics.target_ranks`: ties count against the target, item 0, the target itself and seen
  items never count); the target's score comes from the shard that owns its row. Users are split
  over the other mesh axes (B must divide evenly). Returns int32 [B].
  """
  num_shards, batch_axes = _axes(mesh, model_axis)
  num_items = table_VxE.shape[0]
  _check_batch(user_BxE.shape[0], mesh, batch_axes, "users")
  width = padded_num_items(num_items, num_shards) // num_shards
  has_bias = bias_V is not None
  bias = bias_V.astype(jnp.float32) if has_bias else jnp.zeros((num_items,), jnp.float32)
  # Padded rows score -inf: never ahead of a (finite) target.
  table, bias = _pad_rows(table_VxE, bias, width * num_shards, -jnp.inf)
  data_spec = P(batch_axes) if batch_axes else P()
  has_seen = seen_BxS is not None
  if not has_seen:
    seen_BxS = jnp.zeros((user_BxE.shape[0], 1), jnp.int32)

  def local(user_BxE, rows_WxE, bias_W, targets_B, seen_BxS):
    lo = jax.lax.axis_index(model_axis) * width
    user = user_BxE.astype(jnp.float32)
    # Same arithmetic as metrics.target_ranks, so exact ties resolve the same way.
    owned_B = (targets_B >= lo) & (targets_B < lo + width)
    local_B = jnp.where(owned_B, targets_B - lo, 0)
    score_B = jnp.einsum("be,be->b", user, rows_WxE[local_B].astype(jnp.float32))
    if has_bias:
      score_B = score_B + bias_W[local_B]
    target_score_B = jax.lax.psum(jnp.where(owned_B, score_B, 0.0), model_axis)
    chunk = min(chunk_size, width)
    tables, biases = metrics._pad_items(rows_WxE, bias_W, chunk)  # pads with -inf scores
    seen = seen_BxS if has_seen else None

    def body(count_B, xs):
      index, table_CxE, bias_C = xs
      first = lo + index * chunk
      scores_BxC = metrics._chunk_scores(user, table_CxE, bias_C, first, seen, targets_B,
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
