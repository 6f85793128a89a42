"""Serving a multi-domain model: recommend(domain=...) equals the evaluation path, streaming
states answer for every domain, bundles carry the domain map, the server takes a domain."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from helpers import tiny_config
from lstmrec_jax import data
from lstmrec_jax import run as run_lib
from lstmrec_jax.scoring import steps
from lstmrec_jax.serving import bundle as bundle_lib
from lstmrec_jax.serving.recommender import Recommender

SYNTHETIC = {"num_users": 120, "num_items": 60, "seed": 5, "num_domains": 2}


def _run(tmp_path, encoder):
  c = tiny_config(tmp_path, **{"model.encoder": encoder, "loss.domain_softmax": True})
  c.data.synthetic = dict(SYNTHETIC)
  return run_lib.build_run(run_lib.spec_from_config(c), num_devices=1)


@pytest.fixture(scope="module", params=["xd_lstm", "lstm"])
def served(request, tmp_path_factory):
  run = _run(tmp_path_factory.mktemp(request.param), request.param)
  # random parameters are enough: both paths must give the same lists for any parameters
  rec = Recommender(bundle_lib.from_run(run, run.params))
  return run, rec


def _eval_topk(run, k, rows):
  """The evaluation path: scoring.steps.topk_step on test batches, each row in its domain."""
  ds = run.dataset
  fn = jax.jit(functools.partial(steps.topk_step, graphdef=run.graphdef, k=k, exclude_seen=True,
                                 chunk_size=64))
  batch = next(iter(data.eval_batches(ds.test.select(rows), batch_size=len(rows), max_len=64)))
  inputs = {key: batch[key] for key in ("inputs_BxL", "mask_BxL", "targets_B", "seen_BxS",
                                        "domains_B")}
  ids, scores = fn(run.params, run.consts, inputs, ds.item_counts_V, None, ds.item_domains_V)
  return np.asarray(ids), np.asarray(scores)


def test_recommend_with_a_domain_equals_the_evaluation_path(served):
  run, rec = served
  ds = run.dataset
  rows = np.arange(6)
  ids, scores = _eval_topk(run, 10, rows)
  for r, row in enumerate(rows):
    history = [ds.item_keys[i] for i in ds.test.history[row]]
    name = ds.domain_names[ds.test.domains_U[row]]
    got = rec.recommend(history, k=10, domain=name)
    assert got.items == [ds.item_keys[i] for i in ids[r]]
    np.testing.assert_allclose([s for _, s in got], scores[r], rtol=1e-5, atol=1e-5)
    assert all(ds.item_domains_V[rec.item_id(i)] == ds.test.domains_U[row] for i in got.items)
    # the same by index, and by the streaming path: one state answers for every domain
    assert rec.recommend(history, k=10, domain=int(ds.test.domains_U[row])).items == got.items
    state = rec.start(history)
    assert rec.top_k(state, k=10, domain=name).items == got.items
    other = ds.domain_names[1 - ds.test.domains_U[row]]
    assert all(ds.item_domains_V[rec.item_id(i)] != ds.test.domains_U[row]
               for i in rec.top_k(state, k=10, domain=other).items)


def test_domain_errors(served):
  run, rec = served
  history = [run.dataset.item_keys[1]]
  with pytest.raises(ValueError, match="unknown domain 'Toys'; the domains are d0, d1"):
    rec.recommend(history, domain="Toys")
  if rec.cross_domain:
    with pytest.raises(ValueError, match="cross-domain: name the domain"):
      rec.recommend(history)
  else:  # without a domain: the whole catalogue
    assert len(rec.recommend(history, k=40)) == 40


def test_bundle_carries_the_domain_map(served, tmp_path):
  run, rec = served
  saved = bundle_lib.save(rec.bundle, tmp_path / "b", export_functions=rec.cross_domain)
  loaded = Recommender.load(saved)
  assert loaded.domain_names == ("d0", "d1")
  np.testing.assert_array_equal(loaded.item_domains_V, run.dataset.item_domains_V)
  history = [run.dataset.item_keys[i] for i in run.dataset.test.history[0]]
  for name in ("d0", "d1"):
    assert loaded.recommend(history, k=5, domain=name).items == rec.recommend(
        history, k=5, domain=name).items
  if rec.cross_domain:  # the exported top_k takes the prepared tables and each row's domain
    prepare, exported = (jax.export.deserialize((saved / name).read_bytes())
                         for name in ("prepare.jax", "top_k.jax"))
    tables = prepare.call(dict(np.load(saved / "params.npz")))  # bundle format 2
    state = loaded.start(history).vector_S[None]
    for d, name in enumerate(("d0", "d1")):
      ids, _ = exported.call(tables, state, np.zeros((1, 8), np.int32), np.array([d], np.int32))
      assert [loaded.item_keys[int(i)] for i in np.asarray(ids)[0][:5]] == loaded.top_k(
          loaded.start(history), k=5, domain=name, exclude_seen=False).items


def test_server_recommend_takes_a_domain(served):
  from starlette.testclient import TestClient  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import server as server_lib
  from lstmrec_jax.serving import store as store_lib
  run, rec = served
  config = server_lib.ServerConfig(max_batch=4, max_wait_ms=5, max_k=20, max_history=64,
                                   max_exclude=16, max_allow=16, max_events=16)
  service = server_lib.Service(rec, store_lib.MemoryStore(), config)
  history = [int(run.dataset.item_keys[i]) for i in run.dataset.test.history[1]]
  with TestClient(server_lib.create_app(service)) as client:
    for domain in ("d0", "d1", 1):
      want = rec.recommend(history, k=7, domain=domain).items
      got = client.post("/recommend", json={"history": history, "k": 7, "domain": domain})
      assert got.status_code == 200 and got.json()["items"] == want
    # streaming across domains: one user's stored events answer for either domain
    client.post("/events", json={"user_id": "u", "items": history})
    for domain in ("d0", "d1"):
      by_user = client.post("/recommend", json={"user_id": "u", "k": 7, "domain": domain})
      assert by_user.json()["items"] == rec.recommend(history, k=7, domain=domain).items
    allow = [int(run.dataset.item_keys[i]) for i in range(1, 15)]
    got = client.post("/recommend", json={"history": history, "k": 5, "allow": allow,
                                          "domain": "d1"}).json()
    assert got["items"] == rec.recommend(history, k=5, allow=allow, domain="d1").items
    bad = client.post("/recommend", json={"history": history, "domain": "Toys"})
    assert bad.status_code == 422 and "unknown domain 'Toys'" in bad.json()["error"]
    if rec.cross_domain:
      missing = client.post("/recommend", json={"history": history})
      assert missing.status_code == 422 and "name the domain" in missing.json()["error"]
