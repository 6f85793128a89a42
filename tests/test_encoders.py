"""Sequence encoders (lstm, gru, transformer): causality, padding, packing, streaming, training.

Shape legend: B batch, L history length, E input size, H hidden size, V catalog size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import loss_config, model_config
from lstmrec_jax import core
from lstmrec_jax.model import ENCODERS
from lstmrec_jax import optim
from lstmrec_jax import model as model_lib  # noqa: E402
from lstmrec_jax.train import steps

B, L, E, V = 2, 7, 8, 30
ENCODER_NAMES = ("lstm", "gru", "transformer")


def _cfg(name, **overrides):
  kw = dict(encoder=name, embed_dim=E, hidden_size=E, num_layers=2, num_heads=2,
            layer_dropout=0.1, attention_dropout=0.1, residual=True, lstm_impl="xla")
  kw.update(overrides)
  return model_config(V, max_len=L, **kw)


def _encoder(name, **overrides):
  return ENCODERS.get(name)(_cfg(name, **overrides), E, rngs=nnx.Rngs(0))


def _x(seed=1):
  return jax.random.normal(jax.random.key(seed), (B, L, E))


MASK_BxL = jnp.arange(L)[None, :] < jnp.array([[L], [4]])


def test_gru_layer_matches_reference_loop():
  params = core.init_gru_params(jax.random.key(0), E, 6)
  resets = jnp.zeros((B, L), bool).at[0, 3].set(True)
  out, h_T = core.gru_layer(params, _x(), MASK_BxL, resets)
  ref_out, ref_h = core.gru_reference_loop(params, _x(), MASK_BxL, resets)
  np.testing.assert_allclose(out, ref_out, atol=1e-6)
  np.testing.assert_allclose(h_T, ref_h, atol=1e-6)
  loss = lambda fn: lambda p: (fn(p, _x(), MASK_BxL, resets)[0] ** 2).sum()
  for g, rg in zip(jax.tree.leaves(jax.grad(loss(core.gru_layer))(params)),
                   jax.tree.leaves(jax.grad(loss(core.gru_reference_loop))(params))):
    np.testing.assert_allclose(g, rg, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_causal(name):
  """The output at t has zero gradient with respect to inputs after t."""
  enc = _encoder(name)
  t = 3
  grad = jax.grad(lambda x: enc(x, MASK_BxL, None, dropout_key=None)[0, t].sum())(_x())
  assert float(jnp.abs(grad[0, t + 1:]).max()) == 0.0
  assert float(jnp.abs(grad[0, :t + 1]).max()) > 0.0


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_padding_changes_nothing(name):
  enc = _encoder(name)
  x = _x()
  garbage = jnp.where(MASK_BxL[..., None], x, 100.0)
  out = enc(x, MASK_BxL, None, dropout_key=None)
  np.testing.assert_array_equal(out, enc(garbage, MASK_BxL, None, dropout_key=None))
  assert float(jnp.abs(jnp.where(MASK_BxL[..., None], 0.0, out)).max()) == 0.0


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_packed_row_with_reset_equals_separate_rows(name):
  """Nothing crosses a reset: state (recurrent) or attention and positions (transformer)."""
  enc = _encoder(name)
  x = _x()
  packed = jnp.concatenate([x[0, :3], x[1, :4]])[None]
  resets = jnp.zeros((1, L), bool).at[0, 3].set(True)
  out = enc(packed, jnp.ones((1, L), bool), resets, dropout_key=None)[0]
  separate = jnp.stack([jnp.pad(x[0, :3], ((0, 4), (0, 0))), jnp.pad(x[1, :4], ((0, 3), (0, 0)))])
  ref = enc(separate, jnp.arange(L)[None, :] < jnp.array([[3], [4]]), None, dropout_key=None)
  np.testing.assert_allclose(out[:3], ref[0, :3], atol=1e-5)
  np.testing.assert_allclose(out[3:], ref[1, :4], atol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_streaming_step_matches_full_sequence(name):
  enc = _encoder(name)
  assert enc.streams
  x = _x()
  full = enc(x, MASK_BxL, None, dropout_key=None)
  state = enc.initial_state(B)
  for t in range(L):
    state, h = enc.step(state, x[:, t], MASK_BxL[:, t])
    np.testing.assert_allclose(h, full[:, t], atol=1e-5)


def test_transformer_declares_it_does_not_stream():
  enc = _encoder("transformer")
  assert not enc.streams
  with pytest.raises(NotImplementedError, match="stream"):
    enc.initial_state(B)


def test_transformer_rejects_histories_longer_than_max_len():
  enc = _encoder("transformer")
  with pytest.raises(ValueError, match="max_len"):
    enc(jnp.zeros((1, L + 1, E)), jnp.ones((1, L + 1), bool), None, dropout_key=None)


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_trains_through_the_step_and_every_parameter_moves(name):
  cfg = _cfg(name, embed_dropout=0.1, output_dropout=0.1)
  graphdef, params, consts = model_lib.create_model(cfg, 0)
  optim_cfg = optim.OptimConfig(learning_rate=1e-2, warmup_epochs=0.0, warmup_steps=1,
                                schedule="constant", final_lr_fraction=0.0, weight_decay=0.0,
                                clip_norm=1.0, b1=0.9, b2=0.999, ema_decay=0.0)
  tx = optim.make_optimizer(optim_cfg, 10)
  fn = jax.jit(functools.partial(steps.train_step, graphdef=graphdef, tx=tx,
                                 loss_cfg=loss_config(kind="full")))
  state = optim.init_state(params, tx, 0)
  inputs = jax.random.randint(jax.random.key(2), (4, L), 1, V)
  mask = jnp.arange(L)[None, :] < jnp.array([[L], [5], [L], [2]])
  batch = {"inputs_BxL": jnp.where(mask, inputs, 0), "mask_BxL": mask,
           "targets_BxL": jnp.where(mask, jnp.roll(inputs, -1, axis=1), 0),
           "resets_BxL": jnp.zeros((4, L), bool).at[0, 4].set(True)}
  aux = {"consts": consts, "log_q_V": None}
  first = None
  for _ in range(8):
    state, out = fn(state, batch, aux)
    first = first if first is not None else float(out["loss"])
  assert np.isfinite(float(out["loss"])) and float(out["loss"]) < first
  for path, (a, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                          zip(jax.tree.leaves(params), jax.tree.leaves(state.params))):
    assert float(jnp.abs(a - b).max()) > 0, f"{jax.tree_util.keystr(path[0])} did not move"


@pytest.mark.parametrize("name", ("lstm", "gru"))
def test_recurrent_weight_dropout(name):
  """DropConnect on W_hh: one mask per call (rows with the same input stay equal, which
  activation dropout would break), the scaled kept weights, no effect at evaluation, and a
  rate of 0 draws exactly what the encoder drew before the option existed."""
  key = jax.random.key(5)
  x = jnp.concatenate([_x()[:1], _x()[:1]], 0)  # two identical rows
  full = jnp.ones((B, L), bool)
  plain = _encoder(name, layer_dropout=0.0)
  dropped = _encoder(name, layer_dropout=0.0, recurrent_weight_dropout=0.5)
  out = dropped(x, full, None, dropout_key=key)
  np.testing.assert_array_equal(out[0], out[1])
  assert float(jnp.abs(out - plain(x, full, None, dropout_key=key)).max()) > 1e-3
  np.testing.assert_array_equal(dropped(x, full, None, dropout_key=None),
                                plain(x, full, None, dropout_key=None))

  layers = [layer.as_dict() for layer in dropped.layers]
  masked = model_lib.encoders.drop_recurrent_weights(layers, key, 0.5)
  for layer, m in zip(layers, masked):
    w, wm = np.asarray(layer["w_hh"]), np.asarray(m["w_hh"])
    kept = wm != 0
    assert 0.35 < kept.mean() < 0.65
    np.testing.assert_allclose(wm[kept], 2.0 * w[kept], rtol=1e-6)
    np.testing.assert_array_equal(m["w_ih"], layer["w_ih"])
  assert not np.array_equal(np.asarray(masked[0]["w_hh"]) != 0, np.asarray(masked[1]["w_hh"]) != 0)

  # rate 0 (the default) with layer dropout on: the stack's own draw, unchanged.
  enc = _encoder(name)
  stack = core.lstm_stack if name == "lstm" else core.gru_stack
  ref, _ = stack([layer.as_dict() for layer in enc.layers], _x(), MASK_BxL, None,
                 dropout_rate=0.1, dropout_key=key, residual=True)
  np.testing.assert_array_equal(enc(_x(), MASK_BxL, None, dropout_key=key), ref)


def test_recurrent_weight_dropout_needs_a_recurrent_encoder():
  # The line names the fix too: the recipes and configs/auto.py set the weight drop.
  with pytest.raises(ValueError, match="recurrent_weight_dropout.*transformer.*"
                                       "set --config.model.recurrent_weight_dropout=0"):
    _cfg("transformer", recurrent_weight_dropout=0.3)
  with pytest.raises(ValueError, match="recurrent_weight_dropout"):
    _cfg("lstm", recurrent_weight_dropout=1.0)
