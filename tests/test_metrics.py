"""Ranking metrics against hand-computed cases, perfect and random scorers, chunked vs not."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmrec_jax.evaluation import metrics
from lstmrec_jax.scoring import ranks as ranks_lib


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
  ranks = ranks_lib.target_ranks(user, table, None, jnp.array([3, 3]),
                               jnp.array([[0, 0], [2, 0]]))
  np.testing.assert_array_equal(np.asarray(ranks), [1, 0])


def test_ties_count_against_target_and_padding_never_counts():
  table = jnp.array([[5.0], [1.0], [1.0], [1.0]])  # padding row scores highest; must not count
  ranks = ranks_lib.target_ranks(jnp.ones((1, 1)), table, None, jnp.array([2]))
  assert int(ranks[0]) == 2  # items 1 and 3 tie with the target


def test_target_seen_before_is_not_removed():
  table = jnp.array([[0.0], [0.2], [0.9]])
  ranks = ranks_lib.target_ranks(jnp.ones((1, 1)), table, None, jnp.array([2]), jnp.array([[2, 1]]))
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
  got = ranks_lib.target_ranks(jnp.asarray(user), jnp.asarray(table), jnp.asarray(bias),
                             jnp.asarray(targets), jnp.asarray(seen), chunk_size=chunk)
  np.testing.assert_array_equal(np.asarray(got), expected)
  kept = ranks_lib.target_ranks(jnp.asarray(user), jnp.asarray(table), jnp.asarray(bias),
                              jnp.asarray(targets), jnp.asarray(seen), exclude_seen=False,
                              chunk_size=chunk)
  np.testing.assert_array_equal(np.asarray(kept),
                                _ranks_bruteforce(scores, targets, seen, exclude_seen=False))


def test_perfect_scorer_gets_one():
  v = 30
  table = jnp.eye(v)
  targets = jnp.arange(1, v)
  ranks = np.asarray(ranks_lib.target_ranks(table[targets] * 10.0, table, None, targets))
  m = metrics.metrics_from_ranks(ranks)
  assert m["HR@1"] == 1.0 and m["NDCG@10"] == 1.0 and m["MRR"] == 1.0


def test_random_scorer_gets_about_k_over_v():
  key = jax.random.key(0)
  b, v, e = 4000, 200, 16
  user = jax.random.normal(key, (b, e))
  table = jax.random.normal(jax.random.fold_in(key, 1), (v, e))
  targets = jax.random.randint(jax.random.fold_in(key, 2), (b,), 1, v)
  m = metrics.metrics_from_ranks(np.asarray(ranks_lib.target_ranks(user, table, None, targets)))
  expected = 10 / (v - 1)
  assert abs(m["HR@10"] - expected) < 4 * math.sqrt(expected * (1 - expected) / b)


def test_metrics_from_ranks_hand_example():
  m = metrics.metrics_from_ranks(np.array([0, 3]))
  assert m["HR@1"] == 0.5 and m["HR@5"] == 1.0
  assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(5)) / 2)
  assert m["MRR"] == pytest.approx((1 + 1 / 4) / 2)
  assert m["users"] == 2


def test_mrr_at_10_counts_only_the_top_10():
  """MRR over the whole catalog credits a rank-500 target; MRR@10 (papers, RecBole) does not."""
  m = metrics.metrics_from_ranks(np.array([0, 12, 499]))
  assert m["MRR"] == pytest.approx((1 + 1 / 13 + 1 / 500) / 3)
  assert m["MRR@10"] == pytest.approx(1 / 3)
  assert metrics.metrics_from_ranks(np.array([9]))["MRR@10"] == pytest.approx(0.1)
  # A miss (repeated target under "miss", non-finite scores) adds 0; no user: None.
  miss = metrics.metrics_from_ranks(np.array([metrics.SEEN_TARGET_RANK, metrics.NONFINITE_RANK]))
  assert miss["MRR@10"] == 0.0 and metrics.metrics_from_ranks(np.array([]))["MRR@10"] is None


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
  ids, _ = ranks_lib.top_k_items(jnp.asarray(user), jnp.asarray(table), None, k, jnp.asarray(seen),
                               chunk_size=chunk)
  scores = user @ table.T
  scores[:, 0] = -np.inf
  for r in range(b):
    scores[r, seen[r][seen[r] > 0]] = -np.inf
  np.testing.assert_array_equal(np.asarray(ids), np.argsort(-scores, axis=1)[:, :k])


def test_empty_bucket_is_none_not_nan():
  m = metrics.metrics_from_ranks(np.array([], np.int64))
  assert m["users"] == 0 and m["HR@10"] is None and m["NDCG@10"] is None


# ------------------------------------------------------ eval.seen_targets: repeated test targets


def _hand_split():
  """Two users: A saw items 1 and 3 and its target is 3 again (a repeat); B saw 1, target 4."""
  from lstmrec_jax.data import preprocess
  return preprocess.EvalSplit(np.array([0, 1], np.int32),
                              preprocess.Sequences.from_lists([[1, 3], [1]]),
                              np.array([3, 4], np.int32))


def _hand_ranks(exclude_seen=True):
  # scores [pad, 0.9, 0.8, 0.5, 0.4, 0.1]: A's target 3 (0.5) has item 2 ahead once its seen item
  # 1 is removed -> rank 1; B's target 4 (0.4) has items 2 and 3 ahead -> rank 2. Nothing removed:
  # item 1 is ahead as well -> ranks 2 and 3.
  table = jnp.array([[0.0], [0.9], [0.8], [0.5], [0.4], [0.1]])
  seen = jnp.array([[1, 3], [1, 0]])
  return np.asarray(ranks_lib.target_ranks(jnp.ones((2, 1)), table, None, jnp.array([3, 4]), seen,
                                         exclude_seen=exclude_seen))


def test_repeated_target_exact_ranks_under_both_protocols():
  from lstmrec_jax.evaluation import reports
  split = _hand_split()
  ranks = _hand_ranks()
  np.testing.assert_array_equal(ranks, [1, 2])
  np.testing.assert_array_equal(reports.repeated_targets(split), [True, False])
  np.testing.assert_array_equal(metrics.apply_seen_targets(ranks, [True, False], "rankable"),
                                [1, 2])
  np.testing.assert_array_equal(metrics.apply_seen_targets(ranks, [True, False], "miss"),
                                [metrics.SEEN_TARGET_RANK, 2])
  users = np.array([1, 0])  # any order: matched to the split by user
  miss = reports.split_report(ranks[::-1], users, split, seen_targets="miss", ks=(1, 5))
  rankable = reports.split_report(ranks[::-1], users, split, seen_targets="rankable", ks=(1, 5))
  m, r = miss["overall"], rankable["overall"]
  assert (m["HR@1"], m["HR@5"]) == (0.0, 0.5)  # A is a miss at every k
  assert m["NDCG@5"] == pytest.approx(0.5 / math.log2(4))
  assert m["MRR"] == pytest.approx(0.5 / 3)  # the miss adds 0 to MRR
  assert "nonfinite_users" not in m  # a repeat is not a broken score
  assert (r["HR@1"], r["HR@5"]) == (0.0, 1.0)
  assert r["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
  assert r["MRR"] == pytest.approx((1 / 2 + 1 / 3) / 2)
  # Both numbers in either report, and the count of repeated targets.
  for rep in (miss, rankable):
    assert rep["repeated_targets"] == 1
    assert rep["by_seen_targets"] == {"miss": m, "rankable": r}
  # A non-finite rank stays non-finite under "miss".
  np.testing.assert_array_equal(
      metrics.apply_seen_targets(np.array([metrics.NONFINITE_RANK]), [True], "miss"),
      [metrics.NONFINITE_RANK])
  with pytest.raises(ValueError, match="seen_targets"):
    metrics.apply_seen_targets(ranks, [True, False], "drop")


def test_keep_seen_ranks_everything_and_makes_every_target_rankable():
  from lstmrec_jax.evaluation import reports
  np.testing.assert_array_equal(_hand_ranks(exclude_seen=False), [2, 3])
  assert reports.effective_seen_targets(False, "miss") == "rankable"
  assert reports.effective_seen_targets(True, "miss") == "miss"
  assert "kept in the ranking" in reports.protocol(False, "rankable")
  assert "counts as a miss" in reports.protocol(True, "miss")


def test_no_repeats_means_the_same_numbers_under_both_protocols():
  # Beauty and Games have no repeated targets: their numbers do not depend on the choice.
  from lstmrec_jax.data import preprocess
  from lstmrec_jax.evaluation import reports
  split = preprocess.EvalSplit(np.arange(3, dtype=np.int32),
                               preprocess.Sequences.from_lists([[1, 2], [2], []]),
                               np.array([3, 1, 2], np.int32))
  ranks, users = np.array([0, 4, 7]), np.arange(3)
  miss = reports.split_report(ranks, users, split, seen_targets="miss")
  rankable = reports.split_report(ranks, users, split, seen_targets="rankable")
  assert miss == rankable
  assert miss["repeated_targets"] == 0 and "by_seen_targets" not in miss


def test_evaluate_params_reports_both_protocols_where_targets_repeat(tmp_path):
  import dataclasses
  from helpers import tiny_config
  from lstmrec_jax import run as run_lib
  from lstmrec_jax.data import preprocess
  from lstmrec_jax.evaluation import ranking, reports
  run = run_lib.build_run(run_lib.spec_from_config(tiny_config(tmp_path)))
  valid = run.dataset.valid
  assert not reports.repeated_targets(valid).any()  # synthetic data: no repeats
  common = dict(splits=("valid",), mesh=run.mesh, batch_size=64, max_len=16, exclude_seen=True,
                chunk_size=32, beyond_k=0)
  args = (run.graphdef, run.params, run.consts)
  plain = {s: ranking.evaluate_params(*args, run.dataset, seen_targets=s, **common)
           for s in ("miss", "rankable")}
  assert (plain["miss"]["splits"]["valid"]["model"]["overall"]
          == plain["rankable"]["splits"]["valid"]["model"]["overall"])
  # The first 10 users' targets become their last history item: repeats.
  targets = valid.targets_U.copy()
  lengths = np.diff(valid.history.offsets_U1)
  chosen = np.flatnonzero(lengths > 0)[:10]
  targets[chosen] = valid.history.items_N[valid.history.offsets_U1[chosen + 1] - 1]
  repeats = dataclasses.replace(run.dataset, valid=preprocess.EvalSplit(
      valid.users_U, valid.history, targets))
  got = {s: ranking.evaluate_params(*args, repeats, seen_targets=s, **common)
         for s in ("miss", "rankable")}
  for s, rep in got.items():
    assert rep["seen_targets"] == s and rep["protocol"] == reports.protocol(True, s)
    model = rep["splits"]["valid"]["model"]
    assert model["repeated_targets"] == 10
    assert model["overall"] == model["by_seen_targets"][s]
  miss = got["miss"]["splits"]["valid"]["model"]
  assert miss["by_seen_targets"] == got["rankable"]["splits"]["valid"]["model"]["by_seen_targets"]
  assert miss["overall"]["HR@20"] <= miss["by_seen_targets"]["rankable"]["HR@20"]
  table = reports.format_table(got["miss"])
  assert "model, repeat-aware" in table and "10 of" in table
  kept = ranking.evaluate_params(*args, repeats, seen_targets="miss",
                                 **{**common, "exclude_seen": False})
  assert kept["seen_targets"] == "rankable" and not kept["exclude_seen"]



@pytest.mark.parametrize("encoder", ["lstm", "gru", "transformer"])
def test_rank_split_by_length_gives_the_ranks_of_the_full_width(tmp_path, monkeypatch, encoder):
  """Batches cut to their histories' length (the default) rank every user as the full width does:
  no built-in encoder reads the padding after a history."""
  from helpers import tiny_config
  from lstmrec_jax import run as run_lib
  from lstmrec_jax.data import pipeline
  from lstmrec_jax.evaluation import ranking
  from lstmrec_jax.scoring import steps as scoring
  run = run_lib.build_run(run_lib.spec_from_config(tiny_config(
      tmp_path, **{"input.max_len": 32, "model.encoder": encoder})))
  split = run.dataset.valid
  rank_fn = scoring.compile_rank_fn(run.graphdef, run.mesh, exclude_seen=True, chunk_size=32,
                                    popularity_V=run.dataset.item_counts_V)
  original, widths, out = ranking._eval_batches, set(), {}
  for by_length in (False, True):
    def batches(*args, by_length=by_length, **kwargs):
      for batch in original(*args, **{**kwargs, "by_length": by_length}):
        widths.add(batch["inputs_BxL"].shape[1])
        yield batch
    monkeypatch.setattr(ranking, "_eval_batches", batches)
    users_U, ranks_U = ranking.rank_split(rank_fn, run.params, run.consts, split, batch_size=64,
                                          max_len=32, mesh=run.mesh)
    out[by_length] = ranks_U[np.argsort(users_U)]
  assert widths == {pipeline.eval_lengths(32)[0], 32}  # both kinds of batch were ranked
  np.testing.assert_array_equal(out[True], out[False])
  assert len(np.unique(out[True])) > 5  # a model that ranks, not ties


def test_compile_ahead_programs_rank_as_the_jitted_step(tmp_path):
  """The validation's programs compiled ahead (the loop starts it after the first train step)
  are the ones a ranking pass runs: no compile at the call, the same ranks."""
  from helpers import tiny_config
  from lstmrec_jax import run as run_lib
  from lstmrec_jax.evaluation import ranking
  from lstmrec_jax.scoring import steps as scoring
  run = run_lib.build_run(run_lib.spec_from_config(tiny_config(tmp_path,
                                                               **{"input.max_len": 32})))
  split = run.dataset.valid
  args = dict(exclude_seen=True, chunk_size=32, popularity_V=run.dataset.item_counts_V)
  ahead, plain = (scoring.compile_rank_fn(run.graphdef, run.mesh, **args) for _ in range(2))
  shapes = ranking.batch_shapes(split, batch_size=64, max_len=32)
  assert len(shapes) == 2  # a short and a full-width batch
  futures = ahead.compile_ahead(run.params, run.consts, shapes)
  assert len(futures) == 2 and not ahead.compile_ahead(run.params, run.consts, shapes)
  for future in futures:
    future.result()
  got = ranking.rank_split(ahead, run.params, run.consts, split, batch_size=64, max_len=32,
                           mesh=run.mesh)
  assert ahead._jitted._cache_size() == 0  # every batch ran a program compiled ahead
  ref = ranking.rank_split(plain, run.params, run.consts, split, batch_size=64, max_len=32,
                           mesh=run.mesh)
  assert plain._jitted._cache_size() == 2
  for a, b in zip(got, ref):
    np.testing.assert_array_equal(a, b)
