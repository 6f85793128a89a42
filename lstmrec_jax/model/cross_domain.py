"""Cross-domain sequence encoders: one user, several catalogues (e.g. Food and Kitchen).

Shape legend: B batch, L history length, E input size, H hidden size, N domains, D = H output.

A cross-domain encoder sets `cross_domain = True` and takes, besides the usual arguments, each
input item's domain and each position's *target* domain (the domain of the item it predicts:
in training the next item's, in evaluation the held-out target's, in serving the `domain=` asked
for):

  __call__(x_BxLxE, mask_BxL, resets_BxL, *, dropout_key, input_domains_BxL,
           target_domains_BxL) -> h_BxLxD
  step(state, x_BxE, mask_B, *, input_domains_B) -> (state, h_BxNxD)   (streams = True)

`step` returns the user state for every domain, so a served user can be asked about any domain
without re-reading the history. The model (`SeqRecModel`) computes the domains from the item ids
(`ModelConfig.domain_starts`) and the loss restricts each position's softmax to its target
domain's items (`loss.domain_softmax`). Registered like every encoder (`register_encoder`), so a
research variant is one class; docs/extending.md walks through one.

Built in:
  xd_lstm    a shared LSTM over the merged sequence, plus one LSTM per domain over that domain's
             events only; at each position the target domain's stream is read at its latest
             event (forward-filled, the recurrent form of ABXI's task-guided alignment), and a
             per-domain gate mixes it with the shared state:
               g = sigmoid(W_d [h_shared; h_d] + b_d),  h = g h_shared + (1 - g) h_d + c_d
  xd_shared  the shared LSTM alone with a per-target-domain output map
               h = h_shared + P_d h_shared + c_d   (P_d, c_d start at zero: the merged LSTM)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lstmrec_jax.model.config import ModelConfig
from lstmrec_jax.model.encoders import LSTMEncoder
from lstmrec_jax.model.registry import SequenceEncoder, register_encoder


def forward_fill(out_BxLxH: jax.Array, mask_BxL: jax.Array,
                 resets_BxL: jax.Array | None) -> jax.Array:
  """Each position's value at the latest masked-in position up to it, inside its own history.

  Zeros where there is none (no such event yet, or only before a reset). Example: out rows
  [a, b, c, d], mask [T, F, T, F], resets [F, F, F, T] -> [a, a, c, 0].
  """
  t_L = jnp.arange(mask_BxL.shape[1])
  last_BxL = jax.lax.cummax(jnp.where(mask_BxL, t_L, -1), axis=1)
  ok_BxL = last_BxL >= 0
  if resets_BxL is not None:
    start_BxL = jax.lax.cummax(jnp.where(resets_BxL, t_L, 0), axis=1)
    ok_BxL = ok_BxL & (last_BxL >= start_BxL)
  filled = jnp.take_along_axis(out_BxLxH, jnp.maximum(last_BxL, 0)[..., None], axis=1)
  return jnp.where(ok_BxL[..., None], filled, 0.0)


def select_domain(h_XxNxD: jax.Array, domains_X: jax.Array) -> jax.Array:
  """h[..., d, :] with d each position's domain (clipped to the N domains)."""
  d = jnp.clip(domains_X, 0, h_XxNxD.shape[-2] - 1)
  return jnp.take_along_axis(h_XxNxD, d[..., None, None], axis=-2)[..., 0, :]


class _PerDomain(nnx.Module):
  """Per-domain parameters: a (N, I, H) matrix and a (N, H) bias, in f32."""

  def __init__(self, n: int, fan_in: int, h: int, *, std: float, param_dtype, rngs: nnx.Rngs):
    init = jax.nn.initializers.normal(stddev=std) if std else jax.nn.initializers.zeros
    self.w = nnx.Param(init(rngs.params(), (n, fan_in, h), param_dtype))
    self.b = nnx.Param(jnp.zeros((n, h), param_dtype))

  def __call__(self, x_XxNxI: jax.Array) -> jax.Array:
    """x @ w[n] + b[n] for every domain n: (..., N, H)."""
    return (jnp.einsum("...ni,nih->...nh", x_XxNxI.astype(jnp.float32),
                       self.w[...].astype(jnp.float32)) + self.b[...].astype(jnp.float32))


class _CrossDomainBase(SequenceEncoder):
  """What both encoders share: the shared LSTM, the domain count, the per-domain readout."""

  streams = True
  cross_domain = True

  def __init__(self, cfg: ModelConfig, input_dim: int, *, rngs: nnx.Rngs):
    self.num_domains = max(cfg.num_domains, 1)
    self.shared = LSTMEncoder(cfg, input_dim, rngs=rngs)
    self.output_dim = cfg.hidden_size
    self.cfg = cfg

  def readout(self, h_shared_XxH: jax.Array, h_domains_XxNxH: jax.Array | None) -> jax.Array:
    """The user state for every target domain, (..., N, H)."""
    raise NotImplementedError

  def domain_streams(self, x_BxLxE, mask_BxL, resets_BxL, input_domains_BxL, keys):
    """(B, L, N, H) forward-filled per-domain states, or None (no domain streams)."""
    del x_BxLxE, mask_BxL, resets_BxL, input_domains_BxL, keys
    return None

  def __call__(self, x_BxLxE, mask_BxL, resets_BxL, *, dropout_key=None,
               input_domains_BxL, target_domains_BxL):
    keys = ([None] * (self.num_domains + 1) if dropout_key is None
            else list(jax.random.split(dropout_key, self.num_domains + 1)))
    h_shared = self.shared(x_BxLxE, mask_BxL, resets_BxL, dropout_key=keys[0])
    h_domains = self.domain_streams(x_BxLxE, mask_BxL, resets_BxL, input_domains_BxL, keys[1:])
    return select_domain(self.readout(h_shared, h_domains), target_domains_BxL)

  def initial_state(self, batch: int):
    zeros = jnp.zeros((batch, self.num_domains, self.output_dim), jnp.float32)
    return {"shared": self.shared.initial_state(batch), "last": zeros}

  def step(self, state, x_BxE, mask_B, *, input_domains_B):
    shared, h_shared_BxH = self.shared.step(state["shared"], x_BxE, mask_B)
    return {"shared": shared, "last": state["last"]}, self.readout(h_shared_BxH, None)


@register_encoder("xd_shared")
class SharedCrossDomainLSTM(_CrossDomainBase):
  """The merged-sequence LSTM with a per-target-domain output map (see the module docstring)."""

  def __init__(self, cfg: ModelConfig, input_dim: int, *, rngs: nnx.Rngs):
    super().__init__(cfg, input_dim, rngs=rngs)
    h = cfg.hidden_size
    self.domain_map = _PerDomain(self.num_domains, h, h, std=0.0,
                                 param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)

  def readout(self, h_shared_XxH, h_domains_XxNxH):
    del h_domains_XxNxH
    h_XxNxH = jnp.broadcast_to(h_shared_XxH[..., None, :],
                               (*h_shared_XxH.shape[:-1], self.num_domains, self.output_dim))
    return h_XxNxH + self.domain_map(h_XxNxH)


@register_encoder("xd_lstm")
class CrossDomainLSTM(_CrossDomainBase):
  """Shared LSTM + one LSTM per domain + a per-domain gate (see the module docstring)."""

  def __init__(self, cfg: ModelConfig, input_dim: int, *, rngs: nnx.Rngs):
    super().__init__(cfg, input_dim, rngs=rngs)
    h = cfg.hidden_size
    self.streams_by_domain = nnx.List([LSTMEncoder(cfg, input_dim, rngs=rngs)
                                       for _ in range(self.num_domains)])
    # std (2H)^-1/2: gate logits start near 0 (g ~ 0.5, an even mix)
    self.gate = _PerDomain(self.num_domains, 2 * h, h, std=(2 * h) ** -0.5,
                           param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.shift = nnx.Param(jnp.zeros((self.num_domains, h), jnp.dtype(cfg.param_dtype)))

  def domain_streams(self, x_BxLxE, mask_BxL, resets_BxL, input_domains_BxL, keys):
    filled = []
    for d, stream in enumerate(self.streams_by_domain):
      mask_d = mask_BxL & (input_domains_BxL == d)
      # masked steps carry the stream's state and output zeros: read its latest event instead
      out_d = stream(x_BxLxE, mask_d, resets_BxL, dropout_key=keys[d])
      filled.append(forward_fill(out_d, mask_d, resets_BxL))
    return jnp.stack(filled, axis=2)

  def readout(self, h_shared_XxH, h_domains_XxNxH):
    h_XxNxH = jnp.broadcast_to(h_shared_XxH[..., None, :], h_domains_XxNxH.shape)
    g = jax.nn.sigmoid(self.gate(jnp.concatenate([h_XxNxH, h_domains_XxNxH], axis=-1)))
    return g * h_XxNxH + (1.0 - g) * h_domains_XxNxH + self.shift[...].astype(jnp.float32)

  def initial_state(self, batch: int):
    state = super().initial_state(batch)
    state["domains"] = [s.initial_state(batch) for s in self.streams_by_domain]
    return state

  def step(self, state, x_BxE, mask_B, *, input_domains_B):
    shared, h_shared_BxH = self.shared.step(state["shared"], x_BxE, mask_B)
    domains, last = [], []
    for d, stream in enumerate(self.streams_by_domain):
      mask_d = mask_B & (input_domains_B == d)
      s_d, out_d = stream.step(state["domains"][d], x_BxE, mask_d)
      domains.append(s_d)
      last.append(jnp.where(mask_d[:, None], out_d, state["last"][:, d]))
    last_BxNxH = jnp.stack(last, axis=1)
    new = {"shared": shared, "last": last_BxNxH, "domains": domains}
    return new, self.readout(h_shared_BxH, last_BxNxH)
