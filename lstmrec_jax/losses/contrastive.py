"""The contrastive term between two augmented views of the same histories (InfoNCE / NT-Xent).

Shape legend: B rows, E embedding size.

Each row contributes one history (its first packed example); its two views' user states
z1_b, z2_b are a positive pair, and the other 2B - 2 states of the batch are the negatives
(SimCLR's NT-Xent, as in CL4SRec): for each of the 2B anchors,

  -log exp(cos(z, z+) / T) / sum_{z' != z} exp(cos(z, z') / T)

averaged over the anchors of valid rows (rows without a history are neither anchors nor
negatives).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def info_nce(z1_BxE: jax.Array, z2_BxE: jax.Array, valid_B: jax.Array,
             temperature: float) -> jax.Array:
  """NT-Xent over the batch (a scalar; 0 with fewer than 2 valid rows).

  Example: with 2 rows and z1 = z2 = [[1, 0], [0, 1]], T = 1, anchor z1_0 has the positive
  cos 1 and negatives cos 0, 0: loss = -log(e / (e + 2)) for every anchor.
  """
  z = jnp.concatenate([z1_BxE, z2_BxE], 0).astype(jnp.float32)
  # rsqrt of a floored square norm: a zero state (an empty row) has a finite gradient.
  z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-24))
  valid = jnp.concatenate([valid_B, valid_B], 0).astype(bool)
  b = z1_BxE.shape[0]
  logits = (z @ z.T) / temperature
  n = 2 * b
  eye = jnp.eye(n, dtype=bool)
  logits = jnp.where(eye | ~valid[None, :], -jnp.inf, logits)
  # An invalid anchor's row would be all -inf (NaN, and NaN gradients through the where below).
  logits = jnp.where(valid[:, None], logits, 0.0)
  positive = (jnp.arange(n) + b) % n
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, positive[:, None], axis=1)[:, 0]
  count = valid.sum()
  loss = jnp.where(valid, nll, 0.0).sum() / jnp.maximum(count, 1)
  return jnp.where(valid_B.sum() >= 2, loss, 0.0)
