"""Offline RL on the LSTM: SQN, SAC and SA2C as next-item losses (`loss.kind = sqn | sac | sa2c`).

Shape legend: N flattened positions (B x L), E user state size, V catalog size (row 0 padding),
J sampled unobserved actions per position (SA2C).

The LSTM is the state encoder: the user state u_t after reading x_1..x_t is the state s_t, the
logged next item a_t = target_t the action, its logged reward r_t (`rewards_BxL`, data/rewards.py)
the reward, and u_{t+1} (the next position of the same packed row, which has read a_t) the next
state. A transition is terminal where the user's segment ends (the next position is padding, a
reset or past the row): the pipeline keeps each user's most recent events, so that is the user's
last training event. Every transition comes from the rows the plain model already encodes: no
extra encoder pass.

The model carries two Q heads beside the softmax head (`model.q_head`; `SeqRecModel.q_tables`):
Q_k(s, a) = u . q_table[k, a] + q_bias[k, a]. Each step draws which head is the main one
(`Transitions.main`); the other is its double-Q target and gets no gradient that step. This is
the one-encoder form of the two networks the SQN code swaps at random every step: the encoder
(and the softmax head) train on every step, and the extra cost is one forward N x V product for
the argmax (measured: benchmarks/rl_step_cost.py).

  TD target (one step, double Q; y carries no gradient):
    a*_t = argmax_a Q_main(s_t, a)                      (items 1..V-1; forward only)
    y_t  = r_t + discount * (1 - done_t) * Q_target(s_{t+1}, a*_{t+1})
    L_Q  = 1/2 (y_t - Q_main(s_t, a_t))^2

  SQN  (Xin et al., SIGIR 2020):  CE_t + q_weight * L_Q
  SAC  (the same paper's actor-critic): CE_t + q_weight * L_Q for `warmup_epochs`, then
       sg(max(Q_main(s_t, a_t), 0)) * CE_t + q_weight * L_Q (the raw Q of the logged action as
       the CE weight; clipped at 0, since a negative weight would ascend the CE)
  SA2C (Xin et al., WSDM 2022): SQN plus J unobserved actions per position with reward
       `negative_reward` and the current state as their next state (the user did not move):
         y-_t = negative_reward + discount * Q_target(s_t, a*_t)
         L_Q- = J * mean_n 1/2 (y-_t - Q_main(s_t, n))^2
       and after `warmup_epochs` the CE weighted by the clipped advantage
         A_t = clip(Q(s_t, a_t) - (Q(s_t, a_t) + J * mean_n Q(s_t, n)) / (1 + J), 0, advantage_max)
       with the mean over `negative_pool` items drawn uniformly per step and shared by all
       positions (a position's own target left out). The SA2C code draws J = 10 per transition;
       the shared pool is the same in expectation (J x the mean = the sum over J draws) and one
       N x pool product instead of N x J row gathers and their scatter-add gradient (measured:
       benchmarks/rl_step_cost.py). Phase 1 (CE + L_Q + L_Q-) is SNQN.

Every term is a weighted mean over the positions with a target, like the other losses. The
phase switch is a function of the step (`aux["rl_start_step"]`), so a resumed run continues in
the same phase with the same head draws: exact resume, as for any loss.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lstmrec_jax import config_keys
from lstmrec_jax.losses import core

KINDS = ("sqn", "sac", "sa2c")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The `rl` group of configs/base.py (each key's meaning is there)."""

  discount: float  # in [0, 1)
  q_weight: float  # weight of the TD losses, >= 0
  warmup_epochs: float  # sac / sa2c: epochs before the weighted CE, >= 0
  negatives: int  # sa2c: J, the unobserved actions each position counts (their weight), >= 1
  negative_pool: int  # sa2c: unobserved items drawn per step, shared by all positions, >= 1
  negative_reward: float  # sa2c: their reward
  advantage_max: float  # sa2c: the advantage is clipped to [0, this], > 0
  # The TD losses train the encoder too (the SQN code: no stop-gradient between the state and
  # the Q head); False: they train the Q heads only, on the states as the softmax shapes them.
  td_to_encoder: bool
  # sac / sa2c: divide the CE weights by their mean over the batch's positions, so the weighted
  # CE keeps the plain CE's scale against the TD losses (the weights' spread alone reweights).
  normalize_weights: bool

  def __post_init__(self):
    problems = []
    if not 0.0 <= self.discount < 1.0:
      problems.append(f"rl.discount={self.discount} must be in [0, 1)")
    for name, ok, why in (("q_weight", self.q_weight >= 0, ">= 0"),
                          ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
                          ("negatives", self.negatives >= 1, ">= 1"),
                          ("negative_pool", self.negative_pool >= 1, ">= 1"),
                          ("advantage_max", self.advantage_max > 0, "> 0"),
                          ("negative_reward", True, "a number")):
      value = getattr(self, name)
      if not (ok and math.isfinite(value)):
        problems.append(f"rl.{name}={value} must be finite and {why}")
    if problems:
      raise ValueError("; ".join(problems))

  @classmethod
  def from_mapping(cls, group: Mapping[str, Any]) -> RLConfig:
    """The `rl` group validated (`config_keys.build_group`: every bad key named)."""
    return config_keys.build_group(cls, "rl", group)


class Transitions(NamedTuple):
  """What an RL loss reads besides the softmax loss's arguments (built by the train step)."""

  q_table_2xVxE: jax.Array  # both Q heads' item rows (`SeqRecModel.q_tables`)
  q_bias_2xV: jax.Array
  rewards_N: jax.Array  # f32 reward of each position's target (0 where none)
  done_N: jax.Array  # bool: the transition at this position is terminal (no next state)
  main: jax.Array  # int32 scalar, 0 or 1: the Q head trained this step; the other is its target
  weighted: jax.Array  # bool scalar: past the warm-up (sac, sa2c weight the CE)


def done_mask(mask_BxL: jax.Array, resets_BxL: jax.Array | None) -> jax.Array:
  """bool [B, L]: no next state in the row (the next position is padding, a reset or past L).

  Example: mask [[T, T, T, F]], resets [[F, F, T, F]] -> [[F, T, T, T]].
  """
  nxt = mask_BxL[:, 1:].astype(bool)
  if resets_BxL is not None:
    nxt = nxt & ~resets_BxL[:, 1:].astype(bool)
  return ~jnp.concatenate([nxt, jnp.zeros_like(nxt[:, :1])], axis=1)


def head_draw(key: jax.Array) -> jax.Array:
  """int32 0 or 1: which Q head is the main one this step, a fair coin of `key`."""
  return jax.random.bernoulli(key).astype(jnp.int32)


def q_values(user_NxE: jax.Array, table_VxE: jax.Array, bias_V: jax.Array,
             items: jax.Array) -> jax.Array:
  """Q(s_n, items[n, ...]) by gathers: `items` is [N] or [N, J]; f32, same shape as `items`."""
  rows = jnp.take(table_VxE, items, axis=0).astype(jnp.float32)
  user = user_NxE.astype(jnp.float32)
  q = (jnp.einsum("ne,ne->n", user, rows) if items.ndim == 1
       else jnp.einsum("ne,nje->nj", user, rows))
  return q + jnp.take(bias_V, items).astype(jnp.float32)


def greedy_actions(user_NxE: jax.Array, table_VxE: jax.Array, bias_V: jax.Array,
                   chunk_size: int, item_mask_V: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """(int32 [N] argmax, f32 [N] max) over items 1..V-1 of u . table + bias, without gradient.

  `item_mask_V` (bool) leaves items out. Positions go in blocks of 128 on CPU (each block's
  scores stay in cache, as in the one-pass softmax), items in chunks of `chunk_size`; the index
  is the smallest column holding the block's max (XLA's argmax, a variadic reduce, costs 2.6x
  more on CPU). Ties keep the lowest id. Example: scores [pad, 0.1, 0.9, 0.5] -> (2, 0.9).
  """
  user = jax.lax.stop_gradient(user_NxE).astype(jnp.float32)
  table = jax.lax.stop_gradient(table_VxE)
  bias = jax.lax.stop_gradient(core.candidate_bias(bias_V, item_mask_V)).astype(jnp.float32)
  num_items, n = table.shape[0], user.shape[0]
  chunk = min(int(chunk_size), num_items)
  num_chunks = -(-num_items // chunk)
  rows = max(min(128, n), 1) if core._cpu_blocking() else max(n, 1)  # pylint: disable=protected-access

  def block(_, user_RxE):
    def chunk_body(index, carry):
      best_R, arg_R = carry
      rows_CxE, bias_C, valid_C, start = core._chunk_rows(table, bias, index, chunk)  # pylint: disable=protected-access
      scores_RxC = core._block_logits(user_RxE, rows_CxE.astype(jnp.float32), bias_C, valid_C)  # pylint: disable=protected-access
      top_R = scores_RxC.max(axis=1)
      col_C = jnp.arange(chunk, dtype=jnp.int32)
      local_R = jnp.where(scores_RxC == top_R[:, None], col_C, chunk - 1).min(axis=1)
      better_R = top_R > best_R  # a later chunk must beat the max: ties keep the lower id
      return (jnp.where(better_R, top_R, best_R),
              jnp.where(better_R, start + local_R, arg_R).astype(jnp.int32))

    init = (jnp.full((user_RxE.shape[0],), -jnp.inf, jnp.float32),
            jnp.ones((user_RxE.shape[0],), jnp.int32))
    best_R, arg_R = jax.lax.fori_loop(0, num_chunks, chunk_body, init)
    return None, (arg_R, best_R)

  _, (arg_QxR, best_QxR) = jax.lax.scan(block, None, core._row_blocks(user, rows))  # pylint: disable=protected-access
  return arg_QxR.reshape(-1)[:n], best_QxR.reshape(-1)[:n]


def _mean_over(weights_N, x_N):
  """sum(w * x) / sum(w) over the positions with weight > 0 (0 with none)."""
  return jnp.where(weights_N > 0, weights_N * x_N, 0.0).sum() / jnp.maximum(weights_N.sum(), 1e-12)


def td_terms(user_NxE, targets_N, weights_N, tr: Transitions, *, discount: float,
             chunk_size: int, item_mask_V=None) -> dict[str, jax.Array]:
  """The double-Q pieces every RL loss shares (see the module docstring), per position.

  Returns a dict: `q_sa_N` Q_main(s_t, a_t) (with gradient), `td_N` the 1/2 squared TD error,
  `greedy_N` Q_target(s_t, a*_t) (no gradient: the bootstrap value of the current state, which
  SA2C's unobserved actions use), `target_N` y_t, `max_q_N` max_a Q_main(s_t, a) (a log line).
  """
  q_main_VxE, b_main_V = tr.q_table_2xVxE[tr.main], tr.q_bias_2xV[tr.main]
  q_tgt_VxE = jax.lax.stop_gradient(tr.q_table_2xVxE[1 - tr.main])
  b_tgt_V = jax.lax.stop_gradient(tr.q_bias_2xV[1 - tr.main])
  q_sa_N = q_values(user_NxE, q_main_VxE, b_main_V, targets_N)
  user_sg = jax.lax.stop_gradient(user_NxE)
  # The main head selects, the other head evaluates: every position at once (positions t and
  # t + 1 share one argmax pass).
  best_N, max_q_N = greedy_actions(user_sg, q_main_VxE, b_main_V, chunk_size, item_mask_V)
  greedy_N = q_values(user_sg, q_tgt_VxE, b_tgt_V, best_N)
  next_N = jnp.roll(greedy_N, -1)  # position t + 1 of the flat B x L rows; masked by done
  target_N = jax.lax.stop_gradient(
      tr.rewards_N.astype(jnp.float32)
      + discount * jnp.where(tr.done_N, 0.0, next_N))
  td_N = 0.5 * jnp.square(target_N - q_sa_N)
  return {"q_sa_N": q_sa_N, "td_N": td_N, "greedy_N": greedy_N, "target_N": target_N,
          "max_q_N": max_q_N}


def negative_actions(key: jax.Array, num_items: int, count: int) -> jax.Array:
  """int32 [S]: `count` items drawn uniformly (with replacement) from 1..V-1, shared by every
  position of the step; a position's own target among them is left out of its terms."""
  return jax.random.randint(key, (count,), 1, num_items, jnp.int32)


def _weighted_ce(user_NxE, table_VxE, bias_V, targets_N, weights_N, factor_N, cfg, item_mask_V):
  """sum_t w_t f_t CE_t / sum_t w_t: the exact (chunked) softmax CE, each position scaled by f."""
  scaled_N = weights_N * jnp.maximum(jax.lax.stop_gradient(factor_N), 0.0)
  _, aux = core.chunked_softmax_cross_entropy(
      user_NxE, table_VxE, core.candidate_bias(bias_V, item_mask_V), targets_N, scaled_N,
      chunk_size=cfg.chunk_size, label_smoothing=cfg.label_smoothing,
      compute_dtype=cfg.compute_dtype, row_block=cfg.row_block, one_pass=cfg.one_pass)
  return aux["loss_sum"] / jnp.maximum(weights_N.sum(), 1e-12)


def rl_loss(kind: str, user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg, key,
            item_mask_V, transitions: Transitions, rl_cfg: RLConfig
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The `kind` ("sqn" | "sac" | "sa2c") loss and its log scalars (module docstring)."""
  user_NxE, targets_N, weights_N = core.flatten_positions(user_NxE, targets_N, weights_N)
  ce_user_NxE = user_NxE
  if not rl_cfg.td_to_encoder:  # the Q heads learn on the states; only the CE shapes them
    user_NxE = jax.lax.stop_gradient(user_NxE)
  tr = transitions._replace(rewards_N=transitions.rewards_N.reshape(-1),
                            done_N=transitions.done_N.reshape(-1))
  t = td_terms(user_NxE, targets_N, weights_N, tr, discount=rl_cfg.discount,
               chunk_size=cfg.chunk_size, item_mask_V=item_mask_V)
  q_loss = _mean_over(weights_N, t["td_N"])
  logs = {"rl/q_sa": _mean_over(weights_N, jax.lax.stop_gradient(t["q_sa_N"])),
          "rl/max_q": _mean_over(weights_N, t["max_q_N"]),
          "rl/td": jax.lax.stop_gradient(q_loss)}
  factor_N = jnp.ones_like(weights_N)
  if kind == "sac":
    factor_N = jnp.where(tr.weighted, t["q_sa_N"], 1.0)
  elif kind == "sa2c":
    q_main_VxE, b_main_V = tr.q_table_2xVxE[tr.main], tr.q_bias_2xV[tr.main]
    neg_S = negative_actions(key, table_VxE.shape[0], rl_cfg.negative_pool)
    # Q_main(s_t, n) for the shared pool: one N x S product instead of N x J row gathers.
    q_neg_NxS = core._dot(user_NxE.astype(jnp.float32),  # pylint: disable=protected-access
                          jnp.take(q_main_VxE, neg_S, axis=0).astype(jnp.float32), 1, 1)
    q_neg_NxS = q_neg_NxS + jnp.take(b_main_V, neg_S).astype(jnp.float32)
    usable_NxS = neg_S[None, :] != targets_N[:, None]
    mean = lambda x_NxS: core._masked_mean(x_NxS, usable_NxS)  # pylint: disable=protected-access
    y_neg_N = jax.lax.stop_gradient(rl_cfg.negative_reward + rl_cfg.discount * t["greedy_N"])
    # J x the pool's mean: SA2C's sum over J drawn negatives, in expectation.
    neg_td_N = rl_cfg.negatives * mean(0.5 * jnp.square(y_neg_N[:, None] - q_neg_NxS))
    q_loss = q_loss + _mean_over(weights_N, neg_td_N)
    q_pos_N = jax.lax.stop_gradient(t["q_sa_N"])
    q_neg_mean_N = jax.lax.stop_gradient(mean(q_neg_NxS))
    baseline_N = (q_pos_N + rl_cfg.negatives * q_neg_mean_N) / (1 + rl_cfg.negatives)
    advantage_N = jnp.clip(q_pos_N - baseline_N, 0.0, rl_cfg.advantage_max)
    factor_N = jnp.where(tr.weighted, advantage_N, 1.0)
    logs.update({"rl/q_neg": _mean_over(weights_N, q_neg_mean_N),
                 "rl/advantage": _mean_over(weights_N, advantage_N),
                 "rl/zero_advantage": _mean_over(weights_N, (advantage_N == 0).astype(
                     jnp.float32))})
  if rl_cfg.normalize_weights:
    factor_N = jnp.maximum(factor_N, 0.0) / jnp.maximum(
        _mean_over(weights_N, jnp.maximum(factor_N, 0.0)), 1e-6)
  ce = _weighted_ce(ce_user_NxE, table_VxE, bias_V, targets_N, weights_N, factor_N, cfg,
                    item_mask_V)
  logs["rl/ce_weight"] = _mean_over(weights_N, jnp.maximum(factor_N, 0.0))
  return ce + rl_cfg.q_weight * q_loss, logs


def _register(kind):
  @core.register_loss(kind, needs_transitions=True)
  def loss(user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg, key, log_q_V,
           item_mask_V, transitions, rl_cfg):
    del log_q_V
    return rl_loss(kind, user_NxE, table_VxE, bias_V, targets_N, weights_N, cfg=cfg, key=key,
                   item_mask_V=item_mask_V, transitions=transitions, rl_cfg=rl_cfg)
  return loss


for _kind in KINDS:
  _register(_kind)
del _kind
