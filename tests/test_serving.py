"""Serving: streaming equals re-encoding, the popularity fallback, the bundle and its jax.export."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from helpers import forward, tiny_config
from lstmrec_jax import run as run_lib
from lstmrec_jax.serving import bundle as bundle_lib
from lstmrec_jax.scoring import streaming as fns
from lstmrec_jax.serving.recommender import Recommender
from lstmrec_jax.scoring import steps as scoring

REPO = pathlib.Path(__file__).resolve().parent.parent


def _recommender(tmp_path, **overrides) -> tuple[Recommender, run_lib.Run]:
  """A Recommender over a tiny synthetic run's initial (random) parameters: no training."""
  spec = run_lib.spec_from_config(tiny_config(tmp_path, **overrides))
  run = run_lib.build_run(spec, num_devices=1)
  # Random parameters give scores of order 1 and spread: a sharper test than a trained model.
  return Recommender(bundle_lib.from_run(run, run.params)), run


def _scores(rec: Recommender, user_BxE, count_B) -> np.ndarray:
  """Every item's score (fallback table) for user vectors."""
  user_BxF = scoring.fallback_user(jnp.asarray(user_BxE), jnp.asarray(count_B) > 0)
  return np.asarray(user_BxF @ rec.tables.fallback_VxF.T)


@pytest.mark.parametrize("overrides", [
    {"model.num_layers": 1},
    {"model.num_layers": 2, "model.layer_norm": True},
    {"model.num_layers": 2, "model.layer_norm": True, "model.item_mode": "sum"},
    {"model.num_layers": 2, "model.encoder": "gru", "model.hidden_size": 24},
], ids=["lstm1", "lstm2_ln", "lstm2_ln_hybrid", "gru2_proj"])
def test_streaming_equals_full_re_encode(tmp_path, overrides):
  rec, _ = _recommender(tmp_path, **overrides)
  rng = np.random.default_rng(0)
  histories = [list(rng.integers(1, rec.num_items, n)) for n in (1, 3, 17, 40)]
  # Full re-encode: the training / evaluation path, one model pass over each whole history.
  user_BxE, count_B = rec.encode_ids(histories)
  # Streaming: observe one event at a time, users batched together, uneven lengths.
  states = np.stack([rec.empty_state().vector_S] * len(histories))
  for t in range(max(map(len, histories))):
    states = rec.observe_ids(states, [[h[t]] if t < len(h) else [] for h in histories])
  s_user, s_count = fns.user_of(rec.layout, states)
  np.testing.assert_array_equal(np.asarray(s_count), count_B)
  want, got = _scores(rec, user_BxE, count_B), _scores(rec, s_user, s_count)
  np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=1e-5, atol=1e-5 * np.abs(want).max())
  # And the top-k through the public calls agrees.
  keys = [[rec.item_keys[i] for i in h] for h in histories]
  streamed = [rec.top_k(rec.start(h), k=5) for h in keys]
  assert [r.items for r in streamed] == [r.items for r in rec.recommend_batch(keys, k=5)]


def test_transformer_streams_by_re_encoding_its_window(tmp_path):
  rec, _ = _recommender(tmp_path, **{"model.encoder": "transformer", "model.num_heads": 2})
  assert not rec.streams
  history = list(rec.item_keys[1:30])  # longer than max_len = 16: the last 16 count
  state = rec.start()
  for item in history:
    state = rec.observe(state, item)
  assert rec.top_k(state, k=5).items == rec.recommend(history, k=5).items
  assert rec.recommend(history, k=5).items == rec.recommend(history[-16:], k=5,
                                                            exclude=history[:-16]).items


def test_unknown_items_are_skipped_and_counted_and_empty_gets_popularity(tmp_path):
  rec, run = _recommender(tmp_path)
  known = list(rec.item_keys[1:4])
  mixed = rec.recommend(["nope", known[0], "x", known[1], known[2]], k=10)
  assert mixed.unknown == 2 and not mixed.fallback
  assert mixed == rec.recommend(known, k=10)
  state = rec.observe(rec.start(), "nope")
  assert state.unknown == 1 and state.events == 0
  for empty in ([], ["nope", "also-unknown"]):
    r = rec.recommend(empty, k=10)
    assert r.fallback
    counts = run.dataset.item_counts_V
    order = sorted(range(1, rec.num_items), key=lambda i: -counts[i])
    assert [counts[rec.item_id(x)] for x in r.items] == [counts[i] for i in order[:10]]
  assert rec.top_k(rec.start(), k=10).items == rec.recommend([], k=10).items


def test_exclusions_allow_and_k(tmp_path):
  rec, _ = _recommender(tmp_path)
  history = list(rec.item_keys[1:6])
  assert not set(rec.recommend(history, k=20).items) & set(history)
  kept = rec.recommend(history, k=rec.num_items - 1, exclude_seen=False)
  assert set(history) <= set(kept.items)
  top = rec.recommend(history, k=3)
  without = rec.recommend(history, k=3, exclude=[top.items[0]])
  assert without.items[:2] == top.items[1:]
  allowed = list(rec.item_keys[20:30]) + history
  got = rec.recommend(history, k=4, allow=allowed)
  assert set(got.items) <= set(rec.item_keys[20:30]) and len(got) == 4
  full = rec.recommend(history, k=rec.num_items - 1)
  assert got.items == [x for x in full.items if x in set(allowed)][:4]
  for bad in (0, -1, rec.num_items, 2.5):
    with pytest.raises(ValueError, match="must be an integer in"):
      rec.recommend(history, k=bad)


def test_eval_step_ranks_empty_histories_by_popularity(tmp_path):
  """The evaluation's fallback is the serving one: an empty history no longer ties everything."""
  rec, run = _recommender(tmp_path)
  counts = run.dataset.item_counts_V
  target = int(np.argsort(-counts)[0])  # the most popular item
  batch = {"inputs_BxL": jnp.zeros((2, 4), jnp.int32), "mask_BxL": jnp.zeros((2, 4), bool),
           "targets_B": jnp.array([target, target], jnp.int32),
           "seen_BxS": jnp.zeros((2, 8), jnp.int32)}
  tied = scoring.eval_step(run.params, run.consts, batch, graphdef=run.graphdef,
                           exclude_seen=True, chunk_size=64)
  fallback = scoring.eval_step(run.params, run.consts, batch, jnp.asarray(counts),
                               graphdef=run.graphdef, exclude_seen=True, chunk_size=64)
  assert int(tied[0]) == rec.num_items - 2  # every other item ties and counts against it
  assert int(fallback[0]) == int((counts[1:] >= counts[target]).sum()) - 1


@pytest.mark.parametrize("overrides", [
    {}, {"model.item_neighbors": 3, "model.neighbor_weight": 0.5},
    {"model.item_mode": "id", "model.item_neighbors": 3}],
    ids=["hybrid", "neighbors", "id_neighbors"])
def test_bundle_loads_without_the_training_data(tmp_path, overrides):
  """The data-derived arrays (content, co-occurrence neighbours) travel in the bundle: the
  loaded model ranks as the run's does."""
  rec, run = _recommender(tmp_path, **{"model.item_mode": "sum", "model.num_layers": 2,
                                       **overrides})
  history = list(rec.item_keys[3:12])
  want = rec.recommend(history, k=10)
  # The run's own model ranks these items the same (the bundle built from the run's arrays).
  model = nnx.merge(run.graphdef, run.params, run.consts)
  ids = jnp.asarray([[rec.item_id(x) for x in history]])
  user = forward(model, ids, ids > 0)[0, -1]
  scores = np.array(model.score(user))
  scores[[rec.item_id(x) for x in history]] = -np.inf
  assert [rec.item_id(x) for x in want.items] == list(np.argsort(-scores, kind="stable")[:10])
  if "model.item_neighbors" in overrides:
    assert rec.bundle.content["neighbors_VxK"].shape == (rec.num_items, 3)
  out = bundle_lib.save(rec.bundle, tmp_path / "bundle")
  shutil.rmtree(tmp_path / "cache")  # the synthetic data's only copy on disk
  loaded = Recommender.load(out)
  assert loaded.recommend(history, k=10) == want
  assert loaded.metadata()["dataset"]["fingerprint"] == rec.metadata()["dataset"]["fingerprint"]


def test_exported_functions_run_without_the_project(tmp_path):
  """observe / top_k from jax.export in a fresh process that can import jax and numpy only."""
  rec, _ = _recommender(tmp_path, **{"model.num_layers": 2, "model.layer_norm": True})
  out = bundle_lib.save(rec.bundle, tmp_path / "bundle", export_k=10)
  histories = [list(rec.item_keys[3:12]), list(rec.item_keys[30:33]), []]
  want = [rec.recommend(h, k=10).items for h in histories]
  ids = [[rec.item_id(x) for x in h] for h in histories]
  # Only the folder that holds jax and numpy (and their own dependencies) is on the path: `-S`
  # skips site's .pth hooks, so a `pip install -e .` of this project (as .ci/run does) cannot
  # make it importable there.
  site_dir = os.path.dirname(os.path.dirname(jax.__file__))
  script = textwrap.dedent(f"""
      import sys
      sys.path.append({site_dir!r})
      import importlib.util, json
      import jax, numpy as np
      assert importlib.util.find_spec("lstmrec_jax") is None, "the project is importable"
      d = {str(out)!r}
      load = lambda name: jax.export.deserialize(open(d + "/" + name, "rb").read())
      prepare, observe, top_k = load("prepare.jax"), load("observe.jax"), load("top_k.jax")
      meta = json.load(open(d + "/bundle.json"))
      keys = json.load(open(d + "/items.json"))
      tables = prepare.call(dict(np.load(d + "/params.npz")))  # the parameters' only copy
      ids = {ids!r}
      state = np.zeros((len(ids), meta["exported"]["state_size"]), np.float32)
      for t in range(max(map(len, ids))):
        step = np.array([h[t] if t < len(h) else 0 for h in ids], np.int32)
        state = observe.call(tables, state, step)
      seen = np.zeros((len(ids), 16), np.int32)
      for r, h in enumerate(ids):
        seen[r, :len(h)] = h
      top, _ = top_k.call(tables, state, seen)
      print(json.dumps([[keys[int(i)] for i in row] for row in np.asarray(top)]))
  """)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  # -I: no PYTHONPATH, no user site, no script or working folder on the path; -S: no site.
  proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == want
  # The parameters are stored once (params.npz): the exported functions hold none of them.
  largest = max(rec.bundle.params.values(), key=lambda a: a.size)
  for name in ("prepare.jax", "observe.jax", "top_k.jax"):
    assert largest.tobytes()[:4096] not in (out / name).read_bytes(), name


def test_topk_out_ranks_from_the_whole_history(tmp_path):
  from lstmrec_jax.evaluation import ranking  # pylint: disable=g-import-not-at-top
  rec, run = _recommender(tmp_path)
  path = tmp_path / "top.tsv"
  n = ranking.write_topk(path, run.graphdef, run.params, run.consts, run.dataset, k=5,
                         mesh=run.mesh, batch_size=64, max_len=16, chunk_size=64, streams=True)
  whole = ranking.whole_histories(run.dataset)
  assert n == run.dataset.num_users
  lines = path.read_text().splitlines()
  keys = {str(k): k for k in rec.item_keys[1:]}
  for u in (0, 7, run.dataset.num_users - 1):
    user, items = lines[u].split("\t")
    history = [rec.item_keys[i] for i in whole.history[u]]
    assert len(whole.history[u]) == (len(run.dataset.train[u]) + 2)  # train + valid + test
    assert not {keys[x] for x in items.split(",")} & set(history)  # nothing already seen
    assert [str(x) for x in rec.recommend(history, k=5).items] == items.split(",")
    assert user == str(run.dataset.user_keys[u])


def _readme_snippet() -> str:
  text = (REPO / "README.md").read_text()
  m = re.search(r"<!-- serving-snippet -->\s*```python\n(.*?)```", text, re.S)
  assert m, "README.md lost its serving snippet (the block after <!-- serving-snippet -->)"
  return m.group(1)


def test_readme_snippet_prints_a_users_top10(tmp_path):
  """The README's snippet, run after a (tiny) `python train.py`, prints 10 raw item ids."""
  from lstmrec_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "runs" / "default"
  loop.train_and_evaluate(tiny_config(tmp_path, num_epochs=1), str(workdir))
  proc = subprocess.run([sys.executable, "-c", _readme_snippet()], cwd=tmp_path,
                        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout.strip().splitlines()
  top10 = [line for line in out if line.startswith("top 10:")]
  assert top10 and len(top10[0].split(":", 1)[1].split()) == 10, out


def test_items_with_content_but_no_training_events_are_scored_by_their_content(tmp_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from helpers import forward  # pylint: disable=g-import-not-at-top
  rec, run = _recommender(tmp_path, **{"model.item_mode": "sum",
                                       "cold_start.item_fraction": 0.25})
  cold = [i for i in range(1, rec.num_items) if rec.bundle.popularity_V[i] == 0]
  assert len(cold) >= 5, "the cold split left no item without training events"
  history = [rec.item_keys[i] for i in range(1, 6) if i not in cold][:4]
  got = rec.recommend(history, k=len(cold), allow=[rec.item_keys[i] for i in cold])
  # Every cold item is ranked, with a finite score...
  assert sorted(rec.item_id(x) for x in got.items) == cold and not got.fallback
  # ...which is the model's own score: id part dropped (model.cold_id = "drop"), content only.
  model = nnx.merge(run.graphdef, run.params, run.consts)
  ids = jnp.asarray([[rec.item_id(x) for x in history]])
  want = np.asarray(model.score(forward(model, ids, ids > 0)[:, -1]))[0]
  for item, score in got:
    np.testing.assert_allclose(score, want[rec.item_id(item)], rtol=1e-5, atol=1e-6)
  assert len({round(s, 6) for _, s in got}) > 1  # content tells the cold items apart


def test_format_1_bundles_still_load_and_unfinished_exports_do_not(tmp_path, caplog):
  """A bundle exported before checksums (format 1) loads with a warning; a format-2 folder
  without checksums.json (an export that did not finish) is refused in one line. Model keys
  added since (model.recurrent_weight_dropout, model.locked_dropout) take the value the old
  model had."""
  import json  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.errors import CheckpointError  # pylint: disable=g-import-not-at-top
  rec, _ = _recommender(tmp_path)
  history = list(rec.item_keys[3:9])
  out = bundle_lib.save(rec.bundle, tmp_path / "bundle", export_functions=False)
  (out / "checksums.json").unlink()
  with pytest.raises(CheckpointError, match="did not finish"):
    Recommender.load(out)
  meta = json.loads((out / "bundle.json").read_text())
  added = ("recurrent_weight_dropout", "locked_dropout")
  old_model = {k: v for k, v in meta["model"].items() if k not in added}
  assert len(old_model) == len(meta["model"]) - len(added)
  (out / "bundle.json").write_text(json.dumps({**meta, "format_version": 1, "model": old_model}))
  caplog.set_level("WARNING")
  assert Recommender.load(out).recommend(history, k=5) == rec.recommend(history, k=5)
  assert "no checksums" in caplog.text
