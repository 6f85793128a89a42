"""The functional GRU core: hoisted input projection, then a lax.scan over time.

Shape legend: B batch, L time steps, E input size, H hidden size, G = 3H gates.

Gate order along G is (r, z, n): reset gate, update gate, candidate, each a contiguous slice of
width H, as in PyTorch's nn.GRU. One layer's parameters are `w_ih_ExG`, `w_hh_HxG`, `b_ih_G` and
`b_hh_G`; the recurrent bias stays apart because its n-slice is scaled by the reset gate.

Per step t, with carried state h:
  if resets[t]: h <- 0                                   # a new history starts (packed rows)
  xp = x[t] @ w_ih + b_ih (hoisted: one matmul for all t);  hh = h @ w_hh + b_hh
  r = sigmoid(xp_r + hh_r);  z = sigmoid(xp_z + hh_z);  n = tanh(xp_n + r * hh_n)
  h' = (1 - z) * n + z * h                               # f32
  if mask[t]: h <- h', out[t] = h'   else: h unchanged, out[t] = 0

Mask, reset, dropout and residual semantics are those of `core.lstm`, so the GRU encoder is a
drop-in for the LSTM one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstmrec_jax.core.ops import dropout


def init_gru_params(key: jax.Array, input_size: int, hidden_size: int,
                    dtype=jnp.float32) -> dict[str, jax.Array]:
  """PyTorch-style init: every entry U(-1/sqrt(H), 1/sqrt(H)).

  Returns:
    {"w_ih": E x G, "w_hh": H x G, "b_ih": G, "b_hh": G} in `dtype`, G = 3H.
  """
  bound = 1.0 / float(hidden_size) ** 0.5
  gates = 3 * hidden_size
  k_ih, k_hh, k_bi, k_bh = jax.random.split(key, 4)
  uniform = lambda k, shape: jax.random.uniform(k, shape, jnp.float32, -bound, bound).astype(dtype)
  return {"w_ih": uniform(k_ih, (input_size, gates)), "w_hh": uniform(k_hh, (hidden_size, gates)),
          "b_ih": uniform(k_bi, (gates,)), "b_hh": uniform(k_bh, (gates,))}


def _check_params(params, input_size: int):
  """Validates one layer's parameter shapes; returns (w_ih, w_hh, b_ih, b_hh)."""
  missing = {"w_ih", "w_hh", "b_ih", "b_hh"} - set(params)
  if missing:
    raise ValueError(f"GRU layer params lack {sorted(missing)}; got keys {sorted(params)}")
  w_ih, w_hh, b_ih, b_hh = params["w_ih"], params["w_hh"], params["b_ih"], params["b_hh"]
  hidden = w_hh.shape[0]
  gates = 3 * hidden
  if (w_ih.shape != (input_size, gates) or w_hh.shape != (hidden, gates)
      or b_ih.shape != (gates,) or b_hh.shape != (gates,)):
    raise ValueError(f"GRU layer shapes w_ih {w_ih.shape}, w_hh {w_hh.shape}, b_ih {b_ih.shape}, "
                     f"b_hh {b_hh.shape} do not match input size {input_size} and hidden size "
                     f"{hidden}")
  return w_ih, w_hh, b_ih, b_hh


def gru_cell(xp_BxG: jax.Array, hh_BxG: jax.Array, h_BxH: jax.Array) -> jax.Array:
  """h' from the input and recurrent projections (both with their biases), f32."""
  x_r, x_z, x_n = jnp.split(xp_BxG.astype(jnp.float32), 3, axis=-1)
  h_r, h_z, h_n = jnp.split(hh_BxG.astype(jnp.float32), 3, axis=-1)
  r = jax.nn.sigmoid(x_r + h_r)
  z = jax.nn.sigmoid(x_z + h_z)
  n = jnp.tanh(x_n + r * h_n)
  return (1.0 - z) * n + z * h_BxH


def _recurrent(h_BxH, w_hh_HxG, b_hh_G, compute_dtype):
  return jnp.dot(h_BxH.astype(compute_dtype), w_hh_HxG.astype(compute_dtype),
                 preferred_element_type=jnp.float32) + b_hh_G.astype(jnp.float32)


def gru_layer(params, x_BxLxE: jax.Array, mask_BxL: jax.Array,
              resets_BxL: jax.Array | None = None, h0_BxH: jax.Array | None = None, *,
              compute_dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Runs one GRU layer; returns (h_BxLxH in f32 with zeros at padded steps, final h_BxH)."""
  batch, length, input_size = x_BxLxE.shape
  w_ih, w_hh, b_ih, b_hh = _check_params(params, input_size)
  hidden = w_hh.shape[0]
  if mask_BxL.shape != (batch, length):
    raise ValueError(f"mask shape {mask_BxL.shape} does not match (B, L) = {(batch, length)}")
  if resets_BxL is None:
    resets_BxL = jnp.zeros((batch, length), bool)
  if h0_BxH is None:
    h0_BxH = jnp.zeros((batch, hidden), jnp.float32)
  xp_BxLxG = jnp.einsum("ble,eg->blg", x_BxLxE.astype(compute_dtype), w_ih.astype(compute_dtype),
                        preferred_element_type=jnp.float32) + b_ih.astype(jnp.float32)

  def step(h, xs):
    xp_BxG, m_B, r_B = xs
    h = jnp.where(r_B[:, None], 0.0, h)
    h_new = gru_cell(xp_BxG, _recurrent(h, w_hh, b_hh, compute_dtype), h)
    m = m_B[:, None]
    return jnp.where(m, h_new, h), jnp.where(m, h_new, 0.0)

  xs = (jnp.swapaxes(xp_BxLxG, 0, 1), jnp.swapaxes(mask_BxL, 0, 1).astype(bool),
        jnp.swapaxes(resets_BxL, 0, 1).astype(bool))
  h_T, h_LxBxH = jax.lax.scan(step, h0_BxH.astype(jnp.float32), xs)
  return jnp.swapaxes(h_LxBxH, 0, 1), h_T


def gru_stack(params_list, x_BxLxE: jax.Array, mask_BxL: jax.Array,
              resets_BxL: jax.Array | None = None, *, dropout_rate: float = 0.0,
              dropout_key: jax.Array | None = None, residual: bool = False,
              compute_dtype=jnp.float32) -> tuple[jax.Array, list[jax.Array]]:
  """Several GRU layers with dropout between them and masked residuals, as `core.lstm_stack`."""
  num_layers = len(params_list)
  if num_layers == 0:
    raise ValueError("gru_stack needs at least one layer")
  keys = [None] * num_layers
  if dropout_key is not None and dropout_rate > 0.0:
    keys = list(jax.random.split(dropout_key, num_layers))
  x = x_BxLxE
  finals = []
  for layer, params in enumerate(params_list):
    if layer > 0:
      x = dropout(keys[layer], x, dropout_rate)
    h_BxLxH, h_T = gru_layer(params, x, mask_BxL, resets_BxL, compute_dtype=compute_dtype)
    if residual and x.shape[-1] == h_BxLxH.shape[-1]:
      h_BxLxH = h_BxLxH + jnp.where(mask_BxL[..., None], x.astype(jnp.float32), 0.0)
    x = h_BxLxH
    finals.append(h_T)
  return x, finals


def gru_stack_step(params_list, x_BxE: jax.Array, mask_B: jax.Array, states: list[jax.Array], *,
                   residual: bool = False,
                   compute_dtype=jnp.float32) -> tuple[jax.Array, list[jax.Array]]:
  """One time step of `gru_stack` without dropout (streaming); (h_BxH of the top layer, states)."""
  m = mask_B.astype(bool)[:, None]
  x = x_BxE
  new_states = []
  for params, h in zip(params_list, states):
    w_ih, w_hh, b_ih, b_hh = _check_params(params, x.shape[-1])
    xp_BxG = jnp.dot(x.astype(compute_dtype), w_ih.astype(compute_dtype),
                     preferred_element_type=jnp.float32) + b_ih.astype(jnp.float32)
    h_new = gru_cell(xp_BxG, _recurrent(h, w_hh, b_hh, compute_dtype), h)
    out = jnp.where(m, h_new, 0.0)
    if residual and x.shape[-1] == out.shape[-1]:
      out = out + jnp.where(m, x.astype(jnp.float32), 0.0)
    new_states.append(jnp.where(m, h_new, h))
    x = out
  return x, new_states


def gru_reference_loop(params, x_BxLxE: jax.Array, mask_BxL: jax.Array,
                       resets_BxL: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Test oracle for `gru_layer` in f32: a plain Python loop over time, written independently."""
  w_ih, w_hh, b_ih, b_hh = (params[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh"))
  batch, length, _ = x_BxLxE.shape
  hidden = w_hh.shape[0]
  h = jnp.zeros((batch, hidden), jnp.float32)
  sigmoid = lambda v: 1.0 / (1.0 + jnp.exp(-v))
  outputs = []
  for t in range(length):
    if resets_BxL is not None:
      h = h * (1.0 - resets_BxL[:, t, None].astype(jnp.float32))
    gi = x_BxLxE[:, t] @ w_ih + b_ih
    gh = h @ w_hh + b_hh
    r = sigmoid(gi[:, :hidden] + gh[:, :hidden])
    z = sigmoid(gi[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
    n = jnp.tanh(gi[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
    h_new = (1.0 - z) * n + z * h
    m = mask_BxL[:, t, None].astype(jnp.float32)
    h = m * h_new + (1.0 - m) * h
    outputs.append(m * h_new)
  return jnp.stack(outputs, axis=1), h
