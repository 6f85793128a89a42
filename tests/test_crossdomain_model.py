"""Cross-domain encoders and the domain-restricted softmax: causality, packing, streaming per
domain, training, and the loss against a brute-force reference.

Shape legend: B batch, L history length, E embedding size, V catalog size, N domains.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import loss_config, model_config
from lstmrec_jax import losses
from lstmrec_jax import optim
from lstmrec_jax.errors import ConfigError
from lstmrec_jax.model import ENCODERS, SeqRecModel
from lstmrec_jax.model import cross_domain
from lstmrec_jax.train import steps

B, L, E, V = 2, 7, 8, 13
STARTS = (1, 6)  # domain 0: ids 1-5, domain 1: ids 6-12
XD_NAMES = ("xd_lstm", "xd_shared")
# two histories that switch domains; row 1 is padded after 5 events
IDS_BxL = jnp.array([[1, 7, 2, 8, 9, 3, 10], [6, 6, 4, 11, 5, 0, 0]])
NEXT_BxL = jnp.array([[7, 2, 8, 9, 3, 10, 4], [6, 4, 11, 5, 12, 0, 0]])


def _cfg(name, **kw):
  return model_config(V, max_len=L, encoder=name, embed_dim=E, hidden_size=E, lstm_impl="xla",
                      domain_starts=STARTS, **kw)


def _model(name, **kw):
  return SeqRecModel(_cfg(name, **kw), rngs=nnx.Rngs(0))


def _call(model, ids, targets, resets=None):
  table = model.item_tables()[0]
  return model(ids, ids > 0, resets, item_table_VxE=table,
               target_domains_BxL=model.item_domains(targets))


def test_item_domains_from_starts():
  model = _model("xd_lstm")
  np.testing.assert_array_equal(model.item_domains(jnp.array([0, 1, 5, 6, 12])), [0, 0, 0, 1, 1])


def test_forward_fill_reads_the_latest_event_of_its_history():
  out = jnp.arange(1.0, 5.0)[None, :, None]
  got = cross_domain.forward_fill(out, jnp.array([[True, False, True, False]]),
                                  jnp.array([[False, False, False, True]]))
  np.testing.assert_array_equal(got[0, :, 0], [1, 1, 3, 0])


@pytest.mark.parametrize("name", XD_NAMES)
def test_causal(name):
  """The user state at t has zero gradient with respect to input embeddings after t."""
  model = _model(name)
  table = model.item_tables()[0]
  t = 3

  def at_t(delta):
    user = model(IDS_BxL, IDS_BxL > 0, item_table_VxE=table, input_delta_BxLxE=delta,
                 target_domains_BxL=model.item_domains(NEXT_BxL))
    return user[0, t].sum()

  grad = jax.grad(at_t)(jnp.zeros((B, L, E)))
  assert float(jnp.abs(grad[0, t + 1:]).max()) == 0.0
  assert float(jnp.abs(grad[0, :t + 1]).max()) > 0.0


@pytest.mark.parametrize("name", XD_NAMES)
def test_padding_and_the_target_domain(name):
  model = _model(name)
  out = _call(model, IDS_BxL, NEXT_BxL)
  assert float(jnp.abs(out[1, 5:]).max()) == 0.0  # padded positions are zero
  # the user state depends on the domain asked for (a per-domain readout)
  flipped = model(IDS_BxL, IDS_BxL > 0, item_table_VxE=model.item_tables()[0],
                  target_domains_BxL=1 - model.item_domains(NEXT_BxL))
  assert float(jnp.abs(jnp.where((IDS_BxL > 0)[..., None], flipped - out, 0)).max()) > 0.0 or (
      name == "xd_shared")  # xd_shared's domain maps start at zero: identical at init


def test_cross_domain_encoder_needs_target_domains():
  model = _model("xd_lstm")
  with pytest.raises(ValueError, match="needs each position's target domain"):
    model(IDS_BxL, IDS_BxL > 0, item_table_VxE=model.item_tables()[0])


@pytest.mark.parametrize("name", XD_NAMES)
def test_packed_row_with_reset_equals_separate_rows(name):
  model = _model(name)
  a, b = IDS_BxL[0, :4], IDS_BxL[1, :3]
  na, nb = NEXT_BxL[0, :4], NEXT_BxL[1, :3]
  packed = jnp.concatenate([a, b])[None]
  packed_next = jnp.concatenate([na, nb])[None]
  resets = jnp.zeros((1, 7), bool).at[0, 4].set(True)
  got = _call(model, packed, packed_next, resets)
  sep_a = _call(model, a[None], na[None])
  sep_b = _call(model, b[None], nb[None])
  np.testing.assert_allclose(got[0, :4], sep_a[0], atol=1e-6)
  np.testing.assert_allclose(got[0, 4:], sep_b[0], atol=1e-6)


@pytest.mark.parametrize("name", XD_NAMES + ("lstm",))
def test_streaming_step_gives_every_domains_state(name):
  """`step` gives, for every domain n, what the full call gives with target domain n."""
  model = _model(name)
  table = model.item_tables()[0]
  state = model.initial_state(B)
  outs = []
  for t in range(L):
    state, user = model.step(state, IDS_BxL[:, t], item_table_VxE=table)
    outs.append(user)
  stepped = jnp.stack(outs, axis=1)  # B x L x N x E (cross-domain) or B x L x E
  mask = (IDS_BxL > 0)[..., None]
  if not model.cross_domain:
    full = _call(model, IDS_BxL, NEXT_BxL)
    np.testing.assert_allclose(jnp.where(mask, stepped, 0), full, atol=1e-5)
    return
  assert stepped.shape[2] == len(STARTS) == model.user_slots
  for n in range(len(STARTS)):
    full = model(IDS_BxL, IDS_BxL > 0, item_table_VxE=table,
                 target_domains_BxL=jnp.full((B, L), n))
    np.testing.assert_allclose(jnp.where(mask, stepped[:, :, n], 0), full, atol=1e-5)


@pytest.mark.parametrize("name", XD_NAMES)
def test_trains_with_the_domain_softmax_and_every_parameter_moves(name):
  cfg = _cfg(name)
  model = SeqRecModel(cfg, rngs=nnx.Rngs(0))
  graphdef, params, consts = nnx.split(model, nnx.Param, ...)
  params = params.to_pure_dict()
  tx = optim.make_optimizer(
      __import__("helpers").optim_config(learning_rate=1e-2, warmup_steps=0), 10)
  state = optim.init_state(params, tx, 0)
  batch = {"inputs_BxL": IDS_BxL, "targets_BxL": NEXT_BxL, "mask_BxL": IDS_BxL > 0,
           "resets_BxL": jnp.zeros((B, L), bool)}
  aux = {"consts": consts.to_pure_dict(), "log_q_V": None}
  step = jax.jit(lambda s, b: steps.train_step(s, b, aux, graphdef=graphdef, tx=tx,
                                                loss_cfg=loss_config(kind="full",
                                                                     domain_softmax=True)))
  new, out = step(state, batch)
  assert np.isfinite(float(out["loss"]))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
  frozen = [jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(moved)
            if not m]
  # item 12 is only ever a target after padding: every row but the padding row 0 is in a softmax
  assert not frozen, frozen


def _reference_domain_ce(user_NxE, table_VxE, targets_N, starts):
  """Brute force: softmax over the target's domain only, mean over positions with a target."""
  domains_V = np.searchsorted(np.asarray(starts), np.arange(table_VxE.shape[0]), "right") - 1
  logits = np.asarray(user_NxE, np.float64) @ np.asarray(table_VxE, np.float64).T
  out = []
  for n, t in enumerate(np.asarray(targets_N)):
    if t == 0:
      continue
    allowed = (domains_V == domains_V[t]) & (np.arange(len(domains_V)) > 0)
    row = logits[n][allowed]
    out.append(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[n, t])
  return float(np.mean(out))


@pytest.mark.parametrize("kind", ["full", "chunked"])
def test_domain_softmax_loss_matches_brute_force(kind):
  key = jax.random.key(0)
  user = jax.random.normal(key, (9, 4))
  table = jax.random.normal(jax.random.key(1), (V, 4))
  targets = jnp.array([1, 5, 6, 12, 0, 3, 7, 9, 2])
  cfg = loss_config(kind=kind, domain_softmax=True, chunk_size=4)
  loss_fn = lambda *a, **k: losses.get_loss(kind)(*a, cfg=cfg, key=None, log_q_V=None, **k)
  got = losses.domain_softmax_loss(loss_fn, user, table, None, targets,
                                   (targets > 0).astype(jnp.float32), domain_starts=STARTS)
  np.testing.assert_allclose(float(got), _reference_domain_ce(user, table, targets, STARTS),
                             rtol=1e-5)
  # gradients equal the masked full softmax's (items outside the domain scored -1e9)
  domains_V = jnp.asarray(np.searchsorted(np.asarray(STARTS), np.arange(V), "right") - 1)

  def masked(u, t):
    logits = u @ t.T
    allowed = (domains_V[None, :] == domains_V[targets][:, None]) & (jnp.arange(V) > 0)
    logits = jnp.where(allowed, logits, -1e9)
    nll = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, targets[:, None], 1)[:, 0]
    return jnp.sum(jnp.where(targets > 0, nll, 0)) / jnp.sum(targets > 0)

  g = jax.grad(lambda u, t: losses.domain_softmax_loss(
      loss_fn, u, t, None, targets, (targets > 0).astype(jnp.float32), domain_starts=STARTS),
      argnums=(0, 1))(user, table)
  ref = jax.grad(masked, argnums=(0, 1))(user, table)
  for a, b in zip(g, ref):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_config_errors():
  assert ENCODERS.get("xd_lstm").cross_domain
  with pytest.raises(ConfigError, match="cross-domain encoder: it needs a multi-domain dataset"):
    model_config(V, encoder="xd_lstm")
  with pytest.raises(ConfigError, match="domain_softmax.*needs an exact softmax"):
    loss_config(kind="sampled", domain_softmax=True)
