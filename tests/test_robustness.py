"""Adversarial training (FGSM / PGD perturbations) and the three attacks (evaluation/attacks.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstmrec_jax import config_keys
from lstmrec_jax.configs import base
from helpers import forward, loss_config, model_config, tiny_config
from lstmrec_jax import run as run_lib
from lstmrec_jax import workdir as workdir_lib
from lstmrec_jax.data import preprocess
from lstmrec_jax.evaluation import attacks
from lstmrec_jax.evaluation import ranking
from lstmrec_jax.model import SeqRecModel
from lstmrec_jax.losses import adversarial
from lstmrec_jax.train import steps
from lstmrec_jax.scoring import steps as scoring
from lstmrec_jax import errors


def adv_config(**overrides) -> adversarial.AdversarialConfig:
  return config_keys.build_group(adversarial.AdversarialConfig, "adversarial",
                             base.group("adversarial", **overrides))


def test_normalize_and_project_examples():
  np.testing.assert_allclose(adversarial.l2_normalize(jnp.array([[3.0, 4.0]])), [[0.6, 0.8]])
  np.testing.assert_allclose(adversarial.project(jnp.array([[3.0, 4.0]]), 1.0), [[0.6, 0.8]])
  np.testing.assert_allclose(adversarial.project(jnp.array([[0.3, 0.4]]), 1.0), [[0.3, 0.4]])


def _batch():
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, 40, size=(4, 8)).astype(np.int32)
  inputs[1, 5:] = 0
  targets = np.where(inputs > 0, rng.integers(1, 40, size=(4, 8)), 0).astype(np.int32)
  return {"inputs_BxL": jnp.asarray(inputs), "targets_BxL": jnp.asarray(targets),
          "mask_BxL": jnp.asarray(inputs > 0), "resets_BxL": jnp.zeros((4, 8), bool)}


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
def test_worst_case_is_in_the_ball_zero_at_padding_and_raises_the_loss(kind):
  model = SeqRecModel(model_config(embed_dim=8, hidden_size=8), rngs=nnx.Rngs(0))
  batch, cfg = _batch(), loss_config(kind="full")
  table = model.item_tables()[0]

  def loss_at(delta=None):
    user = model(batch["inputs_BxL"], batch["mask_BxL"], item_table_VxE=table,
                 input_delta_BxLxE=delta)
    return steps.losses.get_loss("full")(user.reshape(-1, 8), table, None,
                                         batch["targets_BxL"].reshape(-1),
                                         (batch["targets_BxL"] > 0).reshape(-1).astype(
                                             jnp.float32), cfg=cfg, key=None, log_q_V=None,
                                         item_mask_V=None)

  (delta,) = jax.jit(lambda: adversarial.worst_case(
      loss_at, ((4, 8, 8),), batch["mask_BxL"], kind=kind, eps=0.5, steps=3))()
  norms = np.linalg.norm(np.asarray(delta), axis=-1)
  mask = np.asarray(batch["mask_BxL"])
  assert (norms[~mask] == 0).all()
  assert (norms[mask] <= 0.5 + 1e-5).all()
  if kind == "fgsm":
    np.testing.assert_allclose(norms[mask], 0.5, rtol=1e-5)
  clean, attacked = jax.jit(lambda d: (loss_at(), loss_at(d)))(delta)
  assert float(attacked) > float(clean) + 1e-3


# item_mode id runs in test_augment's loop test (adversarial fgsm on the default config).
@pytest.mark.parametrize("item_mode", ["sum"])
def test_adversarial_term_in_the_step_every_item_mode(tmp_path, item_mode):
  spec = run_lib.spec_from_config(tiny_config(tmp_path, **{"model.item_mode": item_mode}))
  run = run_lib.build_run(spec)
  batch = _batch()
  batch = {k: jnp.minimum(v, run.dataset.num_items - 1) for k, v in batch.items()}
  key = jax.random.key(0)

  @jax.jit
  def losses_and_grads(params):
    m = nnx.merge(run.graphdef, params, run.consts)
    loss = lambda adv: steps.sequence_loss(m, batch, key, spec.loss, None, adv_cfg=adv)
    grads = jax.grad(lambda p: steps.sequence_loss(
        nnx.merge(run.graphdef, p, run.consts), batch, key, spec.loss, None,
        adv_cfg=adv_config(kind="fgsm")))(params)
    return (loss(None), loss(adv_config(kind="fgsm", weight=0.0)),
            loss(adv_config(kind="pgd", user_state=True)), grads)

  clean, off, on, grads = losses_and_grads(run.params)
  assert float(off) == float(clean)
  assert float(on) > 2 * float(clean) - 1e-4  # clean + 1.0 x a loss at least as large
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_adversarial_config_errors_name_the_key(tmp_path):
  with pytest.raises(errors.ConfigError, match="adversarial.kind"):
    run_lib.spec_from_config(tiny_config(tmp_path, **{"adversarial.kind": "bim"}))
  with pytest.raises(ValueError, match="adversarial.eps"):
    adv_config(kind="fgsm", eps=0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A built (untrained: the attacks' properties do not need a good model) tiny run."""
  workdir = tmp_path_factory.mktemp("robust")
  spec = run_lib.spec_from_config(tiny_config(workdir))
  run = run_lib.build_run(spec)
  return workdir, workdir_lib.RestoredRun(run, run.params, {}, 0)


def test_perturbation_attack_zero_eps_is_the_evaluation_and_eps_hurts(trained):
  _, restored = trained
  run = restored.run
  split = run.dataset.test
  got = attacks.perturbed_ranks(run.graphdef, restored.params, run.consts, run.dataset, split,
                                eps_list=(0.0, 2.0), loss_cfg=run.spec.loss, batch_size=64,
                                max_len=16, chunk_size=32)
  rank_fn = scoring.compile_rank_fn(run.graphdef, run.mesh, exclude_seen=True, chunk_size=32,
                                    popularity_V=run.dataset.item_counts_V)
  users_U, ranks_U = ranking.rank_split(rank_fn, restored.params, run.consts, split,
                                        batch_size=64, max_len=16, mesh=run.mesh)
  ref = dict(zip(users_U.tolist(), ranks_U.tolist()))  # the attack's ranks are in split order
  np.testing.assert_array_equal(got[0.0], [ref[u] for u in split.users_U.tolist()])
  assert got[2.0].mean() > got[0.0].mean()


def test_noisy_split_replaces_the_asked_share():
  split = preprocess.EvalSplit(np.arange(2), preprocess.Sequences.from_lists(
      [np.arange(1, 11), np.arange(1, 4)]), np.array([5, 6]))
  noisy = attacks.noisy_split(split, fraction=0.3, num_items=1000, seed=0)
  assert (noisy.history[0] != split.history[0]).sum() <= 3
  assert (noisy.history[0] != split.history[0]).sum() >= 2  # a random item may coincide
  assert (noisy.history[1] != split.history[1]).sum() == 1
  again = attacks.noisy_split(split, fraction=0.3, num_items=1000, seed=0)
  np.testing.assert_array_equal(again.history.items_N, noisy.history.items_N)
  same = attacks.noisy_split(split, fraction=0.0, num_items=1000, seed=0)
  np.testing.assert_array_equal(same.history.items_N, split.history.items_N)


def test_poisoning_pieces(trained, tmp_path):
  _, restored = trained
  ds = restored.run.dataset
  target = attacks.pick_target(ds.item_counts_V, seed=0)
  counts = ds.item_counts_V[ds.item_counts_V > 0][1:]
  assert ds.item_counts_V[target] <= np.quantile(counts, 0.3)
  rows = attacks.fake_users(ds.item_counts_V, target, num_users=3, length=5, seed=0)
  assert all(list(r[1::2]) == [target, target] and target not in r[0::2] for r in rows)
  info = attacks.export_seqfile(ds, tmp_path / "p.txt", extra_rows=rows)
  assert len(info["fake_user_keys"]) == 3 and info["attributes_path"]
  spec = run_lib.with_overrides(restored.run.spec, data={
      "format": "seqfile", "path": info["path"], "attributes_path": info["attributes_path"],
      "cache_dir": ""})
  poisoned = run_lib.load_data(spec)
  assert poisoned.num_users == ds.num_users + 3
  real = attacks.real_users_split(poisoned, poisoned.test, info["fake_user_keys"])
  assert len(real) == len(ds.test)
  # The real users' test targets come back (by raw id).
  got = sorted(zip(poisoned.user_keys[real.users_U].astype(int),
                   poisoned.item_keys[real.targets_U].astype(int)))
  want = sorted(zip(ds.user_keys[ds.test.users_U].astype(int),
                    ds.item_keys[ds.test.targets_U].astype(int)))
  assert got == want
  run = restored.run
  out = attacks.target_exposure(run.graphdef, restored.params, run.consts, ds, ds.test, target,
                                batch_size=64, max_len=16, chunk_size=32)
  assert 0.0 <= out["target_HR@10"] <= 1.0 and out["users"] == len(ds.test)
