"""Diversity-aware re-ranking of a candidate pool: MMR and greedy DPP, jitted and batched.

Shape legend: B users, P candidates per user (e.g. the top 100), K items kept, E embedding size,
V catalog size.

Both take a pool from any top-K call (`ranks.top_k_items`, `scoring.topk_step`, the serving
Recommender): candidate ids and scores, and the candidates' item vectors (similarity = cosine).
Scores are min-max normalized per user over the real candidates, so lambda means the same for
any model. lambda = 1 keeps the relevance order exactly; smaller lambda trades relevance for
diversity. Candidates with a non-finite score or id 0 (empty slots) come last, never first.

  MMR:  pick argmax  lambda * rel_i - (1 - lambda) * max_{j picked} cos(i, j)
  DPP:  greedy MAP of the kernel L_ij = q_i cos(i, j) q_j with q_i = exp(a * rel_i),
        a = lambda / (2 (1 - lambda)) (Chen et al. 2018: fast greedy MAP by incremental
        Cholesky, O(P K) per user per pick); lambda = 1 is the relevance order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NEG = -1e30


def _relevance(ids_BxP, scores_BxP):
  """(rel_BxP in [0, 1] over real candidates, real_BxP)."""
  real = (ids_BxP > 0) & jnp.isfinite(scores_BxP)
  s = jnp.where(real, scores_BxP.astype(jnp.float32), 0.0)
  lo = jnp.min(jnp.where(real, s, jnp.inf), axis=1, keepdims=True)
  hi = jnp.max(jnp.where(real, s, -jnp.inf), axis=1, keepdims=True)
  rel = (s - lo) / jnp.maximum(hi - lo, 1e-12)
  return jnp.where(real, jnp.clip(rel, 0.0, 1.0), 0.0), real


def _unit(vectors_BxPxE):
  v = vectors_BxPxE.astype(jnp.float32)
  return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _fallback(score_BxP, rel_BxP, real_BxP, picked_BxP):
  """Real unpicked candidates by `score`, then the empty slots, never a picked one twice."""
  # The relevance order breaks ties, so lambda = 1 (all diversity terms equal) is exactly it.
  s = jnp.where(real_BxP, score_BxP + 1e-6 * rel_BxP, 2 * _NEG)
  return jnp.where(picked_BxP, 4 * _NEG, s)


@functools.partial(jax.jit, static_argnames=("k",))
def mmr(ids_BxP: jax.Array, scores_BxP: jax.Array, vectors_BxPxE: jax.Array, lam: jax.Array,
        *, k: int) -> jax.Array:
  """Maximal marginal relevance: the K re-ranked ids of each pool (ids_BxK).

  Example: pool [a, b, c] with scores [1.0, 0.9, 0.0], b a copy of a and c orthogonal to both;
  lam = 0.5 picks a (0.5), then c (0.5 * 0 - 0.5 * 0 = 0 beats b: 0.45 - 0.5 = -0.05): [a, c].
  """
  rel, real = _relevance(ids_BxP, scores_BxP)
  unit = _unit(vectors_BxPxE)
  sim_BxPxP = jnp.einsum("bpe,bqe->bpq", unit, unit)
  b, p = ids_BxP.shape

  def body(step, carry):
    picked, max_sim, out = carry
    # The first pick has no picked neighbour: its diversity term is 0.
    div = jnp.where(step > 0, max_sim, 0.0)
    score = _fallback(lam * rel - (1.0 - lam) * div, rel, real, picked)
    j = jnp.argmax(score, axis=1)
    out = out.at[:, step].set(j)
    picked = picked | jax.nn.one_hot(j, p, dtype=bool)
    sim_j = jnp.take_along_axis(sim_BxPxP, j[:, None, None], axis=1)[:, 0]
    return picked, jnp.maximum(max_sim, sim_j), out

  init = (jnp.zeros((b, p), bool), jnp.full((b, p), -1.0), jnp.zeros((b, k), jnp.int32))
  _, _, pos_BxK = jax.lax.fori_loop(0, k, body, init)
  return jnp.take_along_axis(ids_BxP, pos_BxK, axis=1)


@functools.partial(jax.jit, static_argnames=("k",))
def dpp(ids_BxP: jax.Array, scores_BxP: jax.Array, vectors_BxPxE: jax.Array, lam: jax.Array,
        *, k: int, eps: float = 1e-6) -> jax.Array:
  """Greedy DPP MAP (fast incremental Cholesky): the K re-ranked ids of each pool (ids_BxK).

  Once the picked items span the vectors' space (K > E), the remaining picks follow relevance.
  Example: pool [a, b, c] as in `mmr`, lam = 0.5 (q = e^{rel / 2}): a first (largest q), then c
  (b's residual variance after a is 0): [a, c].
  """
  rel, real = _relevance(ids_BxP, scores_BxP)
  unit = _unit(vectors_BxPxE)
  b, p = ids_BxP.shape
  lam = jnp.clip(lam, 0.0, 1.0)
  a = jnp.where(lam < 1.0, lam / (2.0 * jnp.maximum(1.0 - lam, 1e-6)), 0.0)
  log_q = a * rel  # log quality
  # d2_i = L_ii - |c_i|^2 (residual variance); the kernel is scaled by exp(-2 max log_q) so a
  # large `a` cannot overflow (a common factor leaves the argmax unchanged).
  q = jnp.exp(log_q - jnp.max(jnp.where(real, log_q, -jnp.inf), axis=1, keepdims=True))
  q = jnp.where(real, q, 0.0)
  d2 = q * q

  def body(step, carry):
    picked, d2, c_BxPxK, out = carry
    # Residual variance near 0 (the picks span the space, or a tiny quality): by relevance,
    # below every candidate that still adds volume (log d2 >= log eps there, as max q = 1).
    stuck = d2 <= eps
    score = jnp.where(stuck, rel - 100.0, jnp.log(jnp.maximum(d2, 1e-30)))
    j = jnp.argmax(_fallback(score, rel, real, picked), axis=1)
    out = out.at[:, step].set(j)
    picked = picked | jax.nn.one_hot(j, p, dtype=bool)
    c_j = jnp.take_along_axis(c_BxPxK, j[:, None, None], axis=1)[:, 0]  # B x K
    d2_j = jnp.take_along_axis(d2, j[:, None], axis=1)  # B x 1
    unit_j = jnp.take_along_axis(unit, j[:, None, None], axis=1)[:, 0]  # B x E
    q_j = jnp.take_along_axis(q, j[:, None], axis=1)  # B x 1
    l_j = q_j * q * jnp.einsum("be,bpe->bp", unit_j, unit)  # row j of L
    e = (l_j - jnp.einsum("bk,bpk->bp", c_j, c_BxPxK)) / jnp.sqrt(jnp.maximum(d2_j, eps))
    e = jnp.where(d2_j > eps, e, 0.0)  # a pick by relevance adds no direction
    c_BxPxK = c_BxPxK.at[:, :, step].set(e)
    return picked, jnp.maximum(d2 - e * e, 0.0), c_BxPxK, out

  init = (jnp.zeros((b, p), bool), d2, jnp.zeros((b, p, k), jnp.float32),
          jnp.zeros((b, k), jnp.int32))
  _, _, _, pos_BxK = jax.lax.fori_loop(0, k, body, init)
  # lam = 1: the relevance order exactly (top_k keeps the pool order among ties).
  by_rel_BxK = jax.lax.top_k(jnp.where(real, rel, -1.0), k)[1].astype(jnp.int32)
  pos_BxK = jnp.where(lam >= 1.0, by_rel_BxK, pos_BxK)
  return jnp.take_along_axis(ids_BxP, pos_BxK, axis=1)


METHODS = {"mmr": mmr, "dpp": dpp}


def rerank(method: str, ids_BxP: jax.Array, scores_BxP: jax.Array, table_VxE: jax.Array,
           lam: float, *, k: int) -> jax.Array:
  """Re-ranks pools with `method` ('mmr' | 'dpp') using rows of an item table as vectors.

  Args:
    method: "mmr" or "dpp".
    ids_BxP: candidate item ids (0 = empty slot), e.g. `top_k_items(..., k=100)[0]`.
    scores_BxP: their scores (non-finite = empty slot).
    table_VxE: item vectors (e.g. the model's output table) for the cosine similarity.
    lam: trade-off in [0, 1]; 1 = the relevance order.
    k: K items kept (<= P).

  Returns:
    ids_BxK, int32.
  """
  if method not in METHODS:
    raise ValueError(f"re-ranking method {method!r} must be one of {sorted(METHODS)}")
  if k > ids_BxP.shape[1]:
    raise ValueError(f"k={k} is larger than the pool ({ids_BxP.shape[1]} candidates)")
  vectors = jnp.take(jnp.asarray(table_VxE), jnp.asarray(ids_BxP), axis=0)
  return METHODS[method](jnp.asarray(ids_BxP, jnp.int32), jnp.asarray(scores_BxP), vectors,
                         jnp.float32(lam), k=k)
