"""The functional LSTM core: parity with a plain loop, causality, padding, resets, stacking.

Shape legend: B batch, L time steps, E input size, H hidden size, G = 4H gates.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmrec_jax.core import lstm
from lstmrec_jax.model import encoders

B, L, E, H = 3, 7, 5, 6


def _params(seed=0, input_size=E, hidden=H):
  return lstm.init_lstm_params(jax.random.key(seed), input_size, hidden)


def _inputs(seed=1, batch=B, length=L, size=E):
  return jax.random.normal(jax.random.key(seed), (batch, length, size))


def _right_padded_mask(lengths, length=L):
  return jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]


MASK_BxL = _right_padded_mask([7, 4, 1])


def _loss(fn, params, x_BxLxE, *args, **kwargs):
  """A scalar touching every output and the final state, for gradient comparisons."""
  h_BxLxH, (h_T, c_T) = fn(params, x_BxLxE, *args, **kwargs)
  weights = jnp.linspace(0.5, 1.5, h_BxLxH.size).reshape(h_BxLxH.shape)
  return (weights * h_BxLxH).sum() + (h_T ** 2).sum() + c_T.sum()


@pytest.mark.parametrize("hoist", [True, False])
def test_layer_matches_reference_loop_f32(hoist):
  params, x = _params(), _inputs()
  resets = jnp.zeros((B, L), bool).at[0, 3].set(True)
  init = lstm.LSTMState(0.1 * jnp.ones((B, H)), -0.2 * jnp.ones((B, H)))
  args = (MASK_BxL, resets, init)
  out, state = lstm.lstm_layer(params, x, *args, hoist=hoist)
  ref_out, ref_state = lstm.lstm_reference_loop(params, x, *args)
  np.testing.assert_allclose(out, ref_out, atol=1e-6)
  np.testing.assert_allclose(state.h_BxH, ref_state.h_BxH, atol=1e-6)
  np.testing.assert_allclose(state.c_BxH, ref_state.c_BxH, atol=1e-6)
  grads = jax.grad(lambda p, x: _loss(
      lambda *a: lstm.lstm_layer(*a, hoist=hoist), p, x, *args), argnums=(0, 1))(params, x)
  ref_grads = jax.grad(lambda p, x: _loss(lstm.lstm_reference_loop, p, x, *args),
                       argnums=(0, 1))(params, x)
  for g, rg in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, rg, atol=2e-5, rtol=1e-5)


def test_layer_matches_reference_loop_bf16():
  params, x = _params(), _inputs()
  out, state = lstm.lstm_layer(params, x, MASK_BxL, compute_dtype=jnp.bfloat16)
  ref_out, ref_state = lstm.lstm_reference_loop(params, x, MASK_BxL, compute_dtype=jnp.bfloat16)
  f32_out, _ = lstm.lstm_reference_loop(params, x, MASK_BxL)
  assert out.dtype == jnp.float32 and state.c_BxH.dtype == jnp.float32
  np.testing.assert_allclose(out, ref_out, atol=2e-2)
  np.testing.assert_allclose(state.c_BxH, ref_state.c_BxH, atol=2e-2)
  # bf16 operands really are used: not bit-identical to f32, but close.
  assert 0 < float(jnp.abs(out - f32_out).max()) < 5e-2
  g = jax.grad(lambda p: _loss(lambda *a: lstm.lstm_layer(*a, compute_dtype=jnp.bfloat16),
                               p, x, MASK_BxL))(params)
  rg = jax.grad(lambda p: _loss(lstm.lstm_reference_loop, p, x, MASK_BxL))(params)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(rg)):
    np.testing.assert_allclose(a, b, atol=0.1, rtol=0.05)


def test_hoisted_and_unhoisted_agree():
  params, x = _params(), _inputs()
  resets = jnp.zeros((B, L), bool).at[1, 2].set(True)
  run = lambda hoist: jax.jit(lambda p, x: lstm.lstm_layer(p, x, MASK_BxL, resets,
                                                           hoist=hoist))(params, x)
  for a, b in zip(jax.tree.leaves(run(True)), jax.tree.leaves(run(False))):
    np.testing.assert_allclose(a, b, atol=1e-6)
  grad = lambda hoist: jax.grad(lambda p: _loss(
      lambda *a: lstm.lstm_layer(*a, hoist=hoist), p, x, MASK_BxL, resets))(params)
  for a, b in zip(jax.tree.leaves(grad(True)), jax.tree.leaves(grad(False))):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("hoist", [True, False])
def test_causality(hoist):
  params, x = _params(), _inputs(batch=1)
  mask = jnp.ones((1, L), bool)

  def out_per_step(x_BxLxE):
    h_BxLxH, _ = lstm.lstm_layer(params, x_BxLxE, mask, hoist=hoist)
    return h_BxLxH.sum(axis=(0, 2))  # (L,)

  jac_LxBxLxE = jax.jacrev(out_per_step)(x)
  influence_LxL = jnp.abs(jac_LxBxLxE).sum(axis=(1, 3))  # [t, t']: |d out[t] / d x[t']|
  future = jnp.triu(jnp.ones((L, L), bool), k=1)
  assert float(jnp.where(future, influence_LxL, 0).max()) == 0.0
  assert bool(jnp.all(jnp.where(~future, influence_LxL, 1.0) > 0))


def test_padding_invariance():
  params, x = _params(), _inputs()
  noise = _inputs(seed=7)
  x_changed = jnp.where(MASK_BxL[..., None], x, 100.0 * noise)
  out, state = lstm.lstm_layer(params, x, MASK_BxL)
  out2, state2 = lstm.lstm_layer(params, x_changed, MASK_BxL)
  np.testing.assert_array_equal(out, out2)
  np.testing.assert_array_equal(state.h_BxH, state2.h_BxH)
  np.testing.assert_array_equal(state.c_BxH, state2.c_BxH)
  assert float(jnp.abs(jnp.where(MASK_BxL[..., None], 0.0, out)).max()) == 0.0
  # No gradient flows into padded inputs either.
  g = jax.grad(lambda x: _loss(lstm.lstm_layer, params, x, MASK_BxL))(x)
  assert float(jnp.abs(jnp.where(MASK_BxL[..., None], 0.0, g)).max()) == 0.0


def test_right_padded_final_state_equals_unpadded():
  params, x = _params(), _inputs(batch=1)
  n = 4
  out_short, state_short = lstm.lstm_layer(params, x[:, :n], jnp.ones((1, n), bool))
  out_pad, state_pad = lstm.lstm_layer(params, x, _right_padded_mask([n]))
  np.testing.assert_allclose(out_pad[:, :n], out_short, atol=1e-6)
  np.testing.assert_allclose(state_pad.h_BxH, state_short.h_BxH, atol=1e-6)
  np.testing.assert_allclose(state_pad.c_BxH, state_short.c_BxH, atol=1e-6)


@pytest.mark.parametrize("hoist", [True, False])
def test_reset_packs_two_users_exactly(hoist):
  params = _params()
  x_a, x_b = _inputs(seed=3, batch=1, length=3), _inputs(seed=4, batch=1, length=4)
  packed = jnp.concatenate([x_a, x_b], axis=1)
  resets = jnp.zeros((1, 7), bool).at[0, 3].set(True)
  # A non-zero initial state must not leak into user B either.
  init = lstm.LSTMState(jnp.full((1, H), 0.3), jnp.full((1, H), -0.4))
  out, state = lstm.lstm_layer(params, packed, jnp.ones((1, 7), bool), resets, init, hoist=hoist)
  out_a, _ = lstm.lstm_layer(params, x_a, jnp.ones((1, 3), bool), None, init, hoist=hoist)
  out_b, state_b = lstm.lstm_layer(params, x_b, jnp.ones((1, 4), bool), hoist=hoist)
  np.testing.assert_allclose(out[:, :3], out_a, atol=1e-6)
  np.testing.assert_allclose(out[:, 3:], out_b, atol=1e-6)
  np.testing.assert_allclose(state.h_BxH, state_b.h_BxH, atol=1e-6)
  np.testing.assert_allclose(state.c_BxH, state_b.c_BxH, atol=1e-6)


def test_stack_matches_composed_reference_layers():
  p0, p1, p2 = _params(0, E, H), _params(1, H, H), _params(2, H, H)
  x = _inputs()
  resets = jnp.zeros((B, L), bool).at[0, 4].set(True)
  for residual in (False, True):
    out, states = lstm.lstm_stack([p0, p1, p2], x, MASK_BxL, resets, residual=residual)
    h, ref_states = x, []
    for i, p in enumerate([p0, p1, p2]):
      h_new, s = lstm.lstm_reference_loop(p, h, MASK_BxL, resets)
      # Residual only where sizes match: layers 1 and 2 (E != H for layer 0).
      h = h_new + h if residual and i > 0 else h_new
      ref_states.append(s)
    np.testing.assert_allclose(out, h, atol=1e-5)
    assert len(states) == 3
    for s, rs in zip(states, ref_states):
      np.testing.assert_allclose(s.c_BxH, rs.c_BxH, atol=1e-5)
    assert float(jnp.abs(jnp.where(MASK_BxL[..., None], 0.0, out)).max()) == 0.0


def test_stack_dropout_between_layers():
  params = [_params(0, E, H), _params(1, H, H)]
  x = _inputs()
  run = lambda **kw: lstm.lstm_stack(params, x, MASK_BxL, dropout_rate=0.5, **kw)[0]
  no_key = run()
  np.testing.assert_array_equal(no_key, lstm.lstm_stack(params, x, MASK_BxL)[0])
  a, a2, b = run(dropout_key=jax.random.key(0)), run(dropout_key=jax.random.key(0)), run(
      dropout_key=jax.random.key(1))
  np.testing.assert_array_equal(a, a2)
  assert float(jnp.abs(a - b).max()) > 1e-3
  assert float(jnp.abs(a - no_key).max()) > 1e-3
  # Dropout acts between layers only: a single layer is untouched.
  one = lstm.lstm_stack(params[:1], x, MASK_BxL, dropout_rate=0.5, dropout_key=jax.random.key(0))
  np.testing.assert_array_equal(one[0], lstm.lstm_layer(params[0], x, MASK_BxL)[0])


def test_init_is_pytorch_uniform_with_forget_bias_one():
  p = lstm.init_lstm_params(jax.random.key(0), 10, 32)
  bound = 32 ** -0.5
  assert p["w_ih"].shape == (10, 128) and p["w_hh"].shape == (32, 128) and p["b"].shape == (128,)
  for w in (p["w_ih"], p["w_hh"]):
    assert float(jnp.abs(w).max()) <= bound and float(w.std()) > 0.4 * bound
  forget = p["b"][32:64]
  others = jnp.concatenate([p["b"][:32], p["b"][64:]])
  assert float(jnp.abs(forget - 1.0).max()) <= bound
  assert float(jnp.abs(others).max()) <= bound


def test_layer_rejects_mismatched_params():
  with pytest.raises(ValueError, match="input size"):
    lstm.lstm_layer(_params(input_size=E + 1), _inputs(), MASK_BxL)
  with pytest.raises(ValueError, match="lack"):
    lstm.lstm_layer({"w_ih": 1}, _inputs(), MASK_BxL)
  with pytest.raises(ValueError, match="hoist=False"):
    lstm.lstm_layer(_params(), _inputs(), MASK_BxL, hoist=False,
                    recurrence=lambda *a, **k: None)


def test_model_resolves_other_impls_through_kernels_dispatch(monkeypatch):
  from lstmrec_jax.kernels import dispatch  # pylint: disable=g-import-not-at-top
  calls = []

  def get_recurrence(impl):
    calls.append(impl)
    return lstm.lstm_recurrence

  monkeypatch.setattr(dispatch, "get_recurrence", get_recurrence)
  assert encoders.resolve_lstm_recurrence("xla") is None and not calls
  assert encoders.resolve_lstm_recurrence("pallas", hoist=False) is None and not calls
  recurrence = encoders.resolve_lstm_recurrence("pallas")
  assert calls == ["pallas"]
  params, x = _params(), _inputs()
  out, _ = lstm.lstm_layer(params, x, MASK_BxL, recurrence=recurrence)
  np.testing.assert_array_equal(out, lstm.lstm_layer(params, x, MASK_BxL)[0])


@pytest.mark.parametrize("residual", [False, True])
def test_stack_step_matches_the_scan(residual):
  """Streaming: one `lstm_stack_step` per event gives `lstm_stack`'s outputs (f32 rounding)."""
  params = [_params(0, E, E), _params(1, E, E)]
  x = _inputs()
  full, finals = lstm.lstm_stack(params, x, MASK_BxL, residual=residual)
  zeros = jnp.zeros((B, E))
  states = [lstm.LSTMState(zeros, zeros)] * 2
  for t in range(L):
    h, states = lstm.lstm_stack_step(params, x[:, t], MASK_BxL[:, t], states, residual=residual)
    np.testing.assert_allclose(h, full[:, t], atol=1e-6)
  for s, f in zip(states, finals):
    np.testing.assert_allclose(s.h_BxH, f.h_BxH, atol=1e-6)
    np.testing.assert_allclose(s.c_BxH, f.c_BxH, atol=1e-6)
