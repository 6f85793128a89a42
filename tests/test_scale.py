"""Catalog scale on CPU: the exact training loss and full ranking at V = 10^6 hold no N x V buffer.

Shape legend: B batch (users), L history length, N = B*L positions, E embedding size, V catalog
size (item 0 = padding), S seen items per user.

The memory checks lower the real jitted functions on abstract `ShapeDtypeStruct`s and read XLA's
compiled memory analysis, so nothing catalog-sized is allocated; one small real ranking run at
V = 10^6 is checked against numpy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstmrec_jax import losses
from helpers import loss_config, model_config, optim_config
from lstmrec_jax.model import modules
from lstmrec_jax import optim
from lstmrec_jax.train import steps
from lstmrec_jax.scoring import ranks as ranks_lib

BIG_V = 1_000_000


def _train_step_memory(num_items: int, batch: int = 32, length: int = 50, embed: int = 16):
  """Compiled memory stats of the trainer's own jitted step (chunked exact loss, AdamW)."""
  cfg = model_config(num_items, embed_dim=embed, hidden_size=embed)
  abstract_model = nnx.eval_shape(lambda: modules.SeqRecModel(cfg, rngs=nnx.Rngs(params=0)))
  graphdef, params, consts = nnx.split(abstract_model, nnx.Param, ...)
  tx = optim.make_optimizer(optim_config(warmup_steps=100), total_steps=100)
  state = jax.eval_shape(lambda p: optim.init_state(p, tx, 0), params.to_pure_dict())
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  flags = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
  batch_spec = {"inputs_BxL": ids, "targets_BxL": ids, "mask_BxL": flags, "resets_BxL": flags}
  step_fn = jax.jit(functools.partial(
      steps.train_step, graphdef=graphdef, tx=tx,
      loss_cfg=loss_config(kind="chunked", chunk_size=4096)), donate_argnums=0)
  aux = {"consts": consts.to_pure_dict(), "log_q_V": None}
  return step_fn.lower(state, batch_spec, aux).compile().memory_analysis()


def test_chunked_train_step_temp_memory_grows_like_the_table_not_n_times_v():
  batch, length, embed = 32, 50, 16
  small = _train_step_memory(BIG_V // 10, batch, length, embed)
  big = _train_step_memory(BIG_V, batch, length, embed)
  extra_items = BIG_V - BIG_V // 10
  table_bytes = extra_items * embed * 4  # growth of one V x E f32 buffer
  logits_bytes = batch * length * extra_items * 4  # growth of an N x V f32 buffer (5.8 GB)
  growth = big.temp_size_in_bytes - small.temp_size_in_bytes
  # The step holds a few V x E buffers at once (table gradient, AdamW updates, chunk padding).
  assert growth <= 6 * table_bytes, (growth, table_bytes)
  assert growth < logits_bytes / 20, (growth, logits_bytes)
  # The state (params + two AdamW moments) is what grows in the arguments.
  assert big.argument_size_in_bytes - small.argument_size_in_bytes < 3.2 * table_bytes


def _brute_force_ranks(user, table, targets, seen):
  """ranks_lib.target_ranks' definition, in numpy over the whole score matrix."""
  scores = np.asarray(user, np.float64) @ np.asarray(table, np.float64).T
  scores[:, 0] = -np.inf
  rows = np.arange(len(targets))
  target_scores = scores[rows, targets]
  for b in rows:
    drop = seen[b][(seen[b] > 0) & (seen[b] != targets[b])]
    scores[b, drop] = -np.inf
  scores[rows, targets] = -np.inf  # the target is not ahead of itself
  return (scores >= target_scores[:, None]).sum(axis=1)


def test_ranking_at_a_million_items_has_no_users_by_items_buffer():
  users, embed, seen_width = 512, 16, 50
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
  rank_fn = jax.jit(functools.partial(ranks_lib.target_ranks, chunk_size=8192))
  mem = rank_fn.lower(f32(users, embed), f32(BIG_V, embed), None, i32(users),
                      i32(users, seen_width)).compile().memory_analysis()
  scores_bytes = users * BIG_V * 4  # 2 GB
  # What it does hold: the table padded to a multiple of the chunk (one V x E copy) and a few
  # B x C chunk buffers.
  table_bytes, chunk_bytes = BIG_V * embed * 4, users * 8192 * 4
  assert mem.temp_size_in_bytes < 1.1 * table_bytes + 4 * chunk_bytes, mem.temp_size_in_bytes
  assert mem.temp_size_in_bytes < scores_bytes / 10, mem.temp_size_in_bytes


def test_ranking_at_a_million_items_equals_brute_force():
  users, embed, seen_width = 16, 16, 40
  rng = np.random.default_rng(0)
  # Small integer embeddings: f32 scores are exact, so ties (which count against the target) are
  # real and numpy's f64 brute force must agree exactly.
  table = rng.integers(-3, 4, (BIG_V, embed)).astype(np.float32)
  user = rng.integers(-3, 4, (users, embed)).astype(np.float32)
  targets = rng.integers(1, BIG_V, users).astype(np.int32)
  seen = rng.integers(0, BIG_V, (users, seen_width)).astype(np.int32)
  seen[:4, 0] = targets[:4]  # a target seen before is still ranked
  # Items that outrank the target become seen, so removing them must lower the rank.
  scores = user @ table[:1000].T
  seen[:, 1:11] = np.argsort(-scores, axis=1)[:, :10]
  got = jax.jit(ranks_lib.target_ranks)(user, table, None, targets, seen)
  np.testing.assert_array_equal(np.asarray(got), _brute_force_ranks(user, table, targets, seen))


# The CPU speed knobs of the exact chunked loss (position blocks, one-pass gradients, bf16
# operands) must keep it the full softmax: values and gradients against the materialised loss.
# (N, V, chunk_size, row_block, one_pass, label_smoothing, with_bias): N = 300 is no multiple of
# the row blocks, V = 1001 no multiple of the chunks.
KNOB_CASES = [(300, 1001, 64, 64, False, 0.0, True), (300, 1001, 1001, 7, False, 0.1, False),
              (300, 1001, 4096, None, True, 0.0, True), (5, 1001, 2000, None, None, 0.2, True)]


@pytest.mark.parametrize("n,v,chunk_size,row_block,one_pass,label_smoothing,with_bias",
                         KNOB_CASES)
def test_chunked_loss_knobs_equal_full_softmax(n, v, chunk_size, row_block, one_pass,
                                               label_smoothing, with_bias):
  k = jax.random.split(jax.random.key(1), 4)
  user = jax.random.normal(k[0], (n, 8))
  table = 0.5 * jax.random.normal(k[1], (v, 8))
  bias = jax.random.normal(k[2], (v,)) if with_bias else None
  targets = jax.random.randint(k[3], (n,), 1, v).at[:3].set(0)
  weights = jnp.linspace(0.5, 2.0, n)
  argnums = (0, 1, 2) if with_bias else (0, 1)

  def make(fn, **kw):
    return jax.jit(jax.value_and_grad(
        lambda u, t, b: fn(u, t, b, targets, weights, label_smoothing=label_smoothing, **kw)[0],
        argnums=argnums))

  value, grads = make(losses.softmax_cross_entropy)(user, table, bias)
  knobs = dict(chunk_size=chunk_size, row_block=row_block, one_pass=one_pass)
  c_value, c_grads = make(losses.chunked_softmax_cross_entropy, **knobs)(user, table, bias)
  np.testing.assert_allclose(c_value, value, rtol=1e-6)
  for g, cg in zip(grads, c_grads):
    np.testing.assert_allclose(cg, g, atol=1e-7, rtol=2e-5)
  # Not differentiated, the one-pass loss takes the plain forward path: same value and aux.
  full_aux = losses.softmax_cross_entropy(user, table, bias, targets, weights,
                                          label_smoothing=label_smoothing)[1]
  aux = losses.chunked_softmax_cross_entropy(user, table, bias, targets, weights,
                                             label_smoothing=label_smoothing, **knobs)[1]
  for key in ("loss_sum", "nll_sum", "weight_sum"):
    np.testing.assert_allclose(aux[key], full_aux[key], rtol=1e-5)
  if label_smoothing:
    return
  # bf16 operands: the same loss up to bf16 rounding of the logits.
  b_value, b_grads = make(losses.chunked_softmax_cross_entropy, compute_dtype="bfloat16",
                          **knobs)(user, table, bias)
  np.testing.assert_allclose(b_value, value, rtol=1e-2)
  for g, bg in zip(grads, b_grads):
    assert float(jnp.abs(bg - g).max()) < 2e-2 * float(jnp.abs(g).max())


@pytest.mark.parametrize("with_bias", [False, True])
def test_one_pass_bf16_is_the_loss_of_bf16_rounded_operands(with_bias):
  """The one-pass loss with bf16 operands (its transposed, [M, K] @ [K, N] matmuls) computes
  the exact loss of the bf16-rounded states and table: values and gradients to f32 rounding."""
  k = jax.random.split(jax.random.key(2), 4)
  n, v = 300, 1001
  user = jax.random.normal(k[0], (n, 16))
  table = 0.5 * jax.random.normal(k[1], (v, 16))
  bias = jax.random.normal(k[2], (v,)) if with_bias else None
  targets = jax.random.randint(k[3], (n,), 1, v)
  weights = jnp.linspace(0.5, 2.0, n)
  round_bf16 = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
  lse = lambda fn, **kw: jax.jit(jax.value_and_grad(  # the log-sum-exp part, where bf16 acts
      lambda u, t: fn(u, t, bias, targets, weights, **kw)[0]
      + (weights * (u * t[targets]).sum(1)).sum() / weights.sum(), argnums=(0, 1)))
  value, (g_user, g_table) = lse(losses.softmax_cross_entropy)(round_bf16(user),
                                                               round_bf16(table))
  b_value, (b_user, b_table) = lse(losses.chunked_softmax_cross_entropy, one_pass=True,
                                   chunk_size=4096, compute_dtype="bfloat16")(user, table)
  np.testing.assert_allclose(b_value, value, rtol=1e-5)
  # The target-logit term is f32 on both sides; only the softmax part of the gradients differs
  # by the rounding of the softmax weights (bf16) in the gradient matmuls.
  for g, bg in ((g_user, b_user), (g_table, b_table)):
    assert float(jnp.abs(bg - g).max()) < 1e-2 * float(jnp.abs(g).max())
