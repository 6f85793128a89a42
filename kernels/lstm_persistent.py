"""Persistent LSTM sequence kernel: the whole time loop inside one pallas_call.

Shape legend: B batch, L time steps, H hidden size, G = 4H gates; Bp, Hp padded sizes; bb the
batch block. Layout and padding conventions are in `kernels/lstm_common.py`.

The grid is (batch tiles,). Each program owns bb rows and all of W_hh, and runs a fori_loop over
the L steps with (h, c) carried in registers: per step it reads its rows of xp_t, does the
recurrent matmul against W_hh, the gates and the update, and writes h_t; at the end it writes the
final state. There is no per-step launch and no HBM round trip of the state, which is what makes
the step kernel (and XLA's scan) launch- and latency-bound at recommender sizes (B*H small).

W_hh is loaded once before the loop when it fits on chip (`resident_weights`; H <= 128 in bf16,
<= 64 in f32 by default), else re-read every step, from L2 on a GPU. The hidden size is padded to
a power of two because (h, c) are whole register tensors. Arrays stay batch-major (B, L, ...):
the kernel indexes the time axis itself, so no transposes are needed around it.

The backward pass is a real kernel as well (`kernels/lstm_backward.py`, the whole reverse loop in
one call); dW_hh is one matmul over all steps outside it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
import numpy as np

from lstmrec_jax.kernels import lstm_backward
from lstmrec_jax.kernels import lstm_common as common
from lstmrec_jax.core import lstm as lstm_lib

_F32 = jnp.float32
_NG = common.NUM_GATES


def _persistent_kernel(xp_ref, w_ref, m_ref, r_ref, h0_ref, c0_ref,  # inputs
                       out_ref, ht_ref, ct_ref, *residual_refs,       # outputs
                       length: int, compute_dtype, resident_weights: bool):
  """All L steps for one batch tile: refs (bb,L,4,Hp) (Hp,4,Hp) (bb,L,1)x2 (bb,Hp)x2 ->
  (bb,L,Hp) (bb,Hp)x2 [+ gates (bb,L,4,Hp), h_prev (bb,L,Hp), c_prev (bb,L,Hp)]."""
  load_w = lambda: [w_ref[:, k, :] for k in range(_NG)]
  w_resident = load_w() if resident_weights else None

  def body(t, carry):
    h, c = carry
    keep_Bx1 = r_ref[:, t, :] == 0.0  # a reset zeroes the carried state before the step
    m_Bx1 = m_ref[:, t, :] > 0.0
    if residual_refs:  # the state entering step t, for the backward pass
      residual_refs[1][:, t, :] = h
      residual_refs[2][:, t, :] = c
    h_in = jnp.where(keep_Bx1, h, 0.0)
    c_in = jnp.where(keep_Bx1, c, 0.0)
    w = w_resident if resident_weights else load_w()
    h_op = h_in.astype(compute_dtype)
    acc = [xp_ref[:, t, k, :].astype(_F32) + jnp.dot(h_op, w[k], preferred_element_type=_F32)
           for k in range(_NG)]
    gates, h_new, c_new = common.cell_forward(*acc, c_in)
    if residual_refs:
      for k, gate in enumerate(gates):
        residual_refs[0][:, t, k, :] = gate
    out_ref[:, t, :] = jnp.where(m_Bx1, h_new, 0.0)
    return jnp.where(m_Bx1, h_new, h_in), jnp.where(m_Bx1, c_new, c_in)

  h, c = jax.lax.fori_loop(0, length, body, (h0_ref[...], c0_ref[...]))
  ht_ref[...] = h
  ct_ref[...] = c


@dataclasses.dataclass(frozen=True)
class PersistentBlocks:
  """Block sizes of the persistent kernel (on GPU block_b is a power of two >= 16)."""

  block_b: int = 16                     # batch rows per program (one program per tile)
  resident_weights: bool | None = None  # None: keep W_hh on chip when it is <= 128 KiB
  num_warps: int | None = None          # Triton warps; None: 4 for Hp <= 64, else 8
  num_stages: int = 1                   # Triton pipelining stages of the time loop


# W_hh bytes (compute dtype) up to which the default loads it once for the whole loop: H=128 in
# bf16 or H=64 in f32. It then lives in registers / shared memory as Triton sees fit (an H100 SM
# has 228 KiB of shared memory); larger weights are re-read each step from L2. To be tuned on
# hardware: the GPU suite records which policy each row used.
_RESIDENT_BYTES = 128 * 1024


class _Plan(NamedTuple):
  """Everything static about one call (hashable, the custom_vjp's non-diff argument)."""

  batch: int
  length: int
  hidden: int
  batch_p: int
  hidden_p: int
  block_b: int
  compute_dtype: np.dtype
  resident_weights: bool
  platform: str
  num_warps: int
  num_stages: int


def _make_plan(batch: int, length: int, hidden: int, compute_dtype,
               blocks: PersistentBlocks, interpret: bool | None, backend: str | None) -> _Plan:
  platform = common.resolve_platform(interpret, backend)
  common.check_block("block_b", blocks.block_b, platform)
  floor = common.min_block(platform)
  bb = min(blocks.block_b, max(floor, common.next_pow2(batch)))
  hp = max(floor, common.next_pow2(hidden))
  dtype = np.dtype(compute_dtype)
  resident = blocks.resident_weights
  if resident is None:
    resident = hp * _NG * hp * dtype.itemsize <= _RESIDENT_BYTES
  warps = blocks.num_warps or (4 if hp <= 64 else 8)
  return _Plan(batch, length, hidden, common.round_up(batch, bb), hp, bb, dtype, bool(resident),
               platform, warps, blocks.num_stages)


def _forward_call(plan: _Plan, save: bool):
  bb, bp, hp, length = plan.block_b, plan.batch_p, plan.hidden_p, plan.length
  seq = pl.BlockSpec((bb, length, hp), lambda i: (i, 0, 0))
  gate_seq = pl.BlockSpec((bb, length, _NG, hp), lambda i: (i, 0, 0, 0))
  flag_seq = pl.BlockSpec((bb, length, 1), lambda i: (i, 0, 0))
  state = pl.BlockSpec((bb, hp), lambda i: (i, 0))
  weights = pl.BlockSpec((hp, _NG, hp), lambda i: (0, 0, 0))
  seq_shape = jax.ShapeDtypeStruct((bp, length, hp), _F32)
  state_shape = jax.ShapeDtypeStruct((bp, hp), _F32)
  out_shape = [seq_shape, state_shape, state_shape]
  out_specs = [seq, state, state]
  if save:
    out_shape += [jax.ShapeDtypeStruct((bp, length, _NG, hp), _F32), seq_shape, seq_shape]
    out_specs += [gate_seq, seq, seq]
  kernel = functools.partial(_persistent_kernel, length=length, compute_dtype=plan.compute_dtype,
                             resident_weights=plan.resident_weights)
  return pl.pallas_call(
      kernel, out_shape=tuple(out_shape), grid=(bp // bb,),
      in_specs=[gate_seq, weights, flag_seq, flag_seq, state, state], out_specs=tuple(out_specs),
      interpret=common.pallas_interpret(plan.platform),
      compiler_params=common.compiler_params(plan.platform, plan.num_warps, plan.num_stages,
                                             parallel_grid_dims=1),
      name="lstm_persistent")


def lstm_persistent(xp_BxLxG: jax.Array, w_hh_HxG: jax.Array, mask_BxL: jax.Array,
                    resets_BxL: jax.Array | None, h0_BxH: jax.Array, c0_BxH: jax.Array, *,
                    compute_dtype=jnp.float32, blocks: PersistentBlocks = PersistentBlocks(),
                    interpret: bool | None = None,
                    backend: str | None = None) -> tuple[jax.Array, lstm_lib.LSTMState]:
  """`lstm_recurrence` as one persistent kernel; differentiable (kernel backward).

  Args:
    xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH, compute_dtype: exactly as
      `lstmrec_jax.core.lstm.lstm_recurrence`.
    blocks: block sizes and on-chip policy of the forward and backward kernels.
    interpret: run in the Pallas interpreter; None means "when on CPU".
    backend: lowering target, 'gpu' (Triton) or 'tpu' (Mosaic); None: jax.default_backend().

  Returns:
    (h_BxLxH in f32, final LSTMState), equal to `lstm_recurrence`'s up to float rounding.

  Raises:
    ValueError: on inconsistent shapes, or block sizes the target lowering cannot use.
  """
  batch, length, hidden = common.check_inputs(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH,
                                              c0_BxH)
  if resets_BxL is None:
    resets_BxL = jnp.zeros(mask_BxL.shape, bool)
  plan = _make_plan(batch, length, hidden, compute_dtype, blocks, interpret, backend)
  # f32 at the custom_vjp boundary (a no-op for the usual f32 xp and params).
  out, h_t, c_t = _recurrence(plan, xp_BxLxG.astype(_F32), w_hh_HxG.astype(_F32),
                              mask_BxL.astype(bool), resets_BxL.astype(bool),
                              h0_BxH.astype(_F32), c0_BxH.astype(_F32))
  return out, lstm_lib.LSTMState(h_t, c_t)


def lstm_persistent_reference(xp_BxLxG: jax.Array, w_hh_HxG: jax.Array, mask_BxL: jax.Array,
                              resets_BxL: jax.Array | None, h0_BxH: jax.Array, c0_BxH: jax.Array,
                              *, compute_dtype=jnp.float32,
                              blocks: PersistentBlocks = PersistentBlocks(),
                              interpret: bool | None = None,
                              backend: str | None = None) -> tuple[jax.Array, lstm_lib.LSTMState]:
  """Plain-jnp reference: the model's own `lstm_recurrence` (blocks, interpret ignored)."""
  del blocks, interpret, backend
  return lstm_lib.lstm_recurrence(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH,
                                  compute_dtype=compute_dtype)


# ---------------------------------------------------------------------------------------------
# custom_vjp: the forward kernel also writes the gates and the state entering each step; the
# backward is one reverse-time kernel, then one matmul for dW_hh.
# ---------------------------------------------------------------------------------------------


def _flags(x_BxL: jax.Array, batch_p: int) -> jax.Array:
  """(B, L) bool -> (Bp, L, 1) f32 (f32: Triton's bool loads are a special case)."""
  return common.pad_to(x_BxL.astype(_F32)[..., None], (batch_p, x_BxL.shape[1], 1))


def _forward(plan: _Plan, xp, w_hh, mask, resets, h0, c0, save: bool):
  bp, hp, batch, hidden = plan.batch_p, plan.hidden_p, plan.batch, plan.hidden
  xp_4 = common.pad_to(common.gate_split(xp, hidden, hp), (bp, plan.length, _NG, hp))
  w_4 = common.weight_layout(w_hh, hp, plan.compute_dtype)
  m, r = _flags(mask, bp), _flags(resets, bp)
  out, h_t, c_t, *saved = _forward_call(plan, save)(
      xp_4, w_4, m, r, common.pad_to(h0, (bp, hp)), common.pad_to(c0, (bp, hp)))
  outs = (out[:batch, :, :hidden], h_t[:batch, :hidden], c_t[:batch, :hidden])
  return outs, ((w_4, m, r, *saved) if save else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(plan, xp, w_hh, mask, resets, h0, c0):
  return _forward(plan, xp, w_hh, mask, resets, h0, c0, save=False)[0]


def _recurrence_fwd(plan, xp, w_hh, mask, resets, h0, c0):
  return _forward(plan, xp, w_hh, mask, resets, h0, c0, save=True)


def _recurrence_bwd(plan, residuals, cotangents):
  w_4, m, r, gates, hprev, cprev = residuals
  d_out, d_ht, d_ct = cotangents
  bp, hp, batch, hidden = plan.batch_p, plan.hidden_p, plan.batch, plan.hidden
  call = lstm_backward.persistent_backward_call(
      bp, plan.length, hp, plan.block_b, plan.compute_dtype, plan.resident_weights,
      plan.platform, plan.num_warps, plan.num_stages)
  dgates, dh0, dc0 = call(common.pad_to(d_out, (bp, plan.length, hp)),
                          common.pad_to(d_ht, (bp, hp)), common.pad_to(d_ct, (bp, hp)),
                          gates, cprev, m, r, w_4)
  h_in = jnp.where(r > 0.0, 0.0, hprev)  # the state that entered each step's matmul
  dw = common.weight_grad(h_in, dgates, hidden, plan.compute_dtype)
  dxp = common.gate_merge(dgates[:batch], hidden)
  return dxp, dw, None, None, dh0[:batch, :hidden], dc0[:batch, :hidden]


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
