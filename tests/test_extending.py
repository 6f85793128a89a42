"""docs/extending.md's example encoder, run from the document: registered, built by name, trained.

Shape legend: B batch, L history length, E embedding size, V catalog size.
"""

from __future__ import annotations

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import loss_config, model_config
from lstmrec_jax.model import ENCODERS
from lstmrec_jax.train import state as state_lib
from lstmrec_jax.train import steps

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "extending.md"
V, L = 30, 6


@pytest.fixture
def mean_pool():
  """Runs the doc's ```python block (it registers "mean_pool"); unregisters it afterwards."""
  blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
  assert len(blocks) == 1, "docs/extending.md should hold exactly one ```python example"
  namespace = {"__name__": "extending_example"}
  exec(compile(blocks[0], str(DOC), "exec"), namespace)  # pylint: disable=exec-used
  try:
    yield namespace["MeanPoolEncoder"]
  finally:
    ENCODERS.unregister("mean_pool")


def _cfg(**overrides):
  return model_config(V, max_len=L, encoder="mean_pool", embed_dim=8, hidden_size=12,
                      lstm_impl="xla", **overrides)


def test_example_encoder_registers_and_behaves(mean_pool):
  assert ENCODERS.get("mean_pool") is mean_pool
  from flax import nnx  # pylint: disable=g-import-not-at-top
  enc = mean_pool(_cfg(), 8, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, L, 8))
  resets = jnp.zeros((1, L), bool).at[0, 2].set(True)
  mask = jnp.ones((1, L), bool)
  out = enc(x, mask, resets, dropout_key=None)
  # Position 3 is the second item of the history that starts at 2: the mean of x[2] and x[3].
  np.testing.assert_allclose(out[0, 3], jnp.tanh(enc.proj((x[0, 2] + x[0, 3]) / 2)), atol=1e-6)
  # Streaming over the second history alone gives the same states.
  state = enc.initial_state(1)
  for t in range(2, L):
    state, h = enc.step(state, x[:, t], mask[:, t])
    np.testing.assert_allclose(h[0], out[0, t], atol=1e-5)


def test_example_encoder_trains_by_name(mean_pool):
  del mean_pool
  graphdef, params, consts = state_lib.create_model(_cfg(ffn=True, layer_norm=True), 0)
  optim = state_lib.OptimConfig(learning_rate=1e-2, warmup_steps=1, schedule="constant",
                                final_lr_fraction=0.0, weight_decay=0.0, clip_norm=1.0, b1=0.9,
                                b2=0.999)
  tx = state_lib.make_optimizer(optim, 10)
  fn = jax.jit(functools.partial(steps.train_step, graphdef=graphdef, tx=tx,
                                 loss_cfg=loss_config(kind="full")))
  inputs = jax.random.randint(jax.random.key(1), (4, L), 1, V)
  mask = jnp.arange(L)[None, :] < jnp.array([[L], [3], [L], [5]])
  batch = {"inputs_BxL": jnp.where(mask, inputs, 0), "mask_BxL": mask,
           "targets_BxL": jnp.where(mask, jnp.roll(inputs, -1, axis=1), 0),
           "resets_BxL": jnp.zeros((4, L), bool)}
  state = state_lib.init_state(params, tx, 0)
  losses = []
  for _ in range(6):
    state, out = fn(state, batch, {"consts": consts, "log_q_V": None})
    losses.append(float(out["loss"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  assert "proj" in state.params["encoder"]
