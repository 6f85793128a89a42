"""Random search: deterministic sampling, validation-only selection, results table, resume."""

import json
import pathlib

import pytest

from lstmrec_jax.configs import base as base_config
from lstmrec_jax.configs import beauty as beauty_config
from lstmrec_jax.configs import default as default_config
from lstmrec_jax.configs import games as games_config
from lstmrec_jax.configs.spaces import lstm as lstm_space
from lstmrec_jax.train import loop
from lstmrec_jax.tuning import search as tune
import helpers
from lstmrec_jax import errors

SPACE = {
    "model.embed_dropout": ("uniform", 0.0, 0.5),
    "optim.learning_rate": ("loguniform", 1e-3, 3e-2),
    "optim.warmup_steps": ("randint", 1, 3),
    "model.hidden_size": ("choice", [8, 16]),
    "loss": ("choice", [{"kind": "chunked", "label_smoothing": ("choice", [0.0, 0.1])},
                        {"kind": "sampled", "num_negatives": ("choice", [16, 32])}]),
}

# For the tests that train: values that keep every array shape, so that trials after the first
# reuse the small eager computations JAX has already compiled (the suite runs on 2 CPU cores).
TRAIN_SPACE = {
    "model.embed_dropout": ("uniform", 0.0, 0.5),
    "optim.learning_rate": ("loguniform", 1e-3, 3e-2),
}


def tiny_config(tmp_path: pathlib.Path, **train_overrides):
  """The shared tiny config with 32-row batches and one epoch (2 steps a trial), locked as
  tune.py loads it."""
  return helpers.tiny_config(tmp_path, lock=True, **{"input.batch_size": 32, "num_epochs": 1,
                                                     **train_overrides})


def read_jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_sampling_is_deterministic_and_within_bounds():
  draws = [tune.sample_params(SPACE, 7, k) for k in range(50)]
  assert draws == [tune.sample_params(SPACE, 7, k) for k in range(50)]
  assert len({json.dumps(d, sort_keys=True) for d in draws}) == 50
  assert draws != [tune.sample_params(SPACE, 8, k) for k in range(50)], "seed ignored"
  for d in draws:
    assert 0.0 <= d["model.embed_dropout"] <= 0.5
    assert 1e-3 <= d["optim.learning_rate"] <= 3e-2
    assert d["optim.warmup_steps"] in (1, 2, 3) and type(d["optim.warmup_steps"]) is int
    assert d["model.hidden_size"] in (8, 16)
    if d["loss.kind"] == "chunked":
      assert d["loss.label_smoothing"] in (0.0, 0.1) and "loss.num_negatives" not in d
    else:
      assert d["loss.num_negatives"] in (16, 32) and "loss.label_smoothing" not in d
  assert {d["loss.kind"] for d in draws} == {"chunked", "sampled"}
  assert {d["optim.warmup_steps"] for d in draws} == {1, 2, 3}  # both ends reachable
  # Each key has its own generator: a new key leaves the other keys' values alone.
  wider = {**SPACE, "model.output_dropout": ("uniform", 0.0, 0.3)}
  for k, d in enumerate(draws[:5]):
    assert {key: v for key, v in tune.sample_params(wider, 7, k).items()
            if key != "model.output_dropout"} == d


def test_trial_config_sets_the_sampled_values(tmp_path):
  params = tune.sample_params(SPACE, 0, 2)
  config = tune.trial_config(tiny_config(tmp_path), params)
  for key, value in params.items():
    group, name = key.split(".")
    assert config[group][name] == value


@pytest.mark.parametrize("space, match", [
    ({"model.hiden_size": ("choice", [8])}, "'model.hiden_size'"),
    ({"loss": ("choice", [{"kind": "chunked"}, {"kindd": "sampled"}])}, "'loss.kindd'"),
    ({"model.hidden_size": ("uniform", 8, 16)}, "'model.hidden_size'"),  # float into an int
    ({"model": ("choice", [8])}, "names a config group"),
    ({"optim.learning_rate": ("loguniform", 0.0, 1.0)}, "lo > 0"),
    ({"optim.learning_rate": ("normal", 0.0, 1.0)}, "'optim.learning_rate'"),
    ({"loss.kind": ("choice", ["full"]), "loss": ("choice", [{"kind": "chunked"}])},
     "both set 'loss.kind'"),
])
def test_bad_space_is_an_error_naming_the_key(tmp_path, space, match):
  with pytest.raises(errors.ConfigError, match=match):
    tune.validate_space(space, tiny_config(tmp_path))


@pytest.mark.parametrize("get_config", [base_config.get_base_config, default_config.get_config,
                                        beauty_config.get_config, games_config.get_config])
def test_lstm_space_fits_the_configs(get_config):
  space = lstm_space.get_space()
  config = get_config()
  config.lock()
  tune.validate_space(space, config)
  kinds = set()
  for k in range(20):
    params = tune.sample_params(space, 0, k)
    tune.trial_config(config, params)
    kinds.add(params["loss.kind"])
  assert kinds == {"chunked", "sampled"}


def test_selection_follows_validation_never_test(tmp_path, monkeypatch):
  """Fake trials whose test metrics rank them in the opposite order to their validation ones."""
  calls = []

  def fake_train_and_evaluate(config, workdir, defaults=None):
    workdir = pathlib.Path(workdir)
    trial = int(workdir.name.split("_")[1])
    calls.append(trial)
    if trial == 3:
      raise errors.DivergenceError("loss is nan at step 7; lower optim.learning_rate")
    score = config.model.embed_dropout  # a stand-in validation NDCG@10 that differs per trial
    report = {"step": 5, "epochs_trained": 1.0, "splits": {
        "valid": {"model": {"overall": {"NDCG@10": score, "HR@10": score + 0.1}}},
        "test": {"model": {"overall": {"NDCG@10": 1.0 - score, "HR@10": 12345.0,
                                       "poison": "TEST-METRIC-READ"}}}}}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "report.json").write_text(json.dumps(report))
    return report

  monkeypatch.setattr(loop, "train_and_evaluate", fake_train_and_evaluate)
  config = tiny_config(tmp_path)
  rows = tune.tune(config, SPACE, tmp_path / "tune", num_trials=5, search_seed=1)
  dropouts = {k: tune.sample_params(SPACE, 1, k)["model.embed_dropout"] for k in range(5)}
  by_valid = sorted((k for k in range(5) if k != 3), key=lambda k: -dropouts[k])
  assert [r["trial"] for r in rows] == by_valid + [3]
  assert rows[-1]["status"] == "diverged" and "nan" in rows[-1]["error"]
  assert [r["valid_NDCG@10"] for r in rows[:-1]] == [dropouts[k] for k in by_valid]

  table = (tmp_path / "tune" / "results.md").read_text()
  jsonl = (tmp_path / "tune" / "results.jsonl").read_text()
  for text in (table, jsonl):
    assert "TEST-METRIC-READ" not in text and "12345" not in text
  assert not [k for r in rows for k in r if "test" in k.lower()]
  assert f"Best: trial {by_valid[0]} " in table
  assert f"eval.py --workdir {tmp_path / 'tune' / f'trial_{by_valid[0]}'}" in table
  assert [r["trial"] for r in read_jsonl(tmp_path / "tune" / "results.jsonl")] == by_valid + [3]

  # Rerun: finished and diverged trials are not trained again; two more trials are added.
  calls.clear()
  rows = tune.tune(config, SPACE, tmp_path / "tune", num_trials=7, search_seed=1)
  assert calls == [5, 6]
  assert len(rows) == 7 and rows[-1]["trial"] == 3


def test_interrupted_search_resumes_and_skips_finished(tmp_path):
  tune_dir = tmp_path / "tune"
  tune.tune(tiny_config(tmp_path), TRAIN_SPACE, tune_dir, num_trials=1)
  first_report = tune_dir / "trial_0" / "report.json"
  mtime = first_report.stat().st_mtime_ns

  # Killed one step into trial 1 (train.stop_after_steps stops the run as a kill would).
  rows = tune.tune(tiny_config(tmp_path, stop_after_steps=1), TRAIN_SPACE, tune_dir, num_trials=3)
  assert [(r["trial"], r["status"]) for r in rows] == [(0, "done"), (1, "interrupted")]
  assert not (tune_dir / "trial_2").exists()

  # The same command again.
  rows = tune.tune(tiny_config(tmp_path), TRAIN_SPACE, tune_dir, num_trials=3)
  assert first_report.stat().st_mtime_ns == mtime, "a finished trial was trained again"
  assert sorted(r["trial"] for r in rows) == [0, 1, 2] and {r["status"] for r in rows} == {"done"}
  ndcg = [r["valid_NDCG@10"] for r in rows]
  assert ndcg == sorted(ndcg, reverse=True)
  table = read_jsonl(tune_dir / "results.jsonl")
  assert [r["trial"] for r in table] == [r["trial"] for r in rows]  # no duplicate rows

  losses = [row["step"] for row in read_jsonl(tune_dir / "trial_1" / "metrics.jsonl")
            if "loss" in row]
  assert losses == [1, 2], "the interrupted trial restarted instead of resuming"
  info = json.loads((tune_dir / "trial_1" / "trial.json").read_text())
  assert info["resumed"] and info["params"] == tune.sample_params(TRAIN_SPACE, 0, 1)
  saved = json.loads((tune_dir / "trial_1" / "config.json").read_text())
  assert saved["model"]["embed_dropout"] == info["params"]["model.embed_dropout"]

  with pytest.raises(errors.ConfigError, match="another search"):
    tune.tune(tiny_config(tmp_path), TRAIN_SPACE, tune_dir, num_trials=3, search_seed=5)


def test_a_trial_the_real_trainer_finds_diverging_does_not_stop_the_search(tmp_path):
  """The trainer's own divergence error (not a stand-in) is an outcome of the search.

  Until the errors shared one module, the search caught FloatingPointError while the trainer
  raised a ValueError subclass: the first diverging trial ended the whole search.
  """
  space = {"optim.learning_rate": ("choice", [1e-3, 1e12])}
  picks = [tune.sample_params(space, 0, k)["optim.learning_rate"] for k in range(4)]
  assert 1e12 in picks and 1e-3 in picks  # the seed draws both: one trial diverges
  config = tiny_config(tmp_path, **{"optim.clip_norm": 0.0, "optim.warmup_steps": 0})
  rows = tune.tune(config, space, tmp_path / "tune", num_trials=4, search_seed=0)
  by_trial = {r["trial"]: r for r in rows}
  assert sorted(by_trial) == [0, 1, 2, 3]
  for k, lr in enumerate(picks):
    assert by_trial[k]["status"] == ("diverged" if lr == 1e12 else "done"), (k, by_trial[k])
  assert "diverged" in by_trial[picks.index(1e12)]["error"]
