"""Intent prototypes (loss.intent_weight): the prototype term, the k-means, the step and a run."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstmrec_jax import run as run_lib
from lstmrec_jax.errors import ConfigError
from lstmrec_jax.losses import contrastive
from lstmrec_jax.train import intents
from lstmrec_jax.train import loop
from lstmrec_jax.train import steps
from helpers import loss_config, tiny_config
from test_train import read_losses


def _reference_intent_nce(z, w, c, t):
  """A per-position loop of the docstring's formula."""
  total = count = 0.0
  for zi, wi in zip(np.asarray(z, np.float64), np.asarray(w, np.float64)):
    if wi <= 0:
      continue
    cos = np.array([zi @ ck / (np.linalg.norm(zi) * np.linalg.norm(ck)) for ck in c]) / t
    a = int(np.argmax(cos))
    total += wi * (np.log(np.exp(cos).sum()) - cos[a])
    count += wi
  return total / max(count, 1e-9)


def test_intent_nce_example_loop_and_gradients():
  z = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  c = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  got = float(contrastive.intent_nce(z, jnp.ones(2), c, 1.0))
  assert got == pytest.approx(-np.log(np.e / (np.e + 1)), rel=1e-6)  # 0.3133

  rng = np.random.default_rng(0)
  z = rng.normal(size=(12, 5)).astype(np.float32)
  w = (rng.random(12) > 0.3).astype(np.float32)
  c = rng.normal(size=(4, 5)).astype(np.float32)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  got = float(contrastive.intent_nce(jnp.asarray(z), jnp.asarray(w), jnp.asarray(c), 0.2))
  assert got == pytest.approx(_reference_intent_nce(z, w, c, 0.2), rel=1e-5)
  # Positions of weight 0 neither count nor move; the prototypes get no gradient; no weight: 0.
  gz, gc = jax.grad(lambda z, c: contrastive.intent_nce(z, jnp.asarray(w), c, 0.2),
                    argnums=(0, 1))(jnp.asarray(z), jnp.asarray(c))
  assert np.all(np.asarray(gz)[w == 0] == 0) and np.abs(np.asarray(gz)[w > 0]).max() > 0
  assert np.all(np.asarray(gc) == 0)
  assert float(contrastive.intent_nce(jnp.asarray(z), jnp.zeros(12), jnp.asarray(c), 0.2)) == 0


def test_spherical_kmeans_finds_separated_directions_and_ignores_invalid_rows():
  rng = np.random.default_rng(1)
  directions = np.eye(6, dtype=np.float32)[:3]
  labels = rng.integers(0, 3, 300)
  x = directions[labels] * rng.uniform(0.5, 5.0, (300, 1)) + 0.05 * rng.normal(size=(300, 6))
  valid = np.ones(300, bool)
  valid[:40] = False
  x[:40] = np.eye(6)[5] * 3.0  # a fourth direction, only in invalid rows
  c, sizes = jax.device_get(intents.spherical_kmeans(jnp.asarray(x, jnp.float32),
                                                     jnp.asarray(valid), jax.random.key(0),
                                                     k=3))
  np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)
  # Each true direction has one centroid at cosine > 0.99, and the sizes count valid rows only.
  assert sorted(np.argmax(c @ directions.T, axis=1).tolist()) == [0, 1, 2]
  assert (c @ directions.T).max(axis=1).min() > 0.99
  assert sizes.sum() == valid.sum()
  want = np.bincount(labels[valid], minlength=3)
  assert sorted(sizes.tolist()) == sorted(want.tolist())


def test_spherical_kmeans_keeps_an_empty_clusters_centroid():
  # Two distinct directions, three clusters: two start on equal rows, one of them ends empty.
  x = jnp.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
  c, sizes = jax.device_get(intents.spherical_kmeans(x, jnp.ones(4, bool), jax.random.key(3),
                                                     k=3))
  assert np.isfinite(c).all()
  np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)
  assert sizes.sum() == 4 and (sizes == 0).sum() == 1


def test_the_step_adds_weight_times_scale_times_the_term(tmp_path):
  config = tiny_config(tmp_path)
  run = run_lib.build_run(run_lib.spec_from_config(config))
  batch = {k: jnp.asarray(v) for k, v in next(iter(
      run_lib_batches(run).epoch(0))).items()}
  key = jax.random.PRNGKey(4)
  model = nnx.merge(run.graphdef, run.params, run.consts)
  rng = np.random.default_rng(2)
  c = rng.normal(size=(8, model.cfg.embed_dim)).astype(np.float32)
  c = jnp.asarray(c / np.linalg.norm(c, axis=1, keepdims=True))
  plain_cfg = loss_config(kind="full")
  cfg = loss_config(kind="full", intent_weight=0.5, intent_clusters=8, intent_temperature=0.2)
  plain = float(steps.sequence_loss(model, batch, key, plain_cfg, None))
  got, logs = steps.sequence_loss_and_logs(model, batch, key, cfg, None, intents_KxE=c,
                                           intent_scale=1.0)
  user = model(batch["inputs_BxL"], batch["mask_BxL"], batch.get("resets_BxL"),
               item_table_VxE=model.item_tables()[0], dropout_key=key)
  targets = batch["targets_BxL"].reshape(-1)
  term = float(contrastive.intent_nce(user.reshape(-1, user.shape[-1]),
                                      (targets > 0).astype(jnp.float32), c, 0.2))
  assert term > 0
  assert float(got) == pytest.approx(plain + 0.5 * term, rel=1e-5)
  assert float(logs["terms/intent_nce"]) == pytest.approx(term, rel=1e-5)
  off, logs = steps.sequence_loss_and_logs(model, batch, key, cfg, None, intents_KxE=c,
                                           intent_scale=0.0)
  assert float(off) == pytest.approx(plain, rel=1e-6) and float(logs["terms/intent_nce"]) == 0


def run_lib_batches(run):
  from lstmrec_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  inp = run.spec.input
  return pipeline.TrainBatches(run.dataset.train, batch_size=inp.batch_size, max_len=inp.max_len,
                               seed=run.spec.seed, pack=inp.pack, backend="numpy")


def test_bad_intent_settings_name_their_key(tmp_path):
  for key, value in (("intent_weight", -1.0), ("intent_clusters", 1),
                     ("intent_temperature", 0.0), ("intent_start_epoch", -1)):
    with pytest.raises(ValueError, match=f"loss.{key}"):
      loss_config(**{key: value})
  with pytest.raises(ConfigError, match="loss.intent_clusters=100000 is more than"):
    loop.train_and_evaluate(tiny_config(tmp_path, **{"loss.intent_weight": 0.5,
                                                     "loss.intent_clusters": 100_000}),
                            tmp_path / "w")


INTENTS = {"loss.intent_weight": 0.5, "loss.intent_clusters": 8, "num_epochs": 3}


def test_a_run_with_intents_trains_logs_the_term_and_resumes_exactly(tmp_path, caplog):
  plain_dir, full_dir, resumed_dir = tmp_path / "plain", tmp_path / "full", tmp_path / "resumed"
  loop.train_and_evaluate(tiny_config(tmp_path, num_epochs=3), plain_dir)
  with caplog.at_level(logging.INFO):
    report = loop.train_and_evaluate(tiny_config(tmp_path, **INTENTS), full_dir)
  assert np.isfinite(report["splits"]["test"]["model"]["overall"]["NDCG@10"])
  assert "intent prototypes of epoch 1: k-means of" in caplog.text
  assert "intent prototypes of epoch 0" not in caplog.text  # intent_start_epoch = 1
  rows = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
  terms = {r["step"]: r["terms/intent_nce"] for r in rows if "terms/intent_nce" in r}
  per_epoch = max(terms) // 3
  # Epoch 0 runs without prototypes: the term is 0 and the losses are the plain run's.
  assert all(terms[s] == 0 for s in terms if s <= per_epoch)
  assert all(terms[s] > 0 for s in terms if s > per_epoch)
  plain, full = read_losses(plain_dir), read_losses(full_dir)
  for s in range(1, per_epoch + 1):
    assert full[s] == pytest.approx(plain[s], rel=1e-6), f"step {s}"
  assert any(abs(full[s] - plain[s]) > 1e-4 for s in full if s > per_epoch + 1)
  with np.load(full_dir / intents.FILE) as f:
    assert int(f["epoch"]) == 2 and f["centroids"].shape == (8, 16)

  # Stopped inside epoch 1 and resumed: the saved prototypes of epoch 1 carry on exactly.
  stop = per_epoch + 2
  loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=stop, **INTENTS), resumed_dir)
  with np.load(resumed_dir / intents.FILE) as f:
    assert int(f["epoch"]) == 1
  caplog.clear()
  with caplog.at_level(logging.INFO):
    loop.train_and_evaluate(tiny_config(tmp_path, **INTENTS), resumed_dir)
  assert "intent prototypes of epoch 1 read from" in caplog.text
  resumed = read_losses(resumed_dir)
  assert set(resumed) == set(full)
  for s in full:
    assert resumed[s] == pytest.approx(full[s], rel=1e-5), f"step {s}"


def test_prototypes_cluster_the_stored_rows_not_an_augment_transforms(tmp_path):
  """With an `augment` transform on, the k-means still reads the rows as stored."""
  from lstmrec_jax.data import augment  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path, **{"augment.mask_prob": 1.0, "augment.mask_ratio": 0.5})
  run = run_lib.build_run(run_lib.spec_from_config(config))
  inp = run.spec.input
  kw = dict(batch_size=inp.batch_size, max_len=inp.max_len, seed=run.spec.seed, pack=inp.pack,
            backend="numpy")
  plain = run_lib_batches(run)
  augmented = augment.train_batches(run.dataset.train, augment=run.spec.augment,
                                    num_items=int(run.dataset.num_items), **kw)
  assert isinstance(augmented, augment.AugmentedTrainBatches)
  first = next(iter(augmented.epoch(0)))
  assert not np.array_equal(first["inputs_BxL"], next(iter(plain.epoch(0)))["inputs_BxL"])
  got = [intents.Prototypes(run, b, tmp_path, clusters=4, start_epoch=0, seed=0)._collect(
      0, run.params) for b in (plain, augmented)]  # pylint: disable=protected-access
  np.testing.assert_array_equal(got[0][0], got[1][0])
  np.testing.assert_array_equal(got[0][1], got[1][1])
