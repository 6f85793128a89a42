"""benchmarks/step_efficiency.py's profile: a step's op time split into matmuls and the rest."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import step_efficiency  # noqa: E402


def _toy_step():
  """A compiled (state, batch, aux) -> (state, out) function with one matmul and an exp."""

  def step(state, x, w):
    y = jnp.exp(x @ w)  # a dot, then an elementwise pass
    return state + y.sum(), y.mean()

  x = jnp.ones((64, 128)) / 128
  w = jnp.ones((128, 256))
  compiled = jax.jit(step).lower(jnp.float32(0), x, w).compile()
  return compiled, x, w


def test_kinds_name_the_dot_a_matmul_and_the_exp_not():
  compiled, _, _ = _toy_step()
  kinds = step_efficiency.hlo_op_kinds(compiled.as_text())
  # The module runs its ops in the entry computation: the fusion that holds the dot (with the
  # exp and the sum XLA fused behind it) is a matmul, the scalar adds after it are not.
  matmuls = [n for n, (k, _, _) in kinds.items() if k == "matmul"]
  adds = [n for n, (k, _, src) in kinds.items() if src == "jit(step)/add"]
  assert matmuls, kinds
  assert adds and all(kinds[n][0] == "other" for n in adds), kinds


def test_split_sums_per_step_and_skips_loops_and_unknown_names():
  kinds = {"dot.1": ("matmul", "f32[2,2]", "x/dot_general"),
           "ynn_fusion.3": ("matmul", "f32[2,2]", "x/dot_general"),
           "add.2": ("other", "f32[2,2]", "x/add"),
           "exp.4": ("other", "f32[2,2]", "x/exp"),
           "while.5": ("other", "(s32[])", "x/while")}
  events = [{"ph": "X", "name": "dot.1", "dur": 3000}, {"ph": "X", "name": "dot.1", "dur": 1000},
            {"ph": "X", "name": "ynn_fusion.3", "dur": 2000},
            {"ph": "X", "name": "add.2", "dur": 500}, {"ph": "X", "name": "exp.4", "dur": 1500},
            {"ph": "X", "name": "while.5", "dur": 90000},  # holds the ops above: not again
            {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 90000},
            {"ph": "M", "name": "add.2", "dur": 7000}]  # metadata, not a span
  got = step_efficiency.op_split(events, kinds, steps=2)
  assert got["matmul_ms"] == pytest.approx(3.0)  # (3 + 1 + 2) ms over 2 steps
  assert got["other_ms"] == pytest.approx(1.0)  # (0.5 + 1.5) ms over 2 steps
  assert [o["op"] for o in got["top_other"]] == ["exp.4", "add.2"]
  assert got["top_other"][0]["ms"] == pytest.approx(0.75)


def test_ceiling_is_the_ideal_matmul_time_over_that_plus_the_rest():
  # 10 GFLOP at 100 GFLOP/s: 100 ms of ideal matmuls; 100 ms of other ops -> half.
  assert step_efficiency.ceiling(10.0, 100.0, 100.0) == pytest.approx(0.5)
  assert step_efficiency.ceiling(10.0, 100.0, 0.0) == pytest.approx(1.0)
  # A faster roofline lowers the ceiling when the rest stays.
  assert step_efficiency.ceiling(10.0, 400.0, 100.0) == pytest.approx(0.2)
  # 100 ms of thread time on 2 cores: at best 50 ms of the step.
  assert step_efficiency.ceiling(10.0, 100.0, 100.0, cores=2) == pytest.approx(2 / 3)


def test_profile_of_a_compiled_step_finds_its_matmul_time():
  compiled, x, w = _toy_step()
  got = step_efficiency.profile_ops(compiled, jnp.float32(0), [x], w, steps=3)
  assert "error" not in got, got
  assert got["steps"] == 3
  assert got["matmul_ms"] > 0.0
  assert got["matmul_ms"] + got["other_ms"] <= got["traced_step_ms"] * 1.5
