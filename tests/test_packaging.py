"""`pip install -e .` gives the package and its console scripts, usable outside the repository."""

import os
import shutil
import subprocess

import pytest

SCRIPTS = ("lstmrec-train", "lstmrec-eval", "lstmrec-tune", "lstmrec-cold-start", "lstmrec-serve",
           "lstmrec-export")


def _installed() -> bool:
  return all(shutil.which(s) for s in SCRIPTS)


@pytest.fixture
def scripts():
  if not _installed():
    if os.environ.get("CI"):  # .ci/run installs the package: missing there is a failure
      pytest.fail(f"console scripts {SCRIPTS} are not on PATH after pip install -e .")
    pytest.skip("the package is not pip-installed here (.ci/run does: pip install -e .)")


def _run(args, cwd):
  return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_console_scripts_run_outside_the_repository(scripts, tmp_path):
  """Each script starts from an empty folder, finds its bundled configs, and ends a bad call in
  one `error:` line (a crash would print a traceback; a missing package, ModuleNotFoundError)."""
  calls = {
      # Reaches config validation: the default config was found without the repository.
      "lstmrec-train": (["--workdir=w", "--config.model.encoder=nope"], "model.encoder"),
      "lstmrec-eval": ([f"--workdir={tmp_path / 'none'}"], "config.json"),
      "lstmrec-tune": (["--space=none.py"], "none.py"),
      "lstmrec-cold-start": ([f"--workdirs={tmp_path / 'none'}"], "config.json"),
      "lstmrec-serve": ([f"--bundle={tmp_path / 'none'}"], "none"),
      "lstmrec-export": ([f"--workdir={tmp_path / 'none'}", f"--out={tmp_path / 'b'}"], "none"),
  }
  for script, (args, named) in calls.items():
    proc = _run([script, *args], tmp_path)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, (script, proc.stderr[-2000:])
    assert last.startswith("error: ") and named in last, (script, last)


def test_one_import_name_for_the_world(scripts, tmp_path):
  """The distribution claims `lstmrec_jax` only: its kernels and recipes install under it, so a
  generic `kernels` or `configs` (a `kernels` package exists on PyPI) is never shadowed."""
  del scripts
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  dist = importlib.metadata.distribution("lstmrec-jax")
  assert (dist.read_text("top_level.txt") or "lstmrec_jax").split() == ["lstmrec_jax"]
  code = ("import importlib.util as u\n"
          "import lstmrec_jax.kernels.dispatch, lstmrec_jax.configs.base\n"
          "print(u.find_spec('kernels') is None, u.find_spec('configs') is None)")
  # An empty folder and no PYTHONPATH: what the installed distribution gives, not the repository.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["True", "True"]
