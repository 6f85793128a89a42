"""Losses: the full softmax against numpy, the chunked one against the full one, sampled softmax.

Shape legend: N positions, E embedding size, V catalog size (item 0 = padding), S negatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmrec_jax import losses

N, V, E = 23, 101, 8


def _problem(seed=0, n=N, v=V, e=E):
  k = jax.random.split(jax.random.key(seed), 4)
  user = jax.random.normal(k[0], (n, e))
  table = 0.5 * jax.random.normal(k[1], (v, e))
  bias = jax.random.normal(k[2], (v,))
  targets = jax.random.randint(k[3], (n,), 1, v).at[:3].set(0)  # three positions without target
  weights = jnp.linspace(0.5, 2.0, n)
  return user, table, bias, targets, weights


def _numpy_ce(user, table, bias, targets, weights, label_smoothing=0.0):
  logits = np.asarray(user, np.float64) @ np.asarray(table, np.float64).T
  if bias is not None:
    logits += np.asarray(bias, np.float64)
  real = logits[:, 1:]  # item 0 is not a class
  logp = real - np.log(np.exp(real - real.max(1, keepdims=True)).sum(1, keepdims=True)) - (
      real.max(1, keepdims=True))
  t = np.asarray(targets)
  w = np.where(t > 0, np.asarray(weights, np.float64), 0.0)
  nll = -logp[np.arange(len(t)), np.maximum(t - 1, 0)]
  loss = (1 - label_smoothing) * nll - label_smoothing * logp.mean(1)
  return (w * loss).sum() / w.sum()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_full_softmax_matches_numpy(label_smoothing, with_bias):
  user, table, bias, targets, weights = _problem()
  bias = bias if with_bias else None
  loss, aux = losses.softmax_cross_entropy(user, table, bias, targets, weights,
                                           label_smoothing=label_smoothing)
  np.testing.assert_allclose(loss, _numpy_ce(user, table, bias, targets, weights,
                                             label_smoothing), rtol=1e-5)
  np.testing.assert_allclose(aux["weight_sum"], weights[3:].sum(), rtol=1e-6)
  np.testing.assert_allclose(aux["loss_sum"] / aux["weight_sum"], loss, rtol=1e-6)


def test_full_softmax_ignores_padding_row_and_padded_targets():
  user, table, bias, targets, weights = _problem()
  loss = lambda t, b: losses.softmax_cross_entropy(user, t, b, targets, weights)[0]
  base = loss(table, bias)
  # Item 0's embedding and bias are not a class: changing them changes nothing, no gradient.
  np.testing.assert_array_equal(base, loss(table.at[0].set(100.0), bias.at[0].set(100.0)))
  g_table, g_bias = jax.grad(loss, argnums=(0, 1))(table, bias)
  assert float(jnp.abs(g_table[0]).sum()) == 0.0 and float(g_bias[0]) == 0.0
  # Positions whose target is 0 count for nothing, whatever their weight or user state.
  g_user = jax.grad(lambda u: losses.softmax_cross_entropy(u, table, bias, targets, weights)[0])(
      user)
  assert float(jnp.abs(g_user[:3]).sum()) == 0.0
  assert bool(jnp.isfinite(g_user).all())


# (chunk_size, label_smoothing, with_bias): V = 101 is no multiple of 16, 100 or 7; 1000 > V.
CHUNK_CASES = [(16, 0.0, True), (100, 0.0, True), (7, 0.2, True), (1000, 0.0, False),
               (1, 0.0, True)]


@pytest.mark.parametrize("chunk_size,label_smoothing,with_bias", CHUNK_CASES)
def test_chunked_equals_full_values_and_gradients(chunk_size, label_smoothing, with_bias):
  user, table, bias, targets, weights = _problem(v=V if chunk_size > 1 else 13)
  bias = bias if with_bias else None
  argnums = (0, 1, 2) if with_bias else (0, 1)

  def make(fn, **kw):
    return jax.jit(jax.value_and_grad(
        lambda u, t, b: fn(u, t, b, targets, weights, label_smoothing=label_smoothing, **kw)[0],
        argnums=argnums))

  value, grads = make(losses.softmax_cross_entropy)(user, table, bias)
  c_value, c_grads = make(losses.chunked_softmax_cross_entropy, chunk_size=chunk_size)(
      user, table, bias)
  np.testing.assert_allclose(c_value, value, rtol=1e-6)
  for g, cg in zip(grads, c_grads):
    np.testing.assert_allclose(cg, g, atol=1e-7, rtol=1e-5)


def test_chunked_aux_and_leading_dims():
  user, table, bias, targets, weights = _problem(n=24)
  full = losses.softmax_cross_entropy(user, table, bias, targets, weights)
  chunked = losses.chunked_softmax_cross_entropy(
      user.reshape(4, 6, E), table, bias, targets.reshape(4, 6), weights.reshape(4, 6),
      chunk_size=30)
  for key in ("loss_sum", "nll_sum", "weight_sum"):
    np.testing.assert_allclose(chunked[1][key], full[1][key], rtol=1e-6)


def test_chunked_temp_memory_does_not_grow_like_n_times_v():
  n, v, e = 256, 200_000, 16
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  args = (f32(n, e), f32(v, e), f32(v), jax.ShapeDtypeStruct((n,), jnp.int32), f32(n))

  def temp_bytes(fn):
    grad_fn = jax.value_and_grad(lambda u, t, b, y, w: fn(u, t, b, y, w)[0], argnums=(0, 1, 2))
    return jax.jit(grad_fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

  full = temp_bytes(losses.softmax_cross_entropy)
  chunked = temp_bytes(lambda *a: losses.chunked_softmax_cross_entropy(*a, chunk_size=4096))
  logits_bytes = n * v * 4
  assert full >= logits_bytes  # the full loss holds at least one N x V f32 buffer
  assert chunked < logits_bytes / 4, (chunked, logits_bytes)


def test_popularity_log_q_and_sampler():
  np.testing.assert_allclose(jnp.exp(losses.popularity_log_q(jnp.array([0, 1, 3]), 1.0)),
                             [0.0, 0.25, 0.75], atol=1e-7)
  counts = jnp.array([5, 0, 1, 10, 100])
  np.testing.assert_allclose(jnp.exp(losses.popularity_log_q(counts, 0.0)),
                             [0, 0.25, 0.25, 0.25, 0.25], atol=1e-7)
  log_q = losses.popularity_log_q(counts, 0.5)
  ids = losses.sample_negatives(jax.random.key(0), log_q, 200_000)
  assert ids.dtype == jnp.int32 and int(ids.min()) >= 1 and int(ids.max()) <= 4
  freq = np.bincount(np.asarray(ids), minlength=5) / ids.size
  np.testing.assert_allclose(freq, np.exp(np.asarray(log_q)), atol=5e-3)


def test_sampled_approaches_full_loss_with_many_uniform_negatives():
  user, table, bias, targets, weights = _problem(v=200)
  full, _ = losses.softmax_cross_entropy(user, table, bias, targets, weights)
  log_q = losses.popularity_log_q(jnp.ones(200), 0.0)

  @jax.jit
  def sampled(key):
    negatives = losses.sample_negatives(key, log_q, 4000)
    return losses.sampled_softmax_cross_entropy(user, table, bias, targets, weights, negatives,
                                                log_q)[0]

  values = jax.vmap(sampled)(jax.random.split(jax.random.key(0), 16))
  np.testing.assert_allclose(values.mean(), full, rtol=0.01)
  # Few negatives: the estimate is biased low (Jensen) but nowhere near the full loss's scale.
  few = losses.sampled_softmax_cross_entropy(
      user, table, bias, targets, weights, losses.sample_negatives(jax.random.key(1), log_q, 8),
      log_q)[0]
  assert float(few) < float(full)


def test_sampled_masks_accidental_hits():
  user, table, bias, _, _ = _problem(n=2)
  targets, weights = jnp.array([5, 9]), jnp.ones(2)
  log_q = losses.popularity_log_q(jnp.ones(V), 0.0)
  # Every negative of row 0 is its own target: with hits removed only the positive is left.
  negatives = jnp.array([5, 5, 5])
  kept = losses.sampled_softmax_cross_entropy(user[:1], table, bias, targets[:1], weights[:1],
                                              negatives, log_q)[0]
  np.testing.assert_allclose(kept, 0.0, atol=1e-7)
  raw = losses.sampled_softmax_cross_entropy(user[:1], table, bias, targets[:1], weights[:1],
                                             negatives, log_q, remove_accidental_hits=False)[0]
  assert float(raw) > 0.0
  # Mixed negatives: removing the hit equals never having drawn it (bar the pool size).
  s = np.asarray(user @ table.T + bias)
  negatives = jnp.array([5, 7, 9, 11])
  loss = losses.sampled_softmax_cross_entropy(user, table, bias, targets, weights, negatives,
                                              log_q)[0]
  log_pool_q = np.log(4 / (V - 1))  # q is uniform over the V - 1 real items
  expected = []
  for row, t in enumerate([5, 9]):
    negs = [k for k in (5, 7, 9, 11) if k != t]
    z = np.exp(s[row, t]) + sum(np.exp(s[row, k] - log_pool_q) for k in negs)
    expected.append(np.log(z) - s[row, t])
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)


@pytest.mark.parametrize("in_batch", [False, True])
def test_sampled_gradients_finite(in_batch):
  user, table, bias, targets, weights = _problem()
  targets = targets.at[5].set(targets[6])  # duplicate targets across positions
  log_q = losses.popularity_log_q(jnp.arange(V), 1.0)
  negatives = losses.sample_negatives(jax.random.key(0), log_q, 32).at[0].set(0)
  loss_fn = lambda u, t, b: losses.sampled_softmax_cross_entropy(
      u, t, b, targets, weights, negatives, log_q, in_batch_negatives=in_batch)[0]
  loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(user, table, bias)
  assert bool(jnp.isfinite(loss)) and float(loss) > 0
  for g in grads:
    assert bool(jnp.isfinite(g).all()) and float(jnp.abs(g).sum()) > 0
  # Padding item 0 never gets a gradient, even when drawn.
  assert float(jnp.abs(grads[1][0]).sum()) == 0.0


def test_in_batch_negatives_exclude_own_position():
  user, table, bias, _, _ = _problem(n=3)
  targets, weights = jnp.array([4, 6, 8]), jnp.ones(3)
  log_q = losses.popularity_log_q(jnp.ones(V), 0.0)
  negatives = jnp.array([10, 11])
  loss = losses.sampled_softmax_cross_entropy(user, table, bias, targets, weights, negatives,
                                              log_q, in_batch_negatives=True)[0]
  s = np.asarray(user @ table.T + bias)
  # 2 sampled + 2 other positions' targets; q is uniform over the V - 1 real items.
  log_pool_q = np.log(4 / (V - 1))
  expected = []
  for row, t in enumerate([4, 6, 8]):
    cands = [10, 11] + [o for o in (4, 6, 8) if o != t]
    z = np.exp(s[row, t]) + sum(np.exp(s[row, k] - log_pool_q) for k in cands)
    expected.append(np.log(z) - s[row, t])
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)


def _softplus(x):
  return float(np.log1p(np.exp(x)))


def _tiny():
  """E = 1 so scores are hand-computable: s = user * table + bias = (0, 2, 0, 1) for items 0..3."""
  user = jnp.array([[1.0], [1.0]])
  table = jnp.array([[0.0], [2.0], [0.0], [1.0]])
  targets = jnp.array([1, 0])  # the second position has no target (weight 0)
  negatives = jnp.array([2, 3, 1, 0])  # 1 is the target (a hit), 0 is padding: both left out
  return user, table, targets, negatives


def test_bpr_hand_computed():
  user, table, targets, negatives = _tiny()
  loss, aux = losses.bpr_loss(user, table, None, targets, jnp.ones(2), negatives)
  expected = (_softplus(-2.0) + _softplus(-1.0)) / 2  # -log sigmoid(2 - 0), -log sigmoid(2 - 1)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(aux["weight_sum"]) == 1.0
  # A bias moves the scores: +1 on item 3 makes s_3 = 2.
  bias = jnp.array([0.0, 0.0, 0.0, 1.0])
  loss_b, _ = losses.bpr_loss(user, table, bias, targets, jnp.ones(2), negatives)
  np.testing.assert_allclose(float(loss_b), (_softplus(-2.0) + _softplus(0.0)) / 2, rtol=1e-6)


def test_bce_hand_computed():
  user, table, targets, negatives = _tiny()
  loss, _ = losses.bce_loss(user, table, None, targets, jnp.ones(2), negatives)
  expected = _softplus(-2.0) + (_softplus(0.0) + _softplus(1.0)) / 2
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def _cfg(**overrides):
  from helpers import loss_config  # pylint: disable=g-import-not-at-top
  return loss_config(**overrides)


@pytest.mark.parametrize("kind", ["full", "chunked", "sampled", "bpr", "bce"])
def test_registered_losses_give_the_direct_functions_numbers(kind):
  user, table, bias, targets, weights = _problem()
  cfg = _cfg(kind=kind, chunk_size=32, num_negatives=16)
  log_q = losses.popularity_log_q(jnp.arange(V), 0.5)
  key = jax.random.key(4)
  got = losses.get_loss(kind)(user, table, bias, targets, weights, cfg=cfg, key=key,
                              log_q_V=log_q, item_mask_V=None)
  negatives = losses.sample_negatives(key, log_q, 16)
  direct = {
      "full": lambda: losses.softmax_cross_entropy(user, table, bias, targets, weights),
      "chunked": lambda: losses.chunked_softmax_cross_entropy(user, table, bias, targets, weights,
                                                              chunk_size=32),
      "sampled": lambda: losses.sampled_softmax_cross_entropy(user, table, bias, targets, weights,
                                                              negatives, log_q),
      "bpr": lambda: losses.bpr_loss(user, table, bias, targets, weights, negatives),
      "bce": lambda: losses.bce_loss(user, table, bias, targets, weights, negatives),
  }[kind]()[0]
  np.testing.assert_array_equal(got, direct)
  assert losses.needs_log_q(kind) == (kind in ("sampled", "bpr", "bce"))


def test_loss_config_has_no_defaults_and_names_bad_keys():
  import dataclasses  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.configs import base  # pylint: disable=g-import-not-at-top
  group = base.get_base_config().loss.to_dict()
  assert {f.name for f in dataclasses.fields(losses.LossConfig)} == set(group)
  assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(losses.LossConfig))
  with pytest.raises(ValueError, match=r"loss\.typo.*missing.*loss\.kind"):
    losses.LossConfig.from_mapping({**{k: v for k, v in group.items() if k != "kind"}, "typo": 1})
  with pytest.raises(ValueError) as e:
    losses.LossConfig.from_mapping({**group, "kind": "hinge", "label_smoothing": 1.5})
  assert "loss.kind" in str(e.value) and "loss.label_smoothing" in str(e.value)
  with pytest.raises(ValueError, match="loss.label_smoothing"):
    losses.LossConfig.from_mapping({**group, "label_smoothing": 0.1, "train_items_only": True})


def test_register_loss_adds_a_kind():
  @losses.register_loss("test_mean_score")
  def mean_score(user_NxE, table_VxE, bias_V, targets_N, weights_N, *, cfg, key, log_q_V,
                 item_mask_V):
    del bias_V, targets_N, weights_N, cfg, key, log_q_V, item_mask_V
    return (user_NxE @ table_VxE.T).mean()

  try:
    cfg = _cfg(kind="test_mean_score")
    assert losses.get_loss(cfg.kind) is mean_score
    with pytest.raises(ValueError, match="already registered"):
      losses.register_loss("test_mean_score")(lambda *a, **k: 0.0)
  finally:
    losses.core._LOSSES.pop("test_mean_score")  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="unknown loss.kind"):
    losses.get_loss("test_mean_score")


def test_seen_exclusions_example_and_loop():
  got = losses.seen_exclusions(jnp.array([[5, 7, 9]]), jnp.array([[7, 9, 5]]),
                               jnp.array([[True, False, True]]))
  np.testing.assert_array_equal(got, [[5, 0, 0], [5, 7, 0], [0, 0, 9]])
  rng = np.random.default_rng(0)
  b, l = 4, 9
  inputs = rng.integers(0, 6, (b, l))  # small ids: repeats, padding and target hits all occur
  targets = rng.integers(0, 6, (b, l))
  resets = rng.random((b, l)) < 0.3
  got = np.asarray(losses.seen_exclusions(jnp.array(inputs), jnp.array(targets),
                                          jnp.array(resets)))
  assert got.shape == (b * l, l)
  for row in range(b):
    for t in range(l):
      start = max([j for j in range(t + 1) if resets[row, j]], default=0)
      want = {int(inputs[row, j]) for j in range(start, t + 1)} - {0, int(targets[row, t])}
      have = set(got[row * l + t].tolist()) - {0}
      assert have == want, (row, t)
  # no resets: the whole row is one history
  np.testing.assert_array_equal(losses.seen_exclusions(jnp.array([[3, 4]]), jnp.array([[4, 8]])),
                                [[3, 0], [3, 4]])


def _numpy_ce_excluded(user, table, bias, targets, weights, exclude):
  logits = np.asarray(user, np.float64) @ np.asarray(table, np.float64).T + np.asarray(
      bias, np.float64)
  logits[:, 0] = -np.inf
  for n, ids in enumerate(np.asarray(exclude)):
    for i in ids:
      if i > 0:
        logits[n, i] = -np.inf
  t = np.asarray(targets)
  lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  w = np.where(t > 0, np.asarray(weights, np.float64), 0.0)
  nll = np.where(t > 0, lse - logits[np.arange(len(t)), t], 0.0)  # target 0: no position
  return (w * nll).sum() / w.sum()


@pytest.mark.parametrize("path", ["full", "one_pass", "chunks"])
def test_excluded_items_leave_the_softmax_value_and_gradients(path):
  """Each position's excluded ids drop out of its softmax, exactly as if those logits were -inf:
  the value against numpy, gradients against the full loss on the same problem, and an item that
  is only ever excluded gets no gradient at all."""
  user, table, bias, targets, weights = _problem()
  rng = np.random.default_rng(1)
  exclude = rng.integers(1, V, (N, 5))
  exclude[exclude == np.asarray(targets)[:, None]] = 0  # never the target
  exclude[:, 0] = 7  # item 7: excluded everywhere ...
  targets = jnp.where(targets == 7, 8, targets)  # ... and nobody's target
  exclude[::4, 1] = 0  # and some empty slots
  exclude = jnp.array(exclude)
  fns = {"full": lambda u, t, b: losses.softmax_cross_entropy(u, t, b, targets, weights,
                                                              exclude_NxS=exclude)[0],
         "one_pass": lambda u, t, b: losses.chunked_softmax_cross_entropy(
             u, t, b, targets, weights, chunk_size=1000, one_pass=True, exclude_NxS=exclude)[0],
         "chunks": lambda u, t, b: losses.chunked_softmax_cross_entropy(
             u, t, b, targets, weights, chunk_size=16, row_block=5, one_pass=False,
             exclude_NxS=exclude)[0]}
  value, grads = jax.value_and_grad(fns[path], argnums=(0, 1, 2))(user, table, bias)
  np.testing.assert_allclose(value, _numpy_ce_excluded(user, table, bias, targets, weights,
                                                        exclude), rtol=1e-5)
  plain = float(losses.softmax_cross_entropy(user, table, bias, targets, weights)[0])
  assert float(value) < plain  # fewer negatives: a smaller log-sum-exp at every position
  _, want = jax.value_and_grad(fns["full"], argnums=(0, 1, 2))(user, table, bias)
  for g, w in zip(grads, want):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5)
  assert float(jnp.abs(grads[1][7]).sum()) == 0.0 and float(grads[2][7]) == 0.0
  assert float(jnp.abs(grads[1][8]).sum()) > 0.0


def test_exclusions_refuse_bad_shapes_and_settings():
  user, table, bias, targets, weights = _problem()
  with pytest.raises(ValueError, match="one row per position"):
    losses.softmax_cross_entropy(user, table, bias, targets, weights,
                                 exclude_NxS=jnp.zeros((N - 1, 3), jnp.int32))
  with pytest.raises(ValueError, match="label smoothing"):
    losses.chunked_softmax_cross_entropy(user, table, bias, targets, weights, chunk_size=32,
                                         label_smoothing=0.1,
                                         exclude_NxS=jnp.zeros((N, 3), jnp.int32))
  for overrides, why in (({"kind": "sampled"}, "needs loss.kind full or chunked"),
                         ({"label_smoothing": 0.1}, "label_smoothing"),
                         ({"domain_softmax": True}, "domain_softmax")):
    with pytest.raises(ValueError, match=rf"loss\.exclude_seen=True .*{why}"):
      _cfg(exclude_seen=True, **overrides)
  _cfg(kind="full", exclude_seen=True)  # accepted


def test_further_targets_example_and_loop():
  got = losses.further_targets(jnp.array([[4, 5, 6, 7]]), jnp.array([[True, False, True, False]]),
                               2)
  np.testing.assert_array_equal(got, [[5, 0], [0, 0], [7, 0], [0, 0]])
  rng = np.random.default_rng(2)
  b, l, k = 3, 10, 3
  targets = rng.integers(1, 50, (b, l))
  targets[:, -2:] = 0  # padded tails
  resets = rng.random((b, l)) < 0.25
  got = np.asarray(losses.further_targets(jnp.array(targets), jnp.array(resets), k))
  segment = np.cumsum(resets, axis=1)
  for row in range(b):
    for t in range(l):
      for j in range(1, k + 1):
        same = t + j < l and segment[row, t + j] == segment[row, t] and targets[row, t] > 0
        assert got[row * l + t, j - 1] == (targets[row, t + j] if same else 0), (row, t, j)


@pytest.mark.parametrize("path", ["full", "one_pass", "chunks"])
def test_further_targets_are_cross_entropy_terms_of_the_same_softmax(path):
  """Each further target adds weight x (lse - its logit) at its position; the mean stays over the
  next-item weights. Value against numpy, gradients against the full loss."""
  user, table, bias, targets, weights = _problem()
  further = np.array(jax.random.randint(jax.random.key(9), (N, 2), 0, V))
  further[np.asarray(targets) == 0] = 0  # no next target, no further ones
  further = jnp.array(further)
  fns = {"full": lambda u, t, b: losses.softmax_cross_entropy(
             u, t, b, targets, weights, further_NxK=further, further_weight=0.3)[0],
         "one_pass": lambda u, t, b: losses.chunked_softmax_cross_entropy(
             u, t, b, targets, weights, chunk_size=1000, one_pass=True, further_NxK=further,
             further_weight=0.3)[0],
         "chunks": lambda u, t, b: losses.chunked_softmax_cross_entropy(
             u, t, b, targets, weights, chunk_size=16, row_block=5, one_pass=False,
             further_NxK=further, further_weight=0.3)[0]}
  value, grads = jax.value_and_grad(fns[path], argnums=(0, 1, 2))(user, table, bias)
  logits = np.asarray(user, np.float64) @ np.asarray(table, np.float64).T + np.asarray(
      bias, np.float64)
  real = logits[:, 1:]
  lse = np.log(np.exp(real - real.max(1, keepdims=True)).sum(1)) + real.max(1)
  t, f = np.asarray(targets), np.asarray(further)
  w = np.where(t > 0, np.asarray(weights, np.float64), 0.0)
  total = (w * (lse - logits[np.arange(N), t])).sum()
  for j in range(2):
    total += (np.where(f[:, j] > 0, 0.3 * w, 0.0) * (lse - logits[np.arange(N), f[:, j]])).sum()
  np.testing.assert_allclose(value, total / w.sum(), rtol=1e-5)
  _, want = jax.value_and_grad(fns["full"], argnums=(0, 1, 2))(user, table, bias)
  for g, wg in zip(grads, want):
    np.testing.assert_allclose(g, wg, atol=1e-6, rtol=1e-5)
  # weight 0 is the plain loss
  np.testing.assert_allclose(
      losses.softmax_cross_entropy(user, table, bias, targets, weights, further_NxK=further)[0],
      losses.softmax_cross_entropy(user, table, bias, targets, weights)[0], rtol=1e-6)


def test_further_targets_refuse_bad_settings():
  for overrides, key in (({"kind": "bpr"}, "further_targets"),
                         ({"label_smoothing": 0.1}, "further_targets"),
                         ({"exclude_seen": True}, "further_targets"),
                         ({"further_targets": -1}, "further_targets"),
                         ({"further_weight": 1.5}, "further_weight")):
    with pytest.raises(ValueError, match=rf"loss\.{key}="):
      _cfg(**{"further_targets": 2, "further_weight": 0.3, **overrides})
  user, table, bias, targets, weights = _problem()
  with pytest.raises(ValueError, match="one row per position"):
    losses.softmax_cross_entropy(user, table, bias, targets, weights,
                                 further_NxK=jnp.zeros((3, 2), jnp.int32), further_weight=0.3)


def test_teacher_targets_example():
  ids, w = losses.teacher_targets(jnp.array([[2, 0]]), jnp.array([[0, 0], [0, 0], [1, 3]]),
                                  jnp.array([[0, 0], [0, 0], [0.75, 0.25]]), 0.5)
  np.testing.assert_array_equal(ids, [[1, 3], [0, 0]])
  np.testing.assert_allclose(w, [[0.375, 0.125], [0, 0]])


@pytest.mark.parametrize("path", ["full", "one_pass", "one_pass_bf16", "chunks"])
def test_teacher_weights_are_per_target_cross_entropy_terms(path):
  """Per-target further weights (the co-occurrence teacher's): each target k of position n adds
  w_n x p_nk x (lse_n - logit_nk), against numpy; gradients against the full loss."""
  user, table, bias, targets, weights = _problem()
  rng = np.random.default_rng(4)
  further = rng.integers(0, V, (N, 3))
  further[np.asarray(targets) == 0] = 0
  p = rng.random((N, 3)).astype(np.float32)
  further, p = jnp.array(further), jnp.array(p)
  common = {"further_NxK": further, "further_weight": p}
  fns = {"full": lambda u, t, b: losses.softmax_cross_entropy(
             u, t, b, targets, weights, **common)[0],
         "one_pass": lambda u, t, b: losses.chunked_softmax_cross_entropy(
             u, t, b, targets, weights, chunk_size=1000, one_pass=True, **common)[0],
         "one_pass_bf16": lambda u, t, b: losses.chunked_softmax_cross_entropy(
             u, t, b, targets, weights, chunk_size=1000, one_pass=True,
             compute_dtype="bfloat16", **common)[0],
         "chunks": lambda u, t, b: losses.chunked_softmax_cross_entropy(
             u, t, b, targets, weights, chunk_size=16, row_block=5, one_pass=False,
             **common)[0]}
  value, grads = jax.value_and_grad(fns[path], argnums=(0, 1, 2))(user, table, bias)
  logits = np.asarray(user, np.float64) @ np.asarray(table, np.float64).T + np.asarray(
      bias, np.float64)
  real = logits[:, 1:]
  lse = np.log(np.exp(real - real.max(1, keepdims=True)).sum(1)) + real.max(1)
  t, f, pw = np.asarray(targets), np.asarray(further), np.asarray(p, np.float64)
  w = np.where(t > 0, np.asarray(weights, np.float64), 0.0)
  total = (w * (lse - logits[np.arange(N), t])).sum()
  for j in range(3):
    total += (np.where(f[:, j] > 0, pw[:, j] * w, 0.0) * (lse - logits[np.arange(N), f[:, j]])).sum()
  tol = 2e-2 if path == "one_pass_bf16" else 1e-5
  np.testing.assert_allclose(value, total / w.sum(), rtol=tol)
  _, want = jax.value_and_grad(fns["full"], argnums=(0, 1, 2))(user, table, bias)
  for g, wg in zip(grads, want):
    np.testing.assert_allclose(g, wg, atol=tol * 0.1 if path == "one_pass_bf16" else 1e-6,
                               rtol=tol)
  # One weight per target, or one number: nothing else.
  with pytest.raises(ValueError, match="one weight per further target"):
    losses.softmax_cross_entropy(user, table, bias, targets, weights, further_NxK=further,
                                 further_weight=p[:, :2])


def test_teacher_scale_falls_linearly_to_zero():
  np.testing.assert_allclose(losses.teacher_scale(30, 120), 0.75)
  np.testing.assert_allclose([losses.teacher_scale(s, 4) for s in range(6)],
                             [1, 0.75, 0.5, 0.25, 0, 0])
  np.testing.assert_allclose([losses.teacher_scale(s, 0) for s in (0, 10 ** 6)], [1, 1])


def test_teacher_refuses_bad_settings():
  for overrides, key in (({"kind": "bpr"}, "teacher_weight"),
                         ({"label_smoothing": 0.1}, "teacher_weight"),
                         ({"exclude_seen": True}, "teacher_weight"),
                         ({"further_targets": 2}, "teacher_weight"),
                         ({"domain_softmax": True}, "teacher_weight"),
                         ({"teacher_weight": -0.1}, "teacher_weight"),
                         ({"teacher_items": 0}, "teacher_items"),
                         ({"teacher_window": 0}, "teacher_window"),
                         ({"teacher_epochs": -1.0}, "teacher_epochs")):
    with pytest.raises(ValueError, match=rf"loss\.{key}="):
      _cfg(**{"teacher_weight": 0.3, **overrides})
  _cfg(kind="full", teacher_weight=0.3)  # accepted
  _cfg(kind="sampled", teacher_weight=0.3)


def test_sampled_loss_takes_further_targets_against_its_estimated_log_sum_exp():
  user, table, bias, targets, weights = _problem()
  negatives = jax.random.randint(jax.random.key(3), (20,), 1, V)
  log_q = losses.popularity_log_q(jnp.arange(V, dtype=jnp.float32), 1.0)
  rng = np.random.default_rng(5)
  further = rng.integers(0, V, (N, 2))
  further[np.asarray(targets) == 0] = 0
  p = rng.random((N, 2)).astype(np.float32)
  base, aux = losses.sampled_softmax_cross_entropy(user, table, bias, targets, weights, negatives,
                                                   log_q)
  got = losses.sampled_softmax_cross_entropy(user, table, bias, targets, weights, negatives,
                                             log_q, further_NxK=jnp.array(further),
                                             further_weight=jnp.array(p))[0]
  # The estimated log-sum-exp of each position: its loss plus its target's logit.
  logits = np.asarray(user, np.float64) @ np.asarray(table, np.float64).T + np.asarray(bias)
  t = np.asarray(targets)
  nll = np.asarray(jax.vmap(lambda u, tg: losses.sampled_softmax_cross_entropy(
      u[None], table, bias, tg[None], jnp.ones(1), negatives, log_q)[0])(user, targets))
  lse = nll + logits[np.arange(N), t]
  w = np.where(t > 0, np.asarray(weights, np.float64), 0.0)
  extra = sum((np.where(further[:, j] > 0, p[:, j] * w, 0.0)
               * (lse - logits[np.arange(N), further[:, j]])).sum() for j in range(2))
  np.testing.assert_allclose(got, float(base) + extra / w.sum(), rtol=1e-4)


def test_position_weights_example_and_loop():
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
  resets = jnp.array([[1, 0, 0, 1, 0], [1, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(losses.position_weights(mask, resets), mask.astype(np.float32))
  np.testing.assert_allclose(losses.position_weights(mask, resets, user_weight_power=1.0),
                             [[1 / 3, 1 / 3, 1 / 3, 1, 0], [0.5, 0.5, 0, 0, 0]], rtol=1e-6)
  np.testing.assert_allclose(losses.position_weights(mask, resets, recency_weight=1.0),
                             [[1, 1.5, 2, 1, 0], [1, 2, 0, 0, 0]], rtol=1e-6)
  # A loop over random packed rows: each history's weights by the definition.
  rng = np.random.default_rng(0)
  mask = rng.random((6, 12)) < 0.8
  resets = (rng.random((6, 12)) < 0.25) | (np.arange(12) == 0)
  got = np.asarray(losses.position_weights(jnp.asarray(mask), jnp.asarray(resets),
                                           user_weight_power=0.5, recency_weight=2.0))
  for b in range(6):
    seg = np.cumsum(resets[b])
    for s in np.unique(seg):
      real = np.flatnonzero((seg == s) & mask[b])
      n = len(real)
      for t, j in enumerate(real):
        want = n ** -0.5 * (1 + 2.0 * t / max(n - 1, 1))
        np.testing.assert_allclose(got[b, j], want, rtol=1e-6)
    assert not got[b][~mask[b]].any()


def test_position_weights_weigh_the_step_loss():
  """loss.user_weight_power / recency_weight: the step's loss is the weighted mean of the
  per-position cross-entropies with `position_weights`."""
  import helpers  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import steps  # pylint: disable=g-import-not-at-top

  cfg = helpers.model_config(12, embed_dim=8, hidden_size=8, embed_dropout=0.0,
                             output_dropout=0.0, lstm_impl="xla")
  model = nnx.merge(*model_lib.create_model(cfg, 0))
  inputs = jnp.array([[1, 2, 3, 4, 5, 0], [6, 7, 8, 0, 0, 0]])
  batch = {"inputs_BxL": inputs, "mask_BxL": inputs > 0,
           "resets_BxL": jnp.array([[1, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool),
           "targets_BxL": jnp.array([[2, 3, 4, 5, 9, 0], [7, 8, 10, 0, 0, 0]])}
  user = helpers.forward(model, batch["inputs_BxL"], batch["mask_BxL"], batch["resets_BxL"])
  table = model.item_tables(None)[1]
  user_NxE, targets_N = user.reshape(-1, 8), batch["targets_BxL"].reshape(-1)
  for power, recency in ((0.0, 0.0), (1.0, 0.0), (0.0, 3.0), (0.5, 1.0)):
    w = losses.position_weights(batch["mask_BxL"], batch["resets_BxL"],
                                user_weight_power=power, recency_weight=recency).reshape(-1)
    want = _numpy_ce(user_NxE, table, None, targets_N, w)
    loss_cfg = _cfg(kind="full", user_weight_power=power, recency_weight=recency)
    got = steps.sequence_loss(model, batch, None, loss_cfg, None)
    np.testing.assert_allclose(got, want, rtol=1e-5)
  with pytest.raises(ValueError, match="user_weight_power=1.5 must be in"):
    _cfg(user_weight_power=1.5)
  with pytest.raises(ValueError, match="recency_weight=-1.0 must be >= 0"):
    _cfg(recency_weight=-1.0)
