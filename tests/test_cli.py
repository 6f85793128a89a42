"""Entry points: bad input ends in one clear line naming the file and line, never a traceback."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("content,expected", [
    ("1 10 11 12\n2 13 x 15\n", "Beauty.txt:2:"),  # non-integer item id on line 2
    ("", "Beauty.txt"),  # empty file
])
def test_train_py_reports_malformed_file_in_one_line(tmp_path, content, expected):
  data = tmp_path / "Beauty.txt"
  data.write_text(content)
  proc = subprocess.run(
      [sys.executable, "train.py", "--config", "configs/beauty.py", f"--config.data.path={data}",
       "--config.data.cache_dir=", "--config.data.attributes_path=", f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and expected in last, last


# ----------------------------------------------------------------------------- issue 23:
# a newcomer's first hour. Each test runs an entry point as a user would, from an empty folder.

import json
import os
import re

ENTRY_POINTS = {  # script: flags it must list under --help (its own, and those it borrows)
    "train.py": ("--config", "--workdir", "--plugins"),
    "eval.py": ("--workdir", "--checkpoint", "--topk_out", "--plot"),
    "tune.py": ("--config", "--space", "--tune_dir", "--num_trials"),
    "cold_start.py": ("--workdirs", "--checkpoint", "--splits", "--data_path"),
    "export.py": ("--workdir", "--out"),
    "serve.py": ("--bundle", "--port"),
}


def _env(home=None):
  """The suite's environment for a subprocess: one CPU device, the repository importable."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  if home is not None:
    env["HOME"] = str(home)  # the default dataset cache is ~/.cache/lstmrec_jax
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a new user's: ~/.cache/lstmrec_jax/jax
    env.pop("XDG_CACHE_HOME", None)
  return env


def _run(args, cwd, home=None, timeout=300):
  return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                        text=True, timeout=timeout, env=_env(home))


def _last_line(proc):
  return (proc.stderr.strip().splitlines() or [""])[-1]


@pytest.mark.parametrize("script", sorted(ENTRY_POINTS))
def test_help_lists_the_entry_points_own_flags_and_exits_0(script, tmp_path):
  """Item 2: --help (and -h) is the entry point's own flags, not "Try --helpfull" and exit 1."""
  for flag in ("--help", "-h"):
    proc = _run([ROOT / script, flag], tmp_path)
    assert proc.returncode == 0, (script, proc.stdout[-500:], proc.stderr[-2000:])
    for own in ENTRY_POINTS[script]:
      listed = "^  --(\\[no\\])?" + re.escape(own[2:]) + " "
      assert re.search(listed, proc.stdout, re.M), (script, own, proc.stdout)
    assert "--logtostderr" not in proc.stdout and "--helpfull" in proc.stdout  # absl's: helpfull
  if "--config" in ENTRY_POINTS[script]:
    assert "configs/base.py" in proc.stdout and "beauty_content (:cold)" in proc.stdout
    listed_groups = proc.stdout.split("Groups:", 1)[1].split("Every key", 1)[0]
    assert {"data", "input", "model", "loss", "train", "reward", "rl"} <= set(
        re.split(r"[,\s]+", listed_groups.strip()))  # the config groups, every one


@pytest.mark.parametrize("overrides", [
    ["--config.train.num_epochs=3", "--config.data.colums.user=x"],
    ["--config.data.colums.user=x", "--config.train.num_epochs=3"],
])
def test_unknown_key_names_its_own_flag_among_several(overrides, tmp_path):
  """Item 4: the flag with the misspelt key is named, not another override."""
  proc = _run([ROOT / "train.py", *overrides, f"--workdir={tmp_path / 'w'}"], tmp_path)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert _last_line(proc) == ("error: --config.data.colums.user: unknown config key data.colums "
                              "(did you mean data.columns?); configs/base.py lists every key")


def test_a_recipe_by_name_from_an_empty_folder(tmp_path):
  """Item 5: `--config beauty` loads the packaged recipe from any folder (it then names its data
  file, relative to where it was started); a bad path or name is one line."""
  proc = _run([ROOT / "train.py", "--config", "beauty", f"--workdir={tmp_path / 'w'}",
               "--config.data.cache_dir="], tmp_path)
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert _last_line(proc).startswith("error: ../shared/data/amazon-beauty/Beauty.txt: file not "
                                     "found"), _last_line(proc)
  calls = {
      ("--config", "nosuch.py"): "no such file in",
      ("--config=configs/beauty.py",): "the recipe shipped with the package is --config beauty",
      ("--config", "beauty:cold"): "this recipe takes no ':' argument",
      ("--config", "beauty_content:warm"): "takes no argument or 'cold', got 'warm'",
  }
  for args, expected in calls.items():
    proc = _run([ROOT / "train.py", *args, f"--workdir={tmp_path / 'w'}"], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, (args, proc.stderr[-3000:])
    assert len(proc.stderr.strip().splitlines()) == 1 and expected in _last_line(proc), (
        args, proc.stderr)


def test_a_recipe_name_takes_its_argument():
  from lstmrec_jax.cli import recipes
  assert recipes.resolve_config_file("ml100k_content:cold") == str(
      recipes.configs_dir() / "ml100k_content.py") + ":cold"
  assert recipes.resolve_config_file("beauty.py") == str(recipes.configs_dir() / "beauty.py")
  assert recipes.resolve_config_file("lstm", "--space", "spaces").endswith("spaces/lstm.py")
  assert set(recipes.recipes()) >= {"auto", "beauty", "default", "games", "ml1m"}


# A user's own config file outside the repository: it imports the packaged recipes (README).
_OWN_CONFIG = '''
from lstmrec_jax.configs import auto


def get_config():
  c = auto.get_config()  # every AUTO_KEYS key left to the data
  c.data.synthetic = {"num_users": 240, "num_items": 80, "seed": 3}
  c.input.max_len = 16
  c.input.eval_batch_size = 64
  c.train.num_devices = 1
  return c
'''
EXPLICIT = {"train.num_epochs": 1, "model.embed_dim": 16, "model.hidden_size": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """train.py in an empty folder: a config file of the user's, auto rules, explicit values."""
  cwd = tmp_path_factory.mktemp("user")
  (cwd / "mine.py").write_text(_OWN_CONFIG)
  proc = _run([ROOT / "train.py", "--config", "mine.py", "--workdir", "run",
               *(f"--config.{k}={v}" for k, v in EXPLICIT.items())], cwd, home=cwd / "home",
              timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return cwd, proc


@pytest.mark.slow
def test_explicit_values_win_over_the_auto_rules(trained):
  """Item 1: --config.train.num_epochs=1 runs 1 epoch (the auto rule would run 16), the log says
  which auto keys the command line overrode, and config.json is what ran."""
  cwd, proc = trained
  saved = json.loads((cwd / "run" / "config.json").read_text())
  assert not set(EXPLICIT) & set(saved["auto"]) and len(saved["auto"]) == 10
  assert saved["train"]["num_epochs"] == 1 and saved["model"]["embed_dim"] == 16
  report = json.loads((cwd / "run" / "report.json").read_text())
  assert not set(EXPLICIT) & set(report["auto"])  # the keys the data set
  rows = [json.loads(line) for line in (cwd / "run" / "metrics.jsonl").read_text().splitlines()]
  epochs = [r["epoch"] for r in rows if "epoch" in r]
  assert max(epochs) == 1.0, epochs  # one epoch ran, not the rule's 16
  from lstmrec_jax import run as run_lib
  ran = run_lib.build_run(run_lib.spec_from_config(saved))
  assert (ran.model_cfg.embed_dim, ran.model_cfg.hidden_size) == (16, 16)
  assert ("explicit values win over the auto rules (lstmrec_jax/auto.py): model.embed_dim=16, "
          "model.hidden_size=16, train.num_epochs=1; the data sets the other 10") in proc.stderr


@pytest.mark.slow
def test_train_keeps_its_compiles_in_the_users_cache(trained):
  """train.py's compiles go to JAX's persistent cache under ~/.cache/lstmrec_jax/jax (unless
  XDG_CACHE_HOME moves it), so a rerun or a resume of the same shapes skips them."""
  cwd, _ = trained
  entries = list((cwd / "home" / ".cache" / "lstmrec_jax" / "jax").iterdir())
  assert len(entries) >= 2, entries  # at least the train step and the evaluation's rank step


@pytest.mark.slow
def test_train_keeps_freed_host_buffers_for_reuse(trained):
  """train.py sets the host allocator first (--host_malloc=reuse, lstmrec_jax/hostmem.py) and
  says so in one line; on glibc the blocks XLA frees are kept for the next step."""
  _, proc = trained
  from lstmrec_jax import hostmem
  expected = ("host malloc: freed blocks kept for reuse" if hostmem._glibc() is not None
              else "host malloc: the C library's defaults")
  assert expected in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_a_normal_run_logs_only_the_projects_own_lines(trained):
  """Item 9: train + eval + export + Recommender.load: no TensorFlow oneDNN banner, no Orbax
  "read only" warnings, no progress-bar carriage returns; every log line is from lstmrec_jax."""
  cwd, train = trained
  ours = {p.name for p in (ROOT / "lstmrec_jax").rglob("*.py")} | set(ENTRY_POINTS)
  evaluate = _run([ROOT / "eval.py", "--workdir", "run"], cwd, home=cwd / "home")
  export = _run([ROOT / "export.py", "--workdir", "run", "--out", "bundle"], cwd,
                home=cwd / "home")
  load = _run(["-c", "from lstmrec_jax.serving import Recommender\n"
               "for src in ('run', 'bundle'):\n"
               "  rec = Recommender.load(src)\n"
               "  print(len(rec.recommend(rec.item_keys[1:4], k=5).items))"], cwd,
              home=cwd / "home")
  for name, proc in (("train", train), ("eval", evaluate), ("export", export), ("load", load)):
    assert proc.returncode == 0, (name, proc.stderr[-3000:])
    for bad in ("oneDNN", "read only", "read_only", "\r", "absl::InitializeLog"):
      assert bad not in proc.stderr, (name, bad, proc.stderr[-3000:])
    for line in proc.stderr.splitlines():
      found = re.match(r"^[IWEF]\d{4} [\d:.]+ +\d+ ([^:]+):\d+\] ", line)
      assert found and found.group(1) in ours, (name, line)
  assert load.stderr == "" and load.stdout.split() == ["5", "5"]
  # The dataset cache went to the user's cache folder, not into the working directory.
  assert not (cwd / "cache").exists()
  assert list((cwd / "home" / ".cache" / "lstmrec_jax").glob("dataset-*.npz"))


@pytest.mark.slow
def test_plot_writes_the_training_curves(trained):
  """Item 8: eval.py --plot writes <workdir>/curves.png from metrics.jsonl."""
  cwd, _ = trained
  proc = _run([ROOT / "eval.py", "--workdir", "run", "--plot"], cwd, home=cwd / "home")
  assert proc.returncode == 0, proc.stderr[-3000:]
  png = cwd / "run" / "curves.png"
  assert proc.stdout.strip() == f"curves: {os.path.join('run', 'curves.png')}"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_curves_keep_the_last_row_of_a_step(tmp_path):
  """A resumed run logs again the steps after its checkpoint: the last row of a step wins; a last
  line cut short by a kill is skipped."""
  from lstmrec_jax.evaluation import curves
  rows = [{"step": 5, "loss": 4.0, "epoch": 0.5}, {"step": 10, "loss": 3.0, "epoch": 1.0},
          {"step": 10, "valid/NDCG@10": 0.1, "valid/HR@10": 0.2},
          {"step": 10, "loss": 2.5, "epoch": 1.0}]  # after a resume from step 5
  (tmp_path / "metrics.jsonl").write_text(
      "\n".join(json.dumps(r) for r in rows) + '\n{"step": 15, "lo')
  got = curves.read_curves(tmp_path / "metrics.jsonl")
  assert got["train"] == {"step": [5, 10], "loss": [4.0, 2.5], "epoch": [0.5, 1.0]}
  assert got["valid"] == {"step": [10], "NDCG@10": [0.1], "HR@10": [0.2]}


@pytest.mark.slow
def test_cold_start_on_a_normal_workdir_names_the_flag_to_retrain_with(trained):
  """Item 10: the refusal says how to retrain; the help says what a cold split is."""
  cwd, _ = trained
  proc = _run([ROOT / "cold_start.py", "--workdirs", "run"], cwd, home=cwd / "home")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "--config.cold_start.item_fraction=0.1" in _last_line(proc)
  helped = _run([ROOT / "cold_start.py", "--help"], cwd)
  assert helped.returncode == 0 and "cold_start.item_fraction" in helped.stdout


def test_tensorflow_missing_is_one_line_and_auto_takes_numpy(monkeypatch):
  """Item 7: without TensorFlow, input.backend=auto is numpy, and what needs TF says how to get
  it in one line (an ImportError too, for code that catches those)."""
  from lstmrec_jax.data import pipeline, tf_setup
  from lstmrec_jax.errors import ConfigError
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError
  with pytest.raises(ConfigError, match=r"requirements/tf\.txt") as raised:
    tf_setup.import_tensorflow()
  assert isinstance(raised.value, ImportError) and "\n" not in str(raised.value)
  assert pipeline.resolve_backend("auto") == "numpy"


def test_a_value_set_in_a_config_file_wins_over_its_auto_rule(tmp_path, monkeypatch):
  """Item 1: a config file built on configs/auto.py that sets num_epochs keeps it (the auto rule
  would replace it silently); a key at base.py's default stays the data's."""
  import json as json_lib
  from absl import flags
  from ml_collections import config_flags
  from lstmrec_jax.cli import common
  (tmp_path / "mine.py").write_text(_OWN_CONFIG.replace(
      "  return c", "  c.train.num_epochs = 4\n  return c"))
  values = flags.FlagValues()
  monkeypatch.setattr(flags, "FLAGS", values)
  monkeypatch.setattr(sys, "argv", ["train.py", "--config", str(tmp_path / "mine.py"),
                                    "--config.model.embed_dim=16"])
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(sys.argv)
  assert common.pin_explicit_overrides() == ["model.embed_dim", "train.num_epochs"]
  config = json_lib.loads(values.config.to_json_best_effort())
  assert {"model.embed_dim", "train.num_epochs"}.isdisjoint(config["auto"])
  assert "model.hidden_size" in config["auto"] and config["train"]["num_epochs"] == 4
