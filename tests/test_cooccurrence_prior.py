"""benchmarks/cooccurrence_prior.py: the prior by hand, and alpha 0 is eval.py's ranking."""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import types

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import cooccurrence_prior  # noqa: E402
from helpers import tiny_config  # noqa: E402
from lstmrec_jax import workdir as workdir_lib  # noqa: E402
from lstmrec_jax.data.preprocess import Sequences  # noqa: E402
from lstmrec_jax.train import loop  # noqa: E402


def test_prior_matrix_by_hand():
  # [1, 2, 3] and [1, 2], window 1: C(1,2) = 2, C(2,3) = 1 both ways; row 2 sums to 3.
  train = Sequences.from_lists([[1, 2, 3], [1, 2]])
  dataset = types.SimpleNamespace(train=train, num_items=4)
  got = cooccurrence_prior.prior_matrix(dataset, 1).toarray()
  want = np.zeros((4, 4))
  want[1, 2] = np.log1p(100.0)
  want[2, 1], want[2, 3] = np.log1p(100.0 * 2 / 3), np.log1p(100.0 / 3)
  want[3, 2] = np.log1p(100.0)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_alpha_zero_is_eval_py(tmp_path):
  workdir = tmp_path / "run"
  loop.train_and_evaluate(tiny_config(tmp_path), workdir)
  restored = workdir_lib.restore_run(workdir)
  report = workdir_lib.evaluate_checkpoint(workdir)
  prior = cooccurrence_prior.prior_matrix(restored.run.dataset, 1)
  for split in ("valid", "test"):
    rows = cooccurrence_prior.split_metrics(restored, getattr(restored.run.dataset, split), prior,
                                            [0.0, 0.5], batch_size=64)
    want = report["splits"][split]["model"]["overall"]
    assert rows[0]["ndcg@10"] == pytest.approx(want["NDCG@10"], abs=1e-6)
    assert rows[0]["hr@10"] == pytest.approx(want["HR@10"], abs=1e-6)
    assert rows[1]["ndcg@10"] != rows[0]["ndcg@10"]  # the prior moves the ranking
    assert rows[2]["alpha"] is None and 0.0 <= rows[2]["ndcg@10"] <= 1.0  # the prior alone


def test_repeated_targets_follow_the_runs_protocol(tmp_path):
  """eval.seen_targets="miss": a target already in the history is a miss, as in eval.py."""
  workdir = tmp_path / "run"
  loop.train_and_evaluate(tiny_config(tmp_path), workdir)
  restored = workdir_lib.restore_run(workdir)
  run = restored.run
  test = run.dataset.test
  targets = np.array(test.targets_U)
  first = test.history.items_N[test.history.offsets_U1[:-1]]
  every_third = np.arange(len(targets)) % 3 == 0
  targets[every_third] = first[every_third]  # a third of the targets repeat a history item
  run.dataset = dataclasses.replace(run.dataset, test=dataclasses.replace(test, targets_U=targets))
  prior = cooccurrence_prior.prior_matrix(run.dataset, 1)
  got = cooccurrence_prior.split_metrics(restored, run.dataset.test, prior, [0.0], batch_size=64)
  want = workdir_lib.evaluate_run_params(run, restored.params, splits=("test",))
  want = want["splits"]["test"]["model"]["overall"]
  assert run.spec.eval.seen_targets == "miss"
  assert got[0]["ndcg@10"] == pytest.approx(want["NDCG@10"], abs=1e-6)
  assert got[0]["hr@10"] == pytest.approx(want["HR@10"], abs=1e-6)


def test_a_broken_model_scores_nothing(tmp_path):
  """NaN parameters: every user is a miss at every alpha (a NaN must not rank first)."""
  workdir = tmp_path / "run"
  loop.train_and_evaluate(tiny_config(tmp_path), workdir)
  restored = workdir_lib.restore_run(workdir)
  restored.params = jax.tree.map(lambda x: x * np.nan, restored.params)
  prior = cooccurrence_prior.prior_matrix(restored.run.dataset, 1)
  rows = cooccurrence_prior.split_metrics(restored, restored.run.dataset.test, prior, [0.0, 0.5],
                                          batch_size=64)
  assert [r["ndcg@10"] for r in rows[:2]] == [0.0, 0.0]
  assert [r["hr@10"] for r in rows[:2]] == [0.0, 0.0]
