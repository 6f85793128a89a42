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

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
RESULTS: list[dict] = []
EXPECTED_ROWS = 20  # every fault below; the table is written only when all of them ran
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
  with pytest.raises(errors.CheckpointError, match="cannot write"):
    ckpt_lib.check_writable(pathlib.Path(__file__) / "not_a_dir")  # a file as the parent
  record("disk full / read-only workdir", "one `error:` line before any work")


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
