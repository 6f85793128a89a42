"""Offline RL (losses/rl.py): TD targets, double Q, the losses, rewards from every format, resume."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import data_config
from helpers import loss_config
from helpers import tiny_config
from lstmrec_jax import data
from lstmrec_jax import losses
from lstmrec_jax import run as run_lib
from lstmrec_jax.configs import base
from lstmrec_jax.data import pipeline
from lstmrec_jax.data import preprocess
from lstmrec_jax.data import rewards as rewards_lib
from lstmrec_jax.errors import CheckpointError
from lstmrec_jax.errors import ConfigError
from lstmrec_jax.errors import DataError
from lstmrec_jax.losses import rl
from lstmrec_jax.train import loop

GAMMA = 0.5

# A hand-made packed row of L = 5: one user's 3-step episode (positions 0-2, the last one
# terminal), a second user's 1-step episode (a reset at 3), then padding. E = 2, V = 4.
USER_NxE = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, 0]], np.float32)
TARGETS_N = np.array([2, 3, 1, 2, 0], np.int32)
REWARDS_N = np.array([1.0, 0.2, 1.0, 0.2, 0.0], np.float32)
MASK_BxL = np.array([[True, True, True, True, False]])
RESETS_BxL = np.array([[False, False, False, True, False]])
Q_TABLE = np.array([[[0, 0], [1, 0], [0, 2], [0.5, 0.5]],  # head 0
                    [[0, 0], [3, 0], [0, -1], [1, 1]]], np.float32)  # head 1
Q_BIAS = np.array([[0, 0, 0, 0.1], [0, 0, 0, 0]], np.float32)


def _transitions(main: int, q_table=Q_TABLE, q_bias=Q_BIAS) -> rl.Transitions:
  done = rl.done_mask(jnp.asarray(MASK_BxL), jnp.asarray(RESETS_BxL)).reshape(-1)
  return rl.Transitions(jnp.asarray(q_table), jnp.asarray(q_bias), jnp.asarray(REWARDS_N), done,
                        jnp.asarray(main, jnp.int32), jnp.asarray(True))


def _td(main: int, **kwargs):
  weights_N = (TARGETS_N > 0).astype(np.float32)
  return rl.td_terms(jnp.asarray(USER_NxE), jnp.asarray(TARGETS_N), jnp.asarray(weights_N),
                     _transitions(main, **kwargs), discount=GAMMA, chunk_size=3)


def test_terminal_flags_of_a_packed_row():
  done = rl.done_mask(jnp.asarray(MASK_BxL), jnp.asarray(RESETS_BxL))
  np.testing.assert_array_equal(done, [[False, False, True, True, True]])


def test_td_targets_of_a_hand_made_three_step_episode():
  """y_t = r_t + gamma * Q_1(s_{t+1}, argmax_a Q_0(s_{t+1}, a)); y = r at the episode's end.

  By hand, main head 0: argmax_a Q_0 at s1 = (0, 1) is item 2 (scores 0, 2, 0.6), at s2 = (1, 1)
  item 2 (1, 2, 1.1); head 1 values item 2 at s1 and s2 at -1. So y0 = 1 + 0.5 * -1 = 0.5,
  y1 = 0.2 + 0.5 * -1 = -0.3, y2 = 1.0 (terminal), and the second user's y3 = 0.2 (terminal:
  the next position is padding). Q_0(s_t, a_t) = 0, 0.6, 1, 0.
  """
  t = _td(main=0)
  np.testing.assert_allclose(t["target_N"][:4], [0.5, -0.3, 1.0, 0.2], atol=1e-6)
  np.testing.assert_allclose(t["q_sa_N"][:4], [0.0, 0.6, 1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(t["td_N"][:4], [0.125, 0.405, 0.0, 0.02], atol=1e-6)


def test_double_q_target_is_evaluated_by_the_other_head():
  """The main head selects, the other evaluates: swapping the main head swaps the roles.

  Main head 1 selects item 3 at s1 (scores 0, -1, 1) and head 0 values it at 0.6: y0 = 1.3
  (head 0 evaluating its own choice would give 1 + 0.5 * 2 = 2.0; head 1 its own, 1.5).
  """
  assert float(_td(main=1)["target_N"][0]) == pytest.approx(1.0 + GAMMA * 0.6)
  assert float(_td(main=0)["target_N"][0]) == pytest.approx(0.5)
  # Changing the target head's values changes y; changing the main head's (away from its
  # argmax) does not: the evaluation is the other network's.
  other = Q_TABLE.copy()
  other[1, 2] = [0.0, -3.0]  # head 1's item 2: Q_1(s1, 2) = -3
  assert float(_td(main=0, q_table=other)["target_N"][0]) == pytest.approx(1.0 + GAMMA * -3.0)
  same_argmax = Q_TABLE.copy()
  same_argmax[0, 2] = [0.0, 5.0]  # head 0 still picks item 2 at s1, with a larger value
  assert float(_td(main=0, q_table=same_argmax)["target_N"][0]) == pytest.approx(0.5)


@pytest.mark.parametrize("main", [0, 1])
def test_only_the_main_head_gets_a_gradient(main):
  weights_N = jnp.asarray((TARGETS_N > 0).astype(np.float32))

  def loss(q_table, q_bias):
    tr = _transitions(main, q_table, q_bias)
    t = rl.td_terms(jnp.asarray(USER_NxE), jnp.asarray(TARGETS_N), weights_N, tr,
                    discount=GAMMA, chunk_size=4)
    return (weights_N * t["td_N"]).sum()

  g_table, g_bias = jax.grad(loss, argnums=(0, 1))(jnp.asarray(Q_TABLE), jnp.asarray(Q_BIAS))
  assert np.abs(np.asarray(g_table[main])).sum() > 0 and np.abs(np.asarray(g_bias[main])).sum() > 0
  np.testing.assert_array_equal(g_table[1 - main], 0.0)
  np.testing.assert_array_equal(g_bias[1 - main], 0.0)


def test_greedy_actions_in_chunks_equal_one_pass_and_skip_padding():
  rng = np.random.default_rng(0)
  user = jnp.asarray(rng.normal(size=(37, 5)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(23, 5)), jnp.float32).at[0].set(100.0)  # padding wins
  bias = jnp.asarray(rng.normal(size=23), jnp.float32)
  scores = np.asarray(user @ table[1:].T + bias[1:])
  for chunk in (23, 7, 4):
    ids, best = rl.greedy_actions(user, table, bias, chunk)
    np.testing.assert_array_equal(ids, np.argmax(scores, axis=1) + 1)
    np.testing.assert_allclose(best, scores.max(axis=1), rtol=1e-6)
  # Items 1 and 2 tie (in different chunks of 2), item 3 is behind: the lowest id wins.
  ids, _ = rl.greedy_actions(jnp.ones((2, 2)), jnp.asarray(
      [[0, 0], [1, 0], [1, 0], [0.5, 0]], jnp.float32), jnp.zeros(4), 2)
  np.testing.assert_array_equal(ids, [1, 1])


def test_negative_actions_are_uniform_real_items():
  neg = np.asarray(rl.negative_actions(jax.random.key(0), 4, 6000))
  counts = np.bincount(neg, minlength=4)
  assert counts[0] == 0 and counts.sum() == 6000
  assert np.abs(counts[1:] - 2000).max() < 150  # uniform over items 1..3


@pytest.mark.parametrize("kind", ["sqn", "sac", "sa2c"])
def test_losses_before_the_warm_up_are_ce_plus_td(kind):
  """Unweighted phase: CE + q_weight * (mean TD [+ the unobserved actions' TD for sa2c])."""
  rng = np.random.default_rng(1)
  user = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  weights = jnp.asarray((TARGETS_N > 0).astype(np.float32))
  tr = _transitions(0)._replace(weighted=jnp.asarray(False))
  cfg, rl_cfg = loss_config(kind=kind), rl.RLConfig(**base.group("rl", q_weight=0.7))
  got, logs = losses.get_loss(kind)(user, table, None, jnp.asarray(TARGETS_N), weights, cfg=cfg,
                                    key=jax.random.key(2), log_q_V=None, item_mask_V=None,
                                    transitions=tr, rl_cfg=rl_cfg)
  ce = losses.softmax_cross_entropy(user, table, None, jnp.asarray(TARGETS_N), weights)[0]
  td = rl.td_terms(user, jnp.asarray(TARGETS_N), weights, tr, discount=rl_cfg.discount,
                   chunk_size=cfg.chunk_size)
  q_loss = float((weights * td["td_N"]).sum() / weights.sum())
  if kind == "sa2c":  # J x the mean over the shared pool, the position's own target left out
    pool = np.asarray(rl.negative_actions(jax.random.key(2), 4, rl_cfg.negative_pool))
    q_neg = np.asarray(user) @ Q_TABLE[0][pool].T + Q_BIAS[0][pool]
    y_neg = rl_cfg.negative_reward + rl_cfg.discount * np.asarray(td["greedy_N"])
    usable = pool[None, :] != TARGETS_N[:, None]
    per_n = np.where(usable, 0.5 * (y_neg[:, None] - q_neg) ** 2, 0).sum(1) / usable.sum(1)
    q_loss += float((np.asarray(weights) * rl_cfg.negatives * per_n).sum() / weights.sum())
  assert float(got) == pytest.approx(float(ce) + 0.7 * q_loss, rel=1e-5)
  assert float(logs["rl/ce_weight"]) == pytest.approx(1.0)


def test_sac_weights_the_ce_by_the_clipped_q_of_the_logged_action():
  rng = np.random.default_rng(3)
  user = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  targets, weights = jnp.asarray(TARGETS_N), jnp.asarray((TARGETS_N > 0).astype(np.float32))
  tr = _transitions(0)
  rl_cfg = rl.RLConfig(**base.group("rl", q_weight=0.0))
  got, _ = losses.get_loss("sac")(user, table, None, targets, weights, cfg=loss_config(),
                                  key=None, log_q_V=None, item_mask_V=None, transitions=tr,
                                  rl_cfg=rl_cfg)
  q_sa = np.maximum(np.asarray(rl.q_values(user, tr.q_table_2xVxE[0], tr.q_bias_2xV[0],
                                           targets)), 0.0)
  logits = np.asarray(user @ table.T)
  lse = np.log(np.exp(logits[:, 1:]).sum(1))
  nll = lse - logits[np.arange(5), TARGETS_N]
  w = np.asarray(weights)
  assert float(got) == pytest.approx(float((w * q_sa * nll).sum() / w.sum()), rel=1e-5)
  # normalize_weights: the weights divided by their mean, so the CE keeps its scale.
  normalized, logs = losses.get_loss("sac")(
      user, table, None, targets, weights, cfg=loss_config(), key=None, log_q_V=None,
      item_mask_V=None, transitions=tr,
      rl_cfg=rl.RLConfig(**base.group("rl", q_weight=0.0, normalize_weights=True)))
  assert float(normalized) == pytest.approx(float((w * q_sa * nll).sum() / (w * q_sa).sum()),
                                            rel=1e-5)
  assert float(logs["rl/ce_weight"]) == pytest.approx(1.0, rel=1e-5)


def test_an_rl_loss_needs_the_q_head_and_no_transforms(tmp_path):
  with pytest.raises(ConfigError, match="model.q_head=True"):
    run_lib.spec_from_config(tiny_config(tmp_path, **{"loss.kind": "sqn"}))
  with pytest.raises(ConfigError, match="augment transforms"):
    run_lib.spec_from_config(tiny_config(tmp_path, **{
        "loss.kind": "sa2c", "model.q_head": True, "augment.crop_prob": 0.5}))
  with pytest.raises(ConfigError, match="does not combine with loss.domain_softmax"):
    run_lib.spec_from_config(tiny_config(tmp_path, **{
        "loss.kind": "sqn", "model.q_head": True, "loss.domain_softmax": True}))


def _losses(workdir: pathlib.Path) -> dict[int, float]:
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_rl_run_resumes_exactly_through_the_phase_switch(tmp_path):
  """Killed mid-run (before the weighted phase) and resumed: the same losses as unbroken."""
  kw = {"loss.kind": "sa2c", "model.q_head": True, "rl.warmup_epochs": 1.5,
        "train.num_epochs": 3}
  full = loop.train_and_evaluate(tiny_config(tmp_path, **kw), tmp_path / "full")
  out = loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=5, **kw),
                                tmp_path / "resumed")
  assert out["stopped_at_step"] == 5
  loop.train_and_evaluate(tiny_config(tmp_path, **kw), tmp_path / "resumed")
  a, b = _losses(tmp_path / "full"), _losses(tmp_path / "resumed")
  assert set(a) == set(b) and len(a) == 24
  for s in range(6, 25):
    assert b[s] == pytest.approx(a[s], rel=1e-6, abs=1e-6), f"step {s}"
  test = full["splits"]["test"]
  assert test["model_q"]["overall"]["users"] == test["model"]["overall"]["users"] == 240
  # Synthetic data has no ratings: every reward is 1, every target high-reward.
  assert test["model"]["high_reward"] == test["model"]["overall"]
  assert test["model"]["low_reward"]["users"] == 0


# ----------------------------------------------------------------------------- rewards


def test_reward_kinds_on_ratings():
  log = data.InteractionLog(users=np.array([1, 1, 1]), items=np.array([5, 6, 7]),
                            timestamps=None, item_side=data.ItemSide(), source="t",
                            ratings=np.array([5, 3, 4], np.float32))
  cfg = lambda **kw: rewards_lib.RewardConfig.from_mapping(base.group("reward", **kw))
  np.testing.assert_allclose(rewards_lib.event_rewards(log, cfg(kind="threshold")),
                             [1.0, 0.2, 1.0])
  np.testing.assert_allclose(rewards_lib.event_rewards(log, cfg(kind="rating")),
                             [1.0, 0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(rewards_lib.event_rewards(log, cfg(constant=2.0)), [2.0] * 3)
  np.testing.assert_allclose(rewards_lib.event_rewards(log, None), [1.0] * 3)
  no_ratings = data.InteractionLog(users=log.users, items=log.items, timestamps=None,
                                   item_side=data.ItemSide(), source="implicit.txt")
  with pytest.raises(DataError, match="implicit.txt: reward.kind='threshold' needs ratings"):
    rewards_lib.event_rewards(no_ratings, cfg(kind="threshold"))
  with pytest.raises(ConfigError, match="reward.labels"):
    cfg(kind="labels")


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return path


# Two users, four events each, in time order: 10 -> (a, b, c, d), 20 -> (b, c, a, d).
EVENTS = [(10, "a", 5, 1), (10, "b", 2, 2), (10, "c", 4, 3), (10, "d", 1, 4),
          (20, "b", 4, 1), (20, "c", 3, 2), (20, "a", 5, 3), (20, "d", 4, 4)]
LABELS = {5: "purchase", 4: "purchase", 3: "click", 2: "click", 1: "view"}


def _by_user(dataset, rewards_N) -> dict:
  """{raw user: [(raw item, reward), ...]} of the training events."""
  return {dataset.user_keys[u].item(): [(str(dataset.item_keys[i]), round(float(r), 6)) for i, r in zip(
      dataset.train[u], rewards_N[dataset.train.offsets_U1[u]:dataset.train.offsets_U1[u + 1]])]
      for u in range(dataset.num_users)}


def test_rewards_from_every_format_travel_with_events_and_targets(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  items = {"a": 1, "b": 2, "c": 3, "d": 4}
  want_train = {10: [("a", 1.0), ("b", 0.2)], 20: [("b", 1.0), ("c", 0.2)]}
  want_valid, want_test = [1.0, 1.0], [0.2, 1.0]  # c (4), a (5); d (1), d (4)
  ml = tmp_path / "ml-100k"
  _write(ml / "u.data", "".join(f"{u}\t{items[i]}\t{r}\t{t}\n" for u, i, r, t in EVENTS))
  rows = [(u, i, r, t, LABELS[r]) for u, i, r, t in EVENTS]
  for name, sep in (("log.csv", ","), ("log.tsv", "\t")):
    _write(tmp_path / name, sep.join(("user", "item", "rating", "time", "kind")) + "\n"
           + "".join(sep.join(map(str, row)) + "\n" for row in rows))
  pq.write_table(pa.table({name: [row[k] for row in rows] for k, name in enumerate(
      ("user", "item", "rating", "time", "kind"))}), tmp_path / "log.parquet")
  columns = {"user": "user", "item": "item", "time": "time", "rating": "rating"}
  threshold = rewards_lib.RewardConfig.from_mapping(base.group("reward", kind="threshold"))
  labels = rewards_lib.RewardConfig.from_mapping(base.group(
      "reward", kind="labels", labels={"purchase": 1.0, "click": 0.2, "view": 0.2}))
  cases = [("movielens", str(ml), {}, threshold),
           ("csv", str(tmp_path / "log.csv"), columns, threshold),
           ("tsv", str(tmp_path / "log.tsv"), {**columns, "feedback": "kind", "rating": ""},
            labels),
           ("parquet", str(tmp_path / "log.parquet"), {**columns, "feedback": "kind"}, labels)]
  letters = {str(v): k for k, v in items.items()}
  for fmt, path, cols, reward in cases:
    ds = data.load_dataset(data_config(format=fmt, path=path, columns=cols), reward)
    got = _by_user(ds, ds.train_rewards())
    if fmt == "movielens":  # integer movie ids
      got = {u: [(letters[i], r) for i, r in row] for u, row in got.items()}
    assert got == want_train, fmt
    np.testing.assert_allclose(ds.valid.rewards_U, want_valid, err_msg=fmt)
    np.testing.assert_allclose(ds.test.rewards_U, want_test, err_msg=fmt)
  # Implicit formats: reward 1 per event (the seqfile and pairs readers carry no feedback).
  _write(tmp_path / "seq.txt", "10 1 2 3 4\n20 2 3 1 4\n")
  _write(tmp_path / "pairs.txt", "10 1\n10 2\n10 3\n10 4\n20 2\n20 3\n20 1\n20 4\n")
  for fmt, name in (("seqfile", "seq.txt"), ("pairs", "pairs.txt")):
    ds = data.load_dataset(data_config(format=fmt, path=str(tmp_path / name)))
    np.testing.assert_array_equal(ds.train_rewards(), 1.0)
    np.testing.assert_array_equal(ds.test.rewards_U, 1.0)
  # A label the map lacks is named, with its count.
  partial = rewards_lib.RewardConfig.from_mapping(base.group(
      "reward", kind="labels", labels={"purchase": 1.0, "click": 0.2}))
  with pytest.raises(DataError, match=r"'view' \(1 event\) not in reward.labels"):
    data.load_dataset(data_config(format="parquet", path=str(tmp_path / "log.parquet"),
                                  columns={**columns, "feedback": "kind"}), partial)


def test_rewards_survive_the_cache_and_change_its_key(tmp_path):
  log = data.synthetic_log(num_users=30, num_items=80, seed=1)
  log = data.InteractionLog(users=log.users, items=log.items, timestamps=log.timestamps,
                            item_side=log.item_side, source="s",
                            ratings=np.arange(len(log.users), dtype=np.float32) % 5 + 1)
  threshold = rewards_lib.RewardConfig.from_mapping(base.group("reward", kind="threshold"))
  built = preprocess.build_dataset(log, reward=threshold, cache_dir=tmp_path)
  cached = preprocess.build_dataset(log, reward=threshold, cache_dir=tmp_path)
  assert len(list(tmp_path.glob("*.npz"))) == 1
  np.testing.assert_array_equal(cached.train_rewards_N, built.train_rewards_N)
  np.testing.assert_array_equal(cached.test.rewards_U, built.test.rewards_U)
  np.testing.assert_allclose(np.unique(built.train_rewards_N), [0.2, 1.0], rtol=1e-6)
  preprocess.build_dataset(log, cache_dir=tmp_path)  # constant rewards: another entry
  assert len(list(tmp_path.glob("*.npz"))) == 2


def test_batches_carry_each_targets_reward():
  train = preprocess.Sequences.from_lists([[1, 2, 3, 4], [5, 6], [7, 8, 9]])
  rewards_N = np.arange(1, 10, dtype=np.float32) / 10  # the reward of item i is i / 10
  batches = pipeline.TrainBatches(train, batch_size=2, max_len=4, seed=0, pack=True,
                                  backend="numpy", rewards_N=rewards_N)
  for batch in batches.epoch(0):
    np.testing.assert_allclose(batch["rewards_BxL"], batch["targets_BxL"] / 10, rtol=1e-6)


# ----------------------------------------------------------------------------- serving


def _q_run(tmp_path, steps: int = 3):
  """A tiny run trained a few SQN steps (Q values away from their init), and its parameters."""
  from lstmrec_jax import optim
  from lstmrec_jax.train import steps as steps_lib
  spec = run_lib.spec_from_config(tiny_config(tmp_path, **{"loss.kind": "sqn",
                                                          "model.q_head": True}))
  run = run_lib.build_run(spec, num_devices=1)
  tx = run.optimizer(10)
  train_fn, _ = steps_lib.compile_train_step(run, tx)
  state = optim.init_state(run.params, tx, spec.seed)
  batches = pipeline.TrainBatches(run.dataset.train, batch_size=8, max_len=16, seed=0,
                                  pack=True, backend="numpy",
                                  rewards_N=run.dataset.train_rewards())
  for _, batch in zip(range(steps), batches.epoch(0)):
    state, _ = train_fn(state, batch, run.step_aux())
  return run, state.params


def test_q_head_served_equals_the_evaluation_path(tmp_path):
  """recommend / top_k / a saved bundle / its exported top_k_q / the server, all with head="q",
  give the evaluation path's top-k (`scoring.steps.topk_step`, head="q")."""
  import functools
  from starlette.testclient import TestClient
  from lstmrec_jax.scoring import steps as scoring
  from lstmrec_jax.serving import bundle as bundle_lib
  from lstmrec_jax.serving import server as server_lib
  from lstmrec_jax.serving import store as store_lib
  from lstmrec_jax.serving.recommender import Recommender
  run, params = _q_run(tmp_path)
  rec = Recommender(bundle_lib.from_run(run, params))
  assert rec.heads == ("softmax", "q")
  rng = np.random.default_rng(0)
  histories = [rng.choice(np.arange(1, run.dataset.num_items), n, replace=False).tolist()
               for n in (1, 4, 9, 15)]
  batch = {"inputs_BxL": np.zeros((4, 16), np.int32), "seen_BxS": np.zeros((4, 16), np.int32)}
  for row, h in enumerate(histories):
    batch["inputs_BxL"][row, :len(h)] = h
    batch["seen_BxS"][row, :len(h)] = h
  batch["mask_BxL"] = batch["inputs_BxL"] > 0
  keys = [[rec.item_keys[i] for i in h] for h in histories]
  for head in ("q", "softmax"):
    topk = jax.jit(functools.partial(scoring.topk_step, graphdef=run.graphdef, k=6,
                                     exclude_seen=True, chunk_size=32, head=head))
    want_ids, want_scores = map(np.asarray, topk(params, run.consts, batch,
                                                 jnp.asarray(run.dataset.item_counts_V)))
    served = rec.recommend_batch(keys, k=6, head=head)
    assert [r.items for r in served] == [[rec.item_keys[i] for i in row] for row in want_ids]
    np.testing.assert_allclose([[s for _, s in r] for r in served], want_scores, rtol=1e-5,
                               atol=1e-6)
    assert [rec.top_k(rec.start(k), k=6, head=head).items for k in keys] == [
        r.items for r in served]
  assert rec.recommend(keys[2], k=6, head="q").items != rec.recommend(keys[2], k=6).items
  # A bundle on disk and its exported function rank with the same Q head.
  saved = bundle_lib.save(bundle_lib.from_run(run, params), tmp_path / "bundle", export_k=6)
  loaded = Recommender.load(saved)
  assert [r.items for r in loaded.recommend_batch(keys, k=6, head="q")] == [
      r.items for r in rec.recommend_batch(keys, k=6, head="q")]
  load = lambda name: jax.export.deserialize((saved / name).read_bytes())  # pylint: disable=unnecessary-lambda-assignment
  exported = load("top_k_q.jax")
  with np.load(saved / "params.npz") as z:
    tables = load("prepare.jax").call({k: z[k] for k in z.files})
  states = np.stack([rec.start(k).vector_S for k in keys])
  exclude = np.zeros((4, 16), np.int32)
  for row, h in enumerate(histories):
    exclude[row, :len(h)] = h
  ids, _ = exported.call(tables, states, exclude)
  assert [[rec.item_keys[int(i)] for i in row] for row in np.asarray(ids)] == [
      r.items for r in rec.recommend_batch(keys, k=6, head="q")]
  # top_k_q.jax is sealed by checksums.json like the other exported functions
  (saved / "top_k_q.jax").write_bytes((saved / "top_k_q.jax").read_bytes()[:-1] + b"x")
  with pytest.raises(CheckpointError, match="top_k_q.jax does not match its checksum"):
    bundle_lib.load(saved)
  # The server: the same answer, and a head the model lacks is refused.
  service = server_lib.Service(rec, store_lib.MemoryStore(), server_lib.ServerConfig(
      max_batch=4, max_k=10, max_history=32, max_exclude=8, max_allow=8, max_events=8))
  with TestClient(server_lib.create_app(service)) as client:
    got = client.post("/recommend", json={"history": keys[1], "k": 6, "head": "q"}).json()
    assert got["items"] == rec.recommend(keys[1], k=6, head="q").items
    assert client.post("/recommend", json={"history": keys[1], "head": "x"}).status_code == 422
  plain_run = run_lib.build_run(run_lib.spec_from_config(tiny_config(tmp_path)), num_devices=1)
  plain = Recommender(bundle_lib.from_run(plain_run, plain_run.params))
  with pytest.raises(ValueError, match="head='q' must be one of softmax"):
    plain.recommend(keys[0], head="q")


# ----------------------------------------------------------------------------- simulation


def test_the_simulation_study_ranks_like_the_served_recommender(tmp_path):
  """benchmarks/rl_simulation.py's policy wrapper (both heads) shows what `recommend` returns
  for the same histories: the simulation runs the served model, not a copy of it."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
  import rl_simulation  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving.recommender import Recommender  # pylint: disable=g-import-not-at-top
  run, params = _q_run(tmp_path)
  rec = Recommender(bundle_lib.from_run(run, params))
  common_keys = [None] + [str(k) for k in rec.item_keys[1:]]
  rng = np.random.default_rng(1)
  histories = [rng.choice(np.arange(1, len(common_keys)), n, replace=False).tolist()
               for n in (1, 3, 7, 12)]
  for head in ("softmax", "q"):
    policy = rl_simulation.ServedModel(rec, common_keys, head)
    state = policy.start(histories)
    got = policy.slates(state, 5, [[] for _ in histories])
    want = rec.recommend_batch([[rec.item_keys[i] for i in h] for h in histories], k=5,
                               head=head)
    assert [[common_keys[i] for i in row] for row in got] == [
        [str(k) for k in r.items] for r in want], head
    # after one more observed item, that item is excluded from the next slate as well
    state = policy.observe(state, np.asarray([row[0] for row in got]))
    again = policy.slates(state, 5, [[] for _ in histories])
    assert all(row[0] not in nxt for row, nxt in zip(got, again))


def test_the_simulators_popularity_floor_ranks_by_hand():
  """rl_simulation's validity floor: popularity with the seen items removed (a tie counts
  against the target). Items 1..12 with counts 12..1; history [1, 2], target 3: rank 0; history
  [4], target 12: items 1-3, 5-11 outrank it (rank 10, a miss at 10)."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
  import rl_simulation  # pylint: disable=g-import-not-at-top
  counts = np.asarray([0.0] + list(range(12, 0, -1)))
  popularity = rl_simulation.FixedScores(counts, np.random.default_rng(0), len(counts))
  got = rl_simulation.offline_check(popularity, [[1, 2], [4]], np.asarray([3, 12]))
  assert got == {"HR@10": 0.5, "NDCG@10": 0.5, "users": 2}


def test_simulated_user_takes_only_what_it_wants_and_only_once():
  """A user who wants item 3, then item 2: a policy showing them earns the rewards of their
  ratings at steps 1 and 2 (discounted), one that never shows them earns nothing."""
  from lstmrec_jax.evaluation import simulation

  class Wants:  # p_U: all mass on item 3, else on item 2 (once 3 is consumed)
    def start(self, histories):
      return None

    def probabilities(self, state):
      return np.tile([0.0, 0.0, 0.25, 0.75, 0.0], (2, 1))

    def observe(self, state, items_B):
      return state

  class Shows:
    def __init__(self, items):
      self.items = items

    def start(self, histories):
      return None

    def slates(self, state, k, exclude):
      rows = [[i for i in self.items if i not in ex][:k] for ex in exclude]
      return np.asarray([row + [0] * (k - len(row)) for row in rows])

    def observe(self, state, items_B):
      return state

  ratings = simulation.RatingModel(3.0, np.asarray([0.0, 0.0, -1.0, 2.0, 0.0]), 0.0, 10.0)
  reward_of = lambda r: np.where(r >= 4, 1.0, 0.2)
  got = simulation.run_episodes(Shows([3, 2, 4, 1]), Wants(), ratings, [[1], [1]],
                                np.zeros(2), horizon=3, slate=2, reward_of=reward_of,
                                rng=np.random.default_rng(0))
  # Shown items are not shown again: the third slate is empty.
  np.testing.assert_array_equal(got.slates_TxBxK[:, 0], [[3, 2], [4, 1], [0, 0]])
  # Step 0: items 3 (0.75 of the mass) and 2 (0.25) are shown: something is taken for sure.
  assert set(got.chosen_TxB[0].tolist()) <= {2, 3} and (got.chosen_TxB[1:] == 0).all()
  m = simulation.episode_metrics(got, discounts=(0.5,))
  rewards = [1.0 if c == 3 else 0.2 for c in got.chosen_TxB[0]]  # rating 5 for 3, 2 for 2
  assert m["return@0.5"] == pytest.approx(np.mean(rewards))
  assert m["hit_rate"] == pytest.approx(1 / 3)
  never = simulation.run_episodes(Shows([4, 1]), Wants(), ratings, [[1], [1]], np.zeros(2),
                                  horizon=3, slate=2, reward_of=reward_of,
                                  rng=np.random.default_rng(0), exclude_shown=False)
  assert (never.chosen_TxB == 0).all() and never.rewards_TxB.sum() == 0


def test_rating_model_recovers_item_offsets():
  from lstmrec_jax.evaluation import simulation
  items = np.repeat([1, 2], 50)
  ratings = np.where(items == 1, 5.0, 1.0)
  m = simulation.RatingModel.fit(items, ratings, np.arange(100) % 7, num_items=3, reg=0.0)
  assert m.mean == pytest.approx(3.0)
  np.testing.assert_allclose(m.item_bias_V[1:], [2.0, -2.0])
  assert m.sigma == pytest.approx(0.0, abs=1e-9)
  np.testing.assert_array_equal(m.sample(np.random.default_rng(0), np.zeros(2),
                                         np.array([1, 2])), [5, 1])


def test_td_to_encoder_false_leaves_the_state_gradient_to_the_ce():
  rng = np.random.default_rng(4)
  user = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  targets, weights = jnp.asarray(TARGETS_N), jnp.asarray((TARGETS_N > 0).astype(np.float32))
  tr = _transitions(0)._replace(weighted=jnp.asarray(False))
  ce_grad = jax.grad(lambda u: losses.softmax_cross_entropy(u, table, None, targets,
                                                            weights)[0])(user)
  for td_to_encoder in (True, False):
    rl_cfg = rl.RLConfig(**base.group("rl", q_weight=5.0, td_to_encoder=td_to_encoder))
    grad = jax.grad(lambda u: losses.get_loss("sa2c")(
        u, table, None, targets, weights, cfg=loss_config(), key=jax.random.key(0),
        log_q_V=None, item_mask_V=None, transitions=tr, rl_cfg=rl_cfg)[0])(user)
    same = np.allclose(grad, ce_grad, atol=1e-6)
    assert same != td_to_encoder


def test_reward_table_printed_only_when_rewards_differ():
  """The by-reward table repeats the overall row when every target has one reward (implicit data,
  the default): it is left out there, and printed for ratings that split the targets."""
  from lstmrec_jax.evaluation import reports as reports_lib  # pylint: disable=g-import-not-at-top
  metrics = {k: 0.1 for k in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")}

  def report(high_users, low_users):
    part = lambda n: {"users": n, **metrics}  # pylint: disable=unnecessary-lambda-assignment
    rep = {"overall": part(high_users + low_users), "high_reward": part(high_users),
           "low_reward": part(low_users),
           "reward": {"high_reward_min": 1.0, "hit_reward@10": 0.5, "reward@10": 0.05}}
    return {"splits": {"test": {"model": rep}}}

  assert reports_lib._format_rewards(report(10, 0)) == []  # pylint: disable=protected-access
  lines = reports_lib._format_rewards(report(6, 4))  # pylint: disable=protected-access
  assert any("by target reward" in line for line in lines)
  assert sum(line.strip().startswith("model") for line in lines) == 3
