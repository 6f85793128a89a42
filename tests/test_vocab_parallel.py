"""Vocabulary-parallel loss and ranking on 8 virtual devices against the single-device versions.

Shape legend: N positions, B users, E embedding size, V catalog size (item 0 = padding), S seen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmrec_jax import losses
from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax.losses import vocab_parallel as vp_loss
from lstmrec_jax.scoring import vocab_parallel as vp_ranks
from lstmrec_jax.scoring import ranks as ranks_lib
from lstmrec_jax import workdir as workdir_lib

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")

MESHES = [(2, 4), (1, 8)]


def _problem(seed=0, n=24, v=101, e=8):
  k = jax.random.split(jax.random.key(seed), 5)
  user = jax.random.normal(k[0], (n, e))
  table = 0.5 * jax.random.normal(k[1], (v, e))
  bias = jax.random.normal(k[2], (v,))
  targets = jax.random.randint(k[3], (n,), 1, v).at[:3].set(0)  # three positions without target
  weights = jnp.linspace(0.5, 2.0, n)
  seen = jax.random.randint(k[4], (n, 6), 0, v)
  return user, table, bias, targets, weights, seen


# (V, chunk_size, label_smoothing, with_bias). V=101 is no multiple of 4 or 8 (padded); V=10 on
# 8 shards leaves shards with no real item at all; chunk 7 splits a shard unevenly.
LOSS_CASES = [(101, 8192, 0.0, True), (101, 7, 0.1, True), (10, 8192, 0.0, False),
              (10, 1, 0.2, True)]


@pytest.mark.parametrize("mesh_shape", MESHES)
@pytest.mark.parametrize("v,chunk_size,label_smoothing,with_bias", LOSS_CASES)
def test_loss_and_gradients_equal_full_softmax(mesh_shape, v, chunk_size, label_smoothing,
                                                with_bias):
  user, table, bias, targets, weights, _ = _problem(v=v)
  bias = bias if with_bias else None
  mesh = mesh_lib.make_data_model_mesh(*mesh_shape)
  argnums = (0, 1, 2) if with_bias else (0, 1)

  def make(fn, **kw):
    return jax.jit(jax.value_and_grad(
        lambda u, t, b: fn(u, t, b, targets, weights, label_smoothing=label_smoothing, **kw)[0],
        argnums=argnums))

  value, grads = make(losses.softmax_cross_entropy)(user, table, bias)
  vp_value, vp_grads = make(vp_loss.vocab_parallel_softmax_cross_entropy, mesh=mesh,
                            chunk_size=chunk_size)(user, table, bias)
  np.testing.assert_allclose(vp_value, value, rtol=1e-6)
  for g, vg in zip(grads, vp_grads):
    assert vg.shape == g.shape
    np.testing.assert_allclose(vg, g, atol=1e-7, rtol=1e-5)
  # Item 0 is never a class: its row gets no gradient here either.
  assert float(jnp.abs(vp_grads[1][0]).sum()) == 0.0


def test_aux_sums_equal_full_softmax():
  user, table, bias, targets, weights, _ = _problem()
  full = losses.softmax_cross_entropy(user, table, bias, targets, weights)[1]
  got = jax.jit(lambda *a: vp_loss.vocab_parallel_softmax_cross_entropy(
      *a, mesh=mesh_lib.make_data_model_mesh(2, 4), chunk_size=16)[1])(user, table, bias, targets, weights)
  for key in ("loss_sum", "nll_sum", "weight_sum"):
    np.testing.assert_allclose(got[key], full[key], rtol=1e-6)


def test_presharded_table_gradient_stays_sharded():
  """With V a multiple of M and the table laid out row-sharded, its gradient comes back so."""
  mesh = mesh_lib.make_data_model_mesh(2, 4)
  v = mesh_lib.padded_num_items(101, 4)
  assert v == 104
  user, table, bias, targets, weights, _ = _problem(v=v)
  table = jax.device_put(table, mesh_lib.table_sharding(mesh))
  grad_fn = jax.jit(jax.grad(lambda t: vp_loss.vocab_parallel_softmax_cross_entropy(
      user, t, bias, targets, weights, mesh=mesh, chunk_size=8)[0]))
  g_table = grad_fn(table)
  assert g_table.sharding.is_equivalent_to(mesh_lib.table_sharding(mesh), 2)
  expected = jax.grad(lambda t: losses.softmax_cross_entropy(user, t, bias, targets,
                                                             weights)[0])(table)
  np.testing.assert_allclose(g_table, expected, atol=1e-7, rtol=1e-5)


def test_per_device_memory_is_a_shard_of_the_table():
  """At V = 10^6 over 8 shards each device holds V*E/8 of table and O(N x C) of logits."""
  n, v, e, chunk = 2048, 1_000_000, 16, 4096
  mesh = mesh_lib.make_data_model_mesh(1, 8)
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  args = (f32(n, e), jax.ShapeDtypeStruct((v, e), jnp.float32, sharding=mesh_lib.table_sharding(mesh)),
          jax.ShapeDtypeStruct((n,), jnp.int32), f32(n))
  grad_fn = jax.jit(jax.grad(lambda u, t, y, w: vp_loss.vocab_parallel_softmax_cross_entropy(
      u, t, None, y, w, mesh=mesh, chunk_size=chunk)[0], argnums=(0, 1)))
  mem = grad_fn.lower(*args).compile().memory_analysis()  # per device under SPMD
  shard_bytes, chunk_logits_bytes, shard_logits_bytes = v * e * 4 / 8, n * chunk * 4, n * v // 8 * 4
  assert mem.argument_size_in_bytes < 1.1 * shard_bytes, mem.argument_size_in_bytes
  # A few table-shard-sized buffers (gradient, chunk padding) and a few N x C logits, never the
  # N x V/8 logits of the shard (1 GB here).
  assert mem.temp_size_in_bytes < 8 * shard_bytes + 4 * chunk_logits_bytes, mem.temp_size_in_bytes
  assert mem.temp_size_in_bytes < shard_logits_bytes / 4, mem.temp_size_in_bytes


def test_bad_inputs_are_clear_errors():
  user, table, bias, targets, weights, _ = _problem(n=6)
  with pytest.raises(ValueError, match="cannot be split evenly"):
    vp_loss.vocab_parallel_softmax_cross_entropy(user, table, bias, targets, weights,
                                            mesh=mesh_lib.make_data_model_mesh(4, 2))
  with pytest.raises(ValueError, match="no 'model' axis"):
    vp_loss.vocab_parallel_softmax_cross_entropy(
        user, table, bias, targets, weights,
        mesh=jax.sharding.Mesh(np.asarray(jax.devices()), ("data",)))
  with pytest.raises(ValueError, match="needs 16 devices"):
    mesh_lib.make_data_model_mesh(4, 4)


@pytest.mark.parametrize("mesh_shape", MESHES)
@pytest.mark.parametrize("v,chunk_size,with_bias,exclude_seen",
                         [(101, 5, True, True), (101, 8192, False, False), (10, 1, True, True)])
def test_ranks_equal_metrics_target_ranks(mesh_shape, v, chunk_size, with_bias, exclude_seen):
  user, table, bias, targets, _, seen = _problem(v=v)
  targets = targets.at[:3].set(1)
  seen = seen.at[:, 0].set(targets)  # a target seen before is still ranked
  bias = bias if with_bias else None
  expected = ranks_lib.target_ranks(user, table, bias, targets, seen, exclude_seen=exclude_seen,
                                  chunk_size=16)
  got = jax.jit(lambda *a: vp_ranks.vocab_parallel_target_ranks(
      *a, mesh=mesh_lib.make_data_model_mesh(*mesh_shape), exclude_seen=exclude_seen, chunk_size=chunk_size))(
          user, table, bias, targets, seen)
  np.testing.assert_array_equal(got, expected)


def test_ranks_ties_and_no_seen_items():
  """A constant scorer: every other real item ties and counts against the target, on any shard."""
  user, table, _, targets, _, _ = _problem(v=101)
  targets = targets.at[:3].set(100)
  zero_table = jnp.zeros_like(table)
  got = vp_ranks.vocab_parallel_target_ranks(user, zero_table, None, targets, mesh=mesh_lib.make_data_model_mesh(2, 4),
                                       chunk_size=8)
  np.testing.assert_array_equal(got, np.full(targets.shape, 99))
  np.testing.assert_array_equal(got, ranks_lib.target_ranks(user, zero_table, None, targets))


# --- the trainer with model.vocab_shards (a data x model mesh) -----------------------------------

def _jsonl_losses(workdir) -> dict[int, float]:
  import json  # pylint: disable=g-import-not-at-top
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("kind", ["chunked", "full"])
def test_trainer_2x4_equals_8x1(tmp_path, kind):
  """train_and_evaluate with the item tables split 4 ways = the same run data-parallel on 8.

  V = 81 (80 items + padding) is no multiple of 4: the tables carry 3 zero rows, which must stay
  zero and never change a loss, a rank or a metric. Untied output table + item bias: every
  table parameter (and its Adam moments) is split.
  """
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import loop  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import steps  # pylint: disable=g-import-not-at-top

  common = {"num_devices": 8, "model.item_bias": True, "model.tied_output": False,
            "num_epochs": 3, "loss.kind": kind, "loss.chunk_size": 16,
            "loss.label_smoothing": 0.1}
  reports, params = {}, {}
  for shards in (1, 4):
    workdir = tmp_path / f"shards{shards}"
    config = tiny_config(tmp_path / f"cache{shards}", **common,
                         **{"model.vocab_shards": shards})
    reports[shards] = loop.train_and_evaluate(config, workdir)
    restored = workdir_lib.restore_run(workdir, which="latest")
    params[shards] = jax.device_get(restored.params)
    run = restored.run
    if shards > 1:
      assert dict(run.mesh.shape) == {"data": 2, "model": 4}
      assert steps.uses_vocab_parallel(run.mesh, run.spec.loss)
      assert run.model_cfg.num_items == 81 and run.model_cfg.table_rows == 84
      # The step's state layout: the tables and their two Adam moments are split, nothing else.
      from lstmrec_jax import optim  # pylint: disable=g-import-not-at-top
      state = optim.init_state(run.params, run.optimizer(10, 5), 0)
      shardings = mesh_lib.state_shardings(state, run.mesh, run.model_cfg.table_rows)
      split = [jax.tree_util.keystr(path) for path, sh in
               jax.tree_util.tree_leaves_with_path(shardings) if sh.spec == mesh_lib.P("model")]
      assert len(split) == 9, split  # 3 tables x (parameter, mu, nu)
      placed = jax.device_put(state, shardings)
      table = placed.params["item_repr"]["embedding"]
      assert {s.data.shape for s in table.addressable_shards} == {(21, 16)}  # 84 / 4 rows each
  one, split_losses = _jsonl_losses(tmp_path / "shards1"), _jsonl_losses(tmp_path / "shards4")
  assert one.keys() == split_losses.keys() and len(one) == 24
  for step in one:
    np.testing.assert_allclose(split_losses[step], one[step], rtol=2e-5, err_msg=f"step {step}")
  for name in ("embedding",):
    full, padded = params[1]["item_repr"][name], params[4]["item_repr"][name]
    assert padded.shape == (84, 16) and full.shape == (81, 16)
    np.testing.assert_allclose(padded[:81], full, atol=2e-5)
    assert not padded[81:].any()  # the padding rows never move
  np.testing.assert_allclose(params[4]["output_embedding"][:81], params[1]["output_embedding"],
                             atol=2e-5)
  np.testing.assert_allclose(params[4]["bias"][:81], params[1]["bias"], atol=2e-5)
  assert not params[4]["output_embedding"][81:].any() and not params[4]["bias"][81:].any()
  for split_name in ("valid", "test"):
    a = reports[1]["splits"][split_name]["model"]["overall"]
    b = reports[4]["splits"][split_name]["model"]["overall"]
    for key in ("NDCG@10", "HR@10", "MRR"):
      assert b[key] == pytest.approx(a[key], abs=1e-6), (split_name, key)


def test_vocab_shards_needs_a_multiple_of_the_devices(tmp_path):
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path, **{"num_devices": 6, "model.vocab_shards": 4,
                                    "input.batch_size": 6, "input.eval_batch_size": 6})
  with pytest.raises(ValueError, match=r"model.vocab_shards=4 needs a multiple of 4 devices"):
    loop.train_and_evaluate(config, tmp_path / "run")


def test_the_step_reaches_a_split_loss_through_the_registry():
  """A loss with a split-table implementation (`register_vocab_parallel`) gets it from the
  registry when the step's mesh splits the tables, and the plain one otherwise: the trainer holds
  no list of its own of which losses are vocabulary-parallel."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from helpers import loss_config, model_config  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.losses import core  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import steps  # pylint: disable=g-import-not-at-top
  calls = []

  @losses.register_loss("_probe_softmax")
  def plain(*args, **kwargs):
    calls.append("plain")
    return core.get_loss("full")(*args, **kwargs)

  @losses.register_vocab_parallel("_probe_softmax")
  def split(*args, **kwargs):
    calls.append(("split", kwargs["num_items"], dict(kwargs["mesh"].shape)))
    return core.get_loss("full", vocab_parallel=True)(*args, **kwargs)

  try:
    v, l = 41, 6
    cfg = loss_config(kind="_probe_softmax")
    mesh = mesh_lib.make_data_model_mesh(2, 4)
    model_cfg = model_config(v, max_len=l, embed_dim=8, hidden_size=8, vocab_shards=4,
                             lstm_impl="xla")
    graphdef, params, consts = model_lib.create_model(model_cfg, 0)
    model = nnx.merge(graphdef, params, consts)
    inputs = jax.random.randint(jax.random.key(0), (8, l), 1, v)
    batch = {"inputs_BxL": inputs, "mask_BxL": jnp.ones((8, l), bool),
             "targets_BxL": jnp.roll(inputs, -1, axis=1), "resets_BxL": jnp.zeros((8, l), bool)}
    got = {}
    for name, m in (("plain", None), ("split", mesh)):
      got[name] = float(steps.sequence_loss(model, batch, None, cfg, None, mesh=m))
    assert calls == ["plain", ("split", v, {"data": 2, "model": 4})]
    np.testing.assert_allclose(got["split"], got["plain"], rtol=1e-5)
    assert not steps.uses_vocab_parallel(mesh, loss_config(kind="sampled"))  # no split version
  finally:
    core._LOSSES.pop("_probe_softmax")  # pylint: disable=protected-access
    core._VOCAB_PARALLEL.pop("_probe_softmax")  # pylint: disable=protected-access


@pytest.mark.parametrize("key", ["exclude_seen", "further_targets"])
def test_per_position_loss_options_refuse_split_tables_as_a_config_error(tmp_path, key):
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  value = True if key == "exclude_seen" else 2
  config = tiny_config(tmp_path, **{"num_devices": 8, "model.vocab_shards": 4,
                                    "loss.kind": "chunked", f"loss.{key}": value})
  with pytest.raises(ConfigError, match=rf"loss\.{key} do not run .*model\.vocab_shards=4"):
    run_lib.build_run(run_lib.spec_from_config(config))
