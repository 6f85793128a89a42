"""Faults a run must survive (issue 15): each ends in one clear line and a usable workdir.

Tiny synthetic runs in-process; subprocesses only where a real signal, kill -9 or second process
is needed. The module records every fault it tried and, when all ran, renders the table of
docs/reliability.md from those results (faults tried, resumes exact, checkpoints lost, wrong
metrics reported): the numbers there come from this file, never by hand.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from lstmrec_jax import run as run_lib
from lstmrec_jax.evaluation import metrics
from lstmrec_jax.evaluation import ranking
from lstmrec_jax import checkpoint as ckpt_lib
from lstmrec_jax.train import loop
from lstmrec_jax.train import steps
from lstmrec_jax.scoring import ranks as ranks_lib
from lstmrec_jax import workdir as workdir_lib
from lstmrec_jax import errors
from lstmrec_jax import paths

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
RESULTS: list[dict] = []
EXPECTED_ROWS = 40  # every fault below; the table is written only when all of them ran
STOP = 12  # an evaluation step (eval_every_steps=4) where the interrupted runs stop


def record(fault: str, ending: str, *, exact: bool | None = None, lost: int = 0,
           wrong: int = 0) -> None:
  RESULTS.append({"fault": fault, "ending": ending, "exact": exact, "lost": lost,
                  "wrong": wrong})


def render(rows: list[dict]) -> str:
  """The markdown table of docs/reliability.md from the recorded rows."""
  resumes = [r for r in rows if r["exact"] is not None]
  lines = ["| faults tried | resumes exact | checkpoints lost | wrong metrics reported |",
           "|---:|---:|---:|---:|",
           f"| {len(rows)} | {sum(r['exact'] for r in resumes)} / {len(resumes)} | "
           f"{sum(r['lost'] for r in rows)} | {sum(r['wrong'] for r in rows)} |", "",
           "| fault | how it ends | resume exact |", "|---|---|---|"]
  for r in rows:
    exact = "-" if r["exact"] is None else ("yes" if r["exact"] else "**no**")
    lines.append(f"| {r['fault']} | {r['ending']} | {exact} |")
  return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def _write_table():
  yield
  if len(RESULTS) < EXPECTED_ROWS or not DOC.exists():
    return  # a partial run (-k) leaves the document as it is
  text = DOC.read_text()
  start, end = "<!-- faults table: tests/test_faults.py -->", "<!-- end faults table -->"
  if start in text and end in text:
    head, rest = text.split(start, 1)
    DOC.write_text(head + start + "\n" + render(RESULTS) + "\n" + end + rest.split(end, 1)[1])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("faults")


def cfg(base: pathlib.Path, **overrides):
  # patience 0: every run goes the full schedule, so reports compare exactly
  return tiny_config(base, **{"num_epochs": 3, "eval_every_steps": 4, "patience": 0, **overrides})


def test_score(report) -> float:
  return report["splits"]["test"]["model"]["overall"]["NDCG@10"]


test_score.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def reference(base) -> tuple[pathlib.Path, dict]:
  """An unbroken run: what every interrupted one must reach exactly."""
  workdir = base / "reference"
  return workdir, loop.train_and_evaluate(cfg(base), workdir)


@pytest.fixture(scope="module")
def stopped(base) -> pathlib.Path:
  """A run stopped at an evaluation step (stop_after_steps lands on it: two saves of one step)."""
  workdir = base / "stopped"
  out = loop.train_and_evaluate(cfg(base, stop_after_steps=STOP), workdir)
  assert out["stopped_at_step"] == STOP
  return workdir


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.rmtree(dst, ignore_errors=True)
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("lock"))
  return dst


def _params_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  files = sorted(p for p in (step_dir / "params").rglob("*") if p.is_file()
                 and p.stat().st_size > 0)
  data = [p for p in files if "d" in p.parts[-2:-1] or p.parent.name == "d"]
  return data or files


def _steps(workdir: pathlib.Path, name: str) -> list[int]:
  d = workdir / name
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


# ----------------------------------------------------------------------------- 1. NaN model


def test_nonfinite_score_ranks_worst_and_is_counted():
  user_BxE = jnp.ones((3, 2))
  table_VxE = jnp.array([[0., 0.], [1., 0.], [0., 1.], [0.5, 0.5]])
  table_VxE = table_VxE.at[2, 0].set(jnp.nan)  # user 0..2 all see a NaN score for item 2
  ranks = np.asarray(ranks_lib.target_ranks(user_BxE, table_VxE, None, jnp.array([1, 2, 3])))
  assert (ranks == metrics.NONFINITE_RANK).all()
  out = metrics.metrics_from_ranks(np.array([0, metrics.NONFINITE_RANK]))
  assert out["HR@1"] == 0.5 and out["MRR"] == 0.5 and out["nonfinite_users"] == 1
  healthy = np.asarray(ranks_lib.target_ranks(user_BxE, table_VxE.at[2, 0].set(0.), None,
                                            jnp.array([1, 2, 3])))
  assert (healthy < metrics.NONFINITE_RANK).all()


def test_nan_model_scores_zero_and_eval_refuses_it(reference, base):
  workdir, _ = reference
  restored = workdir_lib.restore_run(workdir, which="best", num_devices=1)
  r = restored.run
  nan_params = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), restored.params)
  rep = ranking.evaluate_params(r.graphdef, nan_params, r.consts, r.dataset, splits=("valid",),
                                mesh=r.mesh, batch_size=64, max_len=16, exclude_seen=True,
                                chunk_size=r.spec.eval.chunk_size)
  overall = rep["splits"]["valid"]["model"]["overall"]
  assert overall["NDCG@10"] == 0.0 and overall["nonfinite_users"] == overall["users"]
  # A NaN checkpoint (one written before this guard existed) is refused, never evaluated.
  broken = _copy(workdir, base / "nan_ckpt")
  checkpointer = ckpt_lib.Checkpointer(broken, async_save=False)
  state = checkpointer.restore_train_state(
      __import__("lstmrec_jax.optim", fromlist=["x"]).init_state(
          r.params, r.optimizer(24), 0), None)[0]
  step = int(state.step) + 100
  checkpointer.latest.save(step, args=checkpointer._args(  # pylint: disable=protected-access
      state._replace(step=jnp.asarray(step), params=nan_params), {}), force=True)
  checkpointer.close()
  with pytest.raises(errors.CheckpointError, match="non-finite parameters"):
    workdir_lib.evaluate_checkpoint(broken, which=str(step), num_devices=1)
  wrong = int(overall["NDCG@10"] != 0.0)
  record("NaN parameters: ranked, then evaluated by eval.py", "every user a miss, counted as "
         "`nonfinite_users`; eval.py: one line `non-finite parameters`", wrong=wrong)


# ----------------------------------------------------------------------------- 4. divergence


def test_divergence_stops_naming_the_step_and_saves_nothing_non_finite(base):
  workdir = base / "diverge"
  with pytest.raises(errors.DivergenceError, match=r"at step \d+"):
    loop.train_and_evaluate(cfg(base, **{"optim.learning_rate": 1e30}), workdir)
  for name in ("checkpoints", "best"):
    for step in _steps(workdir, name):
      assert ckpt_lib.verify_step(str(workdir / name / str(step))) is None
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  steps = checkpointer.latest.all_steps()
  checkpointer.close()
  for step in steps:  # whatever was saved before the divergence is finite
    restored = workdir_lib.restore_run(workdir, which=str(step), num_devices=1)
    assert ckpt_lib.params_finite(restored.params)
  record("learning rate 1e30 (divergence)", "one line naming the step; no non-finite "
         "checkpoint")
  for bad in ({"optim.learning_rate": -1.0}, {"optim.learning_rate": float("nan")},
              {"patience": -1}, {"log_every_steps": 0}, {"eval.chunk_size": 0},
              {"divergence_factor": 0.5}):
    with pytest.raises(errors.ConfigError):
      run_lib.spec_from_config(cfg(base, **bad))
  record("negative / NaN learning rate, patience -1, zero intervals", "one ConfigError line "
         "naming each key")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_params_finite_on_host_and_on_device_agree(bad):
  from lstmrec_jax import checkpoint as ckpt_lib
  good = {"a": np.ones((3, 5), np.float32), "b": {"c": jnp.arange(7.0).astype(jnp.bfloat16)},
          "steps": np.array([1, 2], np.int32)}
  assert ckpt_lib.params_finite(good)
  for path, leaf in (("a", good["a"]), ("c", good["b"]["c"])):
    broken = np.array(leaf).copy()
    broken.reshape(-1)[-1] = bad  # the last element
    tree = {**good, path: jnp.asarray(broken)} if path == "a" else {
        **good, "b": {"c": jnp.asarray(broken)}}
    assert not ckpt_lib.params_finite(tree)  # CPU arrays: read in host memory
    assert not bool(ckpt_lib._all_finite([x for x in jax.tree.leaves(tree)  # the device path
                                           if jnp.issubdtype(x.dtype, jnp.inexact)]))
  assert not ckpt_lib._host_finite(np.r_[np.zeros(10, np.float32), bad], block=4)
  assert ckpt_lib._host_finite(np.zeros(10, np.float32), block=4)


def test_skip_nonfinite_steps_keeps_the_old_state():
  from lstmrec_jax.optim import TrainState  # pylint: disable=g-import-not-at-top
  state = TrainState(step=jnp.asarray(3), params={"w": jnp.ones(2)}, opt_state={"m": jnp.ones(2)},
                     rng=jax.random.key(0))

  def bad_step(s, batch, aux):
    del batch, aux
    return s._replace(step=s.step + 1, params={"w": s.params["w"] * jnp.nan}), {
        "loss": jnp.nan, "grad_norm": jnp.asarray(1.0)}

  new, out = steps._guarded_step(state, None, None, step_fn=bad_step)  # pylint: disable=protected-access
  assert bool(out["skipped"]) and int(new.step) == 4
  np.testing.assert_array_equal(new.params["w"], state.params["w"])
  guard = loop._LossGuard(10.0, skip_nonfinite=True)  # pylint: disable=protected-access
  guard.add(4, out)
  guard.check()
  assert guard.skipped == 1


# ----------------------------------------------------------------------------- 2, 3. checkpoints


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "deleted file"])
def test_broken_latest_checkpoint_falls_back_and_resumes_exactly(stopped, reference, base,
                                                                 damage):
  workdir = _copy(stopped, base / f"broken_{damage.replace(' ', '_')}")
  target = _params_files(workdir / "checkpoints" / str(STOP))[0]
  if damage == "random bytes":
    size = target.stat().st_size
    with open(target, "r+b") as f:
      f.seek(size // 2)
      f.write(os.urandom(max(1, min(64, size - size // 2))))
  elif damage == "truncated":
    with open(target, "r+b") as f:
      f.truncate(target.stat().st_size // 2)
  else:
    target.unlink()
  report = loop.train_and_evaluate(cfg(base), workdir)
  moved = list((workdir / "broken").iterdir())
  exact = test_score(report) == test_score(reference[1])
  assert len(moved) == 1 and moved[0].name.startswith(f"checkpoints_{STOP}_"), moved
  assert exact
  record(f"latest checkpoint's params: {damage}", "one warning line, moved to broken/, "
         "resumed from the step before", exact=exact, lost=int(len(moved) != 1),
         wrong=int(not exact))


def test_broken_best_falls_back_to_the_previous_best(reference, base):
  workdir = _copy(reference[0], base / "broken_best")
  newest = _steps(workdir, "best")[-1]
  target = _params_files(workdir / "best" / str(newest))[0]
  with open(target, "r+b") as f:
    f.write(os.urandom(16))
  expected_steps = _steps(workdir, "best")[:-1]
  if not expected_steps:
    pytest.skip("the reference run improved only once")
  report = workdir_lib.evaluate_checkpoint(workdir, which="best", num_devices=1)
  assert report["step"] == expected_steps[-1]
  assert (workdir / "broken").exists() and len(list((workdir / "broken").iterdir())) == 1
  record("best checkpoint's params: random bytes", "eval.py warns, moves it aside, evaluates "
         "the previous best", wrong=0)


class _Killed(BaseException):
  """Stands for kill -9 at a chosen line (nothing after it runs, nothing is cleaned up)."""


def test_kill_between_best_and_latest_saves_resumes_exactly(reference, base, monkeypatch):
  workdir = base / "between_saves"
  saved_best = []
  real_best, real_latest = ckpt_lib.Checkpointer.save_best, ckpt_lib.Checkpointer.save_latest

  def save_best(self, state, meta, val):
    real_best(self, state, meta, val)
    saved_best.append(int(state.step))

  def save_latest(self, state, meta):
    if saved_best and int(state.step) == saved_best[-1] and int(state.step) >= 8:
      self._seal()  # pylint: disable=protected-access
      raise _Killed  # best/ has this step, checkpoints/ does not
    real_latest(self, state, meta)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "save_best", save_best)
  monkeypatch.setattr(ckpt_lib.Checkpointer, "save_latest", save_latest)
  with pytest.raises(_Killed):
    loop.train_and_evaluate(cfg(base), workdir)
  monkeypatch.undo()
  killed_at = saved_best[-1]
  assert killed_at in _steps(workdir, "best") and killed_at not in _steps(workdir, "checkpoints")
  report = loop.train_and_evaluate(cfg(base), workdir)  # used to be StepAlreadyExistsError
  exact = test_score(report) == test_score(reference[1])
  assert exact
  record("kill between the best/ and checkpoints/ saves of one step", "rerun resumes",
         exact=exact, wrong=int(not exact))


def test_stop_on_an_eval_step_and_rerunning_a_finished_run(stopped, reference, base):
  workdir = _copy(stopped, base / "stopped_rerun")
  report = loop.train_and_evaluate(cfg(base), workdir)
  exact = test_score(report) == test_score(reference[1])
  assert exact
  record("train.stop_after_steps on an evaluation step, then rerun", "resumes", exact=exact,
         wrong=int(not exact))
  finished = _copy(reference[0], base / "finished_rerun")
  again = loop.train_and_evaluate(cfg(base), finished)
  same = test_score(again) == test_score(reference[1])
  assert same
  record("rerunning a finished run", "evaluates the best again, same report", exact=same,
         wrong=int(not same))


# ----------------------------------------------------------------------------- 6. other data


def test_eval_refuses_other_data_unless_told(reference):
  workdir, _ = reference
  spec = run_lib.spec_from_config(run_lib.read_workdir_config(workdir))
  other = run_lib.with_overrides(spec, data={"synthetic": {**spec.data.synthetic, "seed": 4}}
                                 if isinstance(spec.data.synthetic, dict) else
                                 {"synthetic": {"num_users": 240, "num_items": 80, "seed": 4}})
  with pytest.raises(errors.ConfigError, match="other data"):
    workdir_lib.evaluate_checkpoint(workdir, which="best", spec=other, num_devices=1)
  assert not (workdir / "eval_best.json").exists()
  rep = workdir_lib.evaluate_checkpoint(workdir, which="best", spec=other, num_devices=1,
                                    allow_other_data=True)
  assert rep["splits"]["test"]["model"]["overall"]["users"] > 0
  record("eval.py on other data with the same item count", "one line; --allow_other_data "
         "evaluates anyway")


# ----------------------------------------------------------------------------- 7. JSONL


def test_torn_jsonl_line_is_cut(tmp_path):
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(tmp_path / "metrics.jsonl")
  path.write_text('{"step": 1}\n{"step": 2, "lo')
  assert loop.repair_jsonl(path)
  assert path.read_text() == '{"step": 1}\n'
  assert not loop.repair_jsonl(path)
  record("torn last line of metrics.jsonl", "cut on the next start (one warning)")


# ----------------------------------------------------------------------------- 8. one line


def test_user_os_errors_are_one_line(monkeypatch):
  from lstmrec_jax.cli import logs  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top

  def body():
    raise OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/12")

  monkeypatch.setattr(app, "run", lambda main, flags_parser=None: main([]))
  with pytest.raises(SystemExit, match="^error: No space left on device"):
    logs.run_main(body)

  # Orbax reports a full disk during a save as a ValueError (seen on a real run, 2026-12-05).
  def save_body():
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "item_repr.embedding/0.0" in OCDBT '
                     'database at local file "/w/best/1808.orbax-checkpoint-tmp/params.orbax-'
                     'checkpoint-tmp/ocdbt.process_0/": Failed writing: "/w/best/1808.orbax-'
                     'checkpoint-tmp/params.orbax-checkpoint-tmp/ocdbt.process_0/d/1f.__lock"')

  with pytest.raises(SystemExit, match="^error: out of disk space .* writing a checkpoint to "
                                       "/w/best/1808.*rerun the same command"):
    logs.run_main(save_body)

  def other_value_error():
    raise ValueError("some other bug")

  with pytest.raises(ValueError, match="some other bug"):  # not swallowed into one line
    logs.run_main(other_value_error)
  with pytest.raises(errors.CheckpointError, match="cannot write"):
    ckpt_lib.check_writable(pathlib.Path(__file__) / "not_a_dir")  # a file as the parent
  record("disk full / read-only workdir", "one `error:` line before any work; a full disk during a "
         "checkpoint save: one `error:` line, rerun resumes")


def test_ids_longer_than_int64_are_kept_as_strings(tmp_path):
  # pylint: disable-next=g-import-not-at-top
  from lstmrec_jax.data.formats import movielens, pairs, seqfile
  long_id = "12345678901234567890"  # 20 digits: over int64
  (tmp_path / "pairs.txt").write_text(f"{long_id} 5\n{long_id} 6\n2 5\n")
  (tmp_path / "seq.txt").write_text(f"{long_id} 5 6 7\n2 5 6 7 8\n")
  assert str(pairs.read_pairs(tmp_path / "pairs.txt").users[0]) == long_id
  assert str(seqfile.read_seqfile(tmp_path / "seq.txt").users[0]) == long_id
  (tmp_path / "ml").mkdir()
  (tmp_path / "ml" / "ratings.csv").write_text(
      f"userId,movieId,rating,timestamp\n1,{long_id},4,100\n1,2,3,101\n")
  (tmp_path / "ml" / "movies.csv").write_text(f"movieId,title,genres\n{long_id},Long,Drama\n")
  ml = movielens.read_movielens(tmp_path / "ml")
  assert ml.items.tolist() == [long_id, "2"] and ml.item_side.titles == {long_id: "Long"}
  record("20-digit ids (pairs, seqfile, MovieLens)", "kept exactly, as strings")


def test_bad_time_line_and_duplicate_events(tmp_path):
  from helpers import data_config  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import data  # pylint: disable=g-import-not-at-top

  times = [100, 101, 102, 103, 104, "1o5", 106]
  bad = tmp_path / "bad.csv"
  bad.write_text("user_id,item_id,timestamp\n" +
                 "".join(f"{1 + i // 3},{i},{t}\n" for i, t in enumerate(times)))
  with pytest.raises(data.DataError, match=rf"^{bad}:7: unparseable time '1o5'"):
    data.load_dataset(data_config(format="csv", path=str(bad)))
  record("CSV with one unparseable time on line 7", "one line naming the file, line 7 and"
         " the value")

  # Every event tripled: counted always, dropped with data.dedupe (the metrics rose silently).
  events = [(u, i, t) for u in range(4) for t, i in enumerate(range(u, u + 5))]
  tripled = tmp_path / "tripled.csv"
  tripled.write_text("user_id,item_id,timestamp\n" +
                     "".join(f"{u},{i},{t}\n" for u, i, t in events for _ in range(3)))
  kept = data.load_dataset(data_config(format="csv", path=str(tripled)))
  dropped = data.load_dataset(data_config(format="csv", path=str(tripled), dedupe=True))
  assert kept.stats["duplicate_events"] == 2 * len(events) == dropped.stats["dropped_duplicates"]
  assert dropped.stats["num_events"] == len(events)
  record("every event tripled", "counted in the log and stats; data.dedupe=True drops them")


def _cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_mistakes_are_one_line(reference):
  workdir = str(reference[0])
  cases = [(["train.py", "--workdir", workdir, "--config.train.nosuch=3"], "nosuch"),
           (["eval.py", "--workdir", workdir, "--checkpoint", "abc"], "--checkpoint"),
           (["eval.py", "--workdir", workdir, "--splits=train"], "--splits")]
  for args, needle in cases:
    out = _cli(args)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode != 0 and last.startswith("error:") and needle in last, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
  record("unknown config key, --checkpoint abc, --splits=train", "one `error:` line each")


# ----------------------------------------------------------------------------- 5, 7. processes


def _long_config_file(base: pathlib.Path) -> pathlib.Path:
  path = base / "long_config.py"
  path.write_text(
      "import pathlib, sys\n"
      f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
      "from helpers import tiny_config\n"
      "def get_config():\n"
      f"  return tiny_config(pathlib.Path({str(base)!r}), num_epochs=400, eval_every_steps=8,"
      " patience=0)\n")
  return path


def _start(config: pathlib.Path, workdir: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "train.py", "--config", str(config), "--workdir",
                           str(workdir)], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _wait_for_steps(workdir: pathlib.Path, proc: subprocess.Popen, min_rows: int = 3) -> None:
  deadline = time.time() + 180
  path = workdir / "metrics.jsonl"
  while time.time() < deadline:
    if path.exists() and path.read_text().count("\n") >= min_rows:
      return
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.2)
  raise TimeoutError("training did not start")


def _latest_params(workdir: pathlib.Path, step: int):
  restored = workdir_lib.restore_run(workdir, which=str(step), num_devices=1)
  return jax.tree.leaves(restored.params)


def _resume_matches_unbroken(base, config_file, workdir, name) -> bool:
  """Resumes `workdir` to a few steps past its saved step; compares with an unbroken run."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("long_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  saved = max(_steps(workdir, "checkpoints"), default=0)
  target = saved + 5
  c = module.get_config()
  c.train.stop_after_steps = target
  loop.train_and_evaluate(c, workdir)
  c2 = module.get_config()
  c2.train.stop_after_steps = target
  unbroken = base / f"unbroken_{name}"
  loop.train_and_evaluate(c2, unbroken)
  a, b = _latest_params(workdir, target), _latest_params(unbroken, target)
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_sigterm_saves_and_a_second_process_is_refused(base):
  config_file = _long_config_file(base)
  workdir = base / "sigterm"
  first = _start(config_file, workdir)
  try:
    _wait_for_steps(workdir, first)
    second = _cli(["train.py", "--config", str(config_file), "--workdir", str(workdir)])
    last = second.stderr.strip().splitlines()[-1]
    assert second.returncode != 0 and f"in use by process {first.pid}" in last, second.stderr
    record("a second train.py on the same workdir", "one line naming the holder's pid")
    t0 = time.time()
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    took = time.time() - t0
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 0, err
  assert took < 30 and "Traceback" not in err, err
  assert _steps(workdir, "checkpoints"), err
  exact = _resume_matches_unbroken(base, config_file, workdir, "sigterm")
  assert exact
  record("SIGTERM (preemption) during training", f"saved at the next step, rc 0 "
         f"(< 30 s); same command resumes", exact=exact, wrong=int(not exact))


def test_kill_9_at_a_random_point_resumes_exactly(base):
  config_file = _long_config_file(base)
  workdir = base / "kill9"
  rng = random.Random(15)
  proc = _start(config_file, workdir)
  try:
    _wait_for_steps(workdir, proc, min_rows=rng.randint(3, 40))
    time.sleep(rng.uniform(0.0, 1.0))  # anywhere: a step, an evaluation, a save, a seal
    proc.kill()
    proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir()) if (
      workdir / "checkpoints").exists() else []
  exact = _resume_matches_unbroken(base, config_file, workdir, "kill9")
  assert exact, before
  record("kill -9 at a random point (steps, evaluation, saves)", "same command resumes",
         exact=exact, wrong=int(not exact))


# ============================================================================= issue 24
# Each test below failed on the code before issue 24 (checked against that commit).


def _damage(path: pathlib.Path, n: int = 64) -> None:
  with open(path, "r+b") as f:
    f.seek(path.stat().st_size // 2)
    f.write(os.urandom(n))


def _csv_log(path: pathlib.Path, swap: tuple[int, int] | None = None) -> pathlib.Path:
  """A CSV of 60 users x 8-12 events over items 1..40 (fixed seed); `swap` exchanges two items."""
  rng = np.random.default_rng(24)
  rows = []
  for u in range(60):
    for t, i in enumerate(rng.integers(1, 41, rng.integers(8, 13))):
      i = int(i)
      if swap and i in swap:
        i = swap[1] if i == swap[0] else swap[0]
      rows.append(f"{u},{i},{t}\n")
  path.write_text("user_id,item_id,timestamp\n" + "".join(rows))
  return path


def test_shape_mismatch_is_one_line_and_moves_nothing(reference, base):
  """Item 1: other shapes (the data gained an item) are not corruption: nothing goes to broken/."""
  workdir = _copy(reference[0], base / "shape_mismatch")
  before = {name: _steps(workdir, name) for name in ("best", "checkpoints")}
  spec = run_lib.spec_from_config(run_lib.read_workdir_config(workdir))
  grown = run_lib.with_overrides(spec, data={"synthetic": {"num_users": 240, "num_items": 81,
                                                           "seed": 3}})
  with pytest.raises(errors.CheckpointError, match="other shapes"):
    workdir_lib.evaluate_checkpoint(workdir, which="best", spec=grown, num_devices=1,
                                    allow_other_data=True)
  after = {name: _steps(workdir, name) for name in ("best", "checkpoints")}
  moved = list((workdir / "broken").iterdir()) if (workdir / "broken").exists() else []
  assert after == before and not moved, (before, after, moved)
  assert workdir_lib.evaluate_checkpoint(workdir, which="best", num_devices=1)["step"] == \
      reference[1]["step"]  # the right data still finds its best
  # train.py rerun after the data file gained an item, in a workdir from before data.json
  # existed: refused in one line, not moved aside and restarted from step 0.
  data = _csv_log(base / "grown.csv")
  csv_config = cfg(base, **{"data.format": "csv", "data.path": str(data), "data.synthetic": {},
                            "stop_after_steps": 4})
  grown_workdir = base / "grown_data"
  loop.train_and_evaluate(csv_config, grown_workdir)
  (grown_workdir / "data.json").unlink()
  with open(data, "a") as f:
    f.write("0,41,99\n")
  with pytest.raises(errors.CheckpointError, match="other shapes"):
    loop.train_and_evaluate(csv_config, grown_workdir)
  moved += list((grown_workdir / "broken").iterdir()) if (grown_workdir / "broken").exists() else []
  assert _steps(grown_workdir, "checkpoints") == [4] and not moved, moved
  record("a checkpoint of other shapes (the data gained an item): eval.py --allow_other_data, "
         "train.py rerun", "one line naming the differing parameter; nothing moved to broken/",
         lost=len(moved))


def test_memory_store_ids_are_variable_length_bytes(tmp_path):
  """Items 2 and 3: one long id no longer widens every id; a trailing NUL survives a restart."""
  from lstmrec_jax.serving import store as store_lib  # pylint: disable=g-import-not-at-top
  path = tmp_path / "states.npz"
  states = store_lib.MemoryStore(path, interval_s=0)
  user = lambda x: store_lib.StoredUser(np.full(8, x, np.float32), [int(x)])  # noqa: E731
  users = {f"user{i}": user(i) for i in range(200)}
  users["x" * 100_000] = user(1000)  # 100 KB: a fixed-width array made every id 400 KB
  users["alice"], users["alice\x00"] = user(1), user(2)
  states.put_many(users)
  states.close()
  size = path.stat().st_size
  reread = store_lib.MemoryStore(path, interval_s=0)
  got = reread.get_many(list(users))
  reread.close()
  assert size < 1_000_000, f"{size} bytes for 203 users"
  assert set(got) == set(users)
  assert got["alice\x00"].vector_S[0] == 2 and got["alice"].vector_S[0] == 1
  record("one 100 KB user_id among 200 users (memory store snapshot)", f"{size // 1000} KB "
         "(ids as variable-length bytes; the server answers 413 past --max_user_id_bytes)")
  record("a user_id ending in NUL, graceful restart", "comes back as itself, apart from the "
         "same id without the NUL")


def test_topk_out_killed_mid_write_keeps_the_previous_file(reference, base, monkeypatch):
  """Item 4: --topk_out is written to a temporary and renamed; a kill mid-write keeps the old."""
  workdir = reference[0]
  out = base / "top10.tsv"
  out.write_text("previous\tresult\n")
  local = type(paths.workdir_path(base))
  real_write = local.write_text

  def dies_half_way(self, text, *args, **kwargs):
    real_write(self, text[:len(text) // 2], *args, **kwargs)
    raise _Killed

  monkeypatch.setattr(local, "write_text", dies_half_way)
  with pytest.raises(_Killed):
    workdir_lib.evaluate_checkpoint(workdir, which="best", splits=("valid",), num_devices=1,
                                    topk_out=str(out))
  monkeypatch.undo()
  assert out.read_text() == "previous\tresult\n"
  assert not [p for p in base.iterdir() if p.name.startswith("top10.tsv.")], "temporary left"
  record("eval.py --topk_out killed in the middle of writing", "the previous file intact "
         "(written to a temporary, then renamed)")


def _serve_env() -> dict:
  return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _serve(args: list[str], log: pathlib.Path, *, descriptors: int | None = None,
           wait: float = 180) -> tuple[subprocess.Popen, str]:
  """serve.py on a free port of 127.0.0.1 with `args` (and a descriptor limit); returns
  (process, url) once it answers."""
  import httpx  # pylint: disable=g-import-not-at-top
  port = _free_port()
  # The limit through the shell, not preexec_fn: no fork of this (threaded) process.
  limit = ["bash", "-c", f'ulimit -n {descriptors} && exec "$0" "$@"'] if descriptors else []
  proc = subprocess.Popen([*limit, sys.executable, str(REPO / "serve.py"), f"--port={port}",
                           *args], env=_serve_env(), stdout=open(log, "ab"),
                          stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + wait
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"serve.py exited {proc.returncode}: {log.read_text()[-3000:]}")
    try:
      if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
        return proc, url
    except httpx.HTTPError:
      time.sleep(0.2)
  proc.kill()
  raise AssertionError(f"serve.py did not answer in {wait} s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def bundle_dir(base) -> pathlib.Path:
  """A bundle of a tiny model (initial parameters: scores of order 1, no training needed)."""
  from lstmrec_jax.serving import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  run = run_lib.build_run(run_lib.spec_from_config(cfg(base)), num_devices=1)
  return bundle_lib.save(bundle_lib.from_run(run, run.params), base / "bundle")


SERVER_MAX_HISTORY = 16
SMALL_SERVER = ["--max_batch=4", f"--max_history={SERVER_MAX_HISTORY}", "--max_k=20",
                "--max_events=16"]


def test_acknowledged_events_survive_kill_9(bundle_dir, base):
  """Item 5: kill -9 under load; after a restart every acknowledged event's effect is there."""
  import httpx  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving.recommender import Recommender  # pylint: disable=g-import-not-at-top
  rec = Recommender.load(bundle_dir)
  state_file = base / "ack_states" / "states.npz"
  args = [f"--bundle={bundle_dir}", f"--state_file={state_file}", "--persist_interval_s=30",
          f"--compilation_cache={base / 'jax_cache'}", *SMALL_SERVER]
  log = base / "ack_serve.log"
  proc, url = _serve(args, log)
  rng = np.random.default_rng(5)
  histories = {f"u{j}": [rec.item_keys[int(i)] for i in rng.integers(1, rec.num_items, 40)]
               for j in range(24)}
  acked = {u: 0 for u in histories}

  def one_user(u):
    with httpx.Client(timeout=5) as client:
      for n, item in enumerate(histories[u], 1):
        try:
          r = client.post(f"{url}/events", json={"user_id": u, "item": item})
        except httpx.HTTPError:
          return  # the server died under us: this event was never acknowledged
        if r.status_code != 200:
          return
        assert r.json()["events"] == n
        acked[u] = n

  import threading  # pylint: disable=g-import-not-at-top
  threads = [threading.Thread(target=one_user, args=(u,)) for u in histories]
  for t in threads:
    t.start()
  deadline = time.time() + 60
  while sum(acked.values()) < 300 and time.time() < deadline:
    time.sleep(0.01)
  proc.kill()  # kill -9, well inside the 30 s snapshot interval
  proc.wait(timeout=30)
  for t in threads:
    t.join(timeout=30)
  total = sum(acked.values())
  assert 0 < total < 24 * 40, total
  proc, url = _serve(args, log)
  lost, wrong = 0, 0
  try:
    for u, history in histories.items():
      probe = httpx.post(f"{url}/events", json={"user_id": u, "item": "not-an-item"}).json()
      stored = probe["events"]  # an unknown item changes nothing and reports the count
      lost += max(0, acked[u] - stored)
      if stored:  # the state of exactly the first `stored` events: the Python API's scores
        got = httpx.post(f"{url}/recommend", json={"user_id": u, "k": 10}).json()
        # The server removes the items of a user's last --max_history events (16 here), not
        # of every event: the reference removes the same ones (the state reads them all).
        want = rec.recommend(history[:stored], k=rec.num_items - 1, exclude_seen=False,
                             exclude=history[:stored][-SERVER_MAX_HISTORY:])
        score = dict(want)
        close = lambda a, b: abs(a - b) <= 1e-4 * max(1.0, abs(b))  # noqa: E731
        wrong += not (len(got["items"]) == 10 and all(
            close(s, score[i]) for i, s in zip(got["items"], got["scores"])) and all(
                close(s, w) for s, w in zip(got["scores"], want.scores[:10])))
  finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
  assert lost == 0 and wrong == 0, (lost, wrong, total)
  assert "replayed" in log.read_text(), log.read_text()[-2000:]
  record(f"kill -9 of serve.py under load ({total} acknowledged events, memory store, 30 s "
         "snapshot interval)", "every acknowledged event replayed from the journal; states "
         "equal to the Python API", lost=lost, wrong=wrong)


def test_resume_on_changed_data_is_refused(base):
  """Item 6: train.py checks the data signature before resuming (items 5 and 7 swapped)."""
  workdir = base / "changed_data"
  data = _csv_log(base / "events.csv")
  csv_config = lambda **kw: cfg(base, **{"data.format": "csv", "data.path": str(data),  # noqa: E731
                                         "data.synthetic": {}, **kw})
  loop.train_and_evaluate(csv_config(stop_after_steps=4), workdir)
  _csv_log(data, swap=(5, 7))
  with pytest.raises(errors.ConfigError, match="trained on other data"):
    loop.train_and_evaluate(csv_config(), workdir)
  assert _steps(workdir, "checkpoints") == [4]  # nothing trained on the swapped data
  record("train.py rerun after the data changed (items 5 and 7 swapped)", "one line: the run "
         "trained on other data; nothing trained")


def test_both_newest_checkpoints_corrupt_resaves_the_best(reference, base):
  """Item 7: checkpoints/N and best/N both damaged: the rerun saves best/N again, reports N."""
  best = reference[1]["step"]
  workdir = base / "both_corrupt"
  loop.train_and_evaluate(cfg(base, stop_after_steps=best), workdir)
  assert best in _steps(workdir, "best") and best in _steps(workdir, "checkpoints")
  for name in ("checkpoints", "best"):
    _damage(_params_files(workdir / name / str(best))[0])
  report = loop.train_and_evaluate(cfg(base), workdir)
  exact = report["step"] == best and test_score(report) == test_score(reference[1])
  assert ckpt_lib.verify_step(str(workdir / "best" / str(best))) is None
  assert exact, (report["step"], best)
  record("both newest checkpoints (checkpoints/N and best/N) damaged, rerun", "both set aside; "
         "best/N saved again and reported", exact=exact, wrong=int(not exact))


def test_bundles_are_verified_at_load(bundle_dir, base):
  """Item 8: swapped rows, duplicate ids, changed bytes, NaN parameters, a truncated file."""
  import json as json_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving.recommender import Recommender  # pylint: disable=g-import-not-at-top

  def reseal(d):  # what someone editing the folder on purpose would do
    sums = json_lib.loads((d / "checksums.json").read_text())
    sums["sha256"] = {n: bundle_lib._sha256(d / n) for n in sums["sha256"]}  # pylint: disable=protected-access
    (d / "checksums.json").write_text(json_lib.dumps(sums))

  def swap_rows(d):
    with np.load(d / "params.npz") as z:
      params = {k: z[k] for k in z.files}
    name = max(params, key=lambda k: params[k].size)
    params[name][[1, 2]] = params[name][[2, 1]]
    np.savez(d / "params.npz", **params)

  def duplicate_id(d, seal=False):
    keys = json_lib.loads((d / "items.json").read_text())
    keys[2] = keys[1]
    (d / "items.json").write_text(json_lib.dumps(keys))
    if seal:
      reseal(d)

  def nan_params(d):
    b = bundle_lib.load(d)
    b.params = {k: np.full_like(v, np.nan) for k, v in b.params.items()}
    bundle_lib.save(b, d)  # a consistent bundle of a diverged run: checksums match

  cases = {"swapped parameter rows": (swap_rows, "params.npz does not match"),
           "duplicated id in items.json": (duplicate_id, "items.json does not match"),
           "duplicated id, checksums rewritten": (lambda d: duplicate_id(d, True), "twice"),
           "64 changed bytes in observe.jax": (lambda d: _damage(d / "observe.jax"),
                                              "observe.jax does not match"),
           "NaN parameters": (nan_params, "not finite"),
           "truncated items.json": (lambda d: (d / "items.json").write_text(
               (d / "items.json").read_text()[:40]), "items.json does not match"),
           "a pinned digest of another bundle": (lambda d: None, "digest")}
  for name, (tamper, needle) in cases.items():
    d = _copy(bundle_dir, base / "tampered" / name.replace(" ", "_"))
    tamper(d)
    pin = "0" * 64 if "digest" in name else None
    with pytest.raises(errors.CheckpointError, match=needle) as e:
      Recommender.load(d, **({"expect_sha256": pin} if pin else {}))
    assert "\n" not in str(e.value), str(e.value)
  assert Recommender.load(bundle_dir, expect_sha256=bundle_lib.digest(bundle_dir)).num_items > 1
  # serve.py on a damaged bundle: one error line, before it listens.
  d = _copy(bundle_dir, base / "tampered" / "serve")
  _damage(d / "params.npz")
  out = _cli(["serve.py", f"--bundle={d}", "--state_file=", f"--port={_free_port()}"])
  last = out.stderr.strip().splitlines()[-1]
  assert out.returncode != 0 and last.startswith("error: bundle") and "Traceback" not in \
      out.stderr, out.stderr[-2000:]
  record(f"bundle tampered ({', '.join(cases)})", "refused at load, one line (checksums, "
         "unique ids, counts, finite parameters); serve.py exits before listening")


def test_two_writers_of_one_report_do_not_collide(tmp_path):
  """Item 9: two eval.py on one workdir wrote through the same eval_best.json.tmp."""
  import threading  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.evaluation import reports  # pylint: disable=g-import-not-at-top
  target = tmp_path / "eval_best.json"
  failures = []

  def writer(tag):
    for i in range(300):
      try:
        reports.write_report(target, {"writer": tag, "i": i, "pad": "x" * 20000})
      except OSError as e:
        failures.append(repr(e))
        return

  threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not failures, failures[:2]
  assert __import__("json").loads(target.read_text())["i"] == 299
  assert [p.name for p in tmp_path.iterdir()] == ["eval_best.json"]
  record("two eval.py writing one workdir's report at once", "both finish (a temporary name "
         "per writer); the last rename wins")


def test_corrupt_dataset_cache_is_rebuilt(tmp_path):
  """Item 10: a damaged cache/*.npz crashed with BadZipFile."""
  from helpers import data_config  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import data  # pylint: disable=g-import-not-at-top
  config = data_config(format="csv", path=str(_csv_log(tmp_path / "events.csv")),
                       cache_dir=str(tmp_path / "cache"))
  first = data.load_dataset(config)
  (cached,) = (tmp_path / "cache").glob("*.npz")
  cached.write_bytes(b"PK\x03\x04 not a zip at all" + os.urandom(100))
  again = data.load_dataset(config)
  assert again.num_items == first.num_items
  np.testing.assert_array_equal(again.train.items_N, first.train.items_N)
  assert data.load_dataset(config).num_users == first.num_users  # the rebuilt entry reads
  record("a damaged dataset cache (cache/*.npz)", "one warning; rebuilt from the source")


def _server_config(**kwargs):
  """ServerConfig(**kwargs) without the keys it lacks (so this file also runs on older code)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import server as server_lib  # pylint: disable=g-import-not-at-top
  known = {f.name for f in dataclasses.fields(server_lib.ServerConfig)}
  return server_lib.ServerConfig(**{k: v for k, v in kwargs.items() if k in known})


class _StalledStore:
  """A store that can stall like a Redis that stopped answering (calls block until released)."""

  local = False

  def __init__(self):
    import threading  # pylint: disable=g-import-not-at-top
    from lstmrec_jax.serving import store as store_lib  # pylint: disable=g-import-not-at-top
    self.inner = store_lib.MemoryStore()
    self.flowing = threading.Event()
    self.flowing.set()

  def _wait(self):
    self.flowing.wait(30)

  def get_many(self, ids):
    self._wait()
    return self.inner.get_many(ids)

  def put_many(self, users):
    self._wait()
    self.inner.put_many(users)

  def commit(self, users, record_bytes):
    del record_bytes
    self.put_many(users)

  def pending(self):
    return []

  def ping(self):
    self._wait()

  def flush(self):
    pass

  def close(self):
    self.flowing.set()

  def describe(self):
    return {"kind": "stalled-for-the-test"}


def test_a_stalled_store_blocks_only_what_needs_it(bundle_dir):
  """Item 11: a stalled store held every batch (history requests too) and /healthz said ok."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  from starlette.testclient import TestClient  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import server as server_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving.recommender import Recommender  # pylint: disable=g-import-not-at-top
  rec = Recommender.load(bundle_dir)
  store = _StalledStore()
  config = _server_config(max_batch=4, max_wait_ms=1, max_k=20, max_history=16, max_events=16,
                          store_timeout_s=1.0)
  history = rec.item_keys[1:6]
  with TestClient(server_lib.create_app(server_lib.Service(rec, store, config))) as client, \
      concurrent.futures.ThreadPoolExecutor(4) as pool:
    assert client.post("/events", json={"user_id": "u", "items": history}).status_code == 200
    assert client.get("/healthz").status_code == 200
    store.flowing.clear()  # Redis stops answering
    stalled = [pool.submit(client.post, "/events", json={"user_id": "u", "item": history[0]}),
               pool.submit(client.post, "/recommend", json={"user_id": "u", "k": 5})]
    time.sleep(0.2)
    t = time.time()
    by_history = client.post("/recommend", json={"history": history, "k": 5})
    history_s = time.time() - t
    answers = [f.result(timeout=10) for f in stalled]
    health = client.get("/healthz")
    store.flowing.set()
    recovered = client.post("/recommend", json={"user_id": "u", "k": 5})
  assert by_history.status_code == 200 and history_s < 0.8, history_s
  assert by_history.json()["items"] == rec.recommend(history, k=5).items
  assert [a.status_code for a in answers] == [503, 503], [a.text for a in answers]
  assert health.status_code == 503 and not health.json()["store"]["ok"], health.text
  assert recovered.status_code == 200
  record("a stalled state store (Redis stops answering)", f"history requests answered "
         f"({history_s:.2f} s); requests that need the store 503 after --store_timeout_s; "
         "/healthz 503 naming the store")


def test_idle_connections_do_not_block_new_requests(bundle_dir, base):
  """Item 12: idle connections took every descriptor (here a 256-descriptor limit, 600 idle)."""
  import socket  # pylint: disable=g-import-not-at-top
  import httpx  # pylint: disable=g-import-not-at-top
  limit = 256
  proc, url = _serve([f"--bundle={bundle_dir}", "--state_file=",
                      f"--compilation_cache={base / 'jax_cache'}", *SMALL_SERVER],
                     base / "idle_serve.log", descriptors=limit)
  port = int(url.rsplit(":", 1)[1])
  idle = []
  try:
    for _ in range(600):
      s = socket.socket()
      s.setblocking(False)
      s.connect_ex(("127.0.0.1", port))
      idle.append(s)
    time.sleep(0.5)
    t = time.time()
    r = httpx.post(f"{url}/recommend", json={"history": [], "k": 3}, timeout=10)
    took = time.time() - t
  finally:
    for s in idle:
      s.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
  assert r.status_code == 200 and took < 5, took
  record(f"600 idle connections from one client, {limit}-descriptor limit", f"a new request "
         f"answered in {took:.2f} s (idle ones closed past --max_connections and "
         "--header_timeout_s)")


def test_workdir_plugins_run_only_when_trusted(reference, base):
  """Item 13: a workdir's plugins.json ran code on eval / export / load without a word."""
  import json as json_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving.recommender import Recommender  # pylint: disable=g-import-not-at-top
  workdir = _copy(reference[0], base / "untrusted")
  marker = base / "plugin_ran"
  plugin = base / "evil_plugin.py"
  plugin.write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\n")
  (workdir / "plugins.json").write_text(json_lib.dumps([str(plugin)]))
  for load in (lambda: workdir_lib.restore_run(workdir, num_devices=1),
               lambda: Recommender.load(workdir)):
    with pytest.raises(errors.PluginError, match="--trust_plugins"):
      load()
  assert not marker.exists()
  # A working folder's own configs/base.py is not run either.
  cwd = base / "cwd_with_configs"
  (cwd / "configs").mkdir(parents=True, exist_ok=True)
  (cwd / "configs" / "base.py").write_text(f"open({str(marker)!r}, 'a').write('base\\n')\n")
  out = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--workdir={workdir}",
                        "--splits=valid"], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
  last = out.stderr.strip().splitlines()[-1]
  assert out.returncode != 0 and "--trust_plugins" in last and "Traceback" not in out.stderr
  assert not marker.exists(), marker.read_text()
  trusted = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--workdir={workdir}",
                            "--splits=valid", "--trust_plugins"], cwd=cwd, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert trusted.returncode == 0, trusted.stderr[-2000:]
  assert marker.read_text() == "ran\n" and f"plug-in imported: {plugin}" in trusted.stderr
  meta = Recommender.load(reference[0]).metadata()
  assert str(reference[0]) not in json_lib.dumps(meta)  # /metadata serves this
  record("a workdir's plugins.json names code (eval.py, export.py, serve.py --workdir, "
         "Recommender.load); ./configs/base.py in the working folder", "nothing imported unless "
         "--trust_plugins (one line naming them); each import logged; /metadata without the "
         "workdir path")


def test_messages_are_one_line(reference, bundle_dir, base, caplog, monkeypatch):
  """Item 14: each of these was a traceback (or a silent number) where one line is promised."""
  from starlette.testclient import TestClient  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import server as server_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import store as store_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving.recommender import Recommender  # pylint: disable=g-import-not-at-top
  rec = Recommender.load(bundle_dir)
  service = server_lib.Service(rec, store_lib.MemoryStore(), _server_config(
      max_batch=4, max_k=20, max_history=16, max_events=16, max_user_id_bytes=64))
  with TestClient(server_lib.create_app(service)) as client:
    bad_utf8 = client.post("/recommend", content=b'{"history": ["\xff\xfe"]}')
    long_id = client.post("/events", json={"user_id": "x" * 65, "item": rec.item_keys[1]})
  assert bad_utf8.status_code == 400 and "UTF-8" in bad_utf8.json()["error"], bad_utf8.text
  assert long_id.status_code == 413 and "user_id" in long_id.json()["error"], long_id.text
  record("invalid UTF-8 in a request; a user_id over the limit", "400 and 413, one line each")

  one_user = base / "one_user.csv"
  one_user.write_text("user_id,item_id,timestamp\n" + "".join(f"1,{i},{i}\n" for i in range(1, 6)))
  one_config = lambda **kw: cfg(base, **{"data.format": "csv", "data.path": str(one_user),  # noqa: E731
                                         "data.synthetic": {}, **kw})
  with pytest.raises(errors.ConfigError, match="input.batch_size"):
    loop.train_and_evaluate(one_config(), base / "one_user_default_batch")
  caplog.set_level("WARNING")
  report = loop.train_and_evaluate(one_config(**{"input.batch_size": 1, "input.max_len": 4,
                                                 "input.eval_batch_size": 1}),
                                   base / "one_user")
  candidates = report["splits"]["test"]["candidates"]
  assert candidates["min"] <= 2 and candidates["users_at_most_max_k"] == 1, candidates
  assert "high by construction" in caplog.text
  record("a 1-user file: the default batch size; then NDCG@10 over 1 candidate item", "one "
         "line naming input.batch_size; the report counts the candidates and warns")

  monkeypatch.setattr(run_lib, "_physical_memory", lambda: 16 << 30)  # any machine: 16 GiB
  huge = run_lib.spec_from_config(cfg(base, **{"input.max_len": 100_000,
                                               "input.eval_batch_size": 512,
                                               "model.embed_dim": 64, "model.hidden_size": 64}))
  with pytest.raises(errors.ConfigError, match="longest history in the data"):
    run_lib.build_run(huge, num_devices=1)
  monkeypatch.undo()
  record("input.max_len=100000", "one line before any allocation, naming the longest history")

  odd = base / "odd://workdir"
  report = loop.train_and_evaluate(cfg(base, num_epochs=1), str(odd))
  again = workdir_lib.evaluate_checkpoint(str(odd), which="best", num_devices=1)
  assert again["step"] == report["step"]
  record("a workdir path containing '://'", "a local folder: trains and evaluates")

  with pytest.raises(errors.ConfigError, match="Redis does not answer"):
    store_lib.RedisStore(f"redis://127.0.0.1:{_free_port()}/0", namespace="x", timeout_s=1)
  record("Redis down at start-up", "one line naming the URL")

  d = _copy(bundle_dir, base / "corrupt_json")
  (d / "bundle.json").write_text('{"format_version": 2, "model": ')
  (d / "checksums.json").unlink()
  for damaged in (d, _copy(bundle_dir, base / "corrupt_params")):
    if damaged.name == "corrupt_params":
      (damaged / "params.npz").write_bytes(b"PK\x03\x04garbage")
      sums = __import__("json").loads((damaged / "checksums.json").read_text())
      sums["sha256"]["params.npz"] = bundle_lib._sha256(damaged / "params.npz")  # pylint: disable=protected-access
      (damaged / "checksums.json").write_text(__import__("json").dumps(sums))
    with pytest.raises(errors.CheckpointError) as e:
      Recommender.load(damaged)
    assert "\n" not in str(e.value) and "re-export" in str(e.value), str(e.value)
  record("a corrupt bundle.json or params.npz (checksums matching)", "one line: unreadable, "
         "re-export")


def test_resume_after_kill_does_not_repeat_metrics_rows(base, monkeypatch):
  """Item 14: a kill after a validation row was written and before its checkpoint: the resumed
  run wrote the row again (metrics.jsonl repeated it)."""
  workdir = base / "repeat_rows"
  real_best, real_latest = ckpt_lib.Checkpointer.save_best, ckpt_lib.Checkpointer.save_latest

  def best_killed_at_8(self, state, meta, val):
    if int(state.step) == 8:
      raise _Killed  # the validation row of step 8 is written; no checkpoint of step 8
    real_best(self, state, meta, val)

  def latest_killed_at_8(self, state, meta):
    if int(state.step) == 8:
      raise _Killed
    real_latest(self, state, meta)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "save_best", best_killed_at_8)
  monkeypatch.setattr(ckpt_lib.Checkpointer, "save_latest", latest_killed_at_8)
  with pytest.raises(_Killed):
    loop.train_and_evaluate(cfg(base), workdir)
  monkeypatch.undo()
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any(r["step"] == 8 and "valid/NDCG@10" in r for r in rows)
  loop.train_and_evaluate(cfg(base), workdir)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["step"], "valid/NDCG@10" in r) for r in rows]
  repeated = len(keys) - len(set(keys))
  assert repeated == 0, [k for k in keys if keys.count(k) > 1]
  record("kill -9 between a validation row and its checkpoint, then resume", "metrics.jsonl "
         "keeps each step's rows once (rows past the resumed step dropped, one warning)",
         wrong=repeated)
