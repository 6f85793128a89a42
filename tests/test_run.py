"""The run spec: validation in one error, and a saved config read back whole."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmrec_jax import config_keys
from lstmrec_jax.configs import beauty as beauty_config
from lstmrec_jax import run as run_lib
from lstmrec_jax.cli import common
from lstmrec_jax import errors


def test_flatten_round_trip_keeps_empty_groups():
  nested = {"a": {"b": 1, "c": {}}, "d": 2}
  assert run_lib.flatten(nested) == {"a.b": 1, "a.c": {}, "d": 2}
  assert run_lib.unflatten(run_lib.flatten(nested)) == nested


def test_saved_beauty_config_reads_back_with_defaults_for_missing_keys(tmp_path):
  """A real recipe's config.json (its data.synthetic group is empty), minus a key added later,
  becomes the same spec again (eval.py, export.py and serve.py read workdirs this way)."""
  config = json.loads(beauty_config.get_config().to_json_best_effort())
  assert config["data"]["synthetic"] == {}
  del config["eval"]["seen_targets"]  # as if saved before the key existed
  (tmp_path / "config.json").write_text(json.dumps(config))
  spec = common.workdir_spec(str(tmp_path))
  assert spec.model.embed_dim == 256 and spec.eval.seen_targets == "miss"
  assert spec.data.path.endswith("Beauty.txt")


def test_every_problem_named_in_one_error():
  config = json.loads(beauty_config.get_config().to_json_best_effort())
  config["model"]["hidden_sise"] = 3
  config["optim"]["learning_rate"] = -1.0
  config["train"]["patience"] = -1
  del config["loss"]["kind"]
  with pytest.raises(errors.ConfigError) as e:
    run_lib.spec_from_config(config)
  message = str(e.value)
  for part in ("model.hidden_sise", "optim.learning_rate", "train.patience", "loss.kind"):
    assert part in message, (part, message)
  assert "\n" not in message


@pytest.mark.parametrize("train_items_only", [False, True])
def test_step_aux_counts_are_the_op_by_op_values_exactly(train_items_only):
  """`_count_aux` (one jitted program for start-up speed) repeats the op-by-op values bit for
  bit: the candidate mask and the sampling log-q, renormalised over trained items or not."""
  from lstmrec_jax import losses
  rng = np.random.default_rng(1)
  counts = rng.zipf(1.4, 5000)
  counts[rng.random(5000) < 0.1] = 0
  counts_V = jnp.asarray(counts)
  for alpha in (0.0, 0.5, 1.0):
    trained_V, log_q_V = run_lib._count_aux(counts_V, alpha=alpha,
                                            train_items_only=train_items_only, log_q=True)
    want = losses.popularity_log_q(counts_V, alpha)
    if train_items_only:
      want = jnp.where(counts_V > 0, want, -jnp.inf)
      want = want - jax.nn.logsumexp(want)
    np.testing.assert_array_equal(np.asarray(log_q_V), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(trained_V), counts > 0)
  assert run_lib._count_aux(counts_V, alpha=0.5, train_items_only=train_items_only,
                            log_q=False)[1] is None
