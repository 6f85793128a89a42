"""Fused-gate LSTM step kernel: one pallas_call per time step, inside a lax.scan over time.

Shape legend: B batch, L time steps, H hidden size, G = 4H gates; Bp, Hp padded sizes; bb, bh
block sizes. Layout and padding conventions are in `kernels/lstm_common.py`.

One call does all of a step's work that `lstm_recurrence` spreads over several XLA ops: the
recurrent matmul, the add of the hoisted input projection, the gate nonlinearities, the cell and
hidden update and the mask/reset selects, so the (B, G) pre-activations never go to HBM. The grid
is (batch tiles, hidden tiles); program (i, j) produces hidden units j*bh..(j+1)*bh of all four
gates for its rows, reading the whole (bb, Hp) hidden state in bh-wide chunks of the contraction
(every load is a power-of-two tile, as Triton needs, for any Hp that is a multiple of bh).

The caller hoists the input projection (`lstm_recurrence`'s xp). The backward pass is a real
kernel too (`kernels/lstm_backward.py`, one reverse-time call per step); dW_hh is one matmul over
all steps outside the loop.
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


def _step_kernel(xp_ref, w_ref, m_ref, r_ref, hrow_ref, h_ref, c_ref,  # inputs
                 out_ref, hn_ref, cn_ref, *gates_ref,                    # outputs
                 block_h: int, num_chunks: int, compute_dtype):
  """One step, rows i, units j: refs (bb,4,bh) (Hp,4,bh) (bb,1)x2 (bb,Hp) (bb,bh)x2."""
  keep_Bx1 = r_ref[...] == 0.0  # a reset zeroes the carried state before the step
  acc = [xp_ref[:, k, :].astype(_F32) for k in range(common.NUM_GATES)]
  for kk in range(num_chunks):  # static: the contraction over Hp in bh-wide chunks
    chunk = slice(kk * block_h, (kk + 1) * block_h)
    h_chunk = jnp.where(keep_Bx1, hrow_ref[:, chunk], 0.0).astype(compute_dtype)
    for k in range(common.NUM_GATES):
      acc[k] += jnp.dot(h_chunk, w_ref[chunk, k, :], preferred_element_type=_F32)
  h_in = jnp.where(keep_Bx1, h_ref[...], 0.0)
  c_in = jnp.where(keep_Bx1, c_ref[...], 0.0)
  gates, h_new, c_new = common.cell_forward(*acc, c_in)
  m_Bx1 = m_ref[...] > 0.0
  out_ref[...] = jnp.where(m_Bx1, h_new, 0.0)
  hn_ref[...] = jnp.where(m_Bx1, h_new, h_in)  # padding carries the state unchanged
  cn_ref[...] = jnp.where(m_Bx1, c_new, c_in)
  if gates_ref:  # residuals for the backward pass (only under differentiation)
    for k, gate in enumerate(gates):
      gates_ref[0][:, k, :] = gate


@dataclasses.dataclass(frozen=True)
class StepBlocks:
  """Block sizes of the step kernel (clamped to the problem; on GPU powers of two >= 16)."""

  # Small tiles by default: a step is latency-bound, and B=128, H=64 must still give 16 programs.
  block_b: int = 16     # batch rows per program
  block_h: int = 32     # hidden units per program, also the chunk of the recurrent contraction
  num_warps: int = 4    # Triton warps per program (GPU only)
  num_stages: int = 1   # Triton pipelining stages (GPU only); the kernel has no loop to pipeline


class _Plan(NamedTuple):
  """Everything static about one call: sizes, blocks, dtype, where it runs (hashable)."""

  batch: int
  hidden: int
  batch_p: int
  hidden_p: int
  block_b: int
  block_h: int
  compute_dtype: np.dtype
  platform: str  # 'interpret' | 'gpu' | 'tpu'
  num_warps: int
  num_stages: int


def _make_plan(batch: int, hidden: int, compute_dtype, blocks: StepBlocks,
               interpret: bool | None, backend: str | None) -> _Plan:
  platform = common.resolve_platform(interpret, backend)
  common.check_block("block_b", blocks.block_b, platform)
  common.check_block("block_h", blocks.block_h, platform)
  floor = common.min_block(platform)
  # Small problems get smaller blocks instead of mostly-padding tiles.
  bb = min(blocks.block_b, max(floor, common.next_pow2(batch)))
  bh = min(blocks.block_h, max(floor, common.next_pow2(hidden)))
  hp = common.round_up(hidden, bh)
  if platform == "tpu" and bh % 128 and bh != hp:
    raise ValueError(f"block_h={bh}: Mosaic TPU needs a multiple of 128 or all of H ({hp})")
  return _Plan(batch, hidden, common.round_up(batch, bb), hp, bb, bh,
               np.dtype(compute_dtype), platform, blocks.num_warps, blocks.num_stages)


def _step_call(plan: _Plan, save_gates: bool):
  """The pallas_call for one step over padded (Bp, ...) operands."""
  bb, bh, bp, hp = plan.block_b, plan.block_h, plan.batch_p, plan.hidden_p
  row = lambda i, j: (i, 0)
  tile = lambda i, j: (i, j)
  gate_tile = lambda i, j: (i, 0, j)
  in_specs = [
      pl.BlockSpec((bb, common.NUM_GATES, bh), gate_tile),                 # xp_t
      pl.BlockSpec((hp, common.NUM_GATES, bh), lambda i, j: (0, 0, j)),    # w_hh columns of tile j
      pl.BlockSpec((bb, 1), row),                                          # mask_t
      pl.BlockSpec((bb, 1), row),                                          # resets_t
      pl.BlockSpec((bb, hp), row),                                         # h: all units (matmul)
      pl.BlockSpec((bb, bh), tile),                                        # h: this tile (carry)
      pl.BlockSpec((bb, bh), tile),                                        # c
  ]
  state = jax.ShapeDtypeStruct((bp, hp), _F32)
  out_shape = [state, state, state]
  out_specs = [pl.BlockSpec((bb, bh), tile)] * 3
  if save_gates:
    out_shape.append(jax.ShapeDtypeStruct((bp, common.NUM_GATES, hp), _F32))
    out_specs.append(pl.BlockSpec((bb, common.NUM_GATES, bh), gate_tile))
  kernel = functools.partial(_step_kernel, block_h=bh, num_chunks=hp // bh,
                             compute_dtype=plan.compute_dtype)
  return pl.pallas_call(
      kernel, out_shape=tuple(out_shape), grid=(bp // bb, hp // bh), in_specs=in_specs,
      out_specs=tuple(out_specs), interpret=common.pallas_interpret(plan.platform),
      compiler_params=common.compiler_params(plan.platform, plan.num_warps, plan.num_stages),
      name="lstm_fused_step")


def _flag(x_B: jax.Array, batch_p: int) -> jax.Array:
  """(B,) bool -> (Bp, 1) f32: f32 because Triton's bool loads are a special case."""
  return common.pad_to(x_B.astype(_F32)[:, None], (batch_p, 1))


def lstm_step(xp_BxG: jax.Array, w_hh_HxG: jax.Array, mask_B: jax.Array,
              resets_B: jax.Array | None, h_BxH: jax.Array, c_BxH: jax.Array, *,
              compute_dtype=jnp.float32, blocks: StepBlocks = StepBlocks(),
              interpret: bool | None = None,
              backend: str | None = None) -> tuple[jax.Array, lstm_lib.LSTMState]:
  """One fused LSTM step (forward only; `lstm_recurrence_step` is the differentiable sequence).

  Args:
    xp_BxG: this step's input projection.
    w_hh_HxG: recurrent weights, gate order i, f, g, o.
    mask_B: True where the step is real; elsewhere the state is carried and the output is 0.
    resets_B: True where the state is zeroed before the step; None means no resets.
    h_BxH, c_BxH: carried state.
    compute_dtype: dtype of the recurrent matmul's operands (f32 accumulation).
    blocks: block sizes.
    interpret: run the kernel in the Pallas interpreter; None means "when on CPU".
    backend: lowering target, 'gpu' (Triton) or 'tpu' (Mosaic); None: jax.default_backend().

  Returns:
    (out_BxH f32, new LSTMState), exactly one step of `lstm_recurrence`.
  """
  if xp_BxG.ndim != 2 or mask_B.ndim != 1:
    raise ValueError(f"one step takes xp (B, G) and mask (B,), got {xp_BxG.shape}, {mask_B.shape}")
  batch, _, hidden = common.check_inputs(
      xp_BxG[:, None], w_hh_HxG, mask_B[:, None],
      None if resets_B is None else resets_B[:, None], h_BxH, c_BxH)
  if resets_B is None:
    resets_B = jnp.zeros((batch,), bool)
  plan = _make_plan(batch, hidden, compute_dtype, blocks, interpret, backend)
  bp, hp = plan.batch_p, plan.hidden_p
  out, h_new, c_new = _step_call(plan, save_gates=False)(
      common.pad_to(common.gate_split(xp_BxG.astype(_F32), hidden, hp),
                    (bp, common.NUM_GATES, hp)),
      common.weight_layout(w_hh_HxG, hp, plan.compute_dtype),
      _flag(mask_B, bp), _flag(resets_B, bp),
      common.pad_to(h_BxH.astype(_F32), (bp, hp)), common.pad_to(h_BxH.astype(_F32), (bp, hp)),
      common.pad_to(c_BxH.astype(_F32), (bp, hp)))
  crop = lambda x: x[:batch, :hidden]
  return crop(out), lstm_lib.LSTMState(crop(h_new), crop(c_new))


def lstm_recurrence_step(xp_BxLxG: jax.Array, w_hh_HxG: jax.Array, mask_BxL: jax.Array,
                         resets_BxL: jax.Array | None, h0_BxH: jax.Array, c0_BxH: jax.Array, *,
                         compute_dtype=jnp.float32, blocks: StepBlocks = StepBlocks(),
                         interpret: bool | None = None,
                         backend: str | None = None) -> tuple[jax.Array, lstm_lib.LSTMState]:
  """`lstm_recurrence` as a lax.scan of fused step kernels; differentiable (kernel backward).

  Args:
    xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH, compute_dtype: exactly as
      `lstmrec_jax.core.lstm.lstm_recurrence`.
    blocks: block sizes of the forward and backward step kernels.
    interpret: run in the Pallas interpreter; None means "when on CPU".
    backend: lowering target, 'gpu' (Triton) or 'tpu' (Mosaic); None: jax.default_backend().

  Returns:
    (h_BxLxH in f32, final LSTMState), equal to `lstm_recurrence`'s up to float rounding.

  Raises:
    ValueError: on inconsistent shapes, or block sizes the target lowering cannot use.
  """
  batch, length, hidden = common.check_inputs(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH,
                                              c0_BxH)
  del length
  if resets_BxL is None:
    resets_BxL = jnp.zeros(mask_BxL.shape, bool)
  plan = _make_plan(batch, hidden, compute_dtype, blocks, interpret, backend)
  # f32 at the custom_vjp boundary (a no-op for the usual f32 xp and params) keeps the cotangent
  # dtypes simple; autodiff of these casts hands back the caller's dtypes.
  out, h_t, c_t = _recurrence(plan, xp_BxLxG.astype(_F32), w_hh_HxG.astype(_F32),
                              mask_BxL.astype(bool), resets_BxL.astype(bool),
                              h0_BxH.astype(_F32), c0_BxH.astype(_F32))
  return out, lstm_lib.LSTMState(h_t, c_t)


def lstm_step_reference(xp_BxG: jax.Array, w_hh_HxG: jax.Array, mask_B: jax.Array,
                        resets_B: jax.Array | None, h_BxH: jax.Array, c_BxH: jax.Array, *,
                        compute_dtype=jnp.float32, blocks: StepBlocks = StepBlocks(),
                        interpret: bool | None = None,
                        backend: str | None = None) -> tuple[jax.Array, lstm_lib.LSTMState]:
  """Plain-jnp `lstm_step` (blocks and interpret are accepted and ignored)."""
  del blocks, interpret, backend
  keep = jnp.ones(mask_B.shape, bool) if resets_B is None else ~resets_B.astype(bool)
  h = jnp.where(keep[:, None], h_BxH.astype(_F32), 0.0)
  c = jnp.where(keep[:, None], c_BxH.astype(_F32), 0.0)
  gates = xp_BxG.astype(_F32) + jnp.dot(h.astype(compute_dtype), w_hh_HxG.astype(compute_dtype),
                                        preferred_element_type=_F32)
  h_new, c_new = lstm_lib.lstm_cell(gates, c)
  m = mask_B.astype(bool)[:, None]
  state = lstm_lib.LSTMState(jnp.where(m, h_new, h), jnp.where(m, c_new, c))
  return jnp.where(m, h_new, 0.0), state


def lstm_recurrence_step_reference(xp_BxLxG: jax.Array, w_hh_HxG: jax.Array, mask_BxL: jax.Array,
                                   resets_BxL: jax.Array | None, h0_BxH: jax.Array,
                                   c0_BxH: jax.Array, *, compute_dtype=jnp.float32,
                                   blocks: StepBlocks = StepBlocks(),
                                   interpret: bool | None = None,
                                   backend: str | None = None
                                   ) -> tuple[jax.Array, lstm_lib.LSTMState]:
  """Plain-jnp reference: a lax.scan of `lstm_step_reference` (same signature as the kernel)."""
  del blocks, interpret, backend
  if resets_BxL is None:
    resets_BxL = jnp.zeros(mask_BxL.shape, bool)

  def step(carry, xs):
    xp_BxG, m_B, r_B = xs
    out, state = lstm_step_reference(xp_BxG, w_hh_HxG, m_B, r_B, *carry,
                                     compute_dtype=compute_dtype)
    return tuple(state), out

  xs = (jnp.swapaxes(xp_BxLxG, 0, 1), mask_BxL.T, resets_BxL.T)
  (h_t, c_t), out_LxBxH = jax.lax.scan(step, (h0_BxH.astype(_F32), c0_BxH.astype(_F32)), xs)
  return jnp.swapaxes(out_LxBxH, 0, 1), lstm_lib.LSTMState(h_t, c_t)


# ---------------------------------------------------------------------------------------------
# custom_vjp: forward saves the gates and the state entering each step; backward is a reverse
# lax.scan of the fused step-backward kernel, then one matmul for dW_hh.
# ---------------------------------------------------------------------------------------------


def _forward(plan: _Plan, xp, w_hh, mask, resets, h0, c0, save: bool):
  """Runs the scan over padded time-major operands; returns outputs and (if save) residuals."""
  bp, hp, hidden = plan.batch_p, plan.hidden_p, plan.hidden
  # Time-major for the scan (one XLA transpose each way, as lstm_recurrence does).
  xp_Lx4 = jnp.swapaxes(common.pad_to(common.gate_split(xp, hidden, hp),
                                      (bp, xp.shape[1], common.NUM_GATES, hp)), 0, 1)
  m_Lx1 = jnp.swapaxes(common.pad_to(mask.astype(_F32)[..., None], (bp, mask.shape[1], 1)), 0, 1)
  r_Lx1 = jnp.swapaxes(common.pad_to(resets.astype(_F32)[..., None], (bp, mask.shape[1], 1)),
                       0, 1)
  w_4 = common.weight_layout(w_hh, hp, plan.compute_dtype)
  call = _step_call(plan, save_gates=save)

  def body(carry, xs):
    h, c = carry
    xp_t, m_t, r_t = xs
    out, h_new, c_new, *gates = call(xp_t, w_4, m_t, r_t, h, h, c)
    return (h_new, c_new), ((out, h, c, gates[0]) if save else out)

  init = (common.pad_to(h0, (bp, hp)), common.pad_to(c0, (bp, hp)))
  (h_t, c_t), ys = jax.lax.scan(body, init, (xp_Lx4, m_Lx1, r_Lx1))
  out_L = ys[0] if save else ys
  crop = lambda x: x[:plan.batch, :hidden]
  outs = (jnp.swapaxes(out_L, 0, 1)[:plan.batch, :, :hidden], crop(h_t), crop(c_t))
  if not save:
    return outs, None
  _, hprev_L, cprev_L, gates_L = ys
  return outs, (w_4, gates_L, hprev_L, cprev_L, m_Lx1, r_Lx1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(plan, xp, w_hh, mask, resets, h0, c0):
  return _forward(plan, xp, w_hh, mask, resets, h0, c0, save=False)[0]


def _recurrence_fwd(plan, xp, w_hh, mask, resets, h0, c0):
  return _forward(plan, xp, w_hh, mask, resets, h0, c0, save=True)


def _recurrence_bwd(plan, residuals, cotangents):
  w_4, gates_L, hprev_L, cprev_L, m_Lx1, r_Lx1 = residuals
  d_out, d_ht, d_ct = cotangents
  bp, hp, batch, hidden = plan.batch_p, plan.hidden_p, plan.batch, plan.hidden
  dout_L = jnp.swapaxes(common.pad_to(d_out, (bp, d_out.shape[1], hp)), 0, 1)
  call = lstm_backward.step_backward_call(
      bp, hp, plan.block_b, plan.block_h, plan.compute_dtype, plan.platform, plan.num_warps,
      plan.num_stages)

  def body(carry, xs):
    dh, dc = carry
    dout_t, gates_t, cprev_t, m_t, r_t = xs
    dgates_t, dh_prev, dc_prev = call(dout_t, dh, dc, gates_t, cprev_t, m_t, r_t, w_4)
    return (dh_prev, dc_prev), dgates_t

  init = (common.pad_to(d_ht, (bp, hp)), common.pad_to(d_ct, (bp, hp)))
  (dh0, dc0), dgates_L = jax.lax.scan(body, init, (dout_L, gates_L, cprev_L, m_Lx1, r_Lx1),
                                      reverse=True)
  h_in_L = jnp.where(r_Lx1 > 0.0, 0.0, hprev_L)  # the state that entered each step's matmul
  dw = common.weight_grad(h_in_L, dgates_L, hidden, plan.compute_dtype)
  dxp = common.gate_merge(jnp.swapaxes(dgates_L, 0, 1)[:batch], hidden)
  return dxp, dw, None, None, dh0[:batch, :hidden], dc0[:batch, :hidden]


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
