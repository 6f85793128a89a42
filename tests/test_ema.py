"""The moving average of the parameters (optim.ema_decay): its value, and a run that keeps it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lstmrec_jax import optim
from lstmrec_jax import workdir as workdir_lib
from lstmrec_jax.train import loop
from helpers import optim_config, tiny_config
from test_train import read_losses


def test_param_ema_is_the_debiased_average_of_the_updated_parameters():
  # Parameters 0 -> 2 -> 4 (sgd, lr 1, gradient -2 twice); d = 0.5: the init weighs nothing,
  # (0.5 * 0.5 * 2 + 0.5 * 4) / (1 - 0.25) = 10 / 3.
  tx = optax.chain(optax.sgd(1.0), optim.param_ema(0.5))
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update({"w": jnp.full(3, -2.0)}, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params["w"], 4.0)
  np.testing.assert_allclose(optim.ema_params(state, 0.5)["w"], 10.0 / 3.0, rtol=1e-6)


def test_ema_is_off_by_default_and_bad_decays_are_refused():
  tx = optim.make_optimizer(optim_config(warmup_steps=1), 10)
  state = optim.init_state({"w": jnp.ones((2, 2))}, tx, seed=0)
  assert optim.evaluated_params(state, optim_config()) is state.params
  with pytest.raises(ValueError, match="no parameter average"):
    optim.ema_params(state.opt_state, 0.9)
  with pytest.raises(ValueError, match="optim.ema_decay=1.0"):
    optim_config(ema_decay=1.0)


def test_ema_run_keeps_the_average_as_best_trains_alike_and_resumes_exactly(tmp_path):
  ema = {"optim.ema_decay": 0.9}
  plain_dir, full_dir, resumed_dir = tmp_path / "plain", tmp_path / "full", tmp_path / "resumed"
  loop.train_and_evaluate(tiny_config(tmp_path), plain_dir)
  report = loop.train_and_evaluate(tiny_config(tmp_path, **ema), full_dir)
  # The average is read, never trained on: the losses are the plain run's.
  plain, full = read_losses(plain_dir), read_losses(full_dir)
  assert set(plain) == set(full)
  for s in full:
    assert full[s] == pytest.approx(plain[s], rel=1e-6, abs=1e-6), f"step {s}"

  best = workdir_lib.restore_run(full_dir, which="best", num_devices=1)
  raw = workdir_lib.restore_run(full_dir, which=str(best.step), num_devices=1)
  assert best.step == report["step"]
  diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(best.params),
                                                          jax.tree.leaves(raw.params))]
  assert max(diffs) > 1e-3, "the best checkpoint holds the raw parameters, not their average"
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(best.params))
  # The report ranks the kept average: evaluating the best checkpoint again gives its numbers.
  again = workdir_lib.evaluate_checkpoint(full_dir, which="best", num_devices=1)
  assert again["splits"]["test"]["model"]["overall"] == (
      report["splits"]["test"]["model"]["overall"])

  # Killed mid-run and resumed: the average was saved with the optimizer and goes on exactly.
  stop = max(full) // 2 + 1
  loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=stop, **ema), resumed_dir)
  loop.train_and_evaluate(tiny_config(tmp_path, **ema), resumed_dir)
  resumed = workdir_lib.restore_run(resumed_dir, which="best", num_devices=1)
  assert resumed.step == best.step
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(best.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_the_average_of_a_split_item_table_is_split_like_the_table(tmp_path):
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import steps  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path, **{"num_devices": 8, "model.vocab_shards": 2,
                                    "optim.ema_decay": 0.9})
  run = run_lib.build_run(run_lib.spec_from_config(config), num_devices=8)
  _, shardings = steps.compile_train_step(run, run.optimizer(100, 10))
  specs = lambda tree: [str(s.spec) for s in jax.tree.leaves(tree)]
  ema = optim._find_ema(shardings.opt_state).ema  # pylint: disable=protected-access
  assert specs(ema) == specs(shardings.params)
  assert "P('model',)" in specs(ema)  # the item table's
