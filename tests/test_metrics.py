"""Ranking metrics against hand-computed cases, perfect and random scorers, chunked vs not."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmrec_jax.evaluation import metrics


def _ranks_bruteforce(scores_BxV, targets_B, seen, exclude_seen=True):
  out = []
  for s, t, seen_row in zip(np.asarray(scores_BxV, np.float64), targets_B, seen):
    s = s.copy()
    s[0] = -np.inf
    if exclude_seen:
      for i in seen_row:
        if i > 0 and i != t:
          s[i] = -np.inf
    others = np.delete(np.arange(len(s)), t)
    out.append(int(np.sum(s[others] >= s[t])))
  return np.array(out)


def test_hand_computed_rank():
  # scores [pad, 0.1, 0.9, 0.5], target 3: item 2 is ahead -> rank 1; seen item 2 removed -> 0.
  table = jnp.array([[0.0], [0.1], [0.9], [0.5]])
  user = jnp.ones((2, 1))
  ranks = metrics.target_ranks(user, table, None, jnp.array([3, 3]),
                               jnp.array([[0, 0], [2, 0]]))
  np.testing.assert_array_equal(np.asarray(ranks), [1, 0])


def test_ties_count_against_target_and_padding_never_counts():
  table = jnp.array([[5.0], [1.0], [1.0], [1.0]])  # padding row scores highest; must not count
  ranks = metrics.target_ranks(jnp.ones((1, 1)), table, None, jnp.array([2]))
  assert int(ranks[0]) == 2  # items 1 and 3 tie with the target


def test_target_seen_before_is_not_removed():
  table = jnp.array([[0.0], [0.2], [0.9]])
  ranks = metrics.target_ranks(jnp.ones((1, 1)), table, None, jnp.array([2]), jnp.array([[2, 1]]))
  assert int(ranks[0]) == 0


@pytest.mark.parametrize("chunk", [3, 7, 64, 1000])
def test_chunked_matches_bruteforce(chunk):
  rng = np.random.default_rng(0)
  b, v, e = 9, 50, 4
  user = rng.normal(size=(b, e)).astype(np.float32)
  table = rng.normal(size=(v, e)).astype(np.float32)
  bias = rng.normal(size=(v,)).astype(np.float32)
  targets = rng.integers(1, v, size=b)
  seen = rng.integers(0, v, size=(b, 6))
  scores = user @ table.T + bias
  expected = _ranks_bruteforce(scores, targets, seen)
  got = metrics.target_ranks(jnp.asarray(user), jnp.asarray(table), jnp.asarray(bias),
                             jnp.asarray(targets), jnp.asarray(seen), chunk_size=chunk)
  np.testing.assert_array_equal(np.asarray(got), expected)
  kept = metrics.target_ranks(jnp.asarray(user), jnp.asarray(table), jnp.asarray(bias),
                              jnp.asarray(targets), jnp.asarray(seen), exclude_seen=False,
                              chunk_size=chunk)
  np.testing.assert_array_equal(np.asarray(kept),
                                _ranks_bruteforce(scores, targets, seen, exclude_seen=False))


def test_perfect_scorer_gets_one():
  v = 30
  table = jnp.eye(v)
  targets = jnp.arange(1, v)
  ranks = np.asarray(metrics.target_ranks(table[targets] * 10.0, table, None, targets))
  m = metrics.metrics_from_ranks(ranks)
  assert m["HR@1"] == 1.0 and m["NDCG@10"] == 1.0 and m["MRR"] == 1.0


def test_random_scorer_gets_about_k_over_v():
  key = jax.random.key(0)
  b, v, e = 4000, 200, 16
  user = jax.random.normal(key, (b, e))
  table = jax.random.normal(jax.random.fold_in(key, 1), (v, e))
  targets = jax.random.randint(jax.random.fold_in(key, 2), (b,), 1, v)
  m = metrics.metrics_from_ranks(np.asarray(metrics.target_ranks(user, table, None, targets)))
  expected = 10 / (v - 1)
  assert abs(m["HR@10"] - expected) < 4 * math.sqrt(expected * (1 - expected) / b)


def test_metrics_from_ranks_hand_example():
  m = metrics.metrics_from_ranks(np.array([0, 3]))
  assert m["HR@1"] == 0.5 and m["HR@5"] == 1.0
  assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(5)) / 2)
  assert m["MRR"] == pytest.approx((1 + 1 / 4) / 2)
  assert m["users"] == 2


def test_history_buckets():
  out = metrics.metrics_by_history_length(np.array([0, 50, 0, 0]), np.array([1, 2, 4, 30]))
  assert out["1-2"]["users"] == 2 and out["1-2"]["HR@10"] == 0.5
  assert out["3-5"]["HR@10"] == 1.0 and out["6-10"]["users"] == 0 and out[">10"]["users"] == 1


@pytest.mark.parametrize("chunk", [4, 16, 100])
def test_top_k_matches_argsort(chunk):
  rng = np.random.default_rng(1)
  b, v, e, k = 5, 40, 3, 6
  user = rng.normal(size=(b, e)).astype(np.float32)
  table = rng.normal(size=(v, e)).astype(np.float32)
  seen = rng.integers(0, v, size=(b, 4))
  ids, _ = metrics.top_k_items(jnp.asarray(user), jnp.asarray(table), None, k, jnp.asarray(seen),
                               chunk_size=chunk)
  scores = user @ table.T
  scores[:, 0] = -np.inf
  for r in range(b):
    scores[r, seen[r][seen[r] > 0]] = -np.inf
  np.testing.assert_array_equal(np.asarray(ids), np.argsort(-scores, axis=1)[:, :k])


def test_empty_bucket_is_none_not_nan():
  m = metrics.metrics_from_ranks(np.array([], np.int64))
  assert m["users"] == 0 and m["HR@10"] is None and m["NDCG@10"] is None
