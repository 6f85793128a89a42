"""Contrastive terms on user states: two augmented views of the same histories (InfoNCE /
NT-Xent, `info_nce`), positions that predict the same item (`same_target_nce`), and each
position against k-means intent prototypes (`intent_nce`).

Shape legend: B rows, E embedding size, N positions.

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

from lstmrec_jax.losses.core import EXCLUDED_SCORE


def unit_rows(z: jax.Array) -> jax.Array:
  """Rows scaled to norm 1, in f32; rsqrt of a floored square norm: a zero row (an empty
  history) stays 0 with a finite gradient."""
  z = z.astype(jnp.float32)
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-24))


def info_nce(z1_BxE: jax.Array, z2_BxE: jax.Array, valid_B: jax.Array,
             temperature: float) -> jax.Array:
  """NT-Xent over the batch (a scalar; 0 with fewer than 2 valid rows).

  Example: with 2 rows and z1 = z2 = [[1, 0], [0, 1]], T = 1, anchor z1_0 has the positive
  cos 1 and negatives cos 0, 0: loss = -log(e / (e + 2)) for every anchor.
  """
  z = unit_rows(jnp.concatenate([z1_BxE, z2_BxE], 0))
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


def same_target_nce(user_NxE: jax.Array, targets_N: jax.Array,
                    temperature: float) -> jax.Array:
  """Supervised contrastive term over a batch's positions: same next item = positive pair.

  The states of two positions whose targets are the same item (two users, or two moments, that
  went on to the same item: DuoRec's supervised positives, ICSRec's cross-subsequence intents)
  are pulled together, every other real position of the batch is a negative (SupCon, Khosla et
  al. 2020). With cosine similarities s and each real anchor i that has positives P(i):

    -1/|P(i)| sum_{p in P(i)} log exp(s_ip / T) / sum_{a != i real} exp(s_ia / T)

  averaged over those anchors (a scalar; 0 when no two real positions share a target).
  Positions with target 0 (padding) are neither anchors nor negatives.

  Example: states [[1, 0], [1, 0], [0, 1]], targets [5, 5, 7], T = 1: anchors 0 and 1 each have
  one positive (cos 1) and one negative (cos 0): loss = -log(e / (e + 1)).
  Memory: N x N similarities (N = 12,800 positions: 655 MB in f32).
  """
  z = unit_rows(user_NxE)
  real_N = targets_N > 0
  n = z.shape[0]
  others_NxN = real_N[None, :] & ~jnp.eye(n, dtype=bool)
  logits_NxN = jnp.where(others_NxN, (z @ z.T) / temperature, EXCLUDED_SCORE)
  log_p_NxN = jax.nn.log_softmax(logits_NxN, axis=-1)
  pos_NxN = (targets_N[:, None] == targets_N[None, :]) & others_NxN & real_N[:, None]
  num_pos_N = pos_NxN.sum(axis=1)
  per_anchor_N = -jnp.where(pos_NxN, log_p_NxN, 0.0).sum(axis=1) / jnp.maximum(num_pos_N, 1)
  anchors_N = num_pos_N > 0
  return jnp.where(anchors_N, per_anchor_N, 0.0).sum() / jnp.maximum(anchors_N.sum(), 1)


def intent_nce(user_NxE: jax.Array, weights_N: jax.Array, intents_KxE: jax.Array,
               temperature: float) -> jax.Array:
  """Prototype term: each real position's state against K intent prototypes (a scalar).

  The prototypes are the centroids of a k-means over the training user states
  (`train.intents`; ICLRec's / ICSRec's fine-grained intents). Each state's intent is its
  nearest prototype by cosine (chosen without gradient), and the term is a softmax over all K
  prototypes (ProtoNCE, Li et al. 2021: every other prototype is a negative exactly once, so a
  batch neighbour with the same intent is never pushed away):

    -log exp(cos(z, c_a) / T) / sum_k exp(cos(z, c_k) / T),  a = argmax_k cos(z, c_k)

  averaged over the positions with weight > 0 (weighted mean; 0 without any). The prototypes
  are constants here (no gradient reaches them). A zero prototype row (none computed yet)
  scores cos 0.

  Example: states [[1, 0], [0, 2]], prototypes [[1, 0], [0, 1]], T = 1: each state's intent is
  the prototype it points at, loss = -log(e / (e + 1)) = 0.3133.
  """
  z = unit_rows(user_NxE)
  c = jax.lax.stop_gradient(intents_KxE.astype(jnp.float32))
  logits_NxK = (z @ c.T) / temperature
  assigned_N = jnp.argmax(logits_NxK, axis=-1)  # an index: no gradient through the choice
  nll_N = (jax.nn.logsumexp(logits_NxK, axis=-1)
           - jnp.take_along_axis(logits_NxK, assigned_N[:, None], axis=1)[:, 0])
  w = weights_N.astype(jnp.float32)
  return jnp.sum(w * nll_N) / jnp.maximum(jnp.sum(w), 1e-9)
