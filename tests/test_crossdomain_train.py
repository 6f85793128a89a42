"""End to end on a tiny synthetic two-domain log: the three models train and report per domain
under both protocols; eval.py's target-domain cold-start report; transfer (train.init_from)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
from lstmrec_jax import checkpoint as ckpt_lib
from lstmrec_jax import workdir as workdir_lib
from lstmrec_jax.errors import ConfigError
from lstmrec_jax.evaluation import reports
from lstmrec_jax.train import loop

SYNTHETIC = {"num_users": 160, "num_items": 60, "seed": 3, "num_domains": 2}


def _config(tmp_path, **overrides):
  c = tiny_config(tmp_path, **{"eval.sampled_negatives": 15, **overrides})
  c.data.synthetic = dict(SYNTHETIC)
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("xd")
  out = {}
  for name, overrides in (("xd", {"model.encoder": "xd_lstm", "loss.domain_softmax": True}),
                          ("merged", {}),
                          ("d1", {"data.domain": "d1", "loss.domain_softmax": True})):
    out[name] = (tmp / name, loop.train_and_evaluate(_config(tmp, **overrides), tmp / name))
  return out


def test_every_model_reports_each_domain_under_both_protocols(runs):
  for name, (_, report) in runs.items():
    assert set(report["protocols"]) == {"full", "sampled"}
    assert "999" not in report["protocols"]["sampled"] and "15 negatives" in report[
        "protocols"]["sampled"]
    test = report["splits"]["test"]
    assert set(test) == {"by_domain"}  # nothing pooled over domains
    domains = {"d1"} if name == "d1" else {"d0", "d1"}
    assert set(test["by_domain"]) == domains
    for entry in test["by_domain"].values():
      for protocol in ("full", "sampled"):
        row = entry[protocol]["model"]["overall"]
        assert row["users"] == entry["users"] and 0 <= row["NDCG@10"] <= 1
    table = reports.format_table(report)
    assert "sampled" in table and "full" in table
  # the per-domain model is evaluated on exactly the merged models' users of its domain
  assert (runs["d1"][1]["splits"]["test"]["by_domain"]["d1"]["users"]
          == runs["xd"][1]["splits"]["test"]["by_domain"]["d1"]["users"])


def test_summary_of_domain_reports(runs):
  report = runs["xd"][1]
  summary = reports.summarize_domain_reports([report, report])
  mean, std = summary["domains"]["d0"]["sampled"]["model"]["NDCG@10"]
  assert mean == report["splits"]["test"]["by_domain"]["d0"]["sampled"]["model"]["overall"][
      "NDCG@10"] and std == 0.0
  assert "| d0 | sampled | model |" in reports.format_domain_summary(summary)


def test_domain_cold_start_report_of_a_workdir(runs):
  workdir, _ = runs["xd"]
  report = workdir_lib.evaluate_domain_cold_start(workdir)
  assert (workdir / "domain_cold_start_best.json").is_file()
  assert set(report["buckets"]) == {"d0", "d1"}
  assert set(report["buckets"]["d0"]) == {"full", "sampled"}
  assert set(report["buckets"]["d0"]["full"]) == {"0-2", "3-5", "6+"}
  assert "0-2" in reports.format_domain_cold_start(report)


def test_transfer_starts_from_the_pretrained_parameters(runs, tmp_path):
  source, _ = runs["merged"]
  # a per-domain model fine-tuned from the merged model: every parameter matches
  c = _config(tmp_path, **{"data.domain": "d0", "loss.domain_softmax": True,
                           "train.init_from": str(source), "train.stop_after_steps": 1,
                           "optim.learning_rate": 1e-9})
  loop.train_and_evaluate(c, tmp_path / "ft")
  pre = workdir_lib.restore_run(source).params
  ft = workdir_lib.restore_run(tmp_path / "ft", which="latest").params
  # after one step at lr 1e-9 the fine-tuned parameters are still the pre-trained ones
  np.testing.assert_allclose(_flat(ft), _flat(pre), atol=1e-5)
  with pytest.raises(ConfigError, match="no parameter of its best checkpoint matches"):
    loop.train_and_evaluate(_config(tmp_path, **{"model.encoder": "transformer",
                                                 "model.num_heads": 2,
                                                 "model.embed_dim": 8, "model.hidden_size": 8,
                                                 "train.init_from": str(source)}),
                            tmp_path / "bad")


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def test_transfer_params_copies_what_matches():
  target = {"a": jnp.zeros(2), "b": {"c": jnp.zeros(3)}, "d": jnp.zeros(1)}
  source = {"a": jnp.ones(2), "b": {"c": jnp.ones(4)}}
  new, copied, kept = ckpt_lib.transfer_params(target, source)
  np.testing.assert_array_equal(new["a"], [1, 1])
  np.testing.assert_array_equal(new["b"]["c"], [0, 0, 0])
  assert copied == ["['a']"] and sorted(kept) == ["['b']['c']", "['d']"]


def test_report_json_is_strict(runs):
  workdir, _ = runs["d1"]
  json.loads((workdir / "report.json").read_text())  # no NaN, no numpy types
