"""benchmarks/average_checkpoints.py: the average of a run's checkpoints, evaluated."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import average_checkpoints  # noqa: E402
from helpers import tiny_config  # noqa: E402
from lstmrec_jax import checkpoint as ckpt_lib  # noqa: E402
from lstmrec_jax import workdir as workdir_lib  # noqa: E402
from lstmrec_jax.train import loop  # noqa: E402


def test_average_params_is_the_leafwise_mean():
  a = {"w": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(3.0)}}
  b = {"w": jnp.array([3.0, 6.0]), "b": {"c": jnp.array(-1.0)}}
  got = average_checkpoints.average_params([a, b, b])
  np.testing.assert_allclose(got["w"], [7.0 / 3.0, 14.0 / 3.0], rtol=1e-6)
  np.testing.assert_allclose(got["b"]["c"], 1.0 / 3.0, rtol=1e-6)
  with pytest.raises(ValueError, match="no checkpoints"):
    average_checkpoints.average_params([])


def test_a_kept_run_averaged_and_evaluated(tmp_path):
  workdir = tmp_path / "run"
  loop.train_and_evaluate(tiny_config(tmp_path, keep_checkpoints=1000, eval_every_epochs=1.0),
                          workdir)
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(steps) >= 2, steps
  a, b = steps[-2], steps[-1]
  rows = average_checkpoints.evaluate_averages(workdir, [[b], [b, b], [a, b]])
  # One checkpoint alone is eval.py's number for it; the same step twice is that step again.
  report = workdir_lib.evaluate_checkpoint(workdir, which=str(b))
  for split in ("valid", "test"):
    want = report["splits"][split]["model"]["overall"]["NDCG@10"]
    assert rows[0][split]["NDCG@10"] == pytest.approx(want, abs=1e-7)
    assert rows[1][split] == rows[0][split]
    assert 0.0 <= rows[2][split]["NDCG@10"] <= 1.0
  # The pair's parameters are the mean of the two restored checkpoints.
  run = workdir_lib.restore_run(workdir, which="latest").run
  ck = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    pa, pb = (ck.restore_params(run.params, str(s), run.mesh)[0] for s in (a, b))
  finally:
    ck.close()
  mean = average_checkpoints.average_params([pa, pb])
  for x, y, m in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), jax.tree.leaves(mean)):
    np.testing.assert_allclose(m, (np.asarray(x) + np.asarray(y)) / 2, rtol=1e-6, atol=1e-7)
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))
