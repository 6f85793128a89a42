"""Next-item losses: pure functions over (user states, item table, item bias, targets, weights).

Shape legend: N flattened positions (any leading shape is flattened), E embedding size, V catalog
size including the padding item 0, S shared sampled negatives, C items per chunk.

Every loss returns `(loss, aux)`: `loss` is the weighted mean over positions with weight > 0
(positions whose target is the padding item 0 get weight 0 whatever `weights` says), and `aux`
holds `loss_sum`, `nll_sum` (the unsmoothed negative log-likelihood) and `weight_sum`, so callers
can aggregate exactly across batches and devices. Logits are f32. Item 0 is never a class.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _flatten(user_NxE, targets_N, weights_N):
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


def softmax_cross_entropy(user_NxE: jax.Array, item_table_VxE: jax.Array,
                          item_bias_V: jax.Array | None, targets_N: jax.Array,
                          weights_N: jax.Array, *,
                          label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
  """Full-catalog softmax cross-entropy, materialising the N x V logits.

  Args:
    user_NxE: user states (any leading shape, flattened).
    item_table_VxE: output item table; row 0 is padding and never a class.
    item_bias_V: per-item bias or None.
    targets_N: next-item ids; 0 means no target (weight forced to 0).
    weights_N: per-position weights (e.g. the target mask).
    label_smoothing: eps of the uniform mass spread over the real items 1..V-1.

  Returns:
    (weighted mean loss, aux dict with loss_sum, nll_sum, weight_sum).
  """
  user_NxE, targets_N, weights_N = _flatten(user_NxE, targets_N, weights_N)
  # fp32 for the softmax over V items.
  logits_NxV = user_NxE.astype(jnp.float32) @ item_table_VxE.astype(jnp.float32).T
  if item_bias_V is not None:
    logits_NxV = logits_NxV + item_bias_V.astype(jnp.float32)
  target_logit_N = jnp.take_along_axis(logits_NxV, targets_N[:, None], axis=1)[:, 0]
  lse_N = jax.nn.logsumexp(logits_NxV[:, 1:], axis=1)
  nll_N = lse_N - target_logit_N
  mean_logit_N = logits_NxV[:, 1:].mean(axis=1) if label_smoothing else None
  return _reduce(_smoothed(nll_N, lse_N, mean_logit_N, label_smoothing), nll_N, weights_N)


def _chunk(user_NxE, table_VxE, bias_V, index, chunk_size):
  """Masked f32 logits of chunk `index`, its table rows and its first row.

  The last chunk is shifted back to end at V instead of padding the table (no V x E copy); its
  columns already covered by the previous chunk are masked, as is the padding item 0.
  """
  num_items = table_VxE.shape[0]
  start = jnp.minimum(index * chunk_size, num_items - chunk_size)
  rows_CxE = jax.lax.dynamic_slice_in_dim(table_VxE, start, chunk_size, axis=0)
  logits_NxC = user_NxE.astype(jnp.float32) @ rows_CxE.astype(jnp.float32).T
  logits_NxC = logits_NxC + jax.lax.dynamic_slice_in_dim(bias_V, start, chunk_size).astype(
      jnp.float32)
  col_C = start + jnp.arange(chunk_size)
  valid_C = (col_C >= index * chunk_size) & (col_C >= 1)
  return jnp.where(valid_C, logits_NxC, -jnp.inf), rows_CxE, start


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunked_logsumexp(user_NxE, table_VxE, bias_V, chunk_size):
  """log sum_{v >= 1} exp(user . table[v] + bias[v]) per position, one chunk of items at a time."""
  return _chunked_logsumexp_fwd(user_NxE, table_VxE, bias_V, chunk_size)[0]


def _chunked_logsumexp_fwd(user_NxE, table_VxE, bias_V, chunk_size):
  num_chunks = -(-table_VxE.shape[0] // chunk_size)
  n = user_NxE.shape[0]

  def body(index, carry):
    max_N, sum_N = carry
    logits_NxC, _, _ = _chunk(user_NxE, table_VxE, bias_V, index, chunk_size)
    new_max_N = jnp.maximum(max_N, logits_NxC.max(axis=1))
    # A chunk may be all -inf (only item 0): keep exp() away from inf - inf.
    safe_max_N = jnp.where(jnp.isfinite(new_max_N), new_max_N, 0.0)
    sum_N = sum_N * jnp.exp(max_N - safe_max_N) + jnp.exp(
        logits_NxC - safe_max_N[:, None]).sum(axis=1)
    return new_max_N, sum_N

  init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32))
  max_N, sum_N = jax.lax.fori_loop(0, num_chunks, body, init)
  lse_N = max_N + jnp.log(sum_N)
  return lse_N, (user_NxE, table_VxE, bias_V, lse_N)


def _chunked_logsumexp_bwd(chunk_size, residuals, g_N):
  user_NxE, table_VxE, bias_V, lse_N = residuals
  num_chunks = -(-table_VxE.shape[0] // chunk_size)
  user_f32 = user_NxE.astype(jnp.float32)
  g_N = g_N.astype(jnp.float32)

  def body(index, carry):
    d_user_NxE, d_table_VxE, d_bias_V = carry
    # Recompute the chunk's logits rather than keep N x V probabilities from the forward pass.
    logits_NxC, rows_CxE, start = _chunk(user_NxE, table_VxE, bias_V, index, chunk_size)
    dlogits_NxC = jnp.exp(logits_NxC - lse_N[:, None]) * g_N[:, None]  # softmax * cotangent
    d_user_NxE = d_user_NxE + dlogits_NxC @ rows_CxE.astype(jnp.float32)
    # Masked (overlapping) columns have zero dlogits, so adding over the overlap is exact.
    d_rows_CxE = jax.lax.dynamic_slice_in_dim(d_table_VxE, start, chunk_size, axis=0)
    d_table_VxE = jax.lax.dynamic_update_slice_in_dim(
        d_table_VxE, d_rows_CxE + dlogits_NxC.T @ user_f32, start, axis=0)
    d_bias_C = jax.lax.dynamic_slice_in_dim(d_bias_V, start, chunk_size)
    d_bias_V = jax.lax.dynamic_update_slice_in_dim(
        d_bias_V, d_bias_C + dlogits_NxC.sum(axis=0), start, axis=0)
    return d_user_NxE, d_table_VxE, d_bias_V

  init = (jnp.zeros(user_NxE.shape, jnp.float32), jnp.zeros(table_VxE.shape, jnp.float32),
          jnp.zeros(bias_V.shape, jnp.float32))
  d_user, d_table, d_bias = jax.lax.fori_loop(0, num_chunks, body, init)
  return (d_user.astype(user_NxE.dtype), d_table.astype(table_VxE.dtype),
          d_bias.astype(bias_V.dtype))


_chunked_logsumexp.defvjp(_chunked_logsumexp_fwd, _chunked_logsumexp_bwd)


def chunked_softmax_cross_entropy(user_NxE: jax.Array, item_table_VxE: jax.Array,
                                  item_bias_V: jax.Array | None, targets_N: jax.Array,
                                  weights_N: jax.Array, *, chunk_size: int = 8192,
                                  label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
  """`softmax_cross_entropy` without materialising N x V logits, in the forward or backward pass.

  An online log-sum-exp runs over chunks of `chunk_size` items; a custom VJP recomputes each
  chunk's logits to accumulate the user, table and bias gradients. Peak temporary memory is
  O(N * chunk_size + V * E) instead of O(N * V). Same value and gradients as the full loss up to
  f32 rounding. V need not be a multiple of `chunk_size`.

  Args:
    user_NxE, item_table_VxE, item_bias_V, targets_N, weights_N, label_smoothing: as in
      `softmax_cross_entropy`.
    chunk_size: items per chunk (clipped to V).

  Returns:
    (weighted mean loss, aux dict with loss_sum, nll_sum, weight_sum).
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  user_NxE, targets_N, weights_N = _flatten(user_NxE, targets_N, weights_N)
  num_items = item_table_VxE.shape[0]
  chunk_size = min(int(chunk_size), num_items)
  bias_V = (jnp.zeros((num_items,), jnp.float32) if item_bias_V is None else item_bias_V)
  lse_N = _chunked_logsumexp(user_NxE, item_table_VxE, bias_V, chunk_size)
  nll_N = lse_N - _target_logits(user_NxE, item_table_VxE, item_bias_V, targets_N)
  mean_logit_N = (_mean_item_logits(user_NxE, item_table_VxE, item_bias_V)
                  if label_smoothing else None)
  return _reduce(_smoothed(nll_N, lse_N, mean_logit_N, label_smoothing), nll_N, weights_N)


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
                                  remove_accidental_hits: bool = True) -> tuple[jax.Array, dict]:
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

  Returns:
    (weighted mean loss, aux dict with loss_sum, nll_sum, weight_sum).
  """
  user_NxE, targets_N, weights_N = _flatten(user_NxE, targets_N, weights_N)
  num_pos = targets_N.shape[0]
  negatives_S = negatives_S.reshape(-1).astype(jnp.int32)
  log_q_V = log_q_V.astype(jnp.float32)
  user_f32 = user_NxE.astype(jnp.float32)

  def logits_of(ids):
    s = user_f32 @ jnp.take(item_table_VxE, ids, axis=0).astype(jnp.float32).T
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
  all_logits = jnp.concatenate([target_logit_N[:, None], logits_NxP], axis=1)
  nll_N = jax.nn.logsumexp(all_logits, axis=1) - target_logit_N
  return _reduce(nll_N, nll_N, weights_N)

