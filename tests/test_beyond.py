"""Beyond-accuracy metrics (hand-computed cases) and MMR / DPP re-ranking."""

import math

import numpy as np
import pytest

from lstmrec_jax.evaluation import beyond
from lstmrec_jax.evaluation import rerank


def test_long_tail_is_outside_the_80_percent_head():
  np.testing.assert_array_equal(beyond.long_tail_mask(np.array([0, 6, 3, 1])),
                                [False, False, False, True])
  # 10 + 5 = 15 < 16 = 0.8 * 20: the head needs item 3 too.
  np.testing.assert_array_equal(beyond.long_tail_mask(np.array([0, 10, 5, 3, 2])),
                                [False, False, False, False, True])


def test_gini_by_hand():
  assert beyond.gini(np.array([0, 0, 4])) == pytest.approx(2 / 3)
  assert beyond.gini(np.array([1, 1, 1])) == pytest.approx(0.0)
  assert beyond.gini(np.array([0, 1, 1, 2])) == pytest.approx(6 / 16)
  assert beyond.gini(np.zeros(3)) is None


def test_personalization_by_hand():
  # lists [1, 2] and [1, 3]: one shared item over one pair, K = 2.
  assert beyond.personalization(np.array([0, 2, 1, 1]), 2, 2) == pytest.approx(0.5)
  # three identical lists [1, 2]: every pair shares both items.
  assert beyond.personalization(np.array([0, 3, 3]), 3, 2) == pytest.approx(0.0)
  assert beyond.personalization(np.array([0, 1]), 1, 1) is None


def test_embedding_ild_by_hand():
  vectors = np.array([[0, 0], [1, 0], [0, 1], [2, 0]], np.float32)
  s, n = beyond.embedding_ild(np.array([[1, 2, 3]]), vectors)
  assert (s, n) == (pytest.approx(2 / 3), 1)  # pairs (1,2)=1, (1,3)=0, (2,3)=1
  s, n = beyond.embedding_ild(np.array([[1, 2, 0], [3, 0, 0]]), vectors)
  assert (s, n) == (pytest.approx(1.0), 1)  # empty slots skipped; a 1-item list has no pair


def test_attribute_ild_by_hand():
  attrs = np.array([[0, 0], [1, 2], [2, 3], [0, 0], [1, 2]])
  s, n = beyond.attribute_ild(np.array([[1, 2]]), attrs)
  assert (s, n) == (pytest.approx(2 / 3), 1)  # {1,2} vs {2,3}: 1 - 1/3
  s, n = beyond.attribute_ild(np.array([[1, 2, 3, 4]]), attrs)
  # item 3 has no attributes: pairs (1,2) 2/3, (1,4) 0, (2,4) 2/3 -> 4/9.
  assert (s, n) == (pytest.approx(4 / 9), 1)


def test_accumulator_by_hand():
  counts = np.array([0, 10, 5, 3, 2])
  vectors = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)
  acc = beyond.BeyondAccumulator(counts, k=2, vectors_VxE=vectors)
  acc.add(np.array([[1, 2]]), np.array([[2.0, 1.0]]))
  acc.add(np.array([[1, 4]]), np.array([[2.0, 1.0]]))
  r = acc.result()
  assert r["coverage@2"] == pytest.approx(3 / 4)
  assert r["gini@2"] == pytest.approx(6 / 16)  # rec counts [2, 1, 0, 1]
  assert r["ARP@2"] == pytest.approx((10 + 5 + 10 + 2) / 4)
  assert r["tail_share@2"] == pytest.approx(1 / 4)  # item 4 is the only tail item
  assert r["novelty@2"] == pytest.approx((1 + 2 + 1 + math.log2(10)) / 4)
  assert r["personalization@2"] == pytest.approx(0.5)
  assert r["ILD@2"] == pytest.approx((1.0 + 2.0) / 2)  # cos(1,2) = 0, cos(1,4) = -1
  assert r["users"] == 2 and r["filled_slots"] == 4


def test_broken_scores_are_empty_slots_and_an_empty_report_says_none():
  acc = beyond.BeyondAccumulator(np.array([0, 3, 1]), k=2)
  acc.add(np.array([[1, 2]]), np.array([[np.nan, -np.inf]]))
  r = acc.result()
  assert r["filled_slots"] == 0
  assert all(r[k] is None for k in ("coverage@2", "gini@2", "ARP@2", "novelty@2",
                                    "personalization@2"))


def test_evaluate_params_reports_beyond_metrics_from_the_ranking_pass(tmp_path):
  from helpers import tiny_config
  from lstmrec_jax import run as run_lib
  from lstmrec_jax.evaluation import ranking, reports
  spec = run_lib.spec_from_config(tiny_config(tmp_path))
  run = run_lib.build_run(spec)
  common = dict(splits=("valid",), mesh=run.mesh, batch_size=64, max_len=16, exclude_seen=True,
                chunk_size=32)
  report = ranking.evaluate_params(run.graphdef, run.params, run.consts, run.dataset, **common)
  model_b = report["splits"]["valid"]["model"]["beyond"]
  pop_b = report["splits"]["valid"]["popularity"]["beyond"]
  assert model_b["users"] == pop_b["users"] == len(run.dataset.valid)
  for key in ("coverage@10", "gini@10", "ARP@10", "tail_share@10", "novelty@10", "ILD@10",
              "personalization@10"):
    assert model_b[key] is not None and pop_b[key] is not None, key
  # Popularity recommends (almost) the same list to everyone; the model personalizes more.
  assert pop_b["personalization@10"] < model_b["personalization@10"]
  assert pop_b["ARP@10"] > model_b["ARP@10"]
  # Accuracy is unchanged by the extra lists.
  plain = ranking.evaluate_params(run.graphdef, run.params, run.consts, run.dataset,
                                  beyond_k=0, **common)
  assert plain["splits"]["valid"]["model"]["overall"] == (
      report["splits"]["valid"]["model"]["overall"])
  assert "beyond" not in plain["splits"]["valid"]["model"]
  table = reports.format_table(report)
  assert "coverage@10" in table and "personalization@10" in table
  assert "coverage@10" not in reports.format_table(plain)


# ---------------------------------------------------------------------------- re-ranking


def _naive_mmr(rel, unit, lam, k):
  picked = []
  for _ in range(k):
    best, best_s = None, -np.inf
    for i in range(len(rel)):
      if i in picked:
        continue
      div = max((unit[i] @ unit[j] for j in picked), default=0.0)
      s = lam * rel[i] - (1 - lam) * div
      if s > best_s + 1e-7:
        best, best_s = i, s
    picked.append(best)
  return picked


def _naive_dpp(rel, unit, lam, k):
  a = lam / (2 * (1 - lam))
  q = np.exp(a * rel)
  kernel = q[:, None] * (unit @ unit.T) * q[None, :]
  picked = []
  for _ in range(k):
    gains = [np.linalg.slogdet(kernel[np.ix_(picked + [i], picked + [i])])[1]
             if i not in picked else -np.inf for i in range(len(rel))]
    picked.append(int(np.argmax(gains)))
  return picked


def _pool(seed, b=3, p=8, e=4):
  rng = np.random.default_rng(seed)
  scores = np.sort(rng.normal(size=(b, p)), axis=1)[:, ::-1].astype(np.float32)
  ids = np.tile(np.arange(1, p + 1), (b, 1)).astype(np.int32)
  vecs = rng.normal(size=(b, p, e)).astype(np.float32)
  return ids, scores, vecs


@pytest.mark.parametrize("method,naive", [("mmr", _naive_mmr), ("dpp", _naive_dpp)])
@pytest.mark.parametrize("lam", [0.3, 0.7])
def test_rerank_matches_the_naive_greedy(method, naive, lam):
  ids, scores, vecs = _pool(0)
  got = np.asarray(rerank.METHODS[method](ids, scores, vecs, np.float32(lam), k=3))
  for b in range(ids.shape[0]):
    rel = (scores[b] - scores[b].min()) / (scores[b].max() - scores[b].min())
    unit = vecs[b] / np.linalg.norm(vecs[b], axis=1, keepdims=True)
    np.testing.assert_array_equal(got[b], ids[b][naive(rel, unit, lam, 3)])


def test_rerank_docstring_example():
  ids = np.array([[1, 2, 3]], np.int32)
  scores = np.array([[1.0, 0.9, 0.0]], np.float32)
  vecs = np.array([[[1, 0], [1, 0], [0, 1]]], np.float32)
  for method in ("mmr", "dpp"):
    out = rerank.METHODS[method](ids, scores, vecs, np.float32(0.5), k=2)
    np.testing.assert_array_equal(out, [[1, 3]])


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_lambda_one_keeps_relevance_and_empty_slots_come_last(method):
  ids = np.array([[5, 0, 7, 9, 3]], np.int32)
  scores = np.array([[0.2, np.nan, 0.9, -np.inf, 0.5]], np.float32)
  vecs = np.random.default_rng(1).normal(size=(1, 5, 3)).astype(np.float32)
  out = np.asarray(rerank.METHODS[method](ids, scores, vecs, np.float32(1.0), k=5))
  np.testing.assert_array_equal(out[0, :3], [7, 3, 5])
  assert sorted(out[0, 3:].tolist()) == [0, 9]  # the empty slots, after every real item
  for lam in (0.0, 0.5):  # never an item twice, real items first
    out = np.asarray(rerank.METHODS[method](ids, scores, vecs, np.float32(lam), k=5))
    assert sorted(out[0, :3].tolist()) == [3, 5, 7] and len(set(out[0].tolist())) == 5


def test_rerank_raises_diversity_and_does_not_retrace():
  ids, scores, vecs = _pool(2, b=16, p=30, e=8)
  table = np.concatenate([np.zeros((1, 8), np.float32), vecs[0]], 0)  # item i -> row i
  ids = np.tile(np.arange(1, 31, dtype=np.int32), (16, 1))
  ild = {}
  before = None
  for lam in (1.0, 0.5, 0.1):
    out = np.asarray(rerank.rerank("mmr", ids, scores, table, lam, k=5))
    ild[lam] = beyond.embedding_ild(out, table)[0]
    before = rerank.mmr._cache_size() if before is None else before
  assert ild[0.1] > ild[0.5] > ild[1.0]
  assert rerank.mmr._cache_size() == before  # lambda is traced: one compilation for the sweep
  with pytest.raises(ValueError, match="larger than the pool"):
    rerank.rerank("dpp", ids, scores, table, 0.5, k=31)
