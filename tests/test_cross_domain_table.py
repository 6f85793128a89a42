"""benchmarks/cross_domain_table.py on hand-made report files: which run fills which cell, the
per-domain models' names (baseline (a), transfer), mean and std over seeds."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import cross_domain_table as table  # pylint: disable=g-import-not-at-top,wrong-import-position

DOMAINS = ["A", "B"]


def _report(values: dict[str, float]) -> dict:
  """A report.json with NDCG@10 = values[domain] (other keys = NDCG@10 / 2) in both protocols."""
  by_domain = {}
  for domain, v in values.items():
    overall = {k: v if k == "NDCG@10" else v / 2 for k in table.KEYS}
    by_domain[domain] = {p: {"model": {"overall": dict(overall, **({"NDCG@10": v * 3} if p ==
                                                                   "sampled" else {}))}}
                         for p in table.PROTOCOLS}
  return {"step": 10, "splits": {"test": {"by_domain": by_domain}}}


def _write(runs: pathlib.Path, name: str, values: dict[str, float]) -> None:
  (runs / name).mkdir(parents=True)
  (runs / name / "report.json").write_text(json.dumps(_report(values)))


def test_run_names():
  assert table.run_name("fk", "a", "Food", 2) == "fk_Food_s2"
  assert table.run_name("fk", "transfer", "Food", 0) == "fk_transfer_Food_s0"
  assert table.run_name("fk", "xd", "Food", 1) == "fk_xd_s1"


def test_collect_reads_each_model_domain_and_seed(tmp_path):
  for seed, (a, b) in enumerate([(0.10, 0.20), (0.12, 0.22)]):
    _write(tmp_path, f"p_A_s{seed}", {"A": a})        # baseline (a): one domain a run
    _write(tmp_path, f"p_B_s{seed}", {"B": b})
    _write(tmp_path, f"p_xd_s{seed}", {"A": a + 0.01, "B": b + 0.01})
  _write(tmp_path, "p_transfer_A_s0", {"A": 0.30})  # one seed, one domain only
  got = table.collect(tmp_path, "p", DOMAINS, ["xd", "transfer"], [0, 1])
  assert got["a"]["A"]["full"]["mean"]["NDCG@10"] == pytest.approx(0.11)
  assert got["a"]["B"]["full"]["std"]["NDCG@10"] == pytest.approx(np.std([0.20, 0.22], ddof=1))
  assert got["a"]["A"]["sampled"]["mean"]["NDCG@10"] == pytest.approx(0.33)
  assert got["xd"]["B"]["full"]["mean"]["NDCG@10"] == pytest.approx(0.22)
  assert [r["run"] for r in got["xd"]["A"]["full"]["runs"]] == ["p_xd_s0", "p_xd_s1"]
  assert got["transfer"]["A"]["full"]["mean"]["NDCG@10"] == pytest.approx(0.30)
  assert "B" not in got["transfer"]
  text = table.markdown(got, DOMAINS, ["xd", "transfer"], "t", None, [0, 1])
  # The best mean of each domain column is bold; one run shows no spread.
  assert "**0.3000**" in text and "**0.2200 +- 0.0141**" in text
  assert "| transfer: merged LSTM fine-tuned on the domain (1 runs) | **0.3000** |" in text
