"""docs/extending.md's example encoder, run from the document: registered, built by name, trained.

Shape legend: B batch, L history length, E embedding size, V catalog size.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import loss_config, model_config, optim_config
from lstmrec_jax.model import ENCODERS
from lstmrec_jax import optim
from lstmrec_jax import model as model_lib  # noqa: E402
from lstmrec_jax.train import steps

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "extending.md"
V, L = 30, 6


@pytest.fixture
def mean_pool():
  """Runs the doc's ```python block (it registers "mean_pool"); unregisters it afterwards."""
  blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
  assert len(blocks) == 1, "docs/extending.md should hold exactly one ```python example"
  namespace = {"__name__": "extending_example"}
  exec(compile(blocks[0], str(DOC), "exec"), namespace)  # pylint: disable=exec-used
  try:
    yield namespace["MeanPoolEncoder"]
  finally:
    ENCODERS.unregister("mean_pool")


def _cfg(**overrides):
  return model_config(V, max_len=L, encoder="mean_pool", embed_dim=8, hidden_size=12,
                      lstm_impl="xla", **overrides)


def test_example_encoder_registers_and_behaves(mean_pool):
  assert ENCODERS.get("mean_pool") is mean_pool
  from flax import nnx  # pylint: disable=g-import-not-at-top
  enc = mean_pool(_cfg(), 8, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, L, 8))
  resets = jnp.zeros((1, L), bool).at[0, 2].set(True)
  mask = jnp.ones((1, L), bool)
  out = enc(x, mask, resets, dropout_key=None)
  # Position 3 is the second item of the history that starts at 2: the mean of x[2] and x[3].
  np.testing.assert_allclose(out[0, 3], jnp.tanh(enc.proj((x[0, 2] + x[0, 3]) / 2)), atol=1e-6)
  # Streaming over the second history alone gives the same states.
  state = enc.initial_state(1)
  for t in range(2, L):
    state, h = enc.step(state, x[:, t], mask[:, t])
    np.testing.assert_allclose(h[0], out[0, t], atol=1e-5)


def test_example_encoder_trains_by_name(mean_pool):
  del mean_pool
  graphdef, params, consts = model_lib.create_model(_cfg(ffn=True, layer_norm=True), 0)
  optim_cfg = optim_config(learning_rate=1e-2, warmup_steps=1, schedule="constant")
  tx = optim.make_optimizer(optim_cfg, 10)
  fn = jax.jit(functools.partial(steps.train_step, graphdef=graphdef, tx=tx,
                                 loss_cfg=loss_config(kind="full")))
  inputs = jax.random.randint(jax.random.key(1), (4, L), 1, V)
  mask = jnp.arange(L)[None, :] < jnp.array([[L], [3], [L], [5]])
  batch = {"inputs_BxL": jnp.where(mask, inputs, 0), "mask_BxL": mask,
           "targets_BxL": jnp.where(mask, jnp.roll(inputs, -1, axis=1), 0),
           "resets_BxL": jnp.zeros((4, L), bool)}
  state = optim.init_state(params, tx, 0)
  losses = []
  for _ in range(6):
    state, out = fn(state, batch, {"consts": consts, "log_q_V": None})
    losses.append(float(out["loss"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  assert "proj" in state.params["encoder"]


# The tiny synthetic run as command-line overrides of configs/default.py (seconds, not minutes).
TINY_FLAGS = ["--config.data.synthetic.num_users=120", "--config.data.synthetic.num_items=40",
              "--config.data.cache_dir=", "--config.input.max_len=12",
              "--config.input.batch_size=8", "--config.input.eval_batch_size=40",
              "--config.model.embed_dim=8", "--config.model.hidden_size=8",
              "--config.train.num_epochs=1", "--config.train.progress_bar=False",
              "--config.train.num_devices=1"]


def test_example_trains_through_train_py_by_name(tmp_path):
  """Must-show: the doc's encoder trains through train.py by name, eval.py finds it alone."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = DOC.parents[1]
  block = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
  plugin = tmp_path / "mean_pool.py"
  plugin.write_text(block)
  workdir = tmp_path / "run"
  train = subprocess.run(
      [sys.executable, "train.py", f"--plugins={plugin}", f"--workdir={workdir}",
       "--config.model.encoder=mean_pool", *TINY_FLAGS],
      cwd=repo, capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["encoder"] == "mean_pool"
  assert json.loads((workdir / "plugins.json").read_text()) == [str(plugin)]
  # eval.py without --plugins: the workdir's record brings the encoder back once trusted (a
  # plug-in runs code: without --trust_plugins it is refused in one line naming it).
  untrusted = subprocess.run([sys.executable, "eval.py", f"--workdir={workdir}"], cwd=repo,
                             capture_output=True, text=True, timeout=600)
  assert untrusted.returncode != 0 and str(plugin) in untrusted.stderr.strip().splitlines()[-1]
  ev = subprocess.run([sys.executable, "eval.py", f"--workdir={workdir}", "--trust_plugins"],
                      cwd=repo, capture_output=True, text=True, timeout=600)
  assert ev.returncode == 0, ev.stderr[-3000:]
  report = json.loads((workdir / "eval_best.json").read_text())
  trained = json.loads((workdir / "report.json").read_text())
  assert report["splits"]["test"]["model"] == trained["splits"]["test"]["model"]
  # Without the plug-in the name is refused at start-up in one line, before any training.
  bad = subprocess.run(
      [sys.executable, "train.py", f"--workdir={tmp_path / 'bad'}",
       "--config.model.encoder=mean_pool", *TINY_FLAGS],
      cwd=repo, capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert "model.encoder" in bad.stderr.strip().splitlines()[-1]



def test_topk_out_reads_a_streaming_plugin_encoders_whole_history(mean_pool, tmp_path):
  """`eval.py --topk_out` decides streaming by the encoder's `streams`, not by its name.

  The doc's encoder streams (its state has seen every event), so the top-k of a user is computed
  from the whole history, as the Recommender serves it; a name test ("lstm"/"gru") gave it the
  last `max_len` events only, and another top 10.
  """
  del mean_pool
  import helpers  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.evaluation import ranking  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import Recommender  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = helpers.tiny_config(tmp_path, **{"model.encoder": "mean_pool", "input.max_len": 4,
                                            "num_epochs": 1})
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir)
  out = tmp_path / "top10.tsv"
  workdir_lib.evaluate_checkpoint(workdir, topk_out=str(out), topk=10, num_devices=1)
  lines = dict(line.split("\t") for line in out.read_text().splitlines())
  rec = Recommender.load(workdir)
  restored = workdir_lib.restore_run(workdir, num_devices=1)
  dataset = restored.run.dataset
  whole = ranking.whole_histories(dataset)
  long_users = [u for u in range(dataset.num_users) if len(whole.history[u]) > 4][:20]
  assert len(long_users) == 20  # histories longer than max_len: where the two paths differ
  for u in long_users:
    history = [dataset.item_keys[i] for i in whole.history[u]]
    want = [str(x) for x in rec.recommend(history, k=10).items]
    assert lines[str(dataset.user_keys[u])].split(",") == want, u


@pytest.fixture
def last_item():
  """Runs the doc's cross-domain ```py block (it registers "xd_last_item")."""
  blocks = re.findall(r"```py\n(.*?)```", DOC.read_text(), flags=re.S)
  assert len(blocks) == 1, "docs/extending.md should hold exactly one ```py (cross-domain) example"
  namespace = {"__name__": "extending_cross_domain_example"}
  exec(compile(blocks[0], str(DOC), "exec"), namespace)  # pylint: disable=exec-used
  try:
    yield namespace["LastItemCrossDomain"]
  finally:
    ENCODERS.unregister("xd_last_item")


def test_cross_domain_example_streams_per_domain_and_trains(last_item):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  assert ENCODERS.get("xd_last_item") is last_item
  cfg = model_config(V, max_len=L, encoder="xd_last_item", embed_dim=8, hidden_size=8,
                     lstm_impl="xla", domain_starts=(1, 16))
  model = model_lib.SeqRecModel(cfg, rngs=nnx.Rngs(0))
  graphdef, params, consts = nnx.split(model, nnx.Param, ...)
  params = params.to_pure_dict()
  # make the per-domain maps matter, then check the streaming path against the full call
  params["encoder"]["maps"] = 0.3 * jax.random.normal(jax.random.key(1),
                                                      params["encoder"]["maps"].shape)
  model = nnx.merge(graphdef, params, consts)
  ids = jnp.array([[1, 20, 3, 17, 0, 0], [16, 2, 2, 29, 5, 0]])
  table = model.item_tables()[0]
  state, outs = model.initial_state(2), []
  for t in range(L):
    state, user = model.step(state, ids[:, t], item_table_VxE=table)
    outs.append(user)
  stepped = jnp.stack(outs, axis=1)
  for d in range(2):
    full = model(ids, ids > 0, item_table_VxE=table, target_domains_BxL=jnp.full((2, L), d))
    np.testing.assert_allclose(jnp.where((ids > 0)[..., None], stepped[:, :, d], 0), full,
                               atol=1e-5)
  tx = optim.make_optimizer(optim_config(learning_rate=1e-2, warmup_steps=0), 10)
  state0 = optim.init_state(params, tx, 0)
  batch = {"inputs_BxL": ids, "targets_BxL": jnp.roll(ids, -1, axis=1) * (ids > 0),
           "mask_BxL": ids > 0, "resets_BxL": jnp.zeros((2, L), bool)}
  new, out = steps.train_step(state0, batch, {"consts": consts.to_pure_dict(), "log_q_V": None},
                              graphdef=graphdef, tx=tx,
                              loss_cfg=loss_config(kind="full", domain_softmax=True))
  assert np.isfinite(float(out["loss"]))
  assert bool(jnp.any(new.params["encoder"]["maps"] != params["encoder"]["maps"]))
