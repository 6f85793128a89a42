"""gs:// workdirs: every path of training, evaluation, checkpoints and tuning keeps its scheme."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing

from lstmrec_jax import config_keys
from lstmrec_jax.configs import default as default_config
from lstmrec_jax import paths
from lstmrec_jax import run as run_lib
from lstmrec_jax.evaluation import reports
from lstmrec_jax import checkpoint as ckpt_lib
from lstmrec_jax.train import loop
from lstmrec_jax.tuning import search

GS = "gs://bucket/run"
_FNS = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
        "rename", "replace", "rmtree", "stat", "walk")


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """gs://... served from tmp_path/gcs through epath's mock; the working directory is empty."""
  root, cwd = tmp_path / "gcs", tmp_path / "cwd"
  root.mkdir()
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  # With TensorFlow installed epath sends gs:// to tf.io.gfile, past the mock's backends.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  seen = []

  def local(p):
    if isinstance(p, (str, os.PathLike)) and os.fspath(p).startswith("gs://"):
      seen.append(os.fspath(p))
      return str(root / os.fspath(p).removeprefix("gs://"))
    return p

  def redirect(original, path, *args, **kwargs):
    return original(local(path), *[local(a) for a in args], **kwargs)

  with epath_testing.mock_epath(**{name: redirect for name in _FNS}):
    yield root, cwd, seen
  # A path that lost its scheme ("gs:/bucket/run") would have been created under the cwd.
  assert not list(cwd.iterdir()), f"local files written: {list(cwd.iterdir())}"


def test_workdir_path_keeps_uris_and_makes_local_paths_absolute():
  assert str(paths.workdir_path(GS)) == GS
  assert str(paths.workdir_path(GS) / "checkpoints") == GS + "/checkpoints"
  assert paths.workdir_path("runs/x") == paths.workdir_path(pathlib.Path("runs/x").absolute())


def test_config_and_reports_go_to_the_bucket(fake_gcs):
  root, _, seen = fake_gcs
  config = default_config.get_config()
  loop.check_saved_config(paths.workdir_path(GS), config_keys.plain(config))
  assert (root / "bucket/run/config.json").is_file()
  assert run_lib.read_workdir_config(GS)["seed"] == config.seed
  loop.check_saved_config(paths.workdir_path(GS), config_keys.plain(config))  # resume: same config
  reports.write_report(paths.workdir_path(GS) / "report.json", {"ok": 1})
  assert json.loads((root / "bucket/run/report.json").read_text()) == {"ok": 1}
  assert seen and all(p.startswith(GS) for p in seen)


def test_tuning_files_go_to_the_bucket(fake_gcs):
  root, _, _ = fake_gcs
  trial = search.trial_dir("gs://bucket/tune", 3)
  assert str(trial) == "gs://bucket/tune/trial_3"
  search._write_json(trial / "trial.json", {"trial": 3})  # pylint: disable=protected-access
  assert (root / "bucket/tune/trial_3/trial.json").is_file()
  search.write_results("gs://bucket/tune", [], num_trials=1, search_seed=0)
  assert (root / "bucket/tune/results.md").is_file()
  assert search.collect_results("gs://bucket/tune", {3: {}})[0]["workdir"] == str(trial)


def test_orbax_receives_bucket_paths(monkeypatch):
  directories = []

  class Recorder:
    def __init__(self, directory, **kwargs):
      directories.append(directory)

  monkeypatch.setattr(ckpt_lib.ocp, "CheckpointManager", Recorder)
  ckpt_lib.Checkpointer(GS, read_only=True)
  assert [str(d) for d in directories] == [GS + "/checkpoints", GS + "/best"]
