"""benchmarks/run_jobs.py: the job file's errors, dependencies, failures and the deadline, run
against stand-in train.py / eval.py scripts (seconds, no training)."""

import json
import pathlib
import sys
import tarfile

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import run_jobs  # pylint: disable=g-import-not-at-top,wrong-import-position

# Stand-ins: train.py's "--config" says what it does (ok / fail / sleep); both record their argv.
TRAIN = """
import json, pathlib, sys, time
args = sys.argv[1:]
config, workdir = args[args.index("--config") + 1], pathlib.Path(args[args.index("--workdir") + 1])
workdir.mkdir(parents=True, exist_ok=True)
(workdir / "train_argv.json").write_text(json.dumps(args))
if config == "fail":
  sys.exit(3)
if config == "sleep":
  time.sleep(60)
(workdir / "report.json").write_text("{}")
"""
EVAL = """
import json, pathlib, sys
args = sys.argv[1:]
workdir = pathlib.Path(args[args.index("--workdir") + 1])
(workdir / "eval_argv.json").write_text(json.dumps(args))
"""


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
  repo = tmp_path / "repo"
  repo.mkdir()
  (repo / "train.py").write_text(TRAIN)
  (repo / "eval.py").write_text(EVAL)
  monkeypatch.setattr(run_jobs, "REPO", repo)
  return tmp_path / "runs"


@pytest.mark.parametrize("text,message", [
    ("only_a_name\n", "jobs:1: a job is 'name config"),
    ("a ok\na ok\n", "jobs:2: job 'a' appears twice"),
    ("b ok --config.train.init_from={runs}/a\na ok\n", "jobs:1: job 'b' needs 'a', which must come"),
    ("bad/name ok\n", "jobs:1: job name 'bad/name'"),
])
def test_bad_job_files_name_the_line(text, message, tmp_path):
  with pytest.raises(SystemExit, match=message.replace("{", r"\{").replace("(", r"\(")):
    run_jobs.parse_jobs(text, tmp_path, source="jobs")


def test_parse_jobs_common_flags_placeholders_and_dependencies(tmp_path):
  jobs = run_jobs.parse_jobs(
      "# comment\n a ok --config.seed=1  # trailing\n\nb ok --config.train.init_from={runs}/a\n",
      tmp_path, common=("--config.seed=0", "--config.data.cache_dir={runs}/cache"))
  assert [j["name"] for j in jobs] == ["a", "b"]
  assert jobs[0]["flags"] == ["--config.seed=0", f"--config.data.cache_dir={tmp_path}/cache",
                              "--config.seed=1"]
  assert jobs[0]["after"] == [] and jobs[1]["after"] == ["a"]
  assert jobs[1]["flags"][-1] == f"--config.train.init_from={tmp_path}/a"


def test_runs_dependencies_failures_and_skips(fake_repo):
  text = ("a ok\nb ok --config.train.init_from={runs}/a\nc fail\n"
          "d ok --config.train.init_from={runs}/c\n")
  jobs = run_jobs.parse_jobs(text, fake_repo)
  fake_repo.mkdir()
  done = {j.spec["name"]: j for j in run_jobs.run(jobs, fake_repo, parallel=2, deadline_s=60,
                                                   start_margin_s=0, eval_args=["--x"],
                                                   poll_s=0.05)}
  assert {n: j.status for n, j in done.items()} == {
      "a": "done", "b": "done", "c": "failed",
      "d": "not started: a job it needs did not finish"}
  assert done["c"].returncodes == [3]
  assert done["a"].returncodes == [0, 0]
  # b started only after a had ended (its init_from names a's finished workdir).
  assert done["b"].started >= done["a"].ended
  assert json.loads((fake_repo / "a" / "eval_argv.json").read_text()) == [
      "--workdir", str(fake_repo / "a"), "--x"]
  assert (fake_repo / "a.done").is_file() and not (fake_repo / "c.done").exists()
  # A second pass skips what finished and retries the failed job (and so its dependant).
  again = {j.spec["name"]: j.status for j in run_jobs.run(jobs, fake_repo, 2, 60, 0, [], 0.05)}
  assert again["a"] == again["b"] == "skipped: finished before"
  assert again["c"] == "failed"
  out = fake_repo / "pack.tar.gz"
  assert run_jobs.pack(fake_repo, ["a", "b"], out) == 2 * 3 + 2  # 3 json files + log each
  with tarfile.open(out) as tar:
    assert "a/report.json" in tar.getnames() and "b.log" in tar.getnames()


def test_deadline_stops_running_jobs_and_starts_no_more(fake_repo):
  jobs = run_jobs.parse_jobs("slow sleep\nlater ok\n", fake_repo)
  fake_repo.mkdir()
  done = {j.spec["name"]: j for j in run_jobs.run(jobs, fake_repo, parallel=1, deadline_s=2.0,
                                                   start_margin_s=0, eval_args=[], poll_s=0.05)}
  assert done["slow"].status == "stopped at the deadline"
  assert done["slow"].record()["wall_s"] < 30
  assert done["later"].status == "not started: no time left before the deadline"


JOB_FILES = sorted((pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "jobs").glob("*.txt"))


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_committed_job_files_name_real_configs_and_keys(path, tmp_path):
  """Every job of benchmarks/jobs/ loads its config (with its variant) and every --config.* flag
  names a key of it: a typo fails here, not on a device call."""
  import study_common  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = path.parents[2]
  jobs = run_jobs.parse_jobs(path.read_text(), tmp_path, source=path.name)
  assert jobs
  for job in jobs:
    file, _, variant = job["config"].partition(":")
    spec = importlib.util.spec_from_file_location("job_config", root / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
    overrides = [f[len("--config."):] for f in job["flags"] if f.startswith("--config.")]
    assert len(overrides) == len(job["flags"]), job["flags"]
    study_common.apply_overrides(config, overrides)
