"""Evaluation on a multi-domain catalogue: domain-restricted ranking and top-k, the sampled
protocol (candidates and ranks against brute force), per-domain reports never pooled, the
target-domain cold-start views.

Shape legend: B users, E embedding size, V catalog size, M candidates per user.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import data_config
from lstmrec_jax import data
from lstmrec_jax.evaluation import cross_domain
from lstmrec_jax.evaluation import ranking
from lstmrec_jax.scoring import ranks

DOMAINS_V = np.array([-1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])  # V = 11, domain 1 from id 5


def _random(seed, b=6, e=3):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, (b, e)), jax.random.normal(k2, (len(DOMAINS_V), e))


def test_domain_ranks_and_top_k_match_brute_force_and_stay_in_the_domain():
  user, table = _random(0)
  domains_B = jnp.array([0, 1, 0, 1, 1, 0])
  targets_B = jnp.array([2, 7, 4, 5, 10, 1])
  seen_BxS = jnp.array([[1, 0], [6, 9], [0, 0], [7, 0], [5, 6], [3, 4]])
  got = ranks.target_ranks(user, table, None, targets_B, seen_BxS, chunk_size=4,
                           item_domains_V=DOMAINS_V, domains_B=domains_B)
  scores = np.asarray(user) @ np.asarray(table).T
  for b in range(6):
    seen = set(np.asarray(seen_BxS[b]).tolist()) - {0, int(targets_B[b])}
    rivals = [v for v in range(1, 11) if DOMAINS_V[v] == domains_B[b] and v not in seen
              and v != targets_B[b]]
    assert got[b] == sum(scores[b, v] >= scores[b, targets_B[b]] for v in rivals)
  ids, top = ranks.top_k_items(user, table, None, 4, seen_BxS, chunk_size=4,
                               item_domains_V=DOMAINS_V, domains_B=domains_B)
  for b in range(6):
    expect = sorted((v for v in range(1, 11) if DOMAINS_V[v] == domains_B[b]
                     and v not in set(np.asarray(seen_BxS[b]).tolist())),
                    key=lambda v: -scores[b, v])[:4]
    real = [int(i) for i, s in zip(ids[b], top[b]) if np.isfinite(s)]
    assert real == expect  # never an item of the other domain, never a seen one
    assert all(DOMAINS_V[i] == domains_B[b] for i in real)
  # domain -1: no restriction (the whole catalogue)
  all_ids, _ = ranks.top_k_items(user, table, None, 10, chunk_size=4, item_domains_V=DOMAINS_V,
                                 domains_B=jnp.full((6,), -1))
  assert {int(i) for i in all_ids[0]} == set(range(1, 11))


def test_candidate_ranks_match_brute_force_with_ties_and_nonfinite():
  user, table = _random(1, b=4)
  table = table.at[3].set(table[2])  # item 3 ties item 2 for every user
  cands = jnp.array([[2, 3, 4, 1, 0], [5, 6, 7, 8, 9], [3, 2, 1, 0, 0], [4, 1, 2, 3, 0]])
  got, ties = ranks.candidate_ranks(user, table, None, cands)
  scores = np.asarray(user) @ np.asarray(table).T
  for b in range(4):
    t, negs = int(cands[b, 0]), [int(c) for c in cands[b, 1:] if c > 0]
    assert got[b] == sum(scores[b, c] >= scores[b, t] for c in negs)
    assert ties[b] == sum(scores[b, c] == scores[b, t] for c in negs)
  assert ties[0] == 1 and ties[2] == 1  # 2 vs 3 and 3 vs 2
  bad, _ = ranks.candidate_ranks(user, table.at[4].set(jnp.nan), None, cands)
  assert bad[0] == ranks.NONFINITE_RANK and bad[3] == ranks.NONFINITE_RANK and bad[1] < 5


@pytest.fixture(scope="module")
def synthetic():
  cfg = data_config(synthetic={"num_users": 150, "num_items": 120, "seed": 2, "num_domains": 2})
  return data.load_dataset(cfg), cfg


def test_sampled_candidates_reproducible_in_domain_never_touched(synthetic):
  ds, cfg = synthetic
  n = 30
  first = cross_domain.sampled_candidates(ds, "test", num_negatives=n, seed=0)
  again = cross_domain.sampled_candidates(ds, "test", num_negatives=n, seed=0)
  np.testing.assert_array_equal(first, again)  # a rerun sees the same candidates
  other = cross_domain.sampled_candidates(ds, "test", num_negatives=n, seed=1)
  assert (other[:, 1:] != first[:, 1:]).any()  # the seed matters
  valid = cross_domain.sampled_candidates(ds, "valid", num_negatives=n, seed=0)
  assert (valid[:, 1:] != first[:, 1:]).any()  # so does the split
  touched = ranking.whole_histories(ds).history
  for k, user in enumerate(ds.test.users_U):
    negs = first[k, 1:]
    assert first[k, 0] == ds.test.targets_U[k]
    assert len(set(negs.tolist())) == n and (negs > 0).all()
    assert (ds.item_domains_V[negs] == ds.test.domains_U[k]).all()  # the target's domain only
    assert not set(negs.tolist()) & set(touched[user].tolist())  # never a touched item
  # the single-domain view draws the very same candidates for its users
  only = data.load_dataset(data_config(synthetic=dict(cfg.synthetic), domain="d1"))
  sel = np.flatnonzero(ds.test.domains_U == 1)
  np.testing.assert_array_equal(
      cross_domain.sampled_candidates(only, "test", num_negatives=n, seed=0), first[sel])


def test_sampled_candidates_are_uniform_over_the_untouched_items(synthetic):
  ds, _ = synthetic
  # many draws for one user: every untouched item of the domain turns up about equally often
  k = 0
  user, domain = int(ds.test.users_U[k]), int(ds.test.domains_U[k])
  touched = set(ranking.whole_histories(ds).history[user].tolist())
  pool = [v for v in range(1, ds.num_items) if ds.item_domains_V[v] == domain
          and v not in touched]
  counts = np.zeros(ds.num_items)
  for seed in range(200):
    np.add.at(counts, cross_domain.sampled_candidates(ds, "test", num_negatives=10,
                                                      seed=seed)[k, 1:], 1)
  assert set(np.flatnonzero(counts).tolist()) == set(pool)
  expected = 200 * 10 / len(pool)
  assert counts[pool].min() > 0.4 * expected and counts[pool].max() < 1.8 * expected


def test_keep_last_target_domain_events():
  split = data.EvalSplit(np.array([0, 1]), data.Sequences.from_lists([[1, 6, 2, 3], [5, 1, 7]]),
                         np.array([4, 8]), domains_U=np.array([0, 1]))
  for keep, expect in ((0, [[6], [1]]), (1, [[6, 3], [1, 7]]), (2, [[6, 2, 3], [5, 1, 7]]),
                       (9, [[1, 6, 2, 3], [5, 1, 7]])):
    got = cross_domain.keep_last_target_domain_events(split, DOMAINS_V, keep)
    assert [got.history[i].tolist() for i in range(2)] == expect
  np.testing.assert_array_equal(cross_domain.target_domain_counts(split, DOMAINS_V), [3, 2])


def test_report_is_per_domain_and_sampled_ranks_match_brute_force(synthetic, tmp_path):
  ds, _ = synthetic
  from lstmrec_jax import mesh as mesh_lib
  from lstmrec_jax import model as model_lib
  from lstmrec_jax.scoring import steps
  from helpers import model_config
  cfg = model_config(int(ds.num_items), max_len=16, embed_dim=8, hidden_size=8,
                     encoder="xd_lstm", lstm_impl="xla", domain_starts=ds.domain_starts)
  graphdef, params, consts = model_lib.create_model(cfg, 0)
  mesh = mesh_lib.make_mesh(1)
  report = cross_domain.evaluate_params(graphdef, params, consts, ds, splits=("test",),
                                        mesh=mesh, batch_size=32, max_len=16,
                                        exclude_seen=True, chunk_size=64,
                                        sampled_negatives=20, sampled_seed=0)
  by_domain = report["splits"]["test"]["by_domain"]
  assert set(by_domain) == {"d0", "d1"} and set(report["splits"]["test"]) == {"by_domain"}
  assert sum(e["users"] for e in by_domain.values()) == len(ds.test)
  for d, name in enumerate(ds.domain_names):
    assert by_domain[name]["users"] == int((ds.test.domains_U == d).sum())
  # brute force: user vectors for each row's domain, scores of its candidates, count >=
  cands = cross_domain.sampled_candidates(ds, "test", num_negatives=20, seed=0)
  batch = next(iter(data.eval_batches(ds.test, batch_size=len(ds.test), max_len=16)))
  user_BxE, table_VxE, _ = steps.user_vectors(params, consts, batch, graphdef)
  scores = np.einsum("be,bme->bm", np.asarray(user_BxE), np.asarray(table_VxE)[cands])
  ranks_U = (scores[:, 1:] >= scores[:, :1]).sum(axis=1)
  for d, name in enumerate(ds.domain_names):
    sel = ds.test.domains_U == d
    hr10 = float(np.mean(ranks_U[sel] < 10))
    mrr = float(np.mean(1.0 / (ranks_U[sel] + 1)))
    got = by_domain[name]["sampled"]["model"]["overall"]
    assert got["HR@10"] == pytest.approx(hr10) and got["MRR"] == pytest.approx(mrr, rel=1e-6)


def test_q_head_report_is_per_domain_and_ranks_in_the_targets_domain(synthetic):
  """A model with Q heads (main's offline RL) on a multi-domain catalogue: each domain's full
  protocol holds `model_q`, the Q head's ranks among that domain's items (brute force below)."""
  ds, _ = synthetic
  from lstmrec_jax import mesh as mesh_lib
  from lstmrec_jax import model as model_lib
  from lstmrec_jax.scoring import steps
  from helpers import model_config
  cfg = model_config(int(ds.num_items), max_len=16, embed_dim=8, hidden_size=8,
                     encoder="xd_lstm", lstm_impl="xla", domain_starts=ds.domain_starts,
                     q_head=True)
  graphdef, params, consts = model_lib.create_model(cfg, 0)
  report = cross_domain.evaluate_params(graphdef, params, consts, ds, splits=("test",),
                                        mesh=mesh_lib.make_mesh(1), batch_size=32, max_len=16,
                                        exclude_seen=False, chunk_size=64, sampled_negatives=0,
                                        q_head=True)
  batch = next(iter(data.eval_batches(ds.test, batch_size=len(ds.test), max_len=16)))
  user_BxE, q_VxE, q_bias_V = steps.user_vectors(params, consts, batch, graphdef, head="q")
  scores_BxV = np.asarray(user_BxE) @ np.asarray(q_VxE).T + (
      0.0 if q_bias_V is None else np.asarray(q_bias_V))
  rows = np.flatnonzero(np.asarray(batch["valid_B"]))
  users_B = np.asarray(batch["users_B"])[rows]
  position = {int(u): k for k, u in enumerate(ds.test.users_U)}
  k_B = np.array([position[int(u)] for u in users_B])
  domains_B, targets_B = ds.test.domains_U[k_B], ds.test.targets_U[k_B]
  in_domain_BxV = ds.item_domains_V[None, :] == domains_B[:, None]
  target_B = scores_BxV[rows, targets_B]
  ranks_B = ((scores_BxV[rows] >= target_B[:, None]) & in_domain_BxV).sum(axis=1) - 1
  for d, name in enumerate(ds.domain_names):
    entry = report["splits"]["test"]["by_domain"][name]["full"]
    sel = domains_B == d
    assert entry["model_q"]["overall"]["users"] == entry["model"]["overall"]["users"] == sel.sum()
    assert entry["model_q"]["overall"]["HR@10"] == pytest.approx(np.mean(ranks_B[sel] < 10))
    assert entry["model_q"]["overall"]["MRR"] == pytest.approx(np.mean(1 / (ranks_B[sel] + 1)),
                                                               rel=1e-5)


def test_domain_cold_start_buckets(synthetic):
  ds, _ = synthetic
  from lstmrec_jax import mesh as mesh_lib
  from lstmrec_jax import model as model_lib
  from helpers import model_config
  cfg = model_config(int(ds.num_items), max_len=16, embed_dim=8, hidden_size=8, lstm_impl="xla",
                     domain_starts=ds.domain_starts)
  graphdef, params, consts = model_lib.create_model(cfg, 0)
  out = cross_domain.domain_cold_start(graphdef, params, consts, ds, mesh=mesh_lib.make_mesh(1),
                                       batch_size=64, max_len=16, exclude_seen=True,
                                       chunk_size=64, sampled_negatives=10)
  counts = cross_domain.target_domain_counts(ds.test, ds.item_domains_V)
  for d, name in enumerate(ds.domain_names):
    own = counts[ds.test.domains_U == d]
    # bucket 0-2: every user once for each m in 0..2 below their own count, plus own 0-2
    expect = sum(int((own > m).sum()) for m in (0, 1, 2)) + int((own <= 2).sum())
    assert out["buckets"][name]["full"]["0-2"]["users"] == expect
    assert out["buckets"][name]["sampled"]["6+"]["users"] == int((own >= 6).sum())


def test_ranking_functions_take_domains_through_jit():
  user, table = _random(3)
  fn = jax.jit(functools.partial(ranks.target_ranks, chunk_size=4, item_domains_V=DOMAINS_V))
  out = fn(user, table, None, jnp.array([1, 5, 2, 6, 3, 7]), domains_B=jnp.array([0, 1] * 3))
  assert out.shape == (6,) and int(out.max()) < 6
