"""Next-item losses: pure functions over (user states, item table, item bias, targets, weights).

Shape legend: N flattened positions (any leading shape is flattened), E embedding size, V catalog
size including the padding item 0, S shared sampled negatives, C items per chunk, R positions
per block, Q = ceil(N / R) blocks.

Every loss function here returns `(loss, aux)`: `loss` is the weighted mean over positions with
weight > 0 (positions whose target is the padding item 0 get weight 0 whatever `weights` says),
and `aux` holds `loss_sum`, `nll_sum` (the unsmoothed negative log-likelihood, or the loss itself
for bpr / bce) and `weight_sum`, so callers can aggregate exactly across batches and devices.
Logits are f32. Item 0 is never a class.

The train step picks a loss by name from a registry (`loss.kind`): each registered loss is

  fn(user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg: LossConfig, key, log_q_V,
     item_mask_V) -> scalar

with `key` a PRNG key for sampled negatives, `log_q_V` the sampling log-probabilities (None unless
`needs_log_q(kind)`) and `item_mask_V` the candidates of the training softmax (None: all items).
Add one with `@register_loss("name")`. A loss registered with `needs_transitions=True` (the
offline RL losses of `rl.py`) also gets `transitions=` (the Q heads, the rewards and the terminal
flags of the logged transitions, built by the train step) and `rl_cfg=` (the `rl` group), and
returns `(loss, scalars to log)`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lstmrec_jax import config_keys


# Score of an item left out of the training softmax: exp() of it is exactly 0 in f32, and unlike
# -inf it keeps every difference and product of the loss's backward pass finite.
EXCLUDED_SCORE = -1e9


def flatten_positions(user_NxE, targets_N, weights_N):
  """Flattens leading dims; returns (user_NxE, targets_N, weights_N zeroed where target is 0)."""
  embed = user_NxE.shape[-1]
  user_NxE = user_NxE.reshape(-1, embed)
  targets_N = targets_N.reshape(-1).astype(jnp.int32)
  weights_N = jnp.broadcast_to(weights_N, targets_N.shape) if jnp.ndim(weights_N) == 0 else (
      weights_N.reshape(-1))
  if targets_N.shape[0] != user_NxE.shape[0] or weights_N.shape != targets_N.shape:
    raise ValueError(f"{user_NxE.shape[0]} user states, {targets_N.shape[0]} targets and "
                     f"{weights_N.shape} weights do not match")
  weights_N = jnp.where(targets_N > 0, weights_N.astype(jnp.float32), 0.0)
  return user_NxE, targets_N, weights_N


def _reduce(loss_N, nll_N, weights_N):
  """Weighted mean of per-position losses and the aux sums."""
  weight_sum = weights_N.sum()
  # Where weight is 0 the loss may be anything (even inf): select instead of multiplying.
  loss_sum = jnp.where(weights_N > 0, weights_N * loss_N, 0.0).sum()
  nll_sum = jnp.where(weights_N > 0, weights_N * nll_N, 0.0).sum()
  loss = loss_sum / jnp.maximum(weight_sum, 1e-12)
  return loss, {"loss_sum": loss_sum, "nll_sum": nll_sum, "weight_sum": weight_sum}


def _target_logits(user_NxE, table_VxE, bias_V, targets_N):
  """f32 logit of each position's target, by a gather instead of a full N x V product."""
  target_emb_NxE = jnp.take(table_VxE, targets_N, axis=0).astype(jnp.float32)
  logit_N = jnp.einsum("ne,ne->n", user_NxE.astype(jnp.float32), target_emb_NxE)
  if bias_V is not None:
    logit_N = logit_N + jnp.take(bias_V, targets_N).astype(jnp.float32)
  return logit_N


def _mean_item_logits(user_NxE, table_VxE, bias_V):
  """Mean logit over the real items 1..V-1, linear in the table so no N x V product is needed."""
  num_real = table_VxE.shape[0] - 1
  mean_emb_E = table_VxE[1:].astype(jnp.float32).sum(0) / num_real
  mean_N = user_NxE.astype(jnp.float32) @ mean_emb_E
  if bias_V is not None:
    mean_N = mean_N + bias_V[1:].astype(jnp.float32).sum() / num_real
  return mean_N


def _smoothed(nll_N, lse_N, mean_logit_N, label_smoothing):
  """Cross-entropy against (1 - eps) * one-hot + eps * uniform over the real items."""
  if label_smoothing == 0.0:
    return nll_N
  return (1.0 - label_smoothing) * nll_N + label_smoothing * (lse_N - mean_logit_N)


def _check_exclusions(exclude_NxS, n, label_smoothing):
  if exclude_NxS is None:
    return
  if exclude_NxS.ndim != 2 or exclude_NxS.shape[0] != n:
    raise ValueError(f"exclude_NxS has shape {exclude_NxS.shape}: it needs one row per position "
                     f"({n})")
  if label_smoothing:
    raise ValueError("label smoothing spreads mass over every item: it does not combine with "
                     "excluded items (exclude_NxS)")


def further_targets(targets_BxL: jax.Array, resets_BxL: jax.Array | None,
                    count: int) -> jax.Array:
  """The `count` items after each position's target in its own packed history (0 = none).

  Column k - 1 holds the item k + 1 steps ahead of position t: targets[b, t + k] when position
  t + k is in the same segment (resets start a new one). Returns [B * L, count] int32.
  Example: targets [[4, 5, 6, 7]], resets [[True, False, True, False]], count 2 ->
  [[5, 0], [0, 0], [7, 0], [0, 0]].
  """
  b, l = targets_BxL.shape
  targets_BxL = targets_BxL.astype(jnp.int32)
  segment_BxL = _segments(resets_BxL, b, l)
  columns = []
  for k in range(1, count + 1):
    ahead_BxL = jnp.pad(targets_BxL[:, k:], ((0, 0), (0, k)))
    same_BxL = jnp.pad(segment_BxL[:, k:], ((0, 0), (0, k)), constant_values=-1) == segment_BxL
    columns.append(jnp.where(same_BxL & (targets_BxL > 0), ahead_BxL, 0))
  return jnp.stack(columns, axis=-1).reshape(b * l, count)


def teacher_scale(step: jax.Array | int, until_step: jax.Array | int) -> jax.Array:
  """The teacher's share of its weight at `step`: 1 - step / until_step, floored at 0; 1 for
  until_step 0 (a constant weight). Example: teacher_scale(30, 120) -> 0.75."""
  until = jnp.asarray(until_step, jnp.float32)
  return jnp.where(until > 0, jnp.maximum(1.0 - jnp.asarray(step, jnp.float32)
                                          / jnp.maximum(until, 1.0), 0.0), 1.0)


def teacher_targets(inputs_BxL: jax.Array, ids_VxK: jax.Array, probs_VxK: jax.Array,
                    weight: float | jax.Array) -> tuple[jax.Array, jax.Array]:
  """The co-occurrence teacher's further targets of every position: (ids_NxK, weights_NxK) =
  the partners of the item the position has just read and weight x their probabilities (0 at
  padding positions: their input is item 0, which has no partners).

  Example: inputs [[2, 0]], partners of 2: ids [1, 3], probs [0.75, 0.25], weight 0.5 ->
  ids [[1, 3], [0, 0]], weights [[0.375, 0.125], [0, 0]].
  """
  inputs_N = inputs_BxL.reshape(-1)
  ids_NxK = jnp.take(ids_VxK, inputs_N, axis=0)
  weights_NxK = weight * jnp.take(probs_VxK, inputs_N, axis=0).astype(jnp.float32)
  return ids_NxK, jnp.where(ids_NxK > 0, weights_NxK, 0.0)


def _further_weights(further_NxK, further_weight, weights_N, n, label_smoothing):
  """(ids, f32 weights) of the further targets: `further_weight` (a number, or an array of one
  weight per target, N x K) x the position's weight where an id is > 0; (None, None) without
  further targets."""
  if further_NxK is None:
    return None, None
  if further_NxK.ndim != 2 or further_NxK.shape[0] != n:
    raise ValueError(f"further_NxK has shape {further_NxK.shape}: it needs one row per position "
                     f"({n})")
  if label_smoothing:
    raise ValueError("label smoothing does not combine with further targets (further_NxK)")
  further_NxK = further_NxK.astype(jnp.int32)
  if jnp.ndim(further_weight) and jnp.shape(further_weight) != further_NxK.shape:
    raise ValueError(f"further_weight has shape {jnp.shape(further_weight)}: it needs one weight "
                     f"per further target ({further_NxK.shape}) or one number")
  weights_NxK = jnp.where(further_NxK > 0, further_weight * weights_N[:, None], 0.0)
  return further_NxK, weights_NxK


def _further_logit_sum(user_NxE, table_VxE, bias_V, further_NxK, weights_NxK):
  """sum over positions and further targets of weight x the target's logit (a gather, no V)."""
  rows_NxKxE = jnp.take(table_VxE, further_NxK, axis=0).astype(jnp.float32)
  logits_NxK = jnp.einsum("ne,nke->nk", user_NxE.astype(jnp.float32), rows_NxKxE)
  if bias_V is not None:
    logits_NxK = logits_NxK + jnp.take(bias_V, further_NxK).astype(jnp.float32)
  return jnp.where(weights_NxK > 0, weights_NxK * logits_NxK, 0.0).sum()


def _with_further(loss_and_aux, lse_N, user_NxE, table_VxE, bias_V, further_NxK, weights_NxK):
  """Adds the further targets' cross-entropy terms (each against the position's log-sum-exp) to
  a (mean, aux) of `_reduce`, keeping the mean over the next-item weights."""
  if further_NxK is None:
    return loss_and_aux
  _, aux = loss_and_aux
  row_N = weights_NxK.sum(axis=1)
  extra = (row_N * jnp.where(row_N > 0, lse_N, 0.0)).sum() - _further_logit_sum(
      user_NxE, table_VxE, bias_V, further_NxK, weights_NxK)
  loss_sum, nll_sum = aux["loss_sum"] + extra, aux["nll_sum"] + extra
  return loss_sum / jnp.maximum(aux["weight_sum"], 1e-12), {
      "loss_sum": loss_sum, "nll_sum": nll_sum, "weight_sum": aux["weight_sum"]}


def softmax_cross_entropy(user_NxE: jax.Array, item_table_VxE: jax.Array,
                          item_bias_V: jax.Array | None, targets_N: jax.Array,
                          weights_N: jax.Array, *, label_smoothing: float = 0.0,
                          exclude_NxS: jax.Array | None = None,
                          further_NxK: jax.Array | None = None,
                          further_weight: float | jax.Array = 0.0) -> tuple[jax.Array, dict]:
  """Full-catalog softmax cross-entropy, materialising the N x V logits.

  Args:
    user_NxE: user states (any leading shape, flattened).
    item_table_VxE: output item table; row 0 is padding and never a class.
    item_bias_V: per-item bias or None.
    targets_N: next-item ids; 0 means no target (weight forced to 0).
    weights_N: per-position weights (e.g. the target mask).
    label_smoothing: eps of the uniform mass spread over the real items 1..V-1.
    exclude_NxS: item ids (0 = none) left out of each position's softmax, e.g. the items it
      has already seen (`seen_exclusions`); never its own target. None excludes nothing.
    further_NxK, further_weight: more targets of each position (item ids, 0 = none; e.g. the
      items after its next one, `further_targets`), each a cross-entropy term against the same
      softmax weighted `further_weight` (a number, or N x K: one per target, e.g. the
      co-occurrence teacher's probabilities) x the position's weight. The mean stays over the
      next-item weights. Not with exclude_NxS or label smoothing.

  Returns:
    (weighted mean loss, aux dict with loss_sum, nll_sum, weight_sum; with further targets,
    loss_sum and nll_sum include their terms).
  """
  user_NxE, targets_N, weights_N = flatten_positions(user_NxE, targets_N, weights_N)
  _check_exclusions(exclude_NxS, user_NxE.shape[0], label_smoothing)
  further_NxK, further_w_NxK = _further_weights(further_NxK, further_weight, weights_N,
                                                user_NxE.shape[0], label_smoothing)
  if further_NxK is not None and exclude_NxS is not None:
    raise ValueError("further targets (further_NxK) do not combine with excluded items yet")
  # fp32 for the softmax over V items.
  logits_NxV = user_NxE.astype(jnp.float32) @ item_table_VxE.astype(jnp.float32).T
  if item_bias_V is not None:
    logits_NxV = logits_NxV + item_bias_V.astype(jnp.float32)
  logits_NxV = _excluded(logits_NxV, exclude_NxS, 0)
  target_logit_N = jnp.take_along_axis(logits_NxV, targets_N[:, None], axis=1)[:, 0]
  lse_N = jax.nn.logsumexp(logits_NxV[:, 1:], axis=1)
  nll_N = lse_N - target_logit_N
  mean_logit_N = logits_NxV[:, 1:].mean(axis=1) if label_smoothing else None
  return _with_further(
      _reduce(_smoothed(nll_N, lse_N, mean_logit_N, label_smoothing), nll_N, weights_N), lse_N,
      user_NxE, item_table_VxE, item_bias_V, further_NxK, further_w_NxK)


def _chunk_rows(table_VxE, bias_V, index, chunk_size):
  """Rows, f32 bias and validity of item chunk `index`, and its first row.

  The last chunk is shifted back to end at V instead of padding the table (no V x E copy); its
  columns already covered by the previous chunk are invalid, as is the padding item 0.
  """
  num_items = table_VxE.shape[0]
  start = jnp.minimum(index * chunk_size, num_items - chunk_size)
  rows_CxE = jax.lax.dynamic_slice_in_dim(table_VxE, start, chunk_size, axis=0)
  bias_C = jax.lax.dynamic_slice_in_dim(bias_V, start, chunk_size).astype(jnp.float32)
  col_C = start + jnp.arange(chunk_size)
  valid_C = (col_C >= index * chunk_size) & (col_C >= 1)
  return rows_CxE, bias_C, valid_C, start


def _dot(a, b, contract_a, contract_b):
  """Contracts one axis of each operand with f32 accumulation, without transposing either."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _block_logits(user_RxE, rows_CxE, bias_C, valid_C, exclude_RxS=None, start=0):
  """f32 logits of a block of R positions against the C items from `start`; invalid columns
  -inf, each position's excluded items EXCLUDED_SCORE."""
  return _excluded(jnp.where(valid_C, _dot(user_RxE, rows_CxE, 1, 1) + bias_C, -jnp.inf),
                   exclude_RxS, start)


def _row_blocks(x, row_block, fill=0.0):
  """[N, ...] -> [Q, R, ...] with Q = ceil(N / R), padding the tail rows with `fill`.

  Example: _row_blocks(arange(5), 2) -> [[0, 1], [2, 3], [4, 0]].
  """
  pad = -x.shape[0] % row_block
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
  return x.reshape(-1, row_block, *x.shape[1:])


def _excluded(logits_RxC, exclude_RxS, first_col):
  """logits_RxC with each row's excluded items (ids, 0 = none) at EXCLUDED_SCORE.

  Column c of the block is item first_col + c; ids outside the block are left alone. A scatter of
  R x S entries, so a block of positions pays nothing like another R x C pass.
  Example: logits [[1, 2, 3]], exclude [[2, 0]], first_col 1 -> [[1, -1e9, 3]].
  """
  if exclude_RxS is None:
    return logits_RxC
  rows, cols = logits_RxC.shape
  col_RxS = exclude_RxS.astype(jnp.int32) - first_col
  inside_RxS = (exclude_RxS > 0) & (col_RxS >= 0) & (col_RxS < cols)
  col_RxS = jnp.where(inside_RxS, col_RxS, cols)  # out of range: dropped by the scatter
  row_RxS = jnp.broadcast_to(jnp.arange(rows)[:, None], col_RxS.shape)
  return logits_RxC.at[row_RxS, col_RxS].min(EXCLUDED_SCORE, mode="drop")


def _segments(resets_BxL, b, l):
  """Which packed history each position belongs to (resets start a new one): [B, L] int32."""
  if resets_BxL is None:
    return jnp.zeros((b, l), jnp.int32)
  return jnp.cumsum(resets_BxL.astype(jnp.int32), axis=1)


def position_weights(mask_BxL: jax.Array, resets_BxL: jax.Array | None, *,
                     user_weight_power: float = 0.0, recency_weight: float = 0.0) -> jax.Array:
  """f32 [B, L] loss weights of the real positions (0 elsewhere), by place in their history.

  A packed history (resets start one) of n real positions gets n^-user_weight_power per
  position, times 1 + recency_weight x t / (n - 1) at its t-th position (t from 0; 1 for n = 1).
  Both 0: the mask (every event alike). The losses divide by the sum of the weights, so only
  their ratios matter.

  Example: mask [[1, 1, 1, 1]], resets [[1, 0, 0, 1]], power 1, recency 0 ->
  [[1/3, 1/3, 1/3, 1]].
  """
  mask_BxL = mask_BxL.astype(bool)
  b, l = mask_BxL.shape
  weights_BxL = mask_BxL.astype(jnp.float32)
  if not user_weight_power and not recency_weight:
    return weights_BxL
  segment_BxL = _segments(resets_BxL, b, l)
  same_BxLxL = ((segment_BxL[:, :, None] == segment_BxL[:, None, :])
                & mask_BxL[:, None, :])  # [b, t, j]: j a real position of t's history
  n_BxL = same_BxLxL.sum(axis=2).astype(jnp.float32)
  t_BxL = (same_BxLxL & jnp.tril(jnp.ones((l, l), bool))).sum(axis=2).astype(jnp.float32) - 1.0
  if user_weight_power:
    weights_BxL = weights_BxL * jnp.maximum(n_BxL, 1.0) ** -user_weight_power
  if recency_weight:
    weights_BxL = weights_BxL * (1.0 + recency_weight * t_BxL / jnp.maximum(n_BxL - 1.0, 1.0))
  return jnp.where(mask_BxL, weights_BxL, 0.0)


def seen_exclusions(inputs_BxL: jax.Array, targets_BxL: jax.Array,
                    resets_BxL: jax.Array | None = None) -> jax.Array:
  """The items each position has already seen in its own history: `exclude_NxS` of the losses.

  Position t of row b excludes inputs[b, j] for every j <= t of the same packed segment (resets
  start a new one), except an item equal to the position's target: a repeat stays a class, as
  the evaluation protocol ranks it. Returns [B * L, L] int32 item ids, 0 = none.

  Example: inputs [[5, 7, 9]], targets [[7, 9, 5]], resets [[True, False, True]] ->
  [[5, 0, 0], [5, 7, 0], [0, 0, 9]].
  """
  b, l = inputs_BxL.shape
  inputs_BxL = inputs_BxL.astype(jnp.int32)
  segment_BxL = _segments(resets_BxL, b, l)
  earlier_LxL = jnp.tril(jnp.ones((l, l), bool))  # [t, j]: j <= t
  keep_BxLxL = (earlier_LxL & (segment_BxL[:, :, None] == segment_BxL[:, None, :])
                & (inputs_BxL[:, None, :] != targets_BxL.astype(jnp.int32)[:, :, None])
                & (inputs_BxL[:, None, :] > 0))
  return jnp.where(keep_BxLxL, inputs_BxL[:, None, :], 0).reshape(b * l, l)


# Items are visited in chunks of C and, inside a chunk, positions in blocks of R, so every
# temporary is R x C (2 MB at R=128, C=4096): it stays in cache instead of streaming an N x C
# block through memory several times (1.4x less CPU time per Beauty training step on a 2-core
# Xeon; benchmarks/results/cpu_train_throughput_*.md).
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked_logsumexp(user_NxE, table_VxE, bias_V, exclude_NxS, chunk_size, row_block,
                       compute_dtype):
  """log sum_{v >= 1, v not excluded} exp(user . table[v] + bias[v]) per position, one chunk of
  items at a time (exclude_NxS: None or item ids, 0 = none)."""
  return _chunked_logsumexp_fwd(user_NxE, table_VxE, bias_V, exclude_NxS, chunk_size, row_block,
                                compute_dtype)[0]


def _exclusion_blocks(exclude_NxS, row_block):
  """exclude_NxS in [Q, R, S] blocks (tail rows exclude nothing), or None."""
  return None if exclude_NxS is None else _row_blocks(exclude_NxS.astype(jnp.int32), row_block)


def _chunked_logsumexp_fwd(user_NxE, table_VxE, bias_V, exclude_NxS, chunk_size, row_block,
                           compute_dtype):
  num_chunks = -(-table_VxE.shape[0] // chunk_size)
  user_QxRxE = _row_blocks(user_NxE.astype(compute_dtype), row_block)
  exclude_QxRxS = _exclusion_blocks(exclude_NxS, row_block)

  def chunk_body(index, carry):
    rows_CxE, bias_C, valid_C, start = _chunk_rows(table_VxE, bias_V, index, chunk_size)
    rows_CxE = rows_CxE.astype(compute_dtype)

    def block_body(_, xs):
      user_RxE, exclude_RxS, max_R, sum_R = xs
      logits_RxC = _block_logits(user_RxE, rows_CxE, bias_C, valid_C, exclude_RxS, start)
      new_max_R = jnp.maximum(max_R, logits_RxC.max(axis=1))
      # A chunk may be all -inf (only item 0): keep exp() away from inf - inf.
      safe_max_R = jnp.where(jnp.isfinite(new_max_R), new_max_R, 0.0)
      sum_R = sum_R * jnp.exp(max_R - safe_max_R) + jnp.exp(
          logits_RxC - safe_max_R[:, None]).sum(axis=1)
      return None, (new_max_R, sum_R)

    return jax.lax.scan(block_body, None, (user_QxRxE, exclude_QxRxS, *carry))[1]

  shape = user_QxRxE.shape[:2]
  init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32))
  max_QxR, sum_QxR = jax.lax.fori_loop(0, num_chunks, chunk_body, init)
  lse_N = (max_QxR + jnp.log(sum_QxR)).reshape(-1)[:user_NxE.shape[0]]
  return lse_N, (user_NxE, table_VxE, bias_V, exclude_NxS, lse_N)


def _chunked_logsumexp_bwd(chunk_size, row_block, compute_dtype, residuals, g_N):
  user_NxE, table_VxE, bias_V, exclude_NxS, lse_N = residuals
  num_chunks = -(-table_VxE.shape[0] // chunk_size)
  embed = user_NxE.shape[1]
  user_QxRxE = _row_blocks(user_NxE.astype(compute_dtype), row_block)
  exclude_QxRxS = _exclusion_blocks(exclude_NxS, row_block)
  # Padding rows get lse = +inf and cotangent 0: exactly zero probabilities and gradients.
  lse_QxR = _row_blocks(lse_N, row_block, jnp.inf)
  g_QxR = _row_blocks(g_N.astype(jnp.float32), row_block)

  def chunk_body(index, carry):
    d_user_QxRxE, d_table_VxE, d_bias_V = carry
    rows_CxE, bias_C, valid_C, start = _chunk_rows(table_VxE, bias_V, index, chunk_size)
    rows_CxE = rows_CxE.astype(compute_dtype)

    def block_body(acc, xs):
      d_rows_CxE, d_bias_C = acc
      user_RxE, exclude_RxS, lse_R, g_R, d_user_RxE = xs
      # Recompute the block's logits rather than keep N x V probabilities from the forward pass.
      logits_RxC = _block_logits(user_RxE, rows_CxE, bias_C, valid_C, exclude_RxS, start)
      dlogits_RxC = jnp.exp(logits_RxC - lse_R[:, None]) * g_R[:, None]  # softmax * cotangent
      d_user_RxE = d_user_RxE + _dot(dlogits_RxC.astype(compute_dtype), rows_CxE, 1, 0)
      d_rows_CxE = d_rows_CxE + _dot(dlogits_RxC.astype(compute_dtype), user_RxE, 0, 0)
      return (d_rows_CxE, d_bias_C + dlogits_RxC.sum(axis=0)), d_user_RxE

    zeros = (jnp.zeros((chunk_size, embed), jnp.float32), jnp.zeros((chunk_size,), jnp.float32))
    (d_rows_CxE, d_bias_C), d_user_QxRxE = jax.lax.scan(
        block_body, zeros, (user_QxRxE, exclude_QxRxS, lse_QxR, g_QxR, d_user_QxRxE))
    # Masked (overlapping) columns have zero dlogits, so adding over the overlap is exact.
    d_table_VxE = jax.lax.dynamic_update_slice_in_dim(
        d_table_VxE, jax.lax.dynamic_slice_in_dim(d_table_VxE, start, chunk_size, axis=0)
        + d_rows_CxE, start, axis=0)
    d_bias_V = jax.lax.dynamic_update_slice_in_dim(
        d_bias_V, jax.lax.dynamic_slice_in_dim(d_bias_V, start, chunk_size) + d_bias_C, start,
        axis=0)
    return d_user_QxRxE, d_table_VxE, d_bias_V

  init = (jnp.zeros(user_QxRxE.shape, jnp.float32), jnp.zeros(table_VxE.shape, jnp.float32),
          jnp.zeros(bias_V.shape, jnp.float32))
  d_user, d_table, d_bias = jax.lax.fori_loop(0, num_chunks, chunk_body, init)
  d_user = d_user.reshape(-1, embed)[:user_NxE.shape[0]]
  return (d_user.astype(user_NxE.dtype), d_table.astype(table_VxE.dtype),
          d_bias.astype(bias_V.dtype), None)


_chunked_logsumexp.defvjp(_chunked_logsumexp_fwd, _chunked_logsumexp_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _weighted_logsumexp_sum(user_NxE, table_VxE, bias_V, weights_N, exclude_NxS, row_block,
                            compute_dtype, has_bias):
  """sum_n weights[n] * log sum_{v >= 1} exp(user[n] . table[v] + bias[v]), for small catalogs
  (v not among exclude_NxS[n], when given).

  Differentiated, it takes one pass: each block of R positions scores all V items while the
  R x V block is in cache and turns it into gradients at once (3 matmuls and 1 exp per logit,
  against 4 and 2 for `_chunked_logsumexp`, which must finish the log-sum-exp over every chunk
  before it can form a probability). That needs the cotangent of each position, known here
  because the output is the weighted sum (`weights` is the loss's per-position weight).
  """
  del has_bias
  lse_N = _chunked_logsumexp_fwd(user_NxE, table_VxE, bias_V, exclude_NxS, table_VxE.shape[0],
                                 row_block, compute_dtype)[0]
  return (weights_N.astype(jnp.float32) * lse_N).sum()


def _weighted_logsumexp_sum_fwd(user_NxE, table_VxE, bias_V, weights_N, exclude_NxS, row_block,
                                compute_dtype, has_bias):
  n, embed = user_NxE.shape
  user_QxRxE = _row_blocks(user_NxE.astype(compute_dtype), row_block)
  weights_QxR = _row_blocks(weights_N.astype(jnp.float32), row_block)
  exclude_QxRxS = _exclusion_blocks(exclude_NxS, row_block)
  # Score the real items 1..V-1 only: no mask pass over every R x V block (item 0 gets zero
  # gradient below), and no bias pass when the model has no bias.
  table_WxE = table_VxE[1:].astype(compute_dtype)
  bias_W = bias_V[1:].astype(jnp.float32)
  # Narrow operands: each matmul as [M, K] @ [K, N] (the table and the blocks' states transposed
  # once, outside the loop), the layout the CPU's bf16 kernels run fast (AMX: ~4x f32; with a
  # transposed operand they fall back to a slower path). f32 keeps the untransposed form.
  narrow = jnp.dtype(compute_dtype) != jnp.float32
  table_ExW = table_WxE.T if narrow else None
  user_ExR_blocks = jnp.swapaxes(user_QxRxE, 1, 2) if narrow else None

  def block_body(acc, xs):
    d_table, d_bias_W = acc
    user_RxE, user_ExR, weights_R, exclude_RxS = xs
    if narrow:
      logits_RxW = _dot(user_RxE, table_ExW, 1, 0)
    else:
      logits_RxW = _dot(user_RxE, table_WxE, 1, 1)
    if has_bias:
      logits_RxW = logits_RxW + bias_W
    logits_RxW = _excluded(logits_RxW, exclude_RxS, 1)  # column w is item w + 1
    max_R = logits_RxW.max(axis=1)
    exp_RxW = jnp.exp(logits_RxW - max_R[:, None])
    sum_R = exp_RxW.sum(axis=1)
    # d(sum_n w_n lse_n) / d logits[n, v] = w_n * softmax[n, v].
    dlogits_RxW = (exp_RxW * (weights_R / sum_R)[:, None]).astype(compute_dtype)
    d_user_RxE = _dot(dlogits_RxW, table_WxE, 1, 0)
    if narrow:  # the table's gradient transposed, E x W
      d_table = d_table + _dot(user_ExR, dlogits_RxW, 1, 0)
    else:
      d_table = d_table + _dot(dlogits_RxW, user_RxE, 0, 0)
    if has_bias:
      d_bias_W = d_bias_W + dlogits_RxW.astype(jnp.float32).sum(axis=0)
    return (d_table, d_bias_W), (max_R + jnp.log(sum_R), d_user_RxE)

  d_table_shape = table_ExW.shape if narrow else table_WxE.shape
  init = (jnp.zeros(d_table_shape, jnp.float32), jnp.zeros(bias_W.shape, jnp.float32))
  (d_table, d_bias_W), (lse_QxR, d_user_QxRxE) = jax.lax.scan(
      block_body, init, (user_QxRxE, user_ExR_blocks, weights_QxR, exclude_QxRxS))
  d_table_WxE = d_table.T if narrow else d_table
  lse_N = lse_QxR.reshape(-1)[:n]
  d_user = d_user_QxRxE.reshape(-1, embed)[:n]
  d_table = jnp.concatenate([jnp.zeros((1, embed), jnp.float32), d_table_WxE])
  d_bias = jnp.concatenate([jnp.zeros((1,), jnp.float32), d_bias_W])
  value = (weights_N.astype(jnp.float32) * lse_N).sum()
  # Gradients for a unit cotangent, in the inputs' dtypes; the backward pass only scales them.
  return value, (d_user.astype(user_NxE.dtype), d_table.astype(table_VxE.dtype),
                 d_bias.astype(bias_V.dtype), lse_N.astype(weights_N.dtype))


def _weighted_logsumexp_sum_bwd(row_block, compute_dtype, has_bias, residuals, g):
  del row_block, compute_dtype, has_bias
  return (*(g.astype(r.dtype) * r for r in residuals), None)  # None: the excluded ids


_weighted_logsumexp_sum.defvjp(_weighted_logsumexp_sum_fwd, _weighted_logsumexp_sum_bwd)

# One-pass blocks of R = 128 positions hold R x V f32 logits, at most 16 MB for V <= 32768; with
# fewer rows per block, adding each block's V x E table gradient would start to cost as much as
# the block's matmuls.
_ONE_PASS_ROWS = 128
_ONE_PASS_MAX_ITEMS = 32768  # faster than two passes up to here (docs/results.md, stop 39)


def _cpu_blocking() -> bool:
  """Whether to block positions for the cache: yes on CPU; elsewhere keep one N-wide block.

  A sequential loop over position blocks would also stop XLA's partitioner from splitting a
  data-parallel batch over devices, which matters on accelerators (tests use virtual CPU
  devices only for correctness).
  """
  return jax.default_backend() == "cpu"


def chunked_softmax_cross_entropy(user_NxE: jax.Array, item_table_VxE: jax.Array,
                                  item_bias_V: jax.Array | None, targets_N: jax.Array,
                                  weights_N: jax.Array, *, chunk_size: int = 8192,
                                  label_smoothing: float = 0.0, row_block: int | None = None,
                                  compute_dtype: str = "float32",
                                  one_pass: bool | None = None,
                                  exclude_NxS: jax.Array | None = None,
                                  further_NxK: jax.Array | None = None,
                                  further_weight: float | jax.Array = 0.0
                                  ) -> tuple[jax.Array, dict]:
  """`softmax_cross_entropy` without materialising N x V logits, in the forward or backward pass.

  An online log-sum-exp runs over chunks of `chunk_size` items; a custom VJP recomputes each
  chunk's logits to accumulate the user, table and bias gradients. Peak temporary memory is
  O(N * chunk_size + V * E) instead of O(N * V). Same value and gradients as the full loss up to
  f32 rounding. V need not be a multiple of `chunk_size`.

  Args:
    user_NxE, item_table_VxE, item_bias_V, targets_N, weights_N, label_smoothing, exclude_NxS,
    further_NxK, further_weight: as in `softmax_cross_entropy`.
    chunk_size: items per chunk (clipped to V).
    row_block: positions per block inside a chunk (clipped to N), so R x C is the working set;
      None: 128 on CPU, N (one block) on other backends.
    compute_dtype: operand dtype of the N x V matmuls, "float32" (exact up to f32 rounding) or
      "bfloat16" (bf16 operands, f32 accumulation and softmax: faster on CPUs with AMX/avx512_bf16
      and on accelerators, at bf16 rounding of the logits).
    one_pass: under differentiation, score all V items per block of positions and form the
      gradients in the same pass (`_weighted_logsumexp_sum`) instead of recomputing the chunks in
      the backward pass. None: on CPU when the catalog fits one chunk (V <= chunk_size) and
      V <= 32768. It sets its own block size (row_block is ignored).

  Returns:
    (weighted mean loss, aux dict with loss_sum, nll_sum, weight_sum).
  """
  if chunk_size < 1 or (row_block is not None and row_block < 1):
    raise ValueError(f"chunk_size and row_block must be >= 1, got {chunk_size}, {row_block}")
  if compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
  user_NxE, targets_N, weights_N = flatten_positions(user_NxE, targets_N, weights_N)
  num_items, n = item_table_VxE.shape[0], user_NxE.shape[0]
  _check_exclusions(exclude_NxS, n, label_smoothing)
  further_NxK, further_w_NxK = _further_weights(further_NxK, further_weight, weights_N, n,
                                                label_smoothing)
  if further_NxK is not None and exclude_NxS is not None:
    raise ValueError("further targets (further_NxK) do not combine with excluded items yet")
  dtype = jnp.dtype(compute_dtype)
  bias_V = (jnp.zeros((num_items,), jnp.float32) if item_bias_V is None else item_bias_V)
  target_logit_N = _target_logits(user_NxE, item_table_VxE, item_bias_V, targets_N)
  mean_logit_N = (_mean_item_logits(user_NxE, item_table_VxE, item_bias_V)
                  if label_smoothing else None)
  if one_pass is None:
    one_pass = _cpu_blocking() and num_items <= min(chunk_size, _ONE_PASS_MAX_ITEMS)
  if one_pass:
    rows = max(min(_ONE_PASS_ROWS, n), 1)
    # Further targets share the position's log-sum-exp: their weights join its weight.
    lse_weights_N = weights_N if further_NxK is None else weights_N + further_w_NxK.sum(axis=1)
    lse_sum = _weighted_logsumexp_sum(user_NxE, item_table_VxE, bias_V, lse_weights_N,
                                      exclude_NxS, rows, dtype, item_bias_V is not None)
    weighted = lambda x_N: jnp.where(weights_N > 0, weights_N * x_N, 0.0).sum()
    nll_sum = lse_sum - weighted(target_logit_N)
    if further_NxK is not None:
      nll_sum = nll_sum - _further_logit_sum(user_NxE, item_table_VxE, item_bias_V, further_NxK,
                                             further_w_NxK)
    loss_sum = nll_sum if not label_smoothing else (
        lse_sum - (1.0 - label_smoothing) * weighted(target_logit_N)
        - label_smoothing * weighted(mean_logit_N))
    weight_sum = weights_N.sum()
    return loss_sum / jnp.maximum(weight_sum, 1e-12), {
        "loss_sum": loss_sum, "nll_sum": nll_sum, "weight_sum": weight_sum}
  chunk_size = min(int(chunk_size), num_items)
  if row_block is None:
    row_block = 128 if _cpu_blocking() else n
  row_block = max(min(int(row_block), n), 1)
  lse_N = _chunked_logsumexp(user_NxE, item_table_VxE, bias_V, exclude_NxS, chunk_size,
                             row_block, dtype)
  nll_N = lse_N - target_logit_N
  return _with_further(
      _reduce(_smoothed(nll_N, lse_N, mean_logit_N, label_smoothing), nll_N, weights_N), lse_N,
      user_NxE, item_table_VxE, item_bias_V, further_NxK, further_w_NxK)


def popularity_log_q(counts_V: jax.Array, alpha: float) -> jax.Array:
  """Log sampling probabilities proportional to max(count, 1) ** alpha; item 0 gets -inf.

  Counts are floored at 1 so every real item can be drawn and its logQ correction is finite.
  Example: popularity_log_q([0, 1, 3], 1.0) == log([0, 0.25, 0.75]); alpha=0 is uniform.
  """
  counts_V = jnp.asarray(counts_V, jnp.float32)
  log_w_V = alpha * jnp.log(jnp.maximum(counts_V, 1.0))
  log_w_V = log_w_V.at[0].set(-jnp.inf)
  return log_w_V - jax.nn.logsumexp(log_w_V)


def sample_negatives(key: jax.Array, log_q_V: jax.Array, num_samples: int) -> jax.Array:
  """`num_samples` item ids drawn with replacement from exp(log_q_V), by inverse CDF.

  O(V + S log V), unlike `jax.random.categorical` which would draw S x V Gumbel noises.
  Items with probability 0 (item 0 under `popularity_log_q`) are never drawn.
  """
  cdf_V = jnp.cumsum(jnp.exp(log_q_V.astype(jnp.float32) - jax.nn.logsumexp(log_q_V)))
  u_S = jax.random.uniform(key, (num_samples,), jnp.float32) * cdf_V[-1]
  # side="right" skips zero-probability items, whose CDF value equals their predecessor's.
  ids_S = jnp.searchsorted(cdf_V, u_S, side="right")
  return jnp.minimum(ids_S, log_q_V.shape[0] - 1).astype(jnp.int32)


def sampled_softmax_cross_entropy(user_NxE: jax.Array, item_table_VxE: jax.Array,
                                  item_bias_V: jax.Array | None, targets_N: jax.Array,
                                  weights_N: jax.Array, negatives_S: jax.Array,
                                  log_q_V: jax.Array, *, in_batch_negatives: bool = False,
                                  remove_accidental_hits: bool = True,
                                  further_NxK: jax.Array | None = None,
                                  further_weight: float | jax.Array = 0.0) -> tuple[jax.Array, dict]:
  """Sampled softmax over the target and S shared negatives, with the logQ correction.

  Per position n with target t and candidates k drawn from q:
    loss_n = -s_t + log(exp(s_t) + sum_k exp(s_k - log(P * q_k)))
  where s = user . table + bias and P is the number of candidates. Only the candidates are
  corrected: sum_k exp(s_k) / (P * q_k) estimates sum_{j != t} exp(s_j) without bias once hits
  (k == t) are removed, so as P grows the loss and its gradients tend to the full softmax's. (TF's
  `sampled_softmax_loss` also subtracts log(P * q_t) from the target logit; its gradients agree in
  the limit but its value does not.)

  Args:
    user_NxE, item_table_VxE, item_bias_V, targets_N, weights_N: as in `softmax_cross_entropy`.
    negatives_S: item ids shared by all positions, drawn with replacement from exp(log_q_V) by
      the caller (`sample_negatives`).
    log_q_V: log sampling probabilities (`popularity_log_q`).
    in_batch_negatives: also use the targets of the other weighted positions as candidates. They
      join the pool as if drawn from q, which holds when q is the training-data popularity
      (alpha = 1); a position's own target is never its own negative.
    remove_accidental_hits: mask candidates equal to the position's target (to -inf).
    further_NxK, further_weight: more targets of each position, as in `softmax_cross_entropy`;
      each term is weight x (the position's estimated log-sum-exp - the target's logit).

  Returns:
    (weighted mean loss, aux dict with loss_sum, nll_sum, weight_sum).
  """
  user_NxE, targets_N, weights_N = flatten_positions(user_NxE, targets_N, weights_N)
  num_pos = targets_N.shape[0]
  negatives_S = negatives_S.reshape(-1).astype(jnp.int32)
  log_q_V = log_q_V.astype(jnp.float32)
  user_f32 = user_NxE.astype(jnp.float32)

  def logits_of(ids):
    s = _dot(user_f32, jnp.take(item_table_VxE, ids, axis=0).astype(jnp.float32), 1, 1)
    if item_bias_V is not None:
      s = s + jnp.take(item_bias_V, ids).astype(jnp.float32)
    return s

  target_logit_N = _target_logits(user_NxE, item_table_VxE, item_bias_V, targets_N)
  cand_ids = negatives_S
  # Padding is never a class, whatever the sampler drew.
  usable_NxP = jnp.broadcast_to(negatives_S > 0, (num_pos, negatives_S.shape[0]))
  pool_size_N = jnp.full((num_pos,), float(negatives_S.shape[0]), jnp.float32)
  if in_batch_negatives:
    cand_ids = jnp.concatenate([negatives_S, targets_N])
    valid_N = weights_N > 0
    in_batch_NxN = valid_N[None, :] & ~jnp.eye(num_pos, dtype=bool)
    usable_NxP = jnp.concatenate([usable_NxP, in_batch_NxN], axis=1)
    pool_size_N = pool_size_N + valid_N.sum() - valid_N
  logits_NxP = logits_of(cand_ids)
  log_pool_N = jnp.log(jnp.maximum(pool_size_N, 1.0))
  logits_NxP = logits_NxP - jnp.take(log_q_V, cand_ids)[None, :] - log_pool_N[:, None]
  if remove_accidental_hits:
    usable_NxP = usable_NxP & (cand_ids[None, :] != targets_N[:, None])
  logits_NxP = jnp.where(usable_NxP, logits_NxP, -jnp.inf)
  # log(exp(s_t) + sum_k exp(s_k)) - s_t without an N x (1 + P) concatenated copy; the target's
  # logit is finite, so the max is too and no row takes exp(inf - inf).
  max_N = jax.lax.stop_gradient(jnp.maximum(target_logit_N, logits_NxP.max(axis=1)))
  sum_N = jnp.exp(target_logit_N - max_N) + jnp.exp(logits_NxP - max_N[:, None]).sum(axis=1)
  lse_N = max_N + jnp.log(sum_N)
  nll_N = lse_N - target_logit_N
  # Further targets (the co-occurrence teacher's): each against the same estimated log-sum-exp.
  further_NxK, further_w_NxK = _further_weights(further_NxK, further_weight, weights_N, num_pos,
                                                0.0)
  return _with_further(_reduce(nll_N, nll_N, weights_N), lse_N, user_NxE, item_table_VxE,
                       item_bias_V, further_NxK, further_w_NxK)



def _sampled_pairs(user_NxE, item_table_VxE, item_bias_V, targets_N, negatives_S):
  """(target logit N, negative logits NxS, usable NxS): negatives equal to the target or 0 unusable."""
  target_logit_N = _target_logits(user_NxE, item_table_VxE, item_bias_V, targets_N)
  neg_SxE = jnp.take(item_table_VxE, negatives_S, axis=0).astype(jnp.float32)
  neg_NxS = _dot(user_NxE.astype(jnp.float32), neg_SxE, 1, 1)
  if item_bias_V is not None:
    neg_NxS = neg_NxS + jnp.take(item_bias_V, negatives_S).astype(jnp.float32)
  usable_NxS = (negatives_S[None, :] > 0) & (negatives_S[None, :] != targets_N[:, None])
  return target_logit_N, neg_NxS, usable_NxS


def _masked_mean(x_NxS, usable_NxS):
  """Mean of x over the usable entries of each row (0 for a row with none)."""
  count_N = usable_NxS.sum(axis=1).astype(jnp.float32)
  return jnp.where(usable_NxS, x_NxS, 0.0).sum(axis=1) / jnp.maximum(count_N, 1.0)


def bpr_loss(user_NxE: jax.Array, item_table_VxE: jax.Array, item_bias_V: jax.Array | None,
             targets_N: jax.Array, weights_N: jax.Array,
             negatives_S: jax.Array) -> tuple[jax.Array, dict]:
  """BPR (Rendle et al. 2009): mean over the shared negatives k of -log sigmoid(s_t - s_k).

  Negatives equal to the position's target, or the padding item 0, are left out of the mean.
  Example: s_t = 2, negatives' s = (0, 1) -> (softplus(-2) + softplus(-1)) / 2.
  """
  user_NxE, targets_N, weights_N = flatten_positions(user_NxE, targets_N, weights_N)
  negatives_S = negatives_S.reshape(-1).astype(jnp.int32)
  s_t, s_NxS, usable_NxS = _sampled_pairs(user_NxE, item_table_VxE, item_bias_V, targets_N,
                                          negatives_S)
  loss_N = _masked_mean(jax.nn.softplus(s_NxS - s_t[:, None]), usable_NxS)
  return _reduce(loss_N, loss_N, weights_N)


def bce_loss(user_NxE: jax.Array, item_table_VxE: jax.Array, item_bias_V: jax.Array | None,
             targets_N: jax.Array, weights_N: jax.Array,
             negatives_S: jax.Array) -> tuple[jax.Array, dict]:
  """Binary cross-entropy, target positive vs sampled negatives (SASRec's loss, S negatives).

  loss_n = -log sigmoid(s_t) - mean_k log(1 - sigmoid(s_k)) = softplus(-s_t) + mean_k softplus(s_k)
  over the usable negatives (not the target, not item 0); the mean keeps the scale independent
  of S. Example: s_t = 2, negatives' s = (0, 1) -> softplus(-2) + (softplus(0) + softplus(1)) / 2.
  """
  user_NxE, targets_N, weights_N = flatten_positions(user_NxE, targets_N, weights_N)
  negatives_S = negatives_S.reshape(-1).astype(jnp.int32)
  s_t, s_NxS, usable_NxS = _sampled_pairs(user_NxE, item_table_VxE, item_bias_V, targets_N,
                                          negatives_S)
  loss_N = jax.nn.softplus(-s_t) + _masked_mean(jax.nn.softplus(s_NxS), usable_NxS)
  return _reduce(loss_N, loss_N, weights_N)


# ---------------------------------------------------------------------------------------------
# The loss config and the registry the train step uses.
# ---------------------------------------------------------------------------------------------

_LOSSES: dict[str, Callable[..., jax.Array]] = {}
_NEEDS_LOG_Q: set[str] = set()
_ROWS: dict[str, Callable[..., jax.Array]] = {}
_NEEDS_TRANSITIONS: set[str] = set()
_VOCAB_PARALLEL: dict[str, Callable[..., jax.Array]] = {}


def register_loss(name: str, *, needs_log_q: bool = False,
                  rows: Callable[..., jax.Array] | None = None, needs_transitions: bool = False,
                  replace: bool = False):
  """Decorator registering a loss under `loss.kind = name`.

  needs_log_q: the loss samples negatives from `log_q_V` (the trainer then builds it from item
  popularity ** loss.alpha; see `needs_log_q`).
  rows: for a loss that reads the item table at the targets and a few more rows only,
  `rows(cfg, key, log_q_V) -> ids` gives those rows (drawn exactly as the loss draws them, from
  the same key); the step then computes item content at those rows only (`rows_read`). None:
  the loss reads the whole table.
  needs_transitions: the loss reads the logged transitions (`transitions=`, `rl_cfg=`; the
  model needs `model.q_head`) and returns `(loss, scalars)`; see `needs_transitions`.
  """

  def decorate(fn):
    if name in _LOSSES and _LOSSES[name] is not fn and not replace:
      raise ValueError(f"loss {name!r} is already registered; pass replace=True to override it")
    _LOSSES[name] = fn
    for flag, names in ((needs_log_q, _NEEDS_LOG_Q), (needs_transitions, _NEEDS_TRANSITIONS)):
      if flag:
        names.add(name)
      else:
        names.discard(name)
    if rows is not None:
      _ROWS[name] = rows
    else:
      _ROWS.pop(name, None)
    return fn

  return decorate


def rows_read(kind: str) -> Callable[..., jax.Array] | None:
  """The `rows` function loss `kind` registered (None: it reads the whole item table)."""
  return _ROWS.get(kind)


def _sampled_rows(cfg: LossConfig, key: jax.Array, log_q_V: jax.Array) -> jax.Array:
  """The shared negatives the sampled losses draw from `key` (the rows they read besides the
  targets)."""
  return sample_negatives(key, log_q_V, cfg.num_negatives)


def get_loss(name: str, *, vocab_parallel: bool = False) -> Callable[..., jax.Array]:
  """The registered loss `name`; a ValueError naming the registered ones otherwise.

  vocab_parallel: the item tables are split over the mesh's `model` axis (`model.vocab_shards`):
  the loss's split implementation (`register_vocab_parallel`) when it has one, called with
  `mesh=` and `num_items=` besides the usual arguments; a loss without one (the sampled losses:
  they gather a few rows) reads the split table through XLA's partitioner as it is.
  """
  if name not in _LOSSES:
    raise ValueError(f"unknown loss.kind {name!r}; registered: {loss_names()}")
  if vocab_parallel and name in _VOCAB_PARALLEL:
    return _VOCAB_PARALLEL[name]
  return _LOSSES[name]


def register_vocab_parallel(name: str, *, replace: bool = False):
  """Decorator registering the split-table implementation of loss `name`.

  It takes the loss's arguments plus `mesh` (with a `model` axis) and `num_items` (V: the table
  carries zero padding rows past it, `ModelConfig.table_rows`), and returns the same value.
  """

  def decorate(fn):
    if name in _VOCAB_PARALLEL and _VOCAB_PARALLEL[name] is not fn and not replace:
      raise ValueError(f"loss {name!r} already has a vocabulary-parallel implementation")
    _VOCAB_PARALLEL[name] = fn
    return fn

  return decorate


def has_vocab_parallel(name: str) -> bool:
  """Whether loss `name` has a split-table implementation (`register_vocab_parallel`)."""
  return name in _VOCAB_PARALLEL


def loss_names() -> tuple[str, ...]:
  return tuple(sorted(_LOSSES))


def needs_log_q(kind) -> bool:
  """Whether loss `kind` (a name, or a LossConfig) samples negatives from `log_q_V`."""
  return getattr(kind, "kind", kind) in _NEEDS_LOG_Q


def needs_transitions(kind) -> bool:
  """Whether loss `kind` (a name, or a LossConfig) reads the logged transitions (offline RL)."""
  return getattr(kind, "kind", kind) in _NEEDS_TRANSITIONS


_EXCLUDE_SEEN_KINDS = ("full", "chunked")
_TEACHER_KINDS = ("full", "chunked", "sampled")  # the co-occurrence teacher's softmax losses


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The `loss` group of configs/base.py (the only source of defaults; see each key there)."""

  kind: str = config_keys.key(choices=lambda: loss_names())  # a registered loss
  chunk_size: int
  num_negatives: int
  alpha: float
  in_batch_negatives: bool
  label_smoothing: float
  # Each position's softmax leaves out the items of its own history before it (not its target):
  # the items the evaluation removes from the ranking (`seen_exclusions`; full and chunked only).
  exclude_seen: bool
  # Each position also predicts the `further_targets` items after its next one in its own
  # history (`further_targets`), each term weighted `further_weight`, against the same softmax
  # (full and chunked only; the log-sum-exp is shared, so they cost a gather, not a softmax).
  further_targets: int
  further_weight: float
  # The co-occurrence teacher: each position also predicts the `teacher_items` most frequent
  # training co-occurrence partners (within `teacher_window` positions) of the item it has just
  # read, each weighted teacher_weight x the partner's share of their counts, against the same
  # softmax (full, chunked and sampled; 0 = off). A training signal only: scoring is unchanged.
  teacher_weight: float
  teacher_items: int
  teacher_window: int
  # "both": partners before or after the item in the training sequences; "next": only the items
  # that came after it (the transitions a next-item model learns).
  teacher_direction: str = config_keys.key(choices=("both", "next"))
  # > 0: the teacher's weight falls linearly from teacher_weight at the first step to 0 at this
  # epoch (a head start, then the data alone); 0: the same weight for the whole run.
  teacher_epochs: float
  # Only items with a training event are candidates of the training softmax: items that are new
  # at test time (cold) are neither negatives nor pushed down. The trainer passes the mask as
  # aux["item_mask_V"] (and restricts the sampling distribution to those items).
  train_items_only: bool
  compute_dtype: str = config_keys.key(choices=("float32", "bfloat16"))
  one_pass: bool | None
  row_block: int | None
  # Multi-domain catalogues: each position's softmax runs over the items of its target's domain
  # only (`domain_softmax_loss`); the loss must be an exact softmax (full, chunked, or a
  # registered loss that samples nothing).
  domain_softmax: bool
  # The supervised contrastive term between positions with the same target item
  # (`contrastive.same_target_nce`), added to the loss with this weight (0 = off).
  target_contrastive_weight: float
  target_contrastive_temperature: float
  # The intent prototype term (`contrastive.intent_nce`; prototypes from `train/intents.py`),
  # added with this weight (0 = off) from epoch `intent_start_epoch` on.
  intent_weight: float
  intent_clusters: int
  intent_temperature: float
  intent_start_epoch: int
  # Per-position weights within each user's history (`position_weights`): each of a history's n
  # positions weighs n^-user_weight_power (0: every event alike, 1: every user alike in all),
  # and position t of it 1 + recency_weight x t / (n - 1) (later events weigh more).
  user_weight_power: float
  recency_weight: float

  def __post_init__(self):
    problems = []

    def bad(key, why):
      problems.append(f"loss.{key}={getattr(self, key)!r} {why}")

    for key in ("chunk_size", "num_negatives"):
      if getattr(self, key) < 1:
        bad(key, "must be >= 1")
    if self.alpha < 0:
      bad("alpha", "must be >= 0")
    if not 0.0 <= self.label_smoothing < 1.0:
      bad("label_smoothing", "must be in [0, 1)")
    elif self.label_smoothing and self.train_items_only:
      bad("label_smoothing", "does not combine with loss.train_items_only (the smoothing term "
          "averages over every item)")
    if self.exclude_seen and self.kind not in _EXCLUDE_SEEN_KINDS:
      bad("exclude_seen", f"needs loss.kind full or chunked (an exact softmax over the catalog), "
          f"not {self.kind!r}")
    elif self.exclude_seen and self.label_smoothing:
      bad("exclude_seen", "does not combine with loss.label_smoothing (the smoothing term "
          "averages over every item)")
    elif self.exclude_seen and self.domain_softmax:
      bad("exclude_seen", "does not combine with loss.domain_softmax yet")
    if self.further_targets < 0:
      bad("further_targets", "must be >= 0")
    elif self.further_targets and self.kind not in _EXCLUDE_SEEN_KINDS:
      bad("further_targets", f"needs loss.kind full or chunked (an exact softmax over the "
          f"catalog), not {self.kind!r}")
    elif self.further_targets and (self.label_smoothing or self.exclude_seen):
      bad("further_targets", "does not combine with loss.label_smoothing or loss.exclude_seen")
    if not 0.0 <= self.further_weight <= 1.0:
      bad("further_weight", "must be in [0, 1]")
    if self.teacher_weight < 0:
      bad("teacher_weight", "must be >= 0")
    elif self.teacher_weight and self.kind not in _TEACHER_KINDS:
      bad("teacher_weight", f"needs loss.kind full, chunked or sampled (a softmax), not "
          f"{self.kind!r}")
    elif self.teacher_weight and (self.label_smoothing or self.exclude_seen
                                  or self.further_targets or self.domain_softmax):
      bad("teacher_weight", "does not combine with loss.label_smoothing, loss.exclude_seen, "
          "loss.further_targets or loss.domain_softmax (a partner from another domain is no "
          "class of the position's softmax)")
    for key in ("teacher_items", "teacher_window"):
      if getattr(self, key) < 1:
        bad(key, "must be >= 1")
    if self.teacher_epochs < 0:
      bad("teacher_epochs", "must be >= 0")
    if self.row_block is not None and self.row_block < 1:
      bad("row_block", "must be None or >= 1")
    if not 0.0 <= self.user_weight_power <= 1.0:
      bad("user_weight_power", "must be in [0, 1]")
    for key in ("target_contrastive_weight", "intent_weight", "intent_start_epoch",
                "recency_weight"):
      if getattr(self, key) < 0:
        bad(key, "must be >= 0")
    for key in ("target_contrastive_temperature", "intent_temperature"):
      if getattr(self, key) <= 0:
        bad(key, "must be > 0")
    if self.intent_clusters < 2:
      bad("intent_clusters", "must be >= 2")
    if self.one_pass not in (None, True, False):
      bad("one_pass", "must be None, True or False")
    if self.domain_softmax and self.kind in _NEEDS_LOG_Q:
      bad("domain_softmax", f"needs an exact softmax loss (loss.kind full or chunked), not "
          f"{self.kind!r}, which samples its negatives")
    if problems:
      raise ValueError("invalid loss config: " + "; ".join(problems))

  @classmethod
  def from_mapping(cls, d: Mapping[str, Any]) -> LossConfig:
    """LossConfig from the `loss` config group (`config_keys.build_group`: every bad key named)."""
    return config_keys.build_group(cls, "loss", d)


def candidate_bias(bias_V: jax.Array | None, item_mask_V: jax.Array | None) -> jax.Array | None:
  """The item bias with `EXCLUDED_SCORE` where item_mask_V is False (bias unchanged if no mask).

  Example: candidate_bias(None, [False, True, False]) -> [-1e9, 0, -1e9].
  """
  if item_mask_V is None:
    return bias_V
  base_V = jnp.zeros(item_mask_V.shape, jnp.float32) if bias_V is None else bias_V
  return jnp.where(item_mask_V, base_V, EXCLUDED_SCORE)


# further_weight_NxK: one weight per further target (the co-occurrence teacher's), instead of
# cfg.further_weight for all.
@register_loss("full")
def _full(user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg: LossConfig, key, log_q_V,
          item_mask_V, exclude_NxS=None, further_NxK=None, further_weight_NxK=None):
  del key, log_q_V
  return softmax_cross_entropy(
      user_NxE, table_VxE, candidate_bias(bias_V, item_mask_V), targets_N, weights_N,
      label_smoothing=cfg.label_smoothing, exclude_NxS=exclude_NxS, further_NxK=further_NxK,
      further_weight=cfg.further_weight if further_weight_NxK is None else further_weight_NxK)[0]


@register_loss("chunked")
def _chunked(user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg: LossConfig, key,
             log_q_V, item_mask_V, exclude_NxS=None, further_NxK=None, further_weight_NxK=None):
  del key, log_q_V
  return chunked_softmax_cross_entropy(
      user_NxE, table_VxE, candidate_bias(bias_V, item_mask_V), targets_N, weights_N,
      chunk_size=cfg.chunk_size, label_smoothing=cfg.label_smoothing,
      compute_dtype=cfg.compute_dtype, row_block=cfg.row_block, one_pass=cfg.one_pass,
      exclude_NxS=exclude_NxS, further_NxK=further_NxK,
      further_weight=cfg.further_weight if further_weight_NxK is None else further_weight_NxK)[0]


# The sampled losses leave item_mask_V to the sampling distribution: the trainer gives the items
# outside it probability 0 in log_q_V.
@register_loss("sampled", needs_log_q=True, rows=_sampled_rows)
def _sampled(user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg: LossConfig, key, log_q_V,
             item_mask_V, further_NxK=None, further_weight_NxK=None):
  del item_mask_V
  negatives_S = sample_negatives(key, log_q_V, cfg.num_negatives)
  return sampled_softmax_cross_entropy(
      user_NxE, table_VxE, bias_V, targets_N, weights_N, negatives_S, log_q_V,
      in_batch_negatives=cfg.in_batch_negatives, further_NxK=further_NxK,
      further_weight=0.0 if further_weight_NxK is None else further_weight_NxK)[0]


@register_loss("bpr", needs_log_q=True, rows=_sampled_rows)
def _bpr(user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg: LossConfig, key, log_q_V,
         item_mask_V):
  del item_mask_V
  negatives_S = sample_negatives(key, log_q_V, cfg.num_negatives)
  return bpr_loss(user_NxE, table_VxE, bias_V, targets_N, weights_N, negatives_S)[0]


@register_loss("bce", needs_log_q=True, rows=_sampled_rows)
def _bce(user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg: LossConfig, key, log_q_V,
         item_mask_V):
  del item_mask_V
  negatives_S = sample_negatives(key, log_q_V, cfg.num_negatives)
  return bce_loss(user_NxE, table_VxE, bias_V, targets_N, weights_N, negatives_S)[0]


def domain_softmax_loss(loss_fn: Callable[..., jax.Array], user_NxE: jax.Array,
                        table_VxE: jax.Array, bias_V: jax.Array | None, targets_N: jax.Array,
                        weights_N: jax.Array, *, domain_starts: tuple[int, ...],
                        item_mask_V: jax.Array | None = None, **kwargs) -> jax.Array:
  """A registered loss with each position's softmax over its target's domain only.

  Item ids are contiguous per domain (`domain_starts`: the first id of each), so domain d is the
  table slice `[start_d - 1, start_{d+1})`, whose row 0 (the item before the domain, or the
  padding item) is never a class: `loss_fn` runs once per domain on its slice, with the targets
  shifted into it and the other domains' positions weighted 0, and the per-domain means are
  combined by their weights. The cost is one softmax over the whole catalogue.

  Example: domain_starts (1, 4), V 7: targets [2, 5] -> slice [0, 4) with targets [2, 0] and
  slice [3, 7) with targets [0, 2]; the loss is the weighted mean over both positions.
  """
  user_NxE, targets_N, weights_N = flatten_positions(user_NxE, targets_N, weights_N)
  bounds = (*domain_starts, table_VxE.shape[0])
  total, weight_total = 0.0, 0.0
  for start, end in zip(bounds[:-1], bounds[1:]):
    if end <= start:
      continue  # a domain without items
    base = start - 1
    inside_N = (targets_N >= start) & (targets_N < end)
    weights_d = jnp.where(inside_N, weights_N, 0.0)
    mean_d = loss_fn(user_NxE, table_VxE[base:end],
                     None if bias_V is None else bias_V[base:end],
                     jnp.where(inside_N, targets_N - base, 0), weights_d,
                     item_mask_V=None if item_mask_V is None else item_mask_V[base:end],
                     **kwargs)
    weight_d = weights_d.sum()
    total = total + mean_d * weight_d
    weight_total = weight_total + weight_d
  return total / jnp.maximum(weight_total, 1e-12)