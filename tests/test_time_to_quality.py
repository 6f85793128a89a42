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
