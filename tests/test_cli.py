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
