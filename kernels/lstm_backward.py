"""Reverse-time LSTM kernels: the state gradients (dh, dc) through time and the gate gradients.

Shape legend: B batch, L time steps, H hidden size, G = 4H gates; Bp, Hp padded sizes; bb, bh
block sizes. Layouts are those of `kernels/lstm_common.py`.

Both forward kernels save, per step, the activated gates (i, f, g, o) and the state (h, c) that
entered the step before its reset. Going backwards with carried cotangents (dh, dc) of the state
that left step t:
  c_in = c_prev unless reset;  c' = f c_in + i g  (recomputed)
  dh' = m (dout_t + dh);  dc' = m dc + dh' o (1 - tanh(c')^2)
  da = (dc' g i(1-i), dc' c_in f(1-f), dc' i (1-g^2), dh' tanh(c') o(1-o))      -> dxp_t = da
  dh_in = (1-m) dh + da @ W_hh^T;  dc_in = (1-m) dc + dc' f
  (dh, dc) for step t-1 = (dh_in, dc_in) unless reset, else 0.
The weight gradient is not accumulated in the loop: dW_hh = h_in^T da over all B*L positions is
one large matmul afterwards (`lstm_common.weight_grad`), which is where the FLOPs are best spent.

`step_backward_call` is one step per pallas_call (used inside a reverse lax.scan by
`kernels/lstm_step.py`); `persistent_backward_call` runs the whole reverse loop in one call
(`kernels/lstm_persistent.py`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from lstmrec_jax.kernels import lstm_common as common

_F32 = jnp.float32
_NG = common.NUM_GATES


def _step_backward_kernel(dout_row, dh_row, dc_row, gates_row, cprev_row,  # (bb,Hp), (bb,4,Hp)
                          dout_ref, dh_ref, dc_ref, gates_ref, cprev_ref,  # (bb,bh), (bb,4,bh)
                          m_ref, r_ref, w_ref,                             # (bb,1)x2, (bh,4,Hp)
                          dgates_ref, dhp_ref, dcp_ref,                    # outputs, tile j
                          *, block_h: int, num_chunks: int, compute_dtype):
  """One reverse step for rows i and hidden units j (of h_in, i.e. rows of W_hh)."""
  m_Bx1 = m_ref[...] > 0.0
  keep_Bx1 = r_ref[...] == 0.0

  def local_grads(gates, cprev, dout, dh, dc):
    c_in = jnp.where(keep_Bx1, cprev, 0.0)
    return common.cell_backward(*gates, c_in, dout, dh, dc, m_Bx1)

  # dh_in for units j needs the gate gradients of ALL units; they are elementwise, so each
  # program recomputes them chunk by chunk (cheap) instead of a second kernel and an HBM trip.
  dh_in = jnp.where(m_Bx1, 0.0, dh_ref[...])
  for kk in range(num_chunks):
    chunk = slice(kk * block_h, (kk + 1) * block_h)
    das, _ = local_grads([gates_row[:, k, chunk] for k in range(_NG)], cprev_row[:, chunk],
                         dout_row[:, chunk], dh_row[:, chunk], dc_row[:, chunk])
    for k in range(_NG):
      dh_in += common.dot_t(das[k].astype(compute_dtype), w_ref[:, k, chunk])
  das, dc_in = local_grads([gates_ref[:, k, :] for k in range(_NG)], cprev_ref[...],
                           dout_ref[...], dh_ref[...], dc_ref[...])
  for k in range(_NG):
    dgates_ref[:, k, :] = das[k]
  dhp_ref[...] = jnp.where(keep_Bx1, dh_in, 0.0)
  dcp_ref[...] = jnp.where(keep_Bx1, dc_in, 0.0)


def step_backward_call(batch_p: int, hidden_p: int, block_b: int, block_h: int, compute_dtype,
                       platform: str, num_warps: int | None, num_stages: int | None):
  """Returns f(dout, dh, dc, gates, cprev, m, r, w_4) -> (dgates, dh_prev, dc_prev) for one step.

  Shapes: dout, dh, dc, cprev (Bp, Hp); gates (Bp, 4, Hp); m, r (Bp, 1) f32; w_4 (Hp, 4, Hp) in
  the compute dtype. Grid (Bp/bb, Hp/bh).
  """
  bb, bh, bp, hp = block_b, block_h, batch_p, hidden_p
  row = pl.BlockSpec((bb, hp), lambda i, j: (i, 0))
  gate_row = pl.BlockSpec((bb, _NG, hp), lambda i, j: (i, 0, 0))
  tile = pl.BlockSpec((bb, bh), lambda i, j: (i, j))
  gate_tile = pl.BlockSpec((bb, _NG, bh), lambda i, j: (i, 0, j))
  flag = pl.BlockSpec((bb, 1), lambda i, j: (i, 0))
  w_rows = pl.BlockSpec((bh, _NG, hp), lambda i, j: (j, 0, 0))
  state = jax.ShapeDtypeStruct((bp, hp), _F32)
  kernel = functools.partial(_step_backward_kernel, block_h=bh, num_chunks=hp // bh,
                             compute_dtype=compute_dtype)
  call = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((bp, _NG, hp), _F32), state, state),
      grid=(bp // bb, hp // bh),
      in_specs=[row, row, row, gate_row, row, tile, tile, tile, gate_tile, tile, flag, flag,
                w_rows],
      out_specs=(gate_tile, tile, tile),
      interpret=common.pallas_interpret(platform),
      compiler_params=common.compiler_params(platform, num_warps, num_stages),
      name="lstm_fused_step_backward")

  def step(dout, dh, dc, gates, cprev, m, r, w_4):
    # Each operand goes in twice: whole rows for the contraction, this program's tile for its
    # own outputs (BlockSpecs, unlike dynamic slices of a value, lower everywhere).
    return call(dout, dh, dc, gates, cprev, dout, dh, dc, gates, cprev, m, r, w_4)

  return step


def _persistent_backward_kernel(dout_ref, dht_ref, dct_ref, gates_ref, cprev_ref, m_ref, r_ref,
                                w_ref, dgates_ref, dh0_ref, dc0_ref, *, length: int,
                                compute_dtype, resident_weights: bool):
  """Whole reverse sequence for one batch tile: refs (bb,L,Hp) (bb,Hp)x2 (bb,L,4,Hp) (bb,L,Hp)
  (bb,L,1)x2 (Hp,4,Hp) -> (bb,L,4,Hp) (bb,Hp)x2."""
  load_w = lambda: [w_ref[:, k, :] for k in range(_NG)]
  w_resident = load_w() if resident_weights else None

  def body(s, carry):
    dh, dc = carry
    t = length - 1 - s
    m_Bx1 = m_ref[:, t, :] > 0.0
    keep_Bx1 = r_ref[:, t, :] == 0.0
    c_in = jnp.where(keep_Bx1, cprev_ref[:, t, :], 0.0)
    das, dc_in = common.cell_backward(*[gates_ref[:, t, k, :] for k in range(_NG)], c_in,
                                      dout_ref[:, t, :], dh, dc, m_Bx1)
    w = w_resident if resident_weights else load_w()
    dh_in = jnp.where(m_Bx1, 0.0, dh)
    for k in range(_NG):
      dgates_ref[:, t, k, :] = das[k]
      dh_in += common.dot_t(das[k].astype(compute_dtype), w[k])
    return jnp.where(keep_Bx1, dh_in, 0.0), jnp.where(keep_Bx1, dc_in, 0.0)

  dh, dc = jax.lax.fori_loop(0, length, body, (dht_ref[...], dct_ref[...]))
  dh0_ref[...] = dh
  dc0_ref[...] = dc


def persistent_backward_call(batch_p: int, length: int, hidden_p: int, block_b: int,
                             compute_dtype, resident_weights: bool, platform: str,
                             num_warps: int | None, num_stages: int | None):
  """Returns f(dout, dhT, dcT, gates, cprev, m, r, w_4) -> (dgates, dh0, dc0), batch-major.

  Shapes: dout, cprev (Bp, L, Hp); dhT, dcT (Bp, Hp); gates (Bp, L, 4, Hp); m, r (Bp, L, 1) f32;
  w_4 (Hp, 4, Hp). Grid (Bp/bb,): each program runs the whole reverse time loop.
  """
  bb, bp, hp = block_b, batch_p, hidden_p
  seq = pl.BlockSpec((bb, length, hp), lambda i: (i, 0, 0))
  gate_seq = pl.BlockSpec((bb, length, _NG, hp), lambda i: (i, 0, 0, 0))
  flag_seq = pl.BlockSpec((bb, length, 1), lambda i: (i, 0, 0))
  state = pl.BlockSpec((bb, hp), lambda i: (i, 0))
  weights = pl.BlockSpec((hp, _NG, hp), lambda i: (0, 0, 0))
  kernel = functools.partial(_persistent_backward_kernel, length=length,
                             compute_dtype=compute_dtype, resident_weights=resident_weights)
  state_shape = jax.ShapeDtypeStruct((bp, hp), _F32)
  return pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((bp, length, _NG, hp), _F32), state_shape, state_shape),
      grid=(bp // bb,),
      in_specs=[seq, state, state, gate_seq, seq, flag_seq, flag_seq, weights],
      out_specs=(gate_seq, state, state),
      interpret=common.pallas_interpret(platform),
      compiler_params=common.compiler_params(platform, num_warps, num_stages,
                                             parallel_grid_dims=1),
      name="lstm_persistent_backward")
