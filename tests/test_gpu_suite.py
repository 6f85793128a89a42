"""benchmarks/gpu_suite.py in its reduced mode: every variant reports, every check passes, and
it runs on a machine without tensorflow or ml_collections (like the GPU box)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
# Baselines that may legitimately be missing on a CPU test machine.
MAY_BE_UNAVAILABLE = {"torch_cudnn", "cudnn_jax"}


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory) -> dict:
  """One reduced run in a subprocess where `import tensorflow` / `ml_collections` fail."""
  tmp = tmp_path_factory.mktemp("gpu_suite")
  for name in ("tensorflow", "ml_collections"):  # shadow the installed packages
    (tmp / "blocked" / name).mkdir(parents=True)
    (tmp / "blocked" / name / "__init__.py").write_text(
        f"raise ImportError('{name} is not installed on the GPU box')\n")
  out = tmp / "gpu_suite.json"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp / "blocked"), str(REPO)]),
             JAX_PLATFORMS="cpu")
  env.pop("OUT", None)
  proc = subprocess.run([sys.executable, str(SUITE), "--reduced", "--out", str(out)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  doc = json.loads(out.read_text())
  doc["_stdout"] = proc.stdout
  return doc


def test_reduced_run_reports_every_variant(reduced_run):
  doc = reduced_run
  rows = doc["rows"]
  settings = doc["settings"]
  dtypes = {s["dtype"] for s in settings["shapes"]}
  for variant in settings["variants"]:
    for mode in ("fwd", "fwd_bwd"):
      got = {r["dtype"] for r in rows
             if r["kind"] == "layer" and r["variant"] == variant and r["mode"] == mode}
      assert got == dtypes, (variant, mode)
  for impl in settings["step_impls"]:
    assert [r for r in rows if r["kind"] == "train_step" and r["variant"] == impl], impl
  assert {"device", "jax_version", "date", "command", "elapsed_s"} <= set(doc)
  assert "variant" in doc["_stdout"] and "median_ms" in doc["_stdout"]  # the printed table


def test_reduced_run_checks_pass(reduced_run):
  rows = reduced_run["rows"]
  assert not [r for r in rows if r["status"] in ("failed", "skipped")], [
      (r["variant"], r["mode"], r["dtype"], r.get("reason")) for r in rows
      if r["status"] in ("failed", "skipped")]
  for r in rows:
    if r["status"] == "unavailable":
      assert r["variant"] in MAY_BE_UNAVAILABLE and r["reason"], r
      continue
    assert r["check"] == "pass", r
    assert r["median_ms"] > 0 and len(r["runs_ms"]) == reduced_run["settings"]["runs"]
    assert r["rel_err"] <= r["tol_rel"]
  # Ours and the flax baseline always run; so does the cuDNN weight-packing check in f32.
  ok = {(r["variant"], r["dtype"]) for r in rows if r["status"] == "ok"}
  for variant in ("xla", "pallas_step", "pallas_persistent", "flax_nnx"):
    assert {(variant, "f32"), (variant, "bf16")} <= ok, variant
  assert ("cudnn_jax", "f32") in ok
  # The pallas rows really ran the kernels (interpreted here), not the XLA fallback.
  for r in rows:
    if r["kind"] == "train_step" and r["variant"].startswith("pallas"):
      assert r["info"]["resolved_impl"] == r["variant"]


def test_reduced_run_imports_no_tensorflow(reduced_run):
  assert reduced_run["tensorflow_imported"] is False
  assert reduced_run["ml_collections_imported"] is False


def test_budget_guard_skips_and_records(tmp_path):
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    import gpu_suite  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  out = tmp_path / "skipped.json"
  assert gpu_suite.main(["--reduced", "--budget_s", "0", "--out", str(out)]) == 0
  doc = json.loads(out.read_text())
  assert doc["rows"] and all(r["status"] == "skipped" and "budget" in r["reason"]
                             for r in doc["rows"])
  # Two modes for every layer variant and shape, one row per training-step impl.
  expected = (len(doc["settings"]["variants"]) * len(doc["settings"]["shapes"]) * 2
              + len(doc["settings"]["step_impls"]))
  assert len(doc["rows"]) == expected


def test_report_renders_reduced_run_and_marks_failed_checks(reduced_run, tmp_path):
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    import gpu_report  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  doc = {k: v for k, v in reduced_run.items() if k != "_stdout"}
  path = tmp_path / "run.json"
  path.write_text(json.dumps(doc))
  text = gpu_report.render([path])
  shape = doc["settings"]["shapes"][0]
  line = next(l for l in text.splitlines()
              if l.startswith(f"| f32 | {shape['batch']} | {shape['length']} | {shape['hidden']} |"))
  assert "FAIL" not in text and line.count("|") == 4 + 1 + len(gpu_report.LAYER_ORDER) + 1
  assert "| pallas_persistent | f32 |" in text  # the training-step table
  # A row whose check failed is shown as FAIL and leaves the ratio out.
  for row in doc["rows"]:
    if row["kind"] == "layer" and row["variant"] == "pallas_persistent":
      row["check"] = "fail"
  path.write_text(json.dumps(doc))
  assert "FAIL" in gpu_report.render([path])


def test_the_suite_times_the_step_train_py_runs(reduced_run):
  """The training-step rows come from `train.steps.compile_train_step` of a run built by
  `run.build_run` (the step train.py runs), not from a step of the suite's own."""
  rows = [r for r in reduced_run["rows"] if r["kind"] == "train_step" and r["status"] == "ok"]
  assert rows
  for r in rows:
    assert r["info"]["step"] == "train.py's", r["info"]
    assert r["info"]["loss"] == "chunked"  # configs/base.py's loss, not a stand-in softmax
  sys.path.insert(0, str(REPO / "benchmarks"))
  import gpu_suite  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import steps  # pylint: disable=g-import-not-at-top
  calls = []
  real = steps.compile_train_step

  def spy(run, tx, **kwargs):
    calls.append(type(run).__name__)
    return real(run, tx, **kwargs)

  settings = gpu_suite.Settings(
      reduced=True, runs=1, warmup=0, budget_s=60, out=pathlib.Path("/dev/null"), shapes=[],
      variants=[], step_impls=["xla"], step_dtypes=["f32"], step_shape=(40, 8, 4, 6),
      step_batches=[4], interpret=True)
  steps.compile_train_step = spy
  try:
    step, state, make_batch, check, info = gpu_suite.build_train_step("xla", "f32", settings)
    state, loss = step(state, make_batch(0), None)
  finally:
    steps.compile_train_step = real
  assert calls == ["Run"] and bool(jax_isfinite(loss))


def jax_isfinite(x) -> bool:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return bool(np.isfinite(np.asarray(x)).all())
