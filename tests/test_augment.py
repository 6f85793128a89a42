"""Sequence augmentation: each transform's semantics, item similarity, determinism per
(seed, epoch, example), exact resume, the InfoNCE term."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstmrec_jax import config_keys
from lstmrec_jax.configs import base
from lstmrec_jax import run as run_lib
from lstmrec_jax.data import augment
from lstmrec_jax.data import pipeline
from lstmrec_jax.data.preprocess import Sequences
from lstmrec_jax.losses import contrastive


def aug_config(**overrides) -> augment.AugmentConfig:
  return config_keys.build_group(augment.AugmentConfig, "augment", base.group("augment", **overrides))


SEQ = np.arange(10, 20)
SIMILAR = np.stack([np.arange(100) + 100, np.arange(100) + 200], axis=1)  # i -> i+100, i+200


def test_crop_keeps_a_contiguous_window():
  out = augment.crop(SEQ, 0.5, np.random.default_rng(0))
  assert len(out) == 5 and np.all(np.diff(out) == 1) and set(out) <= set(SEQ)
  assert len(augment.crop(SEQ[:3], 0.1, np.random.default_rng(0))) == 2  # at least 2 items


def test_reorder_shuffles_one_window_only():
  out = augment.reorder(SEQ, 0.4, np.random.default_rng(3))
  assert sorted(out) == sorted(SEQ)
  changed = np.flatnonzero(out != SEQ)
  assert len(changed) and changed.max() - changed.min() < 4  # inside a window of 4


def test_substitute_uses_similar_items():
  out = augment.substitute(SEQ, 0.3, np.random.default_rng(1), SIMILAR)
  changed = np.flatnonzero(out != SEQ)
  assert len(changed) == 3
  assert all(out[i] in (SEQ[i] + 100, SEQ[i] + 200) for i in changed)


def test_insert_keeps_the_length_and_puts_similar_items_after_their_anchor():
  out = augment.insert(SEQ, 0.2, np.random.default_rng(2), SIMILAR)
  assert len(out) == len(SEQ)
  new = [i for i, x in enumerate(out) if x >= 100]
  assert len(new) == 2
  for i in new:
    assert i == 0 or out[i] - out[i - 1] in (100, 200)  # the anchor (unless it was cut off)
  originals = [x for x in out if x < 100]
  assert originals == list(SEQ[-len(originals):])  # the oldest items were dropped


def test_mask_hides_inputs_but_never_all():
  hidden = augment.mask_positions(10, 0.3, np.random.default_rng(0))
  assert hidden.shape == (9,) and hidden.sum() == 2
  assert augment.mask_positions(3, 1.0, np.random.default_rng(0)).sum() == 1


def test_similar_items_by_hand():
  train = Sequences.from_lists([[1, 2], [1, 2], [1, 3], [4]])
  sim = augment.similar_items(train, 5, 2)
  # item 1: cos(1,2) = 2/sqrt(3*2) > cos(1,3) = 1/sqrt(3); item 4 has no neighbour: itself.
  np.testing.assert_array_equal(sim[1], [2, 3])
  np.testing.assert_array_equal(sim[3], [1, 1])
  np.testing.assert_array_equal(sim[4], [4, 4])


def test_segments_of_a_packed_row():
  assert augment.segments(np.array([4, 5, 6, 7, 0]), np.array([0, 0, 1, 0, 0], bool)) == [
      (0, 2), (2, 4)]
  assert augment.segments(np.zeros(3, int), np.zeros(3, bool)) == []


def _batches(cfg, **kwargs):
  rng = np.random.default_rng(0)
  rows = [rng.integers(1, 30, size=rng.integers(2, 12)) for _ in range(64)]
  train = Sequences.from_lists(rows)
  return augment.train_batches(train, augment=cfg, num_items=30, batch_size=8, max_len=10,
                               seed=5, pack=True, backend="numpy", **kwargs)


def test_off_is_the_plain_pipeline():
  b = _batches(aug_config())
  assert type(b) is pipeline.TrainBatches


def test_each_example_keeps_next_item_alignment():
  cfg = aug_config(crop_prob=1.0, reorder_prob=1.0, substitute_prob=1.0, insert_prob=1.0)
  b = _batches(cfg)
  for batch in b.epoch(0):
    for r in range(batch["inputs_BxL"].shape[0]):
      segs = augment.segments(batch["inputs_BxL"][r], batch["resets_BxL"][r])
      for s, e in segs:  # inputs[t + 1] is the target of t inside each example
        np.testing.assert_array_equal(batch["inputs_BxL"][r, s + 1:e],
                                      batch["targets_BxL"][r, s:e - 1])
      assert (batch["targets_BxL"][r][~batch["mask_BxL"][r]] == 0).all()


def test_masked_inputs_are_not_predicted_there():
  b = _batches(aug_config(mask_prob=1.0, mask_ratio=0.5))
  clean = _batches(aug_config())
  for got, ref in zip(b.epoch(1), clean.epoch(1)):
    hidden = ref["mask_BxL"] & ~got["mask_BxL"]
    assert hidden.any()
    assert (got["targets_BxL"][hidden] == 0).all()
    keep = got["mask_BxL"]
    np.testing.assert_array_equal(got["targets_BxL"][keep], ref["targets_BxL"][keep])


def test_deterministic_per_seed_epoch_example_and_resume_is_exact():
  cfg = aug_config(crop_prob=0.5, mask_prob=0.5, substitute_prob=0.5, contrastive_weight=0.1)
  b = _batches(cfg)
  full = list(b.epoch(2))
  again = list(_batches(cfg).epoch(2))
  tail = list(b.epoch(2, skip_batches=3))
  for x, y in zip(full, again):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  for x, y in zip(full[3:], tail):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  other = list(b.epoch(3))
  assert any(not np.array_equal(x["view1_inputs_BxL"], y["view1_inputs_BxL"])
             for x, y in zip(full, other))
  # An example's augmentation follows the example, not its place in the batch.
  batch = b._gather_numpy(b.epoch_rows(2)[0])
  rows = b.epoch_rows(2)[0]
  perm = np.arange(len(rows))[::-1]
  a = augment.augment_rows(batch, rows, cfg=cfg, seed=5, epoch=2, view=1,
                           similar_VxK=b.similar_VxK)
  p = augment.augment_rows({k: v[perm] for k, v in batch.items()}, rows[perm], cfg=cfg, seed=5,
                           epoch=2, view=1, similar_VxK=b.similar_VxK)
  np.testing.assert_array_equal(a["inputs_BxL"][perm], p["inputs_BxL"])
  # The two views differ; with views_only the next-item batch is the clean one.
  assert any(not np.array_equal(x["view1_inputs_BxL"], x["view2_inputs_BxL"]) for x in full)
  clean = list(_batches(aug_config()).epoch(2))
  vo = list(_batches(aug_config(crop_prob=0.5, contrastive_weight=0.1, views_only=True)).epoch(2))
  np.testing.assert_array_equal(vo[0]["inputs_BxL"], clean[0]["inputs_BxL"])


def test_config_validation_names_the_keys():
  with pytest.raises(ValueError, match="augment.crop_prob"):
    aug_config(crop_prob=1.5)
  with pytest.raises(ValueError, match="needs at least one transform"):
    aug_config(contrastive_weight=0.1)


def test_info_nce_by_hand_and_finite_gradients_with_empty_rows():
  z = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  got = contrastive.info_nce(z, z, jnp.array([True, True]), 1.0)
  assert float(got) == pytest.approx(-np.log(np.e / (np.e + 2)), rel=1e-5)
  z3 = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  g = jax.grad(lambda a: contrastive.info_nce(a, z3, jnp.array([True, True, False]), 0.5))(z3)
  assert np.isfinite(np.asarray(g)).all()
  assert float(contrastive.info_nce(z3, z3, jnp.array([True, False, False]), 1.0)) == 0.0


def test_the_loop_trains_on_augmented_batches_with_both_extra_terms(tmp_path):
  # Exact resume is the batches' property (above); this checks the loop's wiring: augmented
  # batches with views, the contrastive and the adversarial term in the jitted step.
  from helpers import tiny_config
  from lstmrec_jax.train import loop
  over = {"augment.crop_prob": 0.5, "augment.substitute_prob": 0.5, "augment.mask_prob": 0.3,
          "augment.contrastive_weight": 0.1, "adversarial.kind": "fgsm",
          "input.backend": "numpy"}
  out = loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=4, **over), tmp_path)
  assert out["stopped_at_step"] == 4
  losses = [r["loss"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert len(losses) == 4 and np.isfinite(losses).all()


def _same_target_by_loop(z, targets, t):
  """SupCon over positions with the same target, one anchor at a time (the reference)."""
  z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  total, anchors = 0.0, 0
  for i in range(len(z)):
    if targets[i] <= 0:
      continue
    others = [a for a in range(len(z)) if a != i and targets[a] > 0]
    positives = [p for p in others if targets[p] == targets[i]]
    if not positives:
      continue
    log_den = np.log(sum(np.exp(z[i] @ z[a] / t) for a in others))
    total += np.mean([log_den - z[i] @ z[p] / t for p in positives])
    anchors += 1
  return total / max(anchors, 1)


def test_same_target_nce_by_hand_against_a_loop_and_finite_gradients():
  z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  got = contrastive.same_target_nce(z, jnp.array([5, 5, 7]), 1.0)
  assert float(got) == pytest.approx(-np.log(np.e / (np.e + 1)), rel=1e-5)

  rng = np.random.default_rng(0)
  z = rng.normal(size=(40, 6)).astype(np.float32)
  targets = rng.integers(0, 6, size=40)  # 0 = padding; several positions share each target
  for t in (0.1, 1.0):
    got = contrastive.same_target_nce(jnp.asarray(z), jnp.asarray(targets), t)
    assert float(got) == pytest.approx(_same_target_by_loop(z, targets, t), rel=1e-4)
  # no shared target: 0; padding only, and a zero state: finite gradients
  assert float(contrastive.same_target_nce(jnp.asarray(z[:4]), jnp.array([1, 2, 3, 0]), 0.1)) == 0
  z0 = jnp.asarray(z[:4]).at[3].set(0.0)
  for targets4 in (jnp.array([1, 1, 2, 1]), jnp.zeros(4, jnp.int32)):
    g = jax.grad(lambda a: contrastive.same_target_nce(a, targets4, 0.1))(z0)
    assert np.isfinite(np.asarray(g)).all()
  # the term pulls positives together: one gradient step raises their cosine
  zz = jnp.asarray(z[:6])
  tt = jnp.array([1, 1, 2, 3, 4, 5])
  step = zz - 0.1 * jax.grad(lambda a: contrastive.same_target_nce(a, tt, 0.5))(zz)
  cos = lambda a: float(a[0] @ a[1] / jnp.linalg.norm(a[0]) / jnp.linalg.norm(a[1]))
  assert cos(step) > cos(zz)
