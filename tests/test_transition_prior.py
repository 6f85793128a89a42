"""The transition prior (`model.transition_weight`): the lists, the ranking with per-row pairs, and
every route (evaluation, the Recommender's re-encode and streaming, a saved bundle, its exported
functions) adding the same prior of the user's last item."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import model_config, tiny_config
from lstmrec_jax import run as run_lib
from lstmrec_jax.data import pipeline
from lstmrec_jax.data.preprocess import Sequences
from lstmrec_jax.model import cooccurrence
from lstmrec_jax.scoring import ranks
from lstmrec_jax.scoring import steps
from lstmrec_jax.scoring import streaming as fns
from lstmrec_jax.serving import bundle as bundle_lib
from lstmrec_jax.serving.recommender import Recommender


def test_transition_lists_by_hand():
  # [1, 2, 3], [1, 2], [1, 3]: 1 -> 2 twice, 1 -> 3 once, 2 -> 3 once; 3 is never followed.
  s = Sequences.from_lists([[1, 2, 3], [1, 2], [1, 3]])
  ids, logp = cooccurrence.transition_lists(s.offsets_U1, s.items_N, 5, 2, window=1)
  np.testing.assert_array_equal(ids, [[0, 0], [2, 3], [3, 0], [0, 0], [0, 0]])
  np.testing.assert_allclose(logp, [[0, 0], [np.log1p(200 / 3), np.log1p(100 / 3)],
                                    [np.log1p(100), 0], [0, 0], [0, 0]], rtol=1e-6)
  # k = 1 keeps the share of ALL of the item's transitions: item 1's 2 is still 2/3.
  ids, logp = cooccurrence.transition_lists(s.offsets_U1, s.items_N, 5, 1, window=1)
  np.testing.assert_array_equal(ids[:, 0], [0, 2, 3, 0, 0])
  np.testing.assert_allclose(logp[1, 0], np.log1p(200 / 3), rtol=1e-6)
  # window 2 reaches 3 from 1 in the first sequence too: 1 -> 2 x2, 1 -> 3 x2; the tie goes to
  # the partner with fewer transitions of its own (3: none, 2: one), as neighbor_lists breaks it.
  ids, _ = cooccurrence.transition_lists(s.offsets_U1, s.items_N, 5, 2, window=2)
  np.testing.assert_array_equal(ids[1], [3, 2])


def _brute_scores(scores_BxV, pairs):
  out = np.array(scores_BxV, np.float64)
  for b, (ids, vals) in enumerate(zip(*map(np.asarray, pairs))):
    for i, v in zip(ids, vals):
      if i > 0:
        out[b, i] += v
  return out


def test_ranks_add_the_pairs_in_every_chunk():
  rng = np.random.default_rng(0)
  b, v, e = 5, 23, 4
  user = jnp.asarray(rng.normal(size=(b, e)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(v, e)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=v), jnp.float32)
  ids = jnp.asarray(rng.integers(0, v, (b, 4)), jnp.int32).at[:, 0].set(jnp.arange(1, b + 1))
  pairs = (ids.at[:, 1].set(ids[:, 0] + 7), jnp.asarray(rng.uniform(1, 3, (b, 4)), jnp.float32))
  targets = jnp.asarray(rng.integers(1, v, b), jnp.int32)
  seen = jnp.asarray(rng.integers(0, v, (b, 3)), jnp.int32)
  want = _brute_scores(np.asarray(user @ table.T + bias), pairs)
  # pair_scores reads a few items' values.
  np.testing.assert_allclose(ranks.pair_scores(pairs, targets[:, None])[:, 0],
                             want[np.arange(b), targets] - np.asarray(user @ table.T + bias)[
                                 np.arange(b), targets], rtol=1e-5, atol=1e-6)
  for chunk in (4, 7, 64):  # pairs falling in every chunk and beyond the last one's end
    got = ranks.target_ranks(user, table, bias, targets, seen, chunk_size=chunk, pairs=pairs)
    s = want.copy()
    s[:, 0] = -np.inf
    for r in range(b):
      drop = [x for x in np.asarray(seen[r]) if x > 0 and x != int(targets[r])]
      s[r, drop] = -np.inf
    t = s[np.arange(b), targets]
    ahead = (s >= t[:, None]).sum(1) - 1  # minus the target itself
    np.testing.assert_array_equal(got, ahead)
    top_ids, top_scores = ranks.top_k_items(user, table, bias, 5, seen, chunk_size=chunk,
                                            pairs=pairs)
    s_top = want.copy()
    s_top[:, 0] = -np.inf
    for r in range(b):
      s_top[r, [x for x in np.asarray(seen[r]) if x > 0]] = -np.inf
    np.testing.assert_array_equal(top_ids, np.argsort(-s_top, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(top_scores, np.sort(s_top, axis=1)[:, ::-1][:, :5], rtol=1e-5)
  # The pairs change the answer (so the comparisons above can fail).
  assert not np.array_equal(ranks.target_ranks(user, table, bias, targets, seen, pairs=pairs),
                            ranks.target_ranks(user, table, bias, targets, seen))
  cands = jnp.concatenate([targets[:, None], ids], axis=1)
  got, _ = ranks.candidate_ranks(user, table, bias, cands, pairs=pairs)
  c = np.asarray(cands)
  cs = want[np.arange(b)[:, None], c]
  np.testing.assert_array_equal(got, ((cs[:, 1:] >= cs[:, :1]) & (c[:, 1:] > 0)).sum(1))


def _run(tmp_path, weight, **overrides):
  spec = run_lib.spec_from_config(tiny_config(
      tmp_path, **{"model.transition_weight": weight, "model.transition_items": 80,
                   "model.num_layers": 1, **overrides}))
  return run_lib.build_run(spec, num_devices=1)


def test_eval_ranks_add_the_prior_of_the_last_training_transition(tmp_path):
  """eval.py's ranking step equals model scores + weight x log(1 + 100 c(last, j) / c(last, all))
  with c counted here from the training sequences, for every validation user."""
  run = _run(tmp_path, 0.7)
  train = run.dataset.train
  counts = cooccurrence.cooccurrence_counts(train.offsets_U1, train.items_N,
                                            run.dataset.num_items, 1, "next").toarray()
  prior_VxV = np.log1p(100 * counts / np.maximum(counts.sum(1, keepdims=True), 1))
  batch = next(iter(pipeline.eval_batches(run.dataset.valid, batch_size=64,
                                          max_len=run.spec.input.max_len)))
  got = steps.eval_step(run.params, run.consts, batch, graphdef=run.graphdef, exclude_seen=True,
                        chunk_size=16)
  user, table, bias = steps.user_vectors(run.params, run.consts, batch, run.graphdef)
  model_BxV = np.asarray(user @ table.T) + (0 if bias is None else np.asarray(bias))
  length = batch["mask_BxL"].sum(1)
  last = batch["inputs_BxL"][np.arange(len(length)), np.maximum(length - 1, 0)]
  assert (prior_VxV[last] > 0).any(axis=1).mean() > 0.5  # the prior reaches most users
  s = model_BxV + 0.7 * prior_VxV[last]
  s[:, 0] = -np.inf
  targets = batch["targets_B"]
  for r, seen in enumerate(batch["seen_BxS"]):
    s[r, [x for x in seen if x > 0 and x != targets[r]]] = -np.inf
  t = s[np.arange(len(targets)), targets]
  want = (s >= t[:, None]).sum(1) - 1
  valid = batch["valid_B"] & (length > 0)
  np.testing.assert_array_equal(np.asarray(got)[valid], want[valid])
  # Weight 0 is the model alone, and differs.
  plain = _run(tmp_path, 0.0)
  got0 = steps.eval_step(plain.params, plain.consts, batch, graphdef=plain.graphdef,
                         exclude_seen=True, chunk_size=16)
  assert not np.array_equal(np.asarray(got0)[valid], np.asarray(got)[valid])


@pytest.mark.parametrize("overrides", [{}, {"model.item_mode": "sum", "model.encoder": "gru"}],
                         ids=["lstm_id", "gru_hybrid"])
def test_every_route_adds_the_same_prior(tmp_path, overrides):
  run = _run(tmp_path, 0.5, **overrides)
  rec = Recommender(bundle_lib.from_run(run, run.params))
  assert rec.layout.last_item and rec.layout.user_width == rec.layout.embed_dim + 1
  rng = np.random.default_rng(1)
  histories = [list(rng.integers(1, rec.num_items, n)) for n in (1, 4, 15)] + [[]]
  keys = [[rec.item_keys[i] for i in h] for h in histories]
  # The evaluation path's top-k (steps.topk_step) over the same histories.
  l = max(map(len, histories))
  inputs = np.zeros((len(histories), l), np.int32)
  for r, h in enumerate(histories):
    inputs[r, :len(h)] = h
  seen = inputs.copy()
  batch = {"inputs_BxL": jnp.asarray(inputs), "mask_BxL": jnp.asarray(inputs > 0),
           "seen_BxS": jnp.asarray(seen)}
  ids, _ = steps.topk_step(run.params, run.consts, batch,
                           jnp.asarray(run.dataset.item_counts_V, jnp.float32),
                           graphdef=run.graphdef, k=10, exclude_seen=True, chunk_size=32)
  want = [[rec.item_keys[int(i)] for i in row] for row in np.asarray(ids)]
  re_encoded = [r.items for r in rec.recommend_batch(keys, k=10)]
  streamed = [rec.top_k(rec.start(h), k=10).items for h in keys]
  assert re_encoded[:3] == want[:3]
  assert streamed == re_encoded
  # The prior moves the lists: the model without it recommends otherwise.
  plain = Recommender(bundle_lib.from_run(run, run.params))
  plain_tables = fns.Tables(*[getattr(plain.tables, f) for f in
                              ("params", "consts", "input_VxE", "fallback_VxF", "q_fallback_VxF")])
  user, count = rec.encode_ids(histories[:3])
  no_prior = fns.rank(plain_tables, jnp.asarray(user)[:, :-1], jnp.asarray(count),
                      jnp.asarray(seen[:3]), k=10)[0]
  assert [[rec.item_keys[int(i)] for i in row] for row in np.asarray(no_prior)] != want[:3]
  # score_items adds the prior as ranking does.
  scored = rec.score_allowed(user, count, [list(np.asarray(ids)[r]) for r in range(3)])
  _, top_scores = steps.topk_step(run.params, run.consts, batch,
                                  jnp.asarray(run.dataset.item_counts_V, jnp.float32),
                                  graphdef=run.graphdef, k=10, exclude_seen=True, chunk_size=32)
  np.testing.assert_allclose(scored[:, :10], np.asarray(top_scores)[:3], rtol=1e-5, atol=1e-5)
  # A saved bundle (the lists travel in it) and its exported functions rank the same.
  out = bundle_lib.save(rec.bundle, tmp_path / "bundle", export_k=10)
  loaded = Recommender.load(out)
  assert [r.items for r in loaded.recommend_batch(keys, k=10)] == re_encoded
  load = lambda name: jax.export.deserialize((out / name).read_bytes())
  prepare, observe, top_k = load("prepare.jax"), load("observe.jax"), load("top_k.jax")
  tables = prepare.call(dict(np.load(out / "params.npz")))
  state = np.zeros((len(histories), rec.layout.size), np.float32)
  for t in range(l):
    state = observe.call(tables, state, jnp.asarray(inputs[:, t]))
  exported, _ = top_k.call(tables, state, jnp.asarray(seen))
  assert [[rec.item_keys[int(i)] for i in row] for row in np.asarray(exported)] == re_encoded


def test_transition_settings_are_checked(tmp_path):
  with pytest.raises(ValueError, match="transition_weight"):
    model_config(transition_weight=-1.0)
  with pytest.raises(ValueError, match="transition_items"):
    model_config(transition_items=0)
  with pytest.raises(ValueError, match="transition_window"):
    model_config(transition_window=0)
  cfg = model_config(transition_weight=0.5)
  from lstmrec_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="needs the transition lists"):
    model_lib.SeqRecModel(cfg, rngs=nnx.Rngs(params=0))


def test_the_embedding_attack_at_eps_0_is_the_evaluation_with_the_prior(tmp_path):
  from lstmrec_jax.evaluation import attacks  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.evaluation import ranking  # pylint: disable=g-import-not-at-top
  run = _run(tmp_path, 0.7)
  split = run.dataset.test
  got = attacks.perturbed_ranks(run.graphdef, run.params, run.consts, run.dataset, split,
                                eps_list=(0.0,), loss_cfg=run.spec.loss, batch_size=64,
                                max_len=16, chunk_size=32)
  rank_fn = steps.compile_rank_fn(run.graphdef, run.mesh, exclude_seen=True, chunk_size=32,
                                  popularity_V=run.dataset.item_counts_V)
  users_U, ranks_U = ranking.rank_split(rank_fn, run.params, run.consts, split, batch_size=64,
                                        max_len=16, mesh=run.mesh)
  ref = dict(zip(users_U.tolist(), ranks_U.tolist()))
  np.testing.assert_array_equal(got[0.0], [ref[u] for u in split.users_U.tolist()])


def test_the_simulation_policy_scores_with_the_prior(tmp_path):
  """benchmarks/rl_simulation.py's full score rows (what its users are shown from) add the prior
  as the served top-k does."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
  import rl_simulation  # pylint: disable=g-import-not-at-top
  run = _run(tmp_path, 0.7)
  rec = Recommender(bundle_lib.from_run(run, run.params))
  common_keys = [None] + [str(k) for k in rec.item_keys[1:]]
  histories = [[3, 9], [14, 2, 7], [21]]
  policy = rl_simulation.ServedModel(rec, common_keys, "softmax")
  state = policy.start(histories)
  scores = policy.scores(state)
  for row, h in zip(scores, histories):
    row[h] = -np.inf
  got = policy.slates(state, 5, [[] for _ in histories])
  np.testing.assert_array_equal(np.argsort(-scores, axis=1, kind="stable")[:, :5], got)
