"""The issue-14 study drivers end to end on the seconds-long synthetic config (marked slow)."""

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.slow


def test_robustness_then_diversity_sweep(tmp_path):
  import diversity_sweep
  import robustness
  res = robustness.main(["--tiny", "--out_dir", str(tmp_path / "r"), "--results",
                         str(tmp_path / "rob"), "--eps", "0,0.5", "--noise", "0.3",
                         "--poison", "0.05"])
  text = (tmp_path / "rob.md").read_text()
  assert text.count("### (") == 3
  std, adv = res["variants"]["standard"], res["variants"]["adversarial"]
  for v in (std, adv):
    assert v["perturbation"]["0.5"]["NDCG@10"] < v["perturbation"]["0"]["NDCG@10"]
    assert set(v["poisoning"]) == {"0", "0.05"}
  # the poisoned runs push the target to the real users
  assert std["poisoning"]["0.05"]["target_HR@10"] > std["poisoning"]["0"]["target_HR@10"]

  # A second adversarial setting under its own name reuses the finished standard run.
  ckpts = tmp_path / "r" / "standard" / "clean" / "checkpoints"
  before = sorted(p.name for p in ckpts.iterdir())
  res2 = robustness.main(["--tiny", "--out_dir", str(tmp_path / "r"), "--results",
                          str(tmp_path / "rob2"), "--eps", "0,0.5", "--noise", "0.3",
                          "--poison", "", "--adv_name", "adv_small", "--adv",
                          "adversarial.kind=fgsm", "--adv", "adversarial.eps=0.02"])
  assert sorted(p.name for p in ckpts.iterdir()) == before  # not trained again
  assert res2["variants"]["standard"]["perturbation"] == std["perturbation"]
  assert (tmp_path / "r" / "adv_small" / "clean" / "report.json").is_file()
  assert res2["adversarial"] == ["adversarial.kind=fgsm", "adversarial.eps=0.02"]
  assert res2["variants"]["adversarial"]["perturbation"] != adv["perturbation"]

  workdir = tmp_path / "r" / "standard" / "clean"
  out = diversity_sweep.main(["--workdir", str(workdir), "--lambdas", "1,0.5,0", "--out",
                              str(tmp_path / "div")])
  report = json.loads((workdir / "report.json").read_text())["splits"]["test"]["model"]
  for method in ("mmr", "dpp"):
    rows = {r["lambda"]: r for r in out["rows"] if r["method"] == method}
    # lambda = 1 is the model's own top 10: the evaluation's numbers
    assert rows[1.0]["NDCG@10"] == pytest.approx(report["overall"]["NDCG@10"])
    assert rows[1.0]["coverage@10"] == pytest.approx(report["beyond"]["coverage@10"])
    assert rows[0.0]["ILD@10"] > rows[1.0]["ILD@10"]
  assert (tmp_path / "div.png").stat().st_size > 10_000
  assert "| mmr | 0.50 |" in (tmp_path / "div.md").read_text()


def test_augment_sweep(tmp_path):
  import augment_sweep
  res = augment_sweep.main(["--tiny", "--out_dir", str(tmp_path / "a"), "--results",
                            str(tmp_path / "aug"), "--levers", "baseline,substitute",
                            "--combine", "mask,contrastive", "--seeds", "0"])
  assert set(res) == {"baseline", "substitute", "mask+contrastive"}
  text = (tmp_path / "aug.md").read_text()
  assert "| substitute |" in text and "| mask+contrastive |" in text
  # A rerun that adds a lever reads the finished runs instead of evaluating them again.
  report = tmp_path / "a" / "baseline_s0" / "report.json"
  mtime = report.stat().st_mtime_ns
  again = augment_sweep.main(["--tiny", "--out_dir", str(tmp_path / "a"), "--results",
                              str(tmp_path / "aug2"), "--levers", "baseline,crop", "--seeds", "0"])
  assert report.stat().st_mtime_ns == mtime
  assert again["baseline"]["runs"] == res["baseline"]["runs"] and set(again) == {"baseline", "crop"}
