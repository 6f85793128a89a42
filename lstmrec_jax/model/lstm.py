"""The functional LSTM core: hoisted input projection, then a lax.scan over time.

Shape legend: B batch, L time steps, E input size, H hidden size, G = 4H gates.

Gate order along G is (i, f, g, o): input gate, forget gate, cell candidate, output gate, each a
contiguous slice of width H. One layer's parameters are `w_ih_ExG`, `w_hh_HxG` and `b_G` (a single
bias: PyTorch's b_ih + b_hh). The Pallas kernels in `kernels/` implement `lstm_recurrence` exactly:
same signature, same gate order, same mask and reset semantics.

Per step t, with carried state (h, c):
  if resets[t]: (h, c) <- (0, 0)                       # a new history starts (packed rows)
  gates = xp[t] + h @ w_hh                             # matmul in compute_dtype, f32 accumulation
  i, f, g, o = sigmoid(gates_i), sigmoid(gates_f), tanh(gates_g), sigmoid(gates_o)
  c' = f * c + i * g;  h' = o * tanh(c')               # cell state always f32
  if mask[t]: (h, c) <- (h', c'), out[t] = h'
  else:       (h, c) unchanged,   out[t] = 0           # padding neither moves nor leaks state
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LSTMState(NamedTuple):
  """Carried LSTM state; both f32."""

  h_BxH: jax.Array
  c_BxH: jax.Array


def input_projection(x_BxLxE: jax.Array, w_ih_ExG: jax.Array, b_G: jax.Array,
                     compute_dtype=jnp.float32) -> jax.Array:
  """x @ w_ih + b for all time steps in one matmul (hoisted out of the recurrence); f32 out."""
  xp = jnp.einsum("ble,eg->blg", x_BxLxE.astype(compute_dtype), w_ih_ExG.astype(compute_dtype),
                  preferred_element_type=jnp.float32)
  return xp + b_G.astype(jnp.float32)


def lstm_cell(gates_BxG: jax.Array, c_BxH: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Gate nonlinearities and state update from pre-activations (f32); returns (h', c')."""
  i, f, g, o = jnp.split(gates_BxG.astype(jnp.float32), 4, axis=-1)
  c_new = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
  h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
  return h_new, c_new


def lstm_recurrence(xp_BxLxG: jax.Array, w_hh_HxG: jax.Array, mask_BxL: jax.Array,
                    resets_BxL: jax.Array | None, h0_BxH: jax.Array, c0_BxH: jax.Array, *,
                    compute_dtype=jnp.float32) -> tuple[jax.Array, LSTMState]:
  """Runs the recurrence over precomputed input projections.

  Args:
    xp_BxLxG: input projections (x @ w_ih + b), any float dtype; used in f32.
    w_hh_HxG: recurrent weights.
    mask_BxL: True at real steps; padded steps carry the state and output zeros.
    resets_BxL: True where the state is zeroed before the step (a new history in a packed row);
      None means no resets.
    h0_BxH, c0_BxH: initial state.
    compute_dtype: dtype of the recurrent matmul's operands (f32 accumulation either way).

  Returns:
    (h_BxLxH in f32, final LSTMState).
  """
  batch, length, gates = xp_BxLxG.shape
  hidden = w_hh_HxG.shape[0]
  if gates != 4 * hidden or w_hh_HxG.shape[1] != gates:
    raise ValueError(f"xp has {gates} gates and w_hh is {w_hh_HxG.shape}; expected G = 4H")
  if mask_BxL.shape != (batch, length):
    raise ValueError(f"mask shape {mask_BxL.shape} does not match (B, L) = {(batch, length)}")
  if resets_BxL is None:
    resets_BxL = jnp.zeros((batch, length), bool)
  w_hh = w_hh_HxG.astype(compute_dtype)

  def step(carry, xs):
    h, c = carry
    xp_BxG, m_B, r_B = xs
    keep = ~r_B[:, None]
    h = jnp.where(keep, h, 0.0)
    c = jnp.where(keep, c, 0.0)
    gates_BxG = xp_BxG.astype(jnp.float32) + jnp.dot(
        h.astype(compute_dtype), w_hh, preferred_element_type=jnp.float32)
    h_new, c_new = lstm_cell(gates_BxG, c)
    m = m_B[:, None]
    h = jnp.where(m, h_new, h)
    c = jnp.where(m, c_new, c)
    return (h, c), jnp.where(m, h_new, 0.0)

  # Time-major for the scan; XLA fuses the transposes into the surrounding ops.
  xs = (jnp.swapaxes(xp_BxLxG, 0, 1), jnp.swapaxes(mask_BxL, 0, 1).astype(bool),
        jnp.swapaxes(resets_BxL, 0, 1).astype(bool))
  init = (h0_BxH.astype(jnp.float32), c0_BxH.astype(jnp.float32))
  (h_T, c_T), h_LxBxH = jax.lax.scan(step, init, xs)
  return jnp.swapaxes(h_LxBxH, 0, 1), LSTMState(h_T, c_T)
