"""Item content (attributes, titles), hybrid item representations and the cold-start protocol."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstmrec_jax import data as data_lib
from lstmrec_jax import losses as losses_lib
from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax.evaluation import cold_start, metrics
from lstmrec_jax.data import content as content_data
from lstmrec_jax.data import pipeline
from lstmrec_jax.data.preprocess import EvalSplit, Sequences
from lstmrec_jax.model import content as content_model
from lstmrec_jax.model import SeqRecModel
from lstmrec_jax.train import loop
from lstmrec_jax import model as model_lib  # noqa: E402
from lstmrec_jax.train import steps
import helpers
from helpers import data_config, forward, loss_config, model_config
from lstmrec_jax.scoring import steps as scoring
from lstmrec_jax import workdir as workdir_lib

V = 9  # 8 items + padding


def toy_content(**overrides) -> content_model.ContentInputs:
  """Items 1..8: attributes from a table of 4, titles over a vocabulary of 6; item 8 is cold."""
  attrs_VxA = np.array([[0, 0], [1, 2], [1, 0], [2, 3], [3, 0], [1, 3], [2, 0], [3, 1], [2, 3]])
  tokens_VxT = np.array([[0, 0, 0], [2, 3, 0], [4, 0, 0], [2, 5, 3], [5, 0, 0], [3, 4, 0],
                         [1, 2, 0], [4, 5, 2], [2, 4, 0]])
  known_V = np.array([False] + [True] * 7 + [False])
  kw = dict(known_V=known_V, attrs_VxA=attrs_VxA, num_attrs=4, tokens_VxT=tokens_VxT,
            vocab_size=6)
  kw.update(overrides)
  return content_model.ContentInputs(**kw)


def toy_model(mode="sum", cold_id="drop", content=None, seed=0, **cfg):
  model_cfg = model_config(V, embed_dim=8, hidden_size=8, item_mode=mode, cold_id=cold_id,
                           title_embed_dim=4, title_hidden_size=6, embed_dropout=0.0,
                           output_dropout=0.0, lstm_impl="xla", **cfg)
  kwargs = ({} if mode == "id" and content is None
            else {"item_content": content or toy_content()})
  return model_lib.create_model(model_cfg, seed, **kwargs)


def table_of(graphdef, params, consts):
  return nnx.merge(graphdef, params, consts).item_table()


# ----------------------------------------------------------------------------- data side


def test_tokenizer_and_vocabulary_from_training_titles():
  assert content_data.tokenize("Shawshank Redemption, The (1994)") == [
      "shawshank", "redemption", "the", "1994"]
  assert content_data.tokenize("L'Oréal  Paris_2") == ["l", "oréal", "paris", "2"]
  vocab = content_data.build_vocab(["The Cat", "the dog", "a cat the cat"], min_count=2)
  # Document counts: "the" in 3 titles, "cat" in 2; "dog" and "a" in 1 (below min_count).
  assert vocab.tokens == ("<pad>", "<unk>", "the", "cat")
  assert vocab.encode("Cat dog THE") == [3, content_data.UNK, 2]
  assert content_data.padded_rows([[3, 4, 5], [], [7]], 2).tolist() == [[3, 4], [0, 0], [7, 0]]


def test_content_arrays_use_training_items_only():
  log = data_lib.synthetic_log(num_users=200, num_items=60, seed=1)
  ds = content_data.cold_item_split(data_lib.build_dataset(log), fraction=0.2, seed=0)
  cold = content_data.cold_items(ds)
  c = content_data.item_content(ds, title_min_count=1, title_max_tokens=3)
  assert c.tokens_VxT.shape == (ds.num_items, 3) and c.attrs_VxA.shape[0] == ds.num_items
  assert not c.known_V[cold].any() and not c.known_V[0]
  warm_words = {w for i in np.flatnonzero(c.known_V) for w in content_data.tokenize(
      ds.item_titles[i])}
  assert set(c.vocab.tokens[2:]) == warm_words
  warm_attrs = set(c.attrs_VxA[c.known_V].ravel()) - {0}
  assert set(c.attrs_VxA.ravel()) - {0} <= warm_attrs
  assert not c.attrs_VxA[0].any() and not c.tokens_VxT[0].any()


# ----------------------------------------------------------------------------- model side


@pytest.mark.parametrize("mode", ["content", "sum", "gate"])
def test_padding_tokens_and_attributes_change_nothing(mode):
  graphdef, params, consts = toy_model(mode)
  table = np.asarray(table_of(graphdef, params, consts))
  # Wider padding: extra all-zero attribute and token columns.
  c = toy_content()
  wide = toy_content(attrs_VxA=np.pad(c.attrs_VxA, ((0, 0), (0, 3))),
                     tokens_VxT=np.pad(c.tokens_VxT, ((0, 0), (0, 4))))
  g2, _, consts2 = toy_model(mode, content=wide)
  np.testing.assert_allclose(np.asarray(table_of(g2, params, consts2)), table, atol=1e-6)
  # The padding rows of the attribute and token tables are never read.
  poisoned = jax.tree.map(lambda x: x, params)
  rep = poisoned["item_repr"]
  rep["attributes"]["embedding"] = rep["attributes"]["embedding"].at[0].set(jnp.nan)
  rep["title"]["embedding"] = rep["title"]["embedding"].at[0].set(1e6)
  np.testing.assert_allclose(np.asarray(table_of(graphdef, poisoned, consts)), table, atol=1e-6)
  assert not table[0].any()  # the padding item's row is zero


def test_attribute_bag_is_the_mean_over_real_attributes():
  graphdef, params, consts = toy_model("content", content=toy_content(tokens_VxT=None))
  emb = np.asarray(params["item_repr"]["attributes"]["embedding"])
  table = np.asarray(table_of(graphdef, params, consts))
  np.testing.assert_allclose(table[1], (emb[1] + emb[2]) / 2, atol=1e-6)
  np.testing.assert_allclose(table[2], emb[1], atol=1e-6)


NEIGHBORS_VxK = np.array([[0, 0], [2, 3], [1, 0], [1, 5], [0, 0], [3, 0], [7, 1], [6, 0],
                          [0, 0]])


@pytest.mark.parametrize("mode", ["sum", "gate", "content"])
def test_neighbors_add_the_mean_of_their_rows(mode):
  """model.item_neighbors: row v = base[v] + w x mean(base[n] for v's neighbours n), where base
  is the table without neighbours (same seed, same parameters); no neighbours: base alone."""
  base = np.asarray(table_of(*toy_model(mode)))
  graphdef, params, consts = toy_model(mode, content=toy_content(neighbors_VxK=NEIGHBORS_VxK),
                                       neighbor_weight=0.5)
  table = np.asarray(table_of(graphdef, params, consts))
  want = base.copy()
  for v in range(1, V):
    nbrs = [n for n in NEIGHBORS_VxK[v] if n]
    if nbrs:
      want[v] = base[v] + 0.5 * base[nbrs].mean(axis=0)
  np.testing.assert_allclose(table, want, atol=1e-6)
  assert not np.allclose(table[1], base[1]) and np.allclose(table[4], base[4])
  # A step that reads a few rows (`table(rows=...)`, the sampled losses) gets them exact: the
  # content of their neighbours is computed too.
  rep = nnx.merge(graphdef, params, consts).item_repr
  for rows in ([1], [3, 6], [5, 5, 0]):
    part = np.asarray(rep.table(rows=jnp.array(rows)))
    np.testing.assert_allclose(part[np.array(rows)], table[np.array(rows)], atol=1e-6)
  with pytest.raises(ValueError, match="neighbors_VxK ids must be in"):
    toy_content(neighbors_VxK=np.full((V, 2), V))


@pytest.mark.parametrize("gradient", [True, False])
def test_neighbor_gradient_reaches_the_neighbours_rows_only_when_asked(gradient):
  """model.neighbor_gradient=False: the neighbours' mean is a constant of the step, so row 1's
  loss (neighbours 2 and 3) trains row 1 alone; True: rows 2 and 3 too. Same values either way."""
  content = toy_content(neighbors_VxK=NEIGHBORS_VxK)
  graphdef, params, consts = toy_model("sum", content=content, neighbor_gradient=gradient)
  values = table_of(graphdef, params, consts)
  np.testing.assert_allclose(values, table_of(*toy_model("sum", content=content)), atol=1e-6)

  def row1(p):
    return table_of(graphdef, p, consts)[1].sum()

  g = np.abs(np.asarray(jax.grad(row1)(params)["item_repr"]["embedding"])).sum(axis=1)
  assert g[1] > 0 and (g[2] > 0) == gradient and (g[3] > 0) == gradient
  assert not g[4:].any()


def test_reverse_neighbors_by_hand():
  rev, src, dst = content_model.reverse_neighbors(np.array([[0, 0], [2, 3], [1, 0], [1, 2]]), 1)
  np.testing.assert_array_equal(rev, [[0], [2], [1], [1]])
  np.testing.assert_array_equal(src, [3, 3])
  np.testing.assert_array_equal(dst, [1, 2])


@pytest.mark.parametrize("width", [1, 3, 16])
def test_propagation_gradient_through_reverse_gathers_is_autodiff_of_the_mean(width):
  """The custom backward (gathers through the transposed lists, the rest scatter-added) gives
  the gradient that autodiff of `table + w * mean(neighbours' rows)` gives, for every width."""
  rng = np.random.default_rng(0)
  v, k, e = 40, 4, 6
  nb = rng.integers(1, v, (v, k)) * (rng.random((v, k)) < 0.8)

  nb[:10, 0] = 5  # item 5 is listed by at least 10 items: overflow at small widths
  nb[0] = 0
  rev, src, dst = content_model.reverse_neighbors(nb, width)
  assert (width >= 10) or len(src) > 0
  table = jnp.asarray(rng.standard_normal((v, e)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((v, e)), jnp.float32)
  w = jnp.full((v,), 0.7, jnp.float32)

  def custom(t):
    return (content_model._propagate(t, w, jnp.asarray(nb), jnp.asarray(rev), jnp.asarray(src),
                                     jnp.asarray(dst)) * g).sum()

  def plain(t):
    return ((t + 0.7 * content_model.attribute_mean(t, jnp.asarray(nb))) * g).sum()

  np.testing.assert_allclose(custom(table), plain(table), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(custom)(table), jax.grad(plain)(table), rtol=1e-5,
                             atol=1e-6)


def test_neighbors_propagate_an_id_only_table_too():
  base = np.asarray(table_of(*toy_model("id")))
  content = content_model.ContentInputs(known_V=toy_content().known_V,
                                        neighbors_VxK=NEIGHBORS_VxK)
  graphdef, params, consts = toy_model("id", content=content)
  table = np.asarray(table_of(graphdef, params, consts))
  want = base.copy()
  for v in range(1, V):
    nbrs = [n for n in NEIGHBORS_VxK[v] if n]
    if nbrs:
      want[v] = base[v] + base[nbrs].mean(axis=0)  # neighbor_weight 1.0, the default
  np.testing.assert_allclose(table, want, atol=1e-6)  # row 0 (padding) untouched, as without
  with pytest.raises(ValueError, match="model.neighbor_window=0 must be >= 1"):
    model_config(V, item_mode="sum", neighbor_window=0)
  with pytest.raises(ValueError, match="neither attributes, title tokens, neighbours nor transitions"):
    content_model.ContentInputs(known_V=toy_content().known_V)


def test_item_never_seen_in_training_scores_by_its_content():
  c = toy_content()
  graphdef, params, consts = toy_model("sum", "drop", content=c)
  model = nnx.merge(graphdef, params, consts)
  inputs = jnp.array([[1, 2, 3]])
  user = forward(model, inputs, inputs > 0)[:, -1]
  scores = np.asarray(model.score(user))
  assert np.isfinite(scores[0, 1:]).all() and scores[0, 8] != 0
  # The cold item's id embedding is dropped: changing it changes nothing...
  p2 = jax.tree.map(lambda x: x, params)
  p2["item_repr"]["embedding"] = p2["item_repr"]["embedding"].at[8].add(5.0)
  m2 = nnx.merge(graphdef, p2, consts)
  np.testing.assert_allclose(np.asarray(m2.score(user))[0, 8], scores[0, 8], rtol=1e-6)
  # ...while its content does (new attributes, new title).
  attrs, tokens = c.attrs_VxA.copy(), c.tokens_VxT.copy()
  attrs[8], tokens[8] = [1, 0], [5, 5, 1]
  g3, _, consts3 = toy_model("sum", "drop", content=toy_content(attrs_VxA=attrs,
                                                                  tokens_VxT=tokens))
  m3 = nnx.merge(g3, params, consts3)
  assert abs(float(m3.score(forward(m3, inputs, inputs > 0)[:, -1])[0, 8]) - float(scores[0, 8])) > 1e-4
  # With cold_id="keep" the untrained id embedding is part of the cold item's vector.
  gk, pk, ck = toy_model("sum", "keep", content=c)
  pk2 = jax.tree.map(lambda x: x, pk)
  pk2["item_repr"]["embedding"] = pk2["item_repr"]["embedding"].at[8].add(5.0)
  assert not np.allclose(np.asarray(table_of(gk, pk, ck))[8],
                         np.asarray(table_of(gk, pk2, ck))[8])


@pytest.mark.parametrize("cold_content_grad", [False, True])
def test_cold_items_as_negatives_train_content_only_when_asked(cold_content_grad):
  attrs = toy_content().attrs_VxA.copy()
  attrs[8] = [4, 0]  # attribute 4: carried by the cold item alone
  c = toy_content(attrs_VxA=attrs, num_attrs=5)
  graphdef, params, consts = toy_model("sum", content=c, cold_content_grad=cold_content_grad)
  batch = {"inputs_BxL": jnp.array([[1, 2, 3]]), "targets_BxL": jnp.array([[2, 3, 4]]),
           "mask_BxL": jnp.array([[True] * 3])}

  def loss(p):
    return steps.sequence_loss(nnx.merge(graphdef, p, consts), batch, None,
                               loss_config(kind="full"), None)

  grad_A = np.asarray(jax.grad(loss)(params)["item_repr"]["attributes"]["embedding"])
  assert np.abs(grad_A[1:4]).sum() > 0  # warm items' attributes always learn
  assert (np.abs(grad_A[4]).sum() > 0) == cold_content_grad


def test_gate_gives_cold_items_content_alone():
  graphdef, params, consts = toy_model("gate", "drop")
  table = np.asarray(table_of(graphdef, params, consts))
  gc, pc, cc = toy_model("content")
  content_params = {"item_repr": {k: v for k, v in params["item_repr"].items()
                                  if k in ("attributes", "title")}}
  merged, _, _ = content_model.load_matching(pc, content_params)
  np.testing.assert_allclose(table[8], np.asarray(table_of(gc, merged, cc))[8], atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "gate"])
def test_id_dropout_scores_dropped_items_by_content_alone(mode):
  """Dropped items' rows equal the content-only rows (as a cold item's); the rest keep their id;
  no key, no dropout; the step's mask is drawn once and reaches the input and output alike."""
  graphdef, params, consts = toy_model(mode, id_dropout=0.5)
  model = nnx.merge(graphdef, params, consts)
  assert model.id_keep_mask(None) is None
  keep_V = np.array(model.id_keep_mask(jax.random.PRNGKey(3)))
  keep_V[8] = True  # the cold item is content-only anyway; look at warm items
  assert 0 < (~keep_V[1:8]).sum() < 7
  table = np.asarray(model.item_table(jnp.asarray(keep_V)))
  full = np.asarray(nnx.merge(graphdef, params, consts).item_table())
  cold_like = np.asarray(model.item_repr.table(jnp.zeros(V, bool)))
  dropped = np.flatnonzero(~keep_V)
  np.testing.assert_allclose(table[dropped], cold_like[dropped], atol=1e-6)
  np.testing.assert_allclose(table[keep_V], full[keep_V], atol=1e-6)
  assert not np.allclose(table[dropped], full[dropped])
  # In the training step the same mask serves the inputs and the output table.
  batch = {"inputs_BxL": jnp.array([[1, 2, 3, 4, 0]]), "targets_BxL": jnp.array([[2, 3, 4, 5, 0]]),
           "mask_BxL": jnp.array([[True] * 4 + [False]])}
  loss = steps.sequence_loss(model, batch, jax.random.PRNGKey(3), loss_config(kind="full"), None)
  assert np.isfinite(float(loss))
  with pytest.raises(ValueError, match="id_dropout"):
    model_config(V, id_dropout=0.3)  # id-only: nothing to drop to


def test_content_arrays_are_constants_not_parameters():
  graphdef, params, consts = toy_model("sum")
  const_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(consts)}
  assert const_paths == {"['item_repr']['attributes']['attrs_VxA']",
                         "['item_repr']['known_V']", "['item_repr']['title']['tokens_VxT']"}
  model = nnx.merge(graphdef, params, consts)
  assert isinstance(model.item_repr.known_V, content_model.ContentConst)
  assert not isinstance(model.item_repr.known_V, nnx.Param)


def test_content_tower_runs_once_per_step():
  """One title-LSTM scan forward and one backward per loss+grad: the step computes the item table
  once and passes it to the lookup and the loss (no cache)."""
  graphdef, params, consts = toy_model("sum")
  t = toy_content().tokens_VxT.shape[1]
  batch = {"inputs_BxL": jnp.array([[1, 2, 3, 4, 0]]), "targets_BxL": jnp.array([[2, 3, 4, 5, 0]]),
           "mask_BxL": jnp.array([[True] * 4 + [False]])}

  def loss(p):
    return steps.sequence_loss(nnx.merge(graphdef, p, consts), batch, None,
                               loss_config(kind="full"), None)

  jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(params)

  def scans(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "scan":
        yield eqn.params["length"]
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
          if hasattr(sub, "eqns"):
            yield from scans(sub)

  lengths = list(scans(jaxpr.jaxpr))
  assert lengths.count(t) == 2, lengths  # title LSTM: forward + backward
  assert lengths.count(5) == 2, lengths  # user LSTM: forward + backward


def test_mode_switches_keep_parameters_loadable():
  """id -> sum / gate: the id table and the LSTM load; sum -> gate: everything but the gate."""
  _, id_params, _ = toy_model("id")
  _, sum_params, _ = toy_model("sum", seed=1)
  gate_def, gate_params, gate_consts = toy_model("gate", seed=2)
  loaded, copied, kept = content_model.load_matching(sum_params, id_params)
  assert "item_repr/embedding" in copied and "encoder/layers/0/w_ih" in copied
  assert all(k.startswith(("item_repr/attributes", "item_repr/title")) for k in kept), kept
  np.testing.assert_array_equal(loaded["item_repr"]["embedding"],
                                id_params["item_repr"]["embedding"])
  g_loaded, copied, kept = content_model.load_matching(gate_params, sum_params)
  assert sorted(kept) == ["item_repr/gate/bias", "item_repr/gate/kernel"]
  table = np.asarray(table_of(gate_def, g_loaded, gate_consts))
  assert np.isfinite(table).all()
  # The id-only model's tree is unchanged by this feature (old checkpoints still load).
  assert set(id_params["item_repr"]) == {"embedding"}


def test_config_validates_item_modes():
  with pytest.raises(ValueError, match="item_mode"):
    model_config(V, item_mode="concat")
  with pytest.raises(ValueError, match="cold_id"):
    model_config(V, cold_id="zero")
  with pytest.raises(ValueError, match="needs item content"):
    SeqRecModel(model_config(V, item_mode="sum"), rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------- cold split


@pytest.fixture(scope="module")
def synthetic_dataset():
  return data_lib.build_dataset(data_lib.synthetic_log(num_users=300, num_items=80, seed=3))


def test_cold_split_removes_cold_items_from_training(synthetic_dataset):
  ds = content_data.cold_item_split(synthetic_dataset, fraction=0.1, seed=0)
  cold = content_data.cold_items(ds)
  assert len(cold) == 8 and ds.stats["cold_removed_train_events"] > 0
  assert not np.isin(ds.train.items_N, cold).any()
  assert not ds.item_counts_V[cold].any()
  np.testing.assert_array_equal(ds.item_counts_V,
                                np.bincount(ds.train.items_N, minlength=ds.num_items))
  batches = pipeline.TrainBatches(ds.train, batch_size=8, max_len=16, seed=0, pack=True)
  for epoch in range(2):
    for batch in batches.epoch(epoch):
      assert not np.isin(batch["inputs_BxL"], cold).any()
      assert not np.isin(batch["targets_BxL"], cold).any()
  # Cold items stay evaluation targets; histories keep only their non-training part.
  assert np.isin(ds.test.targets_U, cold).any()
  for split in (ds.valid, ds.test):
    for x in range(len(split)):
      u = split.users_U[x]
      np.testing.assert_array_equal(split.history[x][:len(ds.train[u])], ds.train[u])
  np.testing.assert_array_equal(ds.valid.targets_U, synthetic_dataset.valid.targets_U)


def test_cold_split_is_deterministic_per_seed(synthetic_dataset):
  a = content_data.cold_item_split(synthetic_dataset, fraction=0.1, seed=5)
  b = content_data.cold_item_split(synthetic_dataset, fraction=0.1, seed=5)
  c = content_data.cold_item_split(synthetic_dataset, fraction=0.1, seed=6)
  np.testing.assert_array_equal(content_data.cold_items(a), content_data.cold_items(b))
  np.testing.assert_array_equal(a.train.items_N, b.train.items_N)
  np.testing.assert_array_equal(a.test.history.items_N, b.test.history.items_N)
  assert not np.array_equal(content_data.cold_items(a), content_data.cold_items(c))


def test_ml100k_cold_split_has_no_leak(shared_data):
  ds = data_lib.load_dataset(data_config(format="movielens", path=str(shared_data / "ml-100k")))
  cold_ds = content_data.cold_item_split(ds, fraction=0.1, seed=0)
  cold = content_data.cold_items(cold_ds)
  assert len(cold) == 168
  assert not np.isin(cold_ds.train.items_N, cold).any() and not cold_ds.item_counts_V[cold].any()
  assert cold_ds.stats["cold_test_targets"] > 0
  c = content_data.item_content(cold_ds)
  assert c.tokens_VxT is not None and c.attrs_VxA is not None
  assert not c.known_V[cold].any()


# ----------------------------------------------------------------------------- evaluation


def test_content_popularity_baseline_and_random_metrics():
  scores = cold_start.content_popularity_scores(
      np.array([0, 4, 2, 0]), np.array([[0], [1], [2], [1]]), np.array([False, True, True, False]))
  np.testing.assert_allclose(scores, [3, 4, 2, 4])
  rand = cold_start.random_metrics(np.array([20, 20]))
  assert rand["HR@10"] == pytest.approx(0.5) and rand["HR@20"] == pytest.approx(1.0)
  # Exact against a brute-force average over every rank.
  ranks = np.arange(20)
  brute = metrics.metrics_from_ranks(ranks)
  assert rand["NDCG@10"] == pytest.approx(brute["NDCG@10"])


def test_user_with_empty_history_gets_popularity():
  """One fallback, one rank step (scoring.steps) for the cold-start report and the evaluation.

  With an item bias, a user without history is ranked by popularity alone (the bias belongs to
  the model's score of a user it knows); the cold-start report's old copy of the step added the
  bias to the popularity of such users and ranked them otherwise than eval.py and the server.
  """
  graphdef, params, consts = toy_model("sum", item_bias=True)
  params["bias"] = jnp.asarray(np.linspace(3.0, -3.0, V), jnp.float32)  # favours low ids
  counts = np.array([0, 9, 1, 7, 3, 2, 8, 5, 0])
  history = Sequences.from_lists([[], [1, 2]])
  split = EvalSplit(np.array([0, 1], np.int32), history, np.array([3, 4], np.int32))
  batch = next(pipeline.eval_batches(split, batch_size=2, max_len=4))
  batch = {k: jnp.asarray(batch[k]) for k in ("inputs_BxL", "mask_BxL", "targets_B", "seen_BxS")}
  # Without counts the step does not fail on an empty history (the state is zero: only the
  # bias separates items), but ranks by the bias, not by popularity.
  plain = scoring.eval_step(params, consts, batch, graphdef=graphdef, exclude_seen=True,
                            chunk_size=4)
  ranks = scoring.eval_step(params, consts, batch, jnp.asarray(counts), graphdef=graphdef,
                            exclude_seen=True, chunk_size=4)
  assert int(ranks[0]) == 2  # items 1 (9) and 6 (8) are more popular than item 3 (7)
  assert int(ranks[1]) == int(plain[1])  # users with history are ranked exactly as before
  # Restricted to a candidate set (the cold-start report's "cold only" ranking): the same rule.
  only_V = jnp.where(jnp.arange(V) % 2 == 1, 0.0, -jnp.inf)  # odd ids: 1, 3, 5, 7
  ranks = scoring.eval_step(params, consts, batch, jnp.asarray(counts), only_V,
                            graphdef=graphdef, exclude_seen=True, chunk_size=4)
  assert int(ranks[0]) == 1  # only item 1 (9) is ahead of item 3 (7) among the odd ids
  ids, scores = scoring.topk_step(params, consts, batch, jnp.asarray(counts),
                                  graphdef=graphdef, k=3, exclude_seen=True, chunk_size=4)
  assert np.asarray(ids)[0].tolist() == [1, 6, 3]
  assert np.isfinite(np.asarray(scores)).all()


def test_cold_start_report_ranks_through_the_shared_step(monkeypatch):
  """The cold-start report compiles its rankings with `scoring.steps.compile_rank_fn`."""
  built = []
  real = scoring.compile_rank_fn

  def spy(*args, **kwargs):
    built.append(kwargs.get("extra_bias_V") is not None)
    return real(*args, **kwargs)

  monkeypatch.setattr(scoring, "compile_rank_fn", spy)
  dataset = content_data.cold_item_split(
      data_lib.build_dataset(data_lib.synthetic_log(num_users=60, num_items=30, seed=1,
                                                    num_clusters=5), cache_dir=None),
      fraction=0.2, seed=0)
  model_cfg = model_config(int(dataset.num_items), embed_dim=8, hidden_size=8, lstm_impl="xla")
  graphdef, params, consts = model_lib.create_model(model_cfg, 0)
  cold_start.evaluate_cold_start(graphdef, params, consts, dataset, mesh=mesh_lib.make_mesh(1),
                                 batch_size=16, max_len=8, splits=("test",))
  assert built == [False, True]  # all items, then the cold candidates only


def tiny_config(tmp_path, mode):
  return helpers.tiny_config(tmp_path, **{
      "model.title_embed_dim": 8, "model.title_hidden_size": 8, "model.item_mode": mode,
      "cold_start.item_fraction": 0.1, "num_epochs": 1, "log_every_steps": 5})


def test_train_and_cold_start_report_end_to_end(tmp_path):
  """A tiny hybrid run on the cold split trains, checkpoints, evaluates and reports."""
  workdir = tmp_path / "sum"
  report = loop.train_and_evaluate(tiny_config(tmp_path, "sum"), workdir)
  assert np.isfinite(report["splits"]["test"]["model"]["overall"]["NDCG@10"])
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["item_mode"] == "sum" and saved["cold_start"]["item_fraction"] == 0.1
  cold = workdir_lib.evaluate_cold_start(workdir)
  test = cold["splits"]["test"]
  assert cold["cold_items"] == 8 and test["cold_targets"] > 0
  assert test["model"]["cold_candidates"]["users"] == test["cold_targets"]
  assert test["model"]["all_items"]["all"]["users"] == test["users"]
  # The same model through the standard evaluation gives the same overall ranks (no user here
  # has an empty history, so the popularity fallback never fires).
  again = workdir_lib.evaluate_checkpoint(workdir)
  assert again["splits"]["test"]["model"]["overall"]["NDCG@10"] == pytest.approx(
      test["model"]["all_items"]["all"]["NDCG@10"])
  table = cold_start.format_table({"sum": cold})
  assert "content_popularity" in table and "sum" in table


@pytest.mark.parametrize("mode,kind,extra", [
    ("sum", "sampled", {}), ("gate", "bpr", {}), ("content", "sampled", {}),
    ("sum", "sampled", {"id_dropout": 0.5}), ("gate", "sampled", {"id_dropout": 0.5}),
    ("sum", "bce", {"cold_content_grad": False}), ("sum", "sampled", {"cold_id": "keep"}),
    ("sum", "sampled", {"neighbors": True}), ("content", "bpr", {"neighbors": True})])
def test_sampled_losses_compute_content_at_the_rows_they_read(monkeypatch, mode, kind, extra):
  """A sampled loss reads the table at the inputs, targets and its negatives only: the step
  computes the item vectors there only (`model.item_tables(rows=...)`), with the loss and every
  gradient of the whole-table computation (id dropout, the cold item 8 and its masks too)."""
  extra = dict(extra)
  content = toy_content(neighbors_VxK=NEIGHBORS_VxK) if extra.pop("neighbors", False) else None
  graphdef, params, consts = toy_model(mode, cold_id=extra.pop("cold_id", "drop"),
                                       content=content, **extra)
  cfg = loss_config(kind=kind, num_negatives=5)
  log_q_V = losses_lib.popularity_log_q(jnp.arange(V, dtype=jnp.float32), cfg.alpha)
  inputs = jnp.array([[1, 2, 3, 0], [4, 8, 1, 6]])  # 8: the cold item (no training event)
  batch = {"inputs_BxL": inputs, "mask_BxL": inputs > 0, "resets_BxL": jnp.zeros_like(inputs, bool),
           "targets_BxL": jnp.array([[2, 3, 7, 0], [8, 1, 6, 3]])}
  key = jax.random.key(3)

  def loss_of(p):
    model = nnx.merge(graphdef, p, consts)
    return steps.sequence_loss(model, batch, key, cfg, log_q_V)

  seen = []
  real = steps._rows_read  # pylint: disable=protected-access

  def spy(*args):
    rows = real(*args)
    seen.append(rows is not None)
    return rows

  monkeypatch.setattr(steps, "_rows_read", spy)
  loss, grads = jax.value_and_grad(loss_of)(params)
  monkeypatch.setattr(steps, "_rows_read", lambda *a: None)
  want, want_grads = jax.value_and_grad(loss_of)(params)
  assert seen == [True]  # the rows path ran
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  # Attribute and title towers received gradient (the test would pass vacuously otherwise).
  content_grads = [g for path, g in jax.tree_util.tree_leaves_with_path(grads)
                   if "attributes" in jax.tree_util.keystr(path)]
  assert content_grads and any(np.abs(g).sum() > 0 for g in content_grads)
