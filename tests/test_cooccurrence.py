"""train.item_init="cooccurrence": the PPMI counts by hand, what the vectors keep, the model's
id table replaced (and nothing else), a run that trains from it, and the settings it refuses;
the item neighbours' and the co-occurrence teacher's lists."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lstmrec_jax import optim
from lstmrec_jax import run as run_lib
from lstmrec_jax.data import pipeline
from lstmrec_jax.data.preprocess import Sequences
from lstmrec_jax.mesh import to_global
from lstmrec_jax.model import cooccurrence
from lstmrec_jax.train import loop
from lstmrec_jax.train import steps
from helpers import tiny_config
from test_train import read_losses


def test_ppmi_by_hand_within_the_window_and_never_across_users():
  # [1, 2, 3] and [1, 2], window 1: counts (1,2) x2, (2,3) x1, both ways; total 6, marginals
  # 1: 2, 2: 3, 3: 1 -> PMI(1,2) = log(2 * 6 / (2 * 3)) = log 2 = PMI(2,3); (1,3) is 2 apart.
  s = Sequences.from_lists([[1, 2, 3], [1, 2]])
  m = cooccurrence.ppmi_matrix(s.offsets_U1, s.items_N, 4, window=1).toarray()
  want = np.zeros((4, 4))
  want[1, 2] = want[2, 1] = want[2, 3] = want[3, 2] = np.log(2)
  np.testing.assert_allclose(m, want, atol=1e-12)
  # Window 2 adds (1, 3); the second user's [4, 5] never pairs with the first user's last item.
  s = Sequences.from_lists([[1, 2, 3], [4, 5]])
  m = cooccurrence.ppmi_matrix(s.offsets_U1, s.items_N, 6, window=2).toarray()
  assert m[1, 3] > 0 and m[3, 4] == 0 and m[4, 3] == 0 and m[4, 5] > 0
  with pytest.raises(ValueError, match="window"):
    cooccurrence.ppmi_matrix(s.offsets_U1, s.items_N, 6, window=0)


def test_vectors_put_items_that_occur_together_close():
  # Two groups of items that never meet (1-6 and 7-12), each user shuffling one group; item 13
  # never occurs and gets no vector.
  rng = np.random.default_rng(0)
  rows = [list(rng.permutation(np.arange(1, 7) + 6 * (u % 2))) for u in range(60)]
  s = Sequences.from_lists(rows)
  vectors, has = cooccurrence.cooccurrence_vectors(s.offsets_U1, s.items_N, 14, 8, window=2)
  assert has[1:13].all() and not has[0] and not has[13]
  np.testing.assert_allclose(np.linalg.norm(vectors[1:13], axis=1), 1.0, rtol=1e-5)
  cos = vectors @ vectors.T
  within = [cos[a, b] for a in range(1, 7) for b in range(1, 7) if a != b]
  across = [cos[a, b] for a in range(1, 7) for b in range(7, 13)]
  assert min(within) > 0.2 and max(np.abs(across)) < 1e-5  # the groups are orthogonal


@pytest.mark.parametrize("item_mode", ["id", "sum"])
def test_the_id_table_alone_is_replaced(tmp_path, item_mode):
  spec = run_lib.spec_from_config(tiny_config(tmp_path, **{"model.item_mode": item_mode}))
  run = run_lib.build_run(spec, num_devices=1)
  train = run.dataset.train
  new = cooccurrence.init_item_table(run.params, train.offsets_U1, train.items_N,
                                     run.dataset.num_items, window=3, seed=0)
  vectors, has = cooccurrence.cooccurrence_vectors(train.offsets_U1, train.items_N,
                                                   run.dataset.num_items,
                                                   spec.model.embed_dim, window=3, seed=0)
  assert has.sum() > 0.9 * (run.dataset.num_items - 1)
  changed = 0
  for (path, old), new_leaf in zip(jax.tree_util.tree_leaves_with_path(run.params),
                                   jax.tree.leaves(new)):
    key = jax.tree_util.keystr(path)
    old, new_leaf = np.asarray(old), np.asarray(new_leaf)
    if key.startswith("['item_repr']['embedding']"):
      changed += 1
      np.testing.assert_allclose(new_leaf[has], vectors[has], rtol=1e-6)
      np.testing.assert_array_equal(new_leaf[~has[:len(new_leaf)]], old[~has[:len(old)]])
    else:
      np.testing.assert_array_equal(new_leaf, old, err_msg=key)
  assert changed == 1


def test_a_run_trains_from_it_and_bad_settings_are_refused(tmp_path):
  random_dir, cooc_dir = tmp_path / "random", tmp_path / "cooc"
  loop.train_and_evaluate(tiny_config(tmp_path), random_dir)
  report = loop.train_and_evaluate(tiny_config(tmp_path, item_init="cooccurrence"), cooc_dir)
  random_losses, cooc_losses = read_losses(random_dir), read_losses(cooc_dir)
  assert all(np.isfinite(v) for v in cooc_losses.values())
  assert cooc_losses[1] != pytest.approx(random_losses[1], rel=1e-4)  # it starts elsewhere
  assert np.isfinite(report["splits"]["test"]["model"]["overall"]["NDCG@10"])
  with pytest.raises(ValueError, match="item_init"):
    run_lib.spec_from_config(tiny_config(tmp_path, item_init="svd"))
  with pytest.raises(ValueError, match="item_init_window"):
    run_lib.spec_from_config(tiny_config(tmp_path, item_init_window=0))
  content = run_lib.build_run(run_lib.spec_from_config(
      tiny_config(tmp_path, **{"model.item_mode": "content"})), num_devices=1)
  with pytest.raises(ValueError, match="needs an id item table"):
    cooccurrence.init_item_table(content.params, np.array([0, 2]), np.array([1, 2], np.int32),
                                 content.dataset.num_items, window=1)


def test_neighbor_lists_by_hand():
  # [1, 2, 3] and [1, 2], window 1: counts (1,2) x2, (2,3) x1. Item 2's neighbours by count: 1
  # then 3; item 4 never occurs; the second user's items never pair with the first user's.
  s = Sequences.from_lists([[1, 2, 3], [1, 2]])
  got = cooccurrence.neighbor_lists(s.offsets_U1, s.items_N, 5, 3, window=1)
  np.testing.assert_array_equal(got, [[0, 0, 0], [2, 0, 0], [1, 3, 0], [2, 0, 0], [0, 0, 0]])
  assert got.dtype == np.int32
  # k = 1 keeps the most frequent; window 2 adds (1, 3) but not across users.
  got = cooccurrence.neighbor_lists(s.offsets_U1, s.items_N, 5, 1, window=1)
  np.testing.assert_array_equal(got[:, 0], [0, 2, 1, 2, 0])
  s = Sequences.from_lists([[1, 2, 3], [4, 1]])
  got = cooccurrence.neighbor_lists(s.offsets_U1, s.items_N, 5, 3, window=2)
  assert set(got[3]) == {1, 2, 0} and 3 not in got[4] and set(got[4]) == {1, 0}
  with pytest.raises(ValueError, match="k must be"):
    cooccurrence.neighbor_lists(s.offsets_U1, s.items_N, 5, 0, window=1)


def test_neighbor_ties_go_to_the_rarer_partner_then_the_lower_id():
  # Item 1 meets 2, 3 and 4 once each; 2 also meets 5 (more common), 3 and 4 nothing else:
  # equal counts, so 3 and 4 (rarer, higher PMI) come before 2, and 3 before 4 (lower id).
  s = Sequences.from_lists([[2, 1, 3], [1, 4], [2, 5]])
  got = cooccurrence.neighbor_lists(s.offsets_U1, s.items_N, 6, 3, window=1)
  np.testing.assert_array_equal(got[1], [3, 4, 2])


def test_cosine_score_ranks_specific_partners_before_popular_ones():
  # Item 1 meets 2 twice and 3 once; item 2 also meets 4, 5, 6 and 7 (popular: 6 co-occurrences),
  # 3 meets nothing else. By count 2 ranks first; by cosine 1-3 scores 1 / sqrt(3 x 1) = 0.58
  # against 1-2's 2 / sqrt(3 x 6) = 0.47, so 3 comes first.
  s = Sequences.from_lists([[2, 1, 3], [1, 2], [4, 2, 5], [6, 2, 7]])
  by_count = cooccurrence.neighbor_lists(s.offsets_U1, s.items_N, 8, 2, window=1)
  by_cosine = cooccurrence.neighbor_lists(s.offsets_U1, s.items_N, 8, 2, window=1,
                                          score="cosine")
  np.testing.assert_array_equal(by_count[1], [2, 3])
  np.testing.assert_array_equal(by_cosine[1], [3, 2])
  # The same partners, only their order moves; items with one partner keep it.
  np.testing.assert_array_equal(np.sort(by_count, axis=1), np.sort(by_cosine, axis=1))
  with pytest.raises(ValueError, match="score must be one of"):
    cooccurrence.neighbor_lists(s.offsets_U1, s.items_N, 8, 2, window=1, score="pmi")


def test_teacher_lists_by_hand():
  # [1, 2, 3] and [1, 2], window 1: counts (1,2) x2, (2,3) x1.
  s = Sequences.from_lists([[1, 2, 3], [1, 2]])
  ids, probs = cooccurrence.teacher_lists(s.offsets_U1, s.items_N, 5, 2, window=1)
  np.testing.assert_array_equal(ids, [[0, 0], [2, 0], [1, 3], [2, 0], [0, 0]])
  np.testing.assert_allclose(probs, [[0, 0], [1, 0], [2 / 3, 1 / 3], [1, 0], [0, 0]], rtol=1e-6)
  assert ids.dtype == np.int32 and probs.dtype == np.float32
  # k = 1 keeps the most frequent partner with all the probability.
  ids, probs = cooccurrence.teacher_lists(s.offsets_U1, s.items_N, 5, 1, window=1)
  np.testing.assert_array_equal(ids[:, 0], [0, 2, 1, 2, 0])
  np.testing.assert_allclose(probs[:, 0], [0, 1, 1, 1, 0])
  # direction "next": only the items that came after: 1 -> 2 (twice), 2 -> 3; 3 has none.
  ids, probs = cooccurrence.teacher_lists(s.offsets_U1, s.items_N, 5, 2, window=1,
                                          direction="next")
  np.testing.assert_array_equal(ids, [[0, 0], [2, 0], [3, 0], [0, 0], [0, 0]])
  np.testing.assert_allclose(probs, [[0, 0], [1, 0], [1, 0], [0, 0], [0, 0]])
  # window 2 reaches 3 from 1 as well: 1 -> 2 (x2), 1 -> 3 (x1).
  ids, probs = cooccurrence.teacher_lists(s.offsets_U1, s.items_N, 5, 2, window=2,
                                          direction="next")
  np.testing.assert_array_equal(ids[1], [2, 3])
  np.testing.assert_allclose(probs[1], [2 / 3, 1 / 3], rtol=1e-6)
  with pytest.raises(ValueError, match="direction must be one of"):
    cooccurrence.teacher_lists(s.offsets_U1, s.items_N, 5, 2, window=1, direction="back")


def _first_batch(run):
  """The first packed training batch of a built run, placed on its mesh."""
  batches = pipeline.TrainBatches(run.dataset.train, batch_size=run.spec.input.batch_size,
                                  max_len=run.spec.input.max_len, seed=0, pack=True)
  return to_global(next(iter(batches.epoch(0))), run.mesh)


def test_the_train_step_takes_the_teacher_from_the_training_sequences(tmp_path):
  spec = run_lib.spec_from_config(tiny_config(
      tmp_path, **{"loss.kind": "full", "loss.teacher_weight": 0.5, "loss.teacher_items": 3,
                   "loss.teacher_direction": "next"}))
  run = run_lib.build_run(spec, num_devices=1)
  aux = run.step_aux()
  train = run.dataset.train
  want_ids, want_probs = cooccurrence.teacher_lists(
      train.offsets_U1, train.items_N, run.dataset.num_items, 3, window=1, direction="next")
  both_ids, _ = cooccurrence.teacher_lists(
      train.offsets_U1, train.items_N, run.dataset.num_items, 3, window=1)
  assert not np.array_equal(both_ids, want_ids)  # so the comparison below sees the direction
  np.testing.assert_array_equal(aux["teacher_ids_VxK"], want_ids)
  np.testing.assert_allclose(aux["teacher_probs_VxK"], want_probs)
  # The step's loss is the plain loss plus the teacher's terms: larger, and different gradients.
  batch = _first_batch(run)
  tx = optax.sgd(0.0)
  losses_seen = []
  for teacher in (True, False):
    aux_t = aux if teacher else {k: v for k, v in aux.items() if not k.startswith("teacher")}
    loss_cfg = spec.loss if teacher else dataclasses.replace(spec.loss, teacher_weight=0.0)
    state = optim.init_state(run.params, tx, 0)
    _, out = steps.train_step(state, batch, aux_t, graphdef=run.graphdef, tx=tx,
                              loss_cfg=loss_cfg)
    losses_seen.append(float(out["loss"]))
  assert losses_seen[0] > losses_seen[1] + 0.1, losses_seen
  assert int(aux["teacher_until_step"]) == 0  # constant weight without teacher_epochs
  # A decaying teacher: at its last step the weight is 0 and the loss is the plain one.
  spec_d = run_lib.spec_from_config(tiny_config(
      tmp_path, **{"loss.kind": "full", "loss.teacher_weight": 0.5, "loss.teacher_items": 3,
                   "loss.teacher_direction": "next", "loss.teacher_epochs": 2.0}))
  aux_d = run_lib.build_run(spec_d, num_devices=1).step_aux(steps_per_epoch=5)
  assert int(aux_d["teacher_until_step"]) == 10
  plain_aux = {k: v for k, v in aux.items() if not k.startswith("teacher")}
  plain_cfg = dataclasses.replace(spec.loss, teacher_weight=0.0)

  def loss_at(step, aux_, cfg):  # the dropout masks depend on the step: compare at one step
    state = optim.init_state(run.params, tx, 0)._replace(step=jnp.asarray(step, jnp.int32))
    return float(steps.train_step(state, batch, aux_, graphdef=run.graphdef, tx=tx,
                                  loss_cfg=cfg)[1]["loss"])

  np.testing.assert_allclose(loss_at(0, aux_d, spec_d.loss), losses_seen[0], rtol=1e-6)
  np.testing.assert_allclose(loss_at(10, aux_d, spec_d.loss), loss_at(10, plain_aux, plain_cfg),
                             rtol=1e-6)
  assert loss_at(5, aux_d, spec_d.loss) > loss_at(5, plain_aux, plain_cfg) + 0.05  # half weight
  with pytest.raises(ValueError, match="needs the teacher's lists"):
    steps.train_step(optim.init_state(run.params, tx, 0), batch,
                     {k: v for k, v in aux.items() if not k.startswith("teacher")},
                     graphdef=run.graphdef, tx=tx, loss_cfg=spec.loss)


def test_a_sampled_teacher_step_reads_the_rows_of_the_teachers_targets(tmp_path, monkeypatch):
  """With a sampled loss and per-row item content the step computes the item table at the rows
  it reads; the teacher's targets must be among them: the loss equals the whole table's."""
  spec = run_lib.spec_from_config(tiny_config(
      tmp_path, **{"loss.kind": "sampled", "loss.num_negatives": 16, "model.item_mode": "sum",
                   "loss.teacher_weight": 0.5, "loss.teacher_items": 3}))
  run = run_lib.build_run(spec, num_devices=1)
  batch = _first_batch(run)
  tx = optax.sgd(0.0)
  aux = run.step_aux()
  seen_rows = []
  real_rows_read = steps._rows_read  # pylint: disable=protected-access

  def spy(*args, **kwargs):
    rows = real_rows_read(*args, **kwargs)
    seen_rows.append(rows)
    return rows

  monkeypatch.setattr(steps, "_rows_read", spy)
  by_rows = float(steps.train_step(optim.init_state(run.params, tx, 0), batch, aux,
                                   graphdef=run.graphdef, tx=tx, loss_cfg=spec.loss)[1]["loss"])
  assert seen_rows[-1] is not None  # the rows path ran
  monkeypatch.setattr(steps, "_rows_read", lambda *a, **k: None)
  whole = float(steps.train_step(optim.init_state(run.params, tx, 0), batch, aux,
                                 graphdef=run.graphdef, tx=tx, loss_cfg=spec.loss)[1]["loss"])
  np.testing.assert_allclose(by_rows, whole, rtol=1e-6)


def test_model_inputs_take_neighbors_from_the_training_sequences_only(tmp_path):
  spec = run_lib.spec_from_config(tiny_config(
      tmp_path, **{"model.item_mode": "sum", "model.item_neighbors": 4,
                   "model.neighbor_window": 2}))
  dataset = run_lib.load_data(spec)
  got = run_lib.model_inputs(dataset, spec.model)["item_content"].neighbors_VxK
  train = dataset.train
  want = want_count = cooccurrence.neighbor_lists(
      train.offsets_U1, train.items_N, dataset.num_items, 4, window=2)
  np.testing.assert_array_equal(got, want)
  # model.neighbor_score reaches the lists.
  spec = run_lib.spec_from_config(tiny_config(
      tmp_path, **{"model.item_mode": "sum", "model.item_neighbors": 4,
                   "model.neighbor_window": 2, "model.neighbor_score": "cosine"}))
  got = run_lib.model_inputs(dataset, spec.model)["item_content"].neighbors_VxK
  want = cooccurrence.neighbor_lists(train.offsets_U1, train.items_N, dataset.num_items, 4,
                                     window=2, score="cosine")
  np.testing.assert_array_equal(got, want)
  assert (got != want_count).any()  # on this data a third of the lists change order or partner
  with pytest.raises(ValueError, match="model.neighbor_score='pmi' must be"):
    run_lib.spec_from_config(tiny_config(tmp_path, **{"model.neighbor_score": "pmi"}))
  assert (got[1:, 0] > 0).mean() > 0.9  # the synthetic items nearly all have a neighbour
  # Off by default: no neighbour array at all.
  spec = run_lib.spec_from_config(tiny_config(tmp_path, **{"model.item_mode": "sum"}))
  assert run_lib.model_inputs(dataset, spec.model)["item_content"].neighbors_VxK is None
