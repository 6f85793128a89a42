"""train.py --distributed as 2 processes on this machine (jax.distributed, gloo CPU collectives)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
NUM_USERS = 160
TINY = ["--config", "configs/default.py", "--config.input.backend=numpy",
        "--config.data.cache_dir=", f"--config.data.synthetic.num_users={NUM_USERS}",
        "--config.data.synthetic.num_items=60", "--config.input.max_len=12",
        "--config.input.batch_size=16", "--config.input.eval_batch_size=32",
        "--config.model.embed_dim=8", "--config.model.hidden_size=8",
        "--config.model.embed_dropout=0.0", "--config.model.output_dropout=0.0",
        "--config.train.num_epochs=2", "--config.train.log_every_steps=1",
        "--config.train.progress_bar=false"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  # conftest gives this process 8 virtual devices; each child says how many it has itself.
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
          "PYTHONFAULTHANDLER": "1",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _check(proc: subprocess.Popen, what: str, timeout: float = 300) -> str:
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack into `err`
    try:
      out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
  assert proc.returncode == 0, f"{what} failed:\n{err[-4000:]}"
  return out


def _losses(workdir: pathlib.Path) -> dict[int, float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _test_overall(report_path: pathlib.Path) -> dict:
  return json.loads(report_path.read_text())["splits"]["test"]["model"]["overall"]


@pytest.mark.slow
def test_two_processes_train_like_one_and_write_one_checkpoint(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _check(subprocess.Popen([sys.executable, "train.py", *TINY, "--workdir", str(one)], cwd=REPO,
                          env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True), "the one-process run")
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "train.py", *TINY, "--workdir", str(two), "--distributed",
       "--coordinator_address", address, "--num_processes=2", f"--process_id={p}"],
      cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for p in range(2)]
  try:
    outs = [_check(proc, f"process {p}") for p, proc in enumerate(procs)]
  finally:  # a failed process leaves the other waiting at a barrier
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  assert "report:" in outs[0] and "report:" not in outs[1]  # only process 0 prints the report

  # Each global batch is split over the 2 processes exactly as over the 2 devices of one.
  losses_1, losses_2 = _losses(one), _losses(two)
  assert sorted(losses_1) == sorted(losses_2) and len(losses_1) > 2
  np.testing.assert_allclose([losses_2[s] for s in sorted(losses_2)],
                             [losses_1[s] for s in sorted(losses_1)], rtol=2e-5)

  # One set of checkpoints, at the one-process run's steps (not one per process).
  for sub in ("checkpoints", "best"):
    assert sorted(os.listdir(two / sub)) == sorted(os.listdir(one / sub)), sub
  overall_2 = _test_overall(two / "report.json")
  assert overall_2["users"] == NUM_USERS  # every test user once, though split over processes

  # The 2-process checkpoint restores and evaluates in one process, to the same numbers.
  _check(subprocess.Popen([sys.executable, "eval.py", "--workdir", str(two), "--splits", "test"],
                          cwd=REPO, env=_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True), "eval.py")
  overall_eval = _test_overall(two / "eval_best.json")
  assert overall_eval["users"] == NUM_USERS
  for k in ("HR@10", "NDCG@10", "MRR"):
    np.testing.assert_allclose(overall_eval[k], overall_2[k], rtol=1e-5, err_msg=k)


SPACE = '''"""Two trials that differ in dropout (tests/test_distributed.py)."""


def get_space():
  return {"model.embed_dropout": ("uniform", 0.0, 0.5)}
'''


@pytest.mark.slow
def test_tune_two_processes_finds_what_one_finds(tmp_path):
  """tune.py --distributed: the trials train in lock-step on 2 processes, process 0 writes."""
  space = tmp_path / "space.py"
  space.write_text(SPACE)
  common = ["tune.py", *TINY, "--space", str(space), "--num_trials=2"]
  one, two = tmp_path / "one", tmp_path / "two"
  out_one = _check(subprocess.Popen(
      [sys.executable, *common, "--tune_dir", str(one)], cwd=REPO, env=_env(2),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), "the one-process search")
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, *common, "--tune_dir", str(two), "--distributed", "--coordinator_address",
       address, "--num_processes=2", f"--process_id={p}"],
      cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for p in range(2)]
  try:
    outs = [_check(proc, f"process {p}") for p, proc in enumerate(procs)]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  # Only process 0 prints (and writes) the results table.
  assert "results:" in outs[0] and "results:" not in outs[1] and "results:" in out_one

  def rows(tune_dir):
    return [json.loads(line) for line in (tune_dir / "results.jsonl").read_text().splitlines()]

  rows_1, rows_2 = rows(one), rows(two)
  assert [r["trial"] for r in rows_2] == [r["trial"] for r in rows_1] and len(rows_1) == 2
  assert {r["status"] for r in rows_2} == {"done"}
  for r1, r2 in zip(rows_1, rows_2):
    assert r2["params"] == r1["params"]
    np.testing.assert_allclose(r2["valid_NDCG@10"], r1["valid_NDCG@10"], rtol=1e-4)
  for trial in (0, 1):
    losses_1, losses_2 = _losses(one / f"trial_{trial}"), _losses(two / f"trial_{trial}")
    assert sorted(losses_2) == sorted(losses_1) and len(losses_1) > 2
    np.testing.assert_allclose([losses_2[s] for s in sorted(losses_2)],
                               [losses_1[s] for s in sorted(losses_1)], rtol=2e-5)
    assert not list((two / f"trial_{trial}").glob("*.tmp"))
