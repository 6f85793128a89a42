"""SeqRecModel: config parsing, gradients reach every parameter, dropout, padding and packing.

Shape legend: B batch, L history length, E embedding size, V catalog size (item 0 = padding).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstmrec_jax.configs import base as base_config
import helpers
from helpers import ce_loss, jitted_forward, model_config
from lstmrec_jax import losses
from lstmrec_jax.model import ModelConfig, SeqRecModel

V = 40
FULL = model_config(V, embed_dim=8, hidden_size=12, num_layers=2, embed_dropout=0.2,
                    layer_dropout=0.2, output_dropout=0.2, residual=True, layer_norm=True,
                    ffn=True, item_bias=True, tied_output=False, lstm_impl="xla")
SIMPLE = model_config(V, embed_dim=8, hidden_size=8, lstm_impl="xla")

INPUTS_BxL = jnp.array([[3, 7, 9, 2, 0, 0],
                        [5, 1, 0, 0, 0, 0],
                        [4, 4, 8, 11, 12, 13]])
MASK_BxL = INPUTS_BxL > 0
TARGETS_BxL = jnp.array([[7, 9, 2, 6, 0, 0],
                         [1, 30, 0, 0, 0, 0],
                         [4, 8, 11, 12, 13, 39]])


def _split(cfg, seed=0):
  graphdef, state = nnx.split(SeqRecModel(cfg, rngs=nnx.Rngs(seed)))
  return graphdef, state


def _ce(graphdef, state, key=None, loss=losses.softmax_cross_entropy):
  return ce_loss(nnx.merge(graphdef, state), INPUTS_BxL, MASK_BxL, TARGETS_BxL, dropout_key=key,
                 loss=loss)


def test_config_fields_are_exactly_base_model_keys_plus_data_sizes():
  base_keys = set(base_config.get_base_config().model)
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  assert fields == base_keys | {"num_items", "max_len", "domain_starts"}
  assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(ModelConfig))


def test_config_from_mapping_names_unknown_and_missing_keys():
  group = base_config.get_base_config().model.to_dict()
  cfg = ModelConfig.from_mapping(group, num_items=V, max_len=6)
  assert cfg.num_items == V and cfg.max_len == 6 and cfg.encoder == "lstm"
  bad = {k: v for k, v in group.items() if k != "embed_dim"}
  bad.update(hiden_size=3, typo=1)
  with pytest.raises(ValueError, match=r"model\.hiden_size.*model\.typo.*missing.*model\.embed_dim"):
    ModelConfig.from_mapping(bad, num_items=V, max_len=6)
  # Every invalid value in one error, each named model.<key>.
  with pytest.raises(ValueError) as e:
    ModelConfig.from_mapping({**group, "compute_dtype": "float16", "embed_dropout": 1.0,
                              "encoder": "rnn"}, num_items=V, max_len=6)
  for key in ("model.compute_dtype", "model.embed_dropout", "model.encoder"):
    assert key in str(e.value)
  with pytest.raises(ValueError, match="model.num_heads"):
    ModelConfig.from_mapping({**group, "encoder": "transformer", "num_heads": 3}, num_items=V,
                             max_len=6)


def _jitted(cfg, seed=0):
  return jitted_forward(cfg, seed)


def test_forward_shapes_and_scores():
  model, forward = _jitted(FULL)
  user = forward(INPUTS_BxL, MASK_BxL)
  assert user.shape == (3, 6, 8) and user.dtype == jnp.float32
  assert float(jnp.abs(jnp.where(MASK_BxL[..., None], 0.0, user)).max()) == 0.0
  logits = model.score(user)
  assert logits.shape == (3, 6, V) and logits.dtype == jnp.float32
  assert bool(jnp.all(logits[..., 0] == -jnp.inf)) and bool(jnp.isfinite(logits[..., 1:]).all())
  np.testing.assert_allclose(
      logits[..., 1:], (user @ model.item_table().T + model.item_bias())[..., 1:], atol=1e-6)
  assert model.item_table().shape == (V, 8) and model.item_bias().shape == (V,)
  simple = SeqRecModel(SIMPLE, rngs=nnx.Rngs(0))
  assert simple.item_bias() is None
  np.testing.assert_array_equal(simple.item_table(), simple.item_repr.table())  # tied


@pytest.mark.parametrize("cfg", [FULL, SIMPLE], ids=["full", "simple"])
def test_every_parameter_gets_a_gradient(cfg):
  graphdef, state = _split(cfg)
  assert all(isinstance(v, nnx.Param) for _, v in nnx.to_flat_state(state))
  grads = jax.jit(jax.grad(lambda s: _ce(graphdef, s, jax.random.key(3))))(state)
  for path, g in nnx.to_flat_state(grads):
    assert float(jnp.abs(g[...]).sum()) > 0, f"no gradient reaches {path}"
  # The padding row is never used, as input or as a class.
  table_grad = grads["item_repr"]["embedding"][...]
  assert float(jnp.abs(table_grad[0]).sum()) == 0.0


def test_chunked_loss_gives_the_same_gradients_through_the_model():
  graphdef, state = _split(FULL)
  chunked = lambda *a, **k: losses.chunked_softmax_cross_entropy(*a, **k, chunk_size=16)
  g_full = jax.jit(jax.grad(lambda s: _ce(graphdef, s)))(state)
  g_chunked = jax.jit(jax.grad(lambda s: _ce(graphdef, s, loss=chunked)))(state)
  for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunked)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_dropout_follows_the_key_and_is_off_without_one():
  graphdef, state = _split(FULL)

  @jax.jit
  def forward(state, key):
    return helpers.forward(nnx.merge(graphdef, state), INPUTS_BxL, MASK_BxL, dropout_key=key)

  @jax.jit
  def forward_eval(state):
    return helpers.forward(nnx.merge(graphdef, state), INPUTS_BxL, MASK_BxL)

  a, a2 = forward(state, jax.random.key(1)), forward(state, jax.random.key(1))
  b, off = forward(state, jax.random.key(2)), forward_eval(state)
  np.testing.assert_array_equal(a, a2)
  assert float(jnp.abs(a - b).max()) > 1e-3 and float(jnp.abs(a - off).max()) > 1e-3
  np.testing.assert_array_equal(off, forward_eval(state))
  # With every rate at 0 a key changes nothing.
  _, forward0 = _jitted(dataclasses.replace(
      FULL, embed_dropout=0.0, layer_dropout=0.0, output_dropout=0.0))
  np.testing.assert_array_equal(forward0(INPUTS_BxL, MASK_BxL, key=jax.random.key(1)),
                                forward0(INPUTS_BxL, MASK_BxL))


def test_locked_dropout_draws_one_mask_per_history():
  from lstmrec_jax import core  # pylint: disable=g-import-not-at-top
  x = jnp.ones((2, 6, 64))
  segments = jnp.array([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
  y = np.asarray(core.locked_dropout(jax.random.key(3), x, 0.5, segments))
  assert set(np.unique(y)) == {0.0, 2.0}  # inverted: kept entries scaled by 1 / (1 - rate)
  kept = y != 0
  assert 0.35 < kept.mean() < 0.65
  for b, positions in ((0, (0, 1, 2)), (0, (3, 4, 5)), (1, range(6))):
    for t in positions:
      np.testing.assert_array_equal(kept[b, t], kept[b, positions[0]])
  assert not np.array_equal(kept[0, 0], kept[0, 3])  # the second history of the row: its own mask
  assert not np.array_equal(kept[0, 0], kept[1, 0])  # another row: its own mask
  np.testing.assert_array_equal(core.locked_dropout(None, x, 0.5, segments), x)
  np.testing.assert_array_equal(core.locked_dropout(jax.random.key(3), x, 0.0, segments), x)
  with pytest.raises(ValueError, match="dropout rate"):
    core.locked_dropout(jax.random.key(3), x, 1.0, segments)


def test_model_locked_dropout_shares_the_output_mask_over_a_history():
  """`model.locked_dropout`: the user state's dropped features are the same at every position of
  one history and differ between the two histories packed in a row; per-position dropout (the
  default) drops other features at each position; without a key both are the same model."""
  inputs = jnp.array([[3, 7, 9, 5, 1, 2, 8], [4, 4, 8, 11, 12, 13, 6]])
  mask, resets = inputs > 0, jnp.zeros((2, 7), bool).at[0, 3].set(True)
  kw = dict(embed_dim=32, hidden_size=32, output_dropout=0.5, layer_norm=True, lstm_impl="xla")
  _, locked = _jitted(model_config(V, **kw, locked_dropout=True))
  _, per_position = _jitted(model_config(V, **kw))
  zeros = np.asarray(locked(inputs, mask, resets, key=jax.random.key(1))) == 0
  for t in (1, 2):
    np.testing.assert_array_equal(zeros[0, t], zeros[0, 0])
  for t in (4, 5, 6):
    np.testing.assert_array_equal(zeros[0, t], zeros[0, 3])
  np.testing.assert_array_equal(zeros[1], np.broadcast_to(zeros[1, 0], zeros[1].shape))
  assert not np.array_equal(zeros[0, 0], zeros[0, 3]) and zeros[0, 0].any()
  other = np.asarray(per_position(inputs, mask, resets, key=jax.random.key(1))) == 0
  assert not np.array_equal(other[1, 0], other[1, 1])
  np.testing.assert_array_equal(locked(inputs, mask, resets), per_position(inputs, mask, resets))


def test_padding_ids_change_nothing():
  _, forward = _jitted(FULL)
  garbage = jnp.where(MASK_BxL, INPUTS_BxL, jnp.arange(INPUTS_BxL.size).reshape(3, 6) % V + 1)
  np.testing.assert_array_equal(forward(INPUTS_BxL, MASK_BxL), forward(garbage, MASK_BxL))
  key = jax.random.key(0)  # with dropout too, the real positions ignore what padding holds
  np.testing.assert_array_equal(forward(INPUTS_BxL, MASK_BxL, key=key),
                                forward(garbage, MASK_BxL, key=key))


def test_packed_row_with_reset_equals_separate_rows():
  _, forward = _jitted(FULL)
  a, b = jnp.array([[3, 7, 9]]), jnp.array([[5, 1, 2, 8]])
  # Separate rows, right-padded to the packed length so one compiled shape serves all calls.
  separate = jnp.array([[3, 7, 9, 0, 0, 0, 0], [5, 1, 2, 8, 0, 0, 0]])
  packed = jnp.concatenate([a, b], axis=1)
  resets = jnp.zeros((2, 7), bool).at[0, 3].set(True)
  out = forward(jnp.concatenate([packed, packed]), jnp.ones((2, 7), bool), resets)[:1]
  ref = forward(separate, separate > 0, jnp.zeros((2, 7), bool))
  np.testing.assert_allclose(out[:, :3], ref[:1, :3], atol=1e-5)
  np.testing.assert_allclose(out[:, 3:], ref[1:, :4], atol=1e-5)


def test_bfloat16_compute_is_close_to_float32():
  cfg = dataclasses.replace(FULL, compute_dtype="bfloat16")
  graphdef, state = _split(FULL)
  graphdef16, _ = _split(cfg)
  user32 = helpers.forward(nnx.merge(graphdef, state), INPUTS_BxL, MASK_BxL)
  user16 = helpers.forward(nnx.merge(graphdef16, state), INPUTS_BxL, MASK_BxL)
  assert user16.dtype == jnp.float32
  np.testing.assert_allclose(user16, user32, atol=0.1)
  assert float(jnp.abs(user16 - user32).max()) > 0


def test_unhoisted_model_matches_hoisted():
  graphdef, state = _split(FULL)
  graphdef_u, _ = _split(dataclasses.replace(FULL, hoist_input_projection=False))
  np.testing.assert_allclose(helpers.forward(nnx.merge(graphdef_u, state), INPUTS_BxL, MASK_BxL),
                             helpers.forward(nnx.merge(graphdef, state), INPUTS_BxL, MASK_BxL),
                             atol=1e-5)


def test_item_tables_are_computed_once_and_passed():
  """The call gathers from the table it is given; item_tables() returns input, output and bias."""
  model = SeqRecModel(FULL, rngs=nnx.Rngs(0))
  input_VxE, output_VxE, bias_V = model.item_tables()
  np.testing.assert_array_equal(output_VxE, model.item_table())
  assert bias_V.shape == (V,)
  user = model(INPUTS_BxL, MASK_BxL, item_table_VxE=input_VxE)
  other = model(INPUTS_BxL, MASK_BxL, item_table_VxE=input_VxE * 2.0)
  assert float(jnp.abs(user - other).max()) > 1e-4
  simple = SeqRecModel(SIMPLE, rngs=nnx.Rngs(0))
  tables = simple.item_tables()
  assert tables[0] is tables[1] and tables[2] is None  # tied: one table


def test_model_streaming_step_matches_the_full_call():
  """Serving: repeated `step` calls give the full call's user states (no dropout)."""
  cfg = dataclasses.replace(FULL, residual=False)
  model = SeqRecModel(cfg, rngs=nnx.Rngs(0))
  table = model.item_tables()[0]
  full = model(INPUTS_BxL, MASK_BxL, item_table_VxE=table)
  state = model.initial_state(3)
  for t in range(INPUTS_BxL.shape[1]):
    state, user_BxE = model.step(state, INPUTS_BxL[:, t], item_table_VxE=table)
    np.testing.assert_allclose(user_BxE, full[:, t], atol=1e-5)
