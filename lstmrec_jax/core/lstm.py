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

Built on it: `lstm_layer` (one layer; the projection hoisted or inside the scan; the recurrence
passed in as a callable, None for the XLA scan), `lstm_stack` (layers with dropout and residuals
between them), `lstm_step` (one step for streaming), `init_lstm_params`, and
`lstm_reference_loop`, the plain-loop test oracle.

This module imports neither the model nor the kernels: the kernels import it (for `LSTMState`
and the reference), and the model resolves `lstm_impl` to a recurrence through
`kernels.dispatch` before calling in here, so there is no import circle.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from lstmrec_jax.core.ops import dropout


class LSTMState(NamedTuple):
  """Carried LSTM state; both f32."""

  h_BxH: jax.Array
  c_BxH: jax.Array


# f(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH, *, compute_dtype)
#   -> (h_BxLxH, LSTMState): `lstm_recurrence` or a kernel with its signature.
Recurrence = Callable[..., tuple[jax.Array, LSTMState]]


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


def _lstm_recurrence_unhoisted(x_BxLxE: jax.Array, w_ih_ExG: jax.Array, b_G: jax.Array,
                               w_hh_HxG: jax.Array, mask_BxL: jax.Array,
                               resets_BxL: jax.Array | None, h0_BxH: jax.Array,
                               c0_BxH: jax.Array, *,
                               compute_dtype=jnp.float32) -> tuple[jax.Array, LSTMState]:
  """lstm_recurrence with x @ w_ih + b computed inside each step instead of hoisted."""
  batch, length, _ = x_BxLxE.shape
  if resets_BxL is None:
    resets_BxL = jnp.zeros((batch, length), bool)
  w_ih = w_ih_ExG.astype(compute_dtype)
  w_hh = w_hh_HxG.astype(compute_dtype)
  b_G = b_G.astype(jnp.float32)

  def step(carry, xs):
    h, c = carry
    x_BxE, m_B, r_B = xs
    keep = ~r_B[:, None]
    h = jnp.where(keep, h, 0.0)
    c = jnp.where(keep, c, 0.0)
    # Same association as the hoisted path, (x @ w_ih + b) + h @ w_hh, so both agree to rounding.
    xp_BxG = jnp.dot(x_BxE.astype(compute_dtype), w_ih, preferred_element_type=jnp.float32) + b_G
    gates_BxG = xp_BxG + jnp.dot(h.astype(compute_dtype), w_hh,
                                 preferred_element_type=jnp.float32)
    h_new, c_new = lstm_cell(gates_BxG, c)
    m = m_B[:, None]
    h = jnp.where(m, h_new, h)
    c = jnp.where(m, c_new, c)
    return (h, c), jnp.where(m, h_new, 0.0)

  xs = (jnp.swapaxes(x_BxLxE, 0, 1), jnp.swapaxes(mask_BxL, 0, 1).astype(bool),
        jnp.swapaxes(resets_BxL, 0, 1).astype(bool))
  init = (h0_BxH.astype(jnp.float32), c0_BxH.astype(jnp.float32))
  (h_T, c_T), h_LxBxH = jax.lax.scan(step, init, xs)
  return jnp.swapaxes(h_LxBxH, 0, 1), LSTMState(h_T, c_T)


def _check_layer_params(params, input_size: int):
  """Validates one layer's parameter shapes; returns (w_ih_ExG, w_hh_HxG, b_G)."""
  missing = {"w_ih", "w_hh", "b"} - set(params)
  if missing:
    raise ValueError(f"LSTM layer params lack {sorted(missing)}; got keys {sorted(params)}")
  w_ih_ExG, w_hh_HxG, b_G = params["w_ih"], params["w_hh"], params["b"]
  hidden = w_hh_HxG.shape[0]
  gates = 4 * hidden
  if (w_ih_ExG.shape != (input_size, gates) or w_hh_HxG.shape != (hidden, gates)
      or b_G.shape != (gates,)):
    raise ValueError(
        f"LSTM layer shapes w_ih {w_ih_ExG.shape}, w_hh {w_hh_HxG.shape}, b {b_G.shape} do not "
        f"match input size {input_size} and hidden size {hidden} (expected "
        f"({input_size}, {gates}), ({hidden}, {gates}), ({gates},))")
  return w_ih_ExG, w_hh_HxG, b_G


def lstm_layer(params, x_BxLxE: jax.Array, mask_BxL: jax.Array,
               resets_BxL: jax.Array | None = None,
               initial_state: LSTMState | None = None, *, hoist: bool = True,
               compute_dtype=jnp.float32,
               recurrence: Recurrence | None = None) -> tuple[jax.Array, LSTMState]:
  """Runs one LSTM layer over a batch of sequences.

  Args:
    params: mapping with `w_ih` (E x G), `w_hh` (H x G) and `b` (G), gate order (i, f, g, o).
    x_BxLxE: inputs.
    mask_BxL: True at real steps (see the module docstring for padding semantics).
    resets_BxL: True where the state is zeroed before the step; None means no resets.
    initial_state: LSTMState of (B, H) arrays; None means zeros.
    hoist: True computes x @ w_ih for all steps in one matmul before the scan; False computes it
      inside each step (same math; sometimes faster on XLA:CPU). Only the XLA scan supports
      False, since the kernels take precomputed projections.
    compute_dtype: dtype of the matmul operands (accumulation, gates and cell state in f32).
    recurrence: an `lstm_recurrence`-compatible callable (e.g. from
      `kernels.dispatch.get_recurrence`); None means `lstm_recurrence`, the XLA scan.

  Returns:
    (h_BxLxH in f32, zeros at padded steps; final LSTMState).
  """
  batch, _, input_size = x_BxLxE.shape
  w_ih_ExG, w_hh_HxG, b_G = _check_layer_params(params, input_size)
  hidden = w_hh_HxG.shape[0]
  if initial_state is None:
    initial_state = LSTMState(jnp.zeros((batch, hidden), jnp.float32),
                              jnp.zeros((batch, hidden), jnp.float32))
  h0_BxH, c0_BxH = initial_state
  if recurrence is None:
    recurrence = lstm_recurrence
  if not hoist:
    if recurrence is not lstm_recurrence:
      raise ValueError(f"hoist=False is only supported by the XLA scan, not "
                       f"{getattr(recurrence, '__name__', recurrence)!r}: kernels take "
                       "precomputed input projections")
    return _lstm_recurrence_unhoisted(x_BxLxE, w_ih_ExG, b_G, w_hh_HxG, mask_BxL, resets_BxL,
                                      h0_BxH, c0_BxH, compute_dtype=compute_dtype)
  xp_BxLxG = input_projection(x_BxLxE, w_ih_ExG, b_G, compute_dtype)
  return recurrence(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH,
                    compute_dtype=compute_dtype)


def lstm_stack(params_list, x_BxLxE: jax.Array, mask_BxL: jax.Array,
               resets_BxL: jax.Array | None = None,
               initial_states: list[LSTMState] | None = None, *, dropout_rate: float = 0.0,
               dropout_key: jax.Array | None = None, residual: bool = False,
               hoist: bool = True, compute_dtype=jnp.float32,
               recurrence: Recurrence | None = None) -> tuple[jax.Array, list[LSTMState]]:
  """Runs several LSTM layers, the output of one feeding the next.

  Args:
    params_list: one parameter mapping per layer (see `lstm_layer`).
    x_BxLxE: inputs of the first layer.
    mask_BxL: True at real steps.
    resets_BxL: True where every layer's state is zeroed before the step; None means no resets.
    initial_states: one LSTMState per layer, or None for zeros.
    dropout_rate: dropout on the inputs of layers 2..n (between layers), active only when
      `dropout_key` is given.
    dropout_key: PRNG key for that dropout; None disables it.
    residual: adds each layer's input to its output where their sizes match (masked, so padded
      steps stay zero).
    hoist, compute_dtype, recurrence: as in `lstm_layer`.

  Returns:
    (h_BxLxH of the last layer in f32, list of final LSTMStates, one per layer).
  """
  num_layers = len(params_list)
  if num_layers == 0:
    raise ValueError("lstm_stack needs at least one layer")
  if initial_states is None:
    initial_states = [None] * num_layers
  if len(initial_states) != num_layers:
    raise ValueError(f"{len(initial_states)} initial states for {num_layers} layers")
  keys = [None] * num_layers
  if dropout_key is not None and dropout_rate > 0.0:
    keys = list(jax.random.split(dropout_key, num_layers))
  x = x_BxLxE
  final_states = []
  for layer, (params, state) in enumerate(zip(params_list, initial_states)):
    if layer > 0:
      x = dropout(keys[layer], x, dropout_rate)
    h_BxLxH, final = lstm_layer(params, x, mask_BxL, resets_BxL, state, hoist=hoist,
                                compute_dtype=compute_dtype, recurrence=recurrence)
    if residual and x.shape[-1] == h_BxLxH.shape[-1]:
      h_BxLxH = h_BxLxH + jnp.where(mask_BxL[..., None], x.astype(jnp.float32), 0.0)
    x = h_BxLxH
    final_states.append(final)
  return x, final_states


def init_lstm_params(key: jax.Array, input_size: int, hidden_size: int,
                     dtype=jnp.float32) -> dict[str, jax.Array]:
  """PyTorch-style init: every entry U(-1/sqrt(H), 1/sqrt(H)), then +1 on the forget-gate bias.

  The single bias stands for PyTorch's b_ih + b_hh but is drawn once. The +1 forget bias (Gers et
  al. 2000; Jozefowicz et al. 2015) makes the cell remember by default early in training.

  Returns:
    {"w_ih": E x G, "w_hh": H x G, "b": G} in `dtype`.
  """
  bound = 1.0 / float(hidden_size) ** 0.5
  gates = 4 * hidden_size
  k_ih, k_hh, k_b = jax.random.split(key, 3)
  uniform = lambda k, shape: jax.random.uniform(k, shape, jnp.float32, -bound, bound)
  b_G = uniform(k_b, (gates,)).at[hidden_size:2 * hidden_size].add(1.0)
  return {"w_ih": uniform(k_ih, (input_size, gates)).astype(dtype),
          "w_hh": uniform(k_hh, (hidden_size, gates)).astype(dtype),
          "b": b_G.astype(dtype)}


def lstm_reference_loop(params, x_BxLxE: jax.Array, mask_BxL: jax.Array,
                        resets_BxL: jax.Array | None = None,
                        initial_state: LSTMState | None = None, *,
                        compute_dtype=jnp.float32) -> tuple[jax.Array, LSTMState]:
  """Test oracle for `lstm_layer`: a plain Python loop over time, written independently; slow."""
  w_ih, w_hh, b = params["w_ih"], params["w_hh"], params["b"]
  batch, length, _ = x_BxLxE.shape
  hidden = w_hh.shape[0]
  if initial_state is None:
    h = jnp.zeros((batch, hidden), jnp.float32)
    c = jnp.zeros((batch, hidden), jnp.float32)
  else:
    h, c = (jnp.asarray(s, jnp.float32) for s in initial_state)
  mm = lambda a, w: jnp.matmul(a.astype(compute_dtype), w.astype(compute_dtype),
                               preferred_element_type=jnp.float32)
  sigmoid = lambda z: 1.0 / (1.0 + jnp.exp(-z))
  outputs = []
  for t in range(length):
    if resets_BxL is not None:
      keep = 1.0 - resets_BxL[:, t, None].astype(jnp.float32)
      h, c = h * keep, c * keep
    z = mm(x_BxLxE[:, t], w_ih) + b.astype(jnp.float32) + mm(h, w_hh)
    i_gate = sigmoid(z[:, :hidden])
    f_gate = sigmoid(z[:, hidden:2 * hidden])
    g_cand = jnp.tanh(z[:, 2 * hidden:3 * hidden])
    o_gate = sigmoid(z[:, 3 * hidden:])
    c_new = f_gate * c + i_gate * g_cand
    h_new = o_gate * jnp.tanh(c_new)
    m = mask_BxL[:, t, None].astype(jnp.float32)
    h = m * h_new + (1.0 - m) * h
    c = m * c_new + (1.0 - m) * c
    outputs.append(m * h_new)
  return jnp.stack(outputs, axis=1), LSTMState(h, c)


def lstm_step(params, x_BxE: jax.Array, mask_B: jax.Array, state: LSTMState, *,
              compute_dtype=jnp.float32) -> tuple[jax.Array, LSTMState]:
  """One time step of `lstm_layer` for streaming (serving): O(1) per event; (h_BxH, state).

  Same association as the hoisted scan, (x @ w_ih + b) + h @ w_hh, so repeated steps agree with
  `lstm_layer` to f32 rounding; masked rows keep their state and output zeros.
  """
  w_ih_ExG, w_hh_HxG, b_G = _check_layer_params(params, x_BxE.shape[-1])
  h, c = state
  xp_BxG = jnp.dot(x_BxE.astype(compute_dtype), w_ih_ExG.astype(compute_dtype),
                   preferred_element_type=jnp.float32) + b_G.astype(jnp.float32)
  gates_BxG = xp_BxG + jnp.dot(h.astype(compute_dtype), w_hh_HxG.astype(compute_dtype),
                               preferred_element_type=jnp.float32)
  h_new, c_new = lstm_cell(gates_BxG, c)
  m = mask_B.astype(bool)[:, None]
  return jnp.where(m, h_new, 0.0), LSTMState(jnp.where(m, h_new, h), jnp.where(m, c_new, c))


def lstm_stack_step(params_list, x_BxE: jax.Array, mask_B: jax.Array,
                    states: list[LSTMState], *, residual: bool = False,
                    compute_dtype=jnp.float32) -> tuple[jax.Array, list[LSTMState]]:
  """One time step of `lstm_stack` without dropout (inference); (h_BxH of the top layer, states)."""
  x = x_BxE
  new_states = []
  for params, state in zip(params_list, states):
    h_BxH, state = lstm_step(params, x, mask_B, state, compute_dtype=compute_dtype)
    if residual and x.shape[-1] == h_BxH.shape[-1]:
      h_BxH = h_BxH + jnp.where(mask_B.astype(bool)[:, None], x.astype(jnp.float32), 0.0)
    x = h_BxH
    new_states.append(state)
  return x, new_states
