"""benchmarks/time_to_quality.py: the checkpoint a user stopping at each budget would keep."""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import time_to_quality  # noqa: E402


def test_each_budget_keeps_the_best_validation_so_far(tmp_path):
  rows = [{"step": 10, "time": 1000.0, "loss": 3.0},
          {"step": 20, "time": 1010.0, "valid/NDCG@10": 0.10},
          {"step": 40, "time": 1020.0, "valid/NDCG@10": 0.30},
          {"step": 60, "time": 1030.0, "valid/NDCG@10": 0.20},
          {"step": 80, "time": 1040.0, "valid/NDCG@10": 0.30},  # a tie keeps the earlier
          {"step": 100, "time": 1050.0, "valid/NDCG@10": 0.40}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  points = time_to_quality.validations(tmp_path)
  assert [p["step"] for p in points] == [20, 40, 60, 80, 100]
  got = time_to_quality.curve(points, started=995.0)
  assert [r["chosen_step"] for r in got] == [20, 40, 40, 40, 100]
  assert [r["wall_s"] for r in got] == [15.0, 25.0, 35.0, 45.0, 55.0]


class _Proc:
  """A train.py that outlives the cap and then dies of the SIGTERM (or fails on its own)."""

  def __init__(self, returncode, times_out):
    self.returncode, self.times_out, self.signals = None, times_out, []
    self._final = returncode

  def wait(self, timeout=None):
    if self.times_out and not self.signals:
      raise time_to_quality.subprocess.TimeoutExpired("train.py", timeout)
    self.returncode = self._final
    return self.returncode

  def send_signal(self, sig):
    self.signals.append(sig)


def _run_phase(monkeypatch, tmp_path, proc):
  def popen(*args, **kwargs):
    del args, kwargs
    (tmp_path / "w").mkdir(parents=True, exist_ok=True)  # what train.py creates first
    return proc

  monkeypatch.setattr(time_to_quality.subprocess, "Popen", popen)
  monkeypatch.setattr(sys, "argv", ["time_to_quality.py", "--phase", "run", "--name", "x",
                                    "--config", "configs/beauty.py", "--floor", "0",
                                    "--peer_minutes", "0", "--workdir", str(tmp_path / "w"),
                                    "--max_minutes", "0.01"])
  time_to_quality.main()


def test_a_run_ended_by_the_cap_is_timed_whatever_its_exit_code(monkeypatch, tmp_path):
  # SIGTERM during train.py's final report (after the last validation) exits -15: still timed.
  proc = _Proc(returncode=-15, times_out=True)
  _run_phase(monkeypatch, tmp_path, proc)
  timing = json.loads((tmp_path / "w" / "time_to_quality_run.json").read_text())
  assert proc.signals == [time_to_quality.signal.SIGTERM]
  assert timing["stopped_by_cap"] is True and timing["returncode"] == -15


def test_a_run_that_fails_before_the_cap_is_an_error(monkeypatch, tmp_path):
  import pytest  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit, match="exited with 1"):
    _run_phase(monkeypatch, tmp_path, _Proc(returncode=1, times_out=False))
  assert not (tmp_path / "w" / "time_to_quality_run.json").exists()


def test_markdown_says_whether_the_cap_ended_the_run_and_carries_a_timing_note():
  result = {"name": "x", "date": "d", "command": "c", "train_command": "t", "machine": {},
            "run_wall_s": 61.0, "max_minutes": 8, "stopped_by_cap": False, "floor": 0.05,
            "peer_minutes": 2.0, "minutes_to_floor": None, "curve": []}
  assert "(to its end, final evaluation included)" in time_to_quality.markdown(result)
  result.update(stopped_by_cap=True, timing_note="written by hand")
  text = time_to_quality.markdown(result)
  assert "(stopped by --max_minutes 8)" in text and "- timing file: written by hand" in text
