"""configs/auto.py: values set from the dataset's statistics (lstmrec_jax/auto.py), and schedules
in epochs (validation period, warm-up) derived from the run's data."""

import numpy as np
import pytest

from lstmrec_jax import config_keys
from lstmrec_jax import auto as auto_lib
from lstmrec_jax import run as run_lib
from lstmrec_jax import errors

# docs/results.md / ../shared/data/README.md: the two measured datasets (training targets at
# max_len 50 estimated from users and events: events - 3 x users).
BEAUTY = auto_lib.DatasetStats(users=22_363, items=12_101, events=198_502, mean_length=8.88,
                               train_targets=131_413, has_attributes=True)
GAMES = auto_lib.DatasetStats(users=30_901, items=23_698, events=286_900, mean_length=9.28,
                              train_targets=194_197, has_attributes=False)


def _auto_config(tmp_path, num_users, num_items):
  from lstmrec_jax.configs import auto as auto_config
  c = auto_config.get_config()
  c.data.synthetic = {"num_users": num_users, "num_items": num_items, "seed": 3}
  c.data.cache_dir = str(tmp_path / "cache")
  c.train.num_devices = 1
  c.train.progress_bar = False
  return c


def test_rules_give_the_measured_recipes_on_beauty_and_games():
  from lstmrec_jax.configs import beauty, games
  for stats, recipe in ((BEAUTY, beauty.get_config()), (GAMES, games.get_config())):
    values = auto_lib.auto_values(stats, max_len=50)
    assert set(values) == set(auto_lib.AUTO_KEYS)
    flat = run_lib.flatten(config_keys.plain(recipe))
    for key, value in values.items():
      if key == "optim.warmup_epochs":  # the recipes pin 100 steps (1.25 / 0.88 epochs)
        continue
      assert flat[key] == value, (key, flat[key], value)


def test_rows_per_step_keeps_enough_steps_an_epoch():
  assert auto_lib.rows_per_step(131_413, 50) == 32  # Beauty: 82 steps an epoch
  assert auto_lib.rows_per_step(60_000, 50) == 16  # 37 steps at 32 rows, 75 at 16
  assert auto_lib.rows_per_step(10_000, 50) == 8  # never fewer than 8 rows


def test_auto_resolves_deterministically_from_data_of_two_sizes(tmp_path):
  resolved = {}
  for name, users, items in (("small", 240, 80), ("large", 3000, 600)):
    spec = run_lib.spec_from_config(_auto_config(tmp_path / name, users, items))
    assert spec.auto == tuple(auto_lib.AUTO_KEYS)
    dataset = run_lib.load_data(spec)
    first = run_lib.resolve_auto(spec, dataset)
    again = run_lib.resolve_auto(run_lib.spec_from_config(_auto_config(tmp_path / name, users,
                                                                       items)), dataset)
    assert dict(first.config) == dict(again.config)  # the same data, the same values
    assert first.auto == spec.auto  # idempotent: resolving the resolved spec changes nothing
    assert dict(run_lib.resolve_auto(first, dataset).config) == dict(first.config)
    resolved[name] = run_lib.auto_resolved(first)
    stats = auto_lib.dataset_stats(dataset)
    assert resolved[name] == auto_lib.auto_values(stats, max_len=50)
    assert stats.has_attributes  # synthetic items carry genres: the attribute model
    assert resolved[name]["model.item_mode"] == "sum"
    assert resolved[name]["model.embed_dim"] == resolved[name]["model.hidden_size"] == 256
  # The small log is too short for 32 rows a step at 60+ steps an epoch.
  assert resolved["small"]["input.batch_size"] == 8
  assert resolved["large"]["input.batch_size"] > resolved["small"]["input.batch_size"]
  # build_run resolves too, and its model has the resolved size.
  run = run_lib.build_run(run_lib.spec_from_config(_auto_config(tmp_path / "small", 240, 80)))
  assert run.spec.input.batch_size == 8 and run.model_cfg.embed_dim == 256
  assert run.model_cfg.item_mode == "sum"


def test_unknown_auto_key_is_a_config_error(tmp_path):
  c = _auto_config(tmp_path, 240, 80)
  c.auto = ("model.embed_dim", "input.max_len")
  with pytest.raises(errors.ConfigError, match="input.max_len"):
    run_lib.spec_from_config(c)


def test_schedules_in_epochs():
  from helpers import optim_config
  from lstmrec_jax.train import loop
  from lstmrec_jax import optim
  from lstmrec_jax.configs import base
  train = lambda **kw: config_keys.build_group(run_lib.TrainConfig, "train", base.group("train", **kw))
  assert loop.eval_period(train(eval_every_epochs=2.0), 80) == 160  # Beauty
  assert loop.eval_period(train(eval_every_epochs=2.0), 113) == 226  # Games
  assert loop.eval_period(train(eval_every_epochs=2.0, eval_every_steps=7), 113) == 7  # override
  assert loop.eval_period(train(eval_every_epochs=0.01), 10) == 1
  with pytest.raises(ValueError, match="eval_every_epochs"):
    train(eval_every_epochs=0.0)
  assert optim.warmup_steps(optim_config(warmup_epochs=1.25), 80) == 100
  assert optim.warmup_steps(optim_config(warmup_epochs=1.25, warmup_steps=3), 80) == 3
  with pytest.raises(ValueError, match="steps per epoch"):
    optim.make_optimizer(optim_config(), 100)
  # The warm-up really is in epochs: the learning rate peaks after warmup_epochs x steps.
  tx = optim.make_optimizer(optim_config(warmup_epochs=2.0, schedule="constant"), 100, 5)
  import jax.numpy as jnp
  params = {"w": jnp.ones((2, 2))}
  state = tx.init(params)
  lrs = []
  for _ in range(12):
    updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
    lrs.append(float(-updates["w"][0, 0]))
  peak = optim_config().learning_rate
  # Adam's update of a constant gradient is the learning rate itself: 2 epochs of 5 steps.
  assert np.argmax(np.isclose(lrs, peak, rtol=1e-4)) == 10 and lrs[9] < 0.95 * peak


@pytest.mark.slow
def test_tuned_values_win_over_the_auto_rules(tmp_path):
  """Issue 23, item 1: a key the space samples is what the trial runs, and its config.json and the
  results table show it; the auto rules set only the keys the space leaves alone."""
  import json
  from lstmrec_jax.tuning import search
  base = _auto_config(tmp_path, 240, 80)
  base.input.max_len = 16
  base.input.eval_batch_size = 64
  space = {"model.embed_dim": ("choice", [16]), "model.hidden_size": ("choice", [12]),
           "train.num_epochs": ("choice", [1]), "optim.learning_rate": ("loguniform", 1e-3, 3e-3)}
  rows = search.tune(base, space, tmp_path / "tune", num_trials=1)
  sampled = search.sample_params(space, 0, 0)
  assert rows[0]["params"] == sampled and rows[0]["epochs"] == 1
  trial = tmp_path / "tune" / "trial_0"
  saved = json.loads((trial / "config.json").read_text())
  flat = run_lib.flatten(saved)
  assert {k: flat[k] for k in sampled} == sampled  # config.json shows the sampled values ...
  assert not set(sampled) & set(saved["auto"])  # ... and none of them is left to the data
  ran = run_lib.build_run(run_lib.spec_from_config(saved))  # what training and eval build
  assert (ran.model_cfg.embed_dim, ran.model_cfg.hidden_size) == (16, 12)
  assert ran.spec.optim.learning_rate == sampled["optim.learning_rate"]
  assert ran.spec.train.num_epochs == 1
  assert ran.spec.input.batch_size == 8  # an auto key the space left alone: still the data's
  table = (tmp_path / "tune" / "results.md").read_text()
  assert "| 16 | 12 | 1 |" in table
  report = json.loads((trial / "report.json").read_text())
  assert set(report["auto"]) == set(saved["auto"]) and not set(sampled) & set(report["auto"])
