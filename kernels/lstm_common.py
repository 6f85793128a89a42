"""Shared by the LSTM Pallas kernels: input checks, padded layouts, backend choice, cell math.

Shape legend: B batch, L time steps, H hidden size, G = 4H gates; Bp, Hp the padded batch and
hidden sizes; bb, bh the batch and hidden block sizes of one program.

The kernels read the gates as four separate (rows, H) slabs instead of slicing a (rows, G) value,
because the Triton lowering can index refs with static offsets but cannot slice register values.
The layout that allows it is free to make from the `..xG` arrays of `lstm_recurrence`: a reshape
of `G` into `(4, H)`, plus zero padding of `H` (and `B`) when the sizes are not block multiples.
Padded hidden units stay exactly zero: their pre-activations are 0, so `c' = 0.5 * 0 + 0.5 * 0`
and `h' = 0.5 * tanh(0)`; padded batch rows have mask 0 and are sliced away.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_GATES = 4  # i, f, g, o

# Triton's tensor-core dot needs every matmul dimension to be at least 16.
_GPU_MIN_BLOCK = 16
# Mosaic TPU tiles the last two dims of a block in (8 sublanes, 128 lanes): a block's
# second-to-last dim must be a multiple of 8 (or the whole array dim), its last a multiple of 128
# (or the whole array dim). The persistent kernel's batch tile is such a second-to-last dim.
_TPU_SUBLANES = 8


def round_up(x: int, multiple: int) -> int:
  """Smallest multiple of `multiple` that is >= x, e.g. round_up(12, 8) == 16."""
  return -(-x // multiple) * multiple


def next_pow2(x: int) -> int:
  """Smallest power of two >= x, e.g. next_pow2(12) == 16, next_pow2(16) == 16."""
  return 1 << max(0, int(x) - 1).bit_length()


def resolve_platform(interpret: bool | None, backend: str | None = None) -> str:
  """Where a kernel runs: 'interpret', 'interpret_tpu', 'gpu' (Triton) or 'tpu' (Mosaic TPU).

  Args:
    interpret: True forces the Pallas interpreter; None means "exactly when the backend is CPU"
      (Pallas cannot compile for CPU).
    backend: 'cpu', 'gpu' ('cuda', 'rocm') or 'tpu'; None means jax.default_backend(). Naming
      'gpu' on a CPU host builds the Triton-lowered kernel, e.g. to export it for CUDA. With
      interpret=True, naming 'tpu' selects Pallas's TPU interpret mode ('interpret_tpu'), which
      simulates the TPU's memory spaces and DMAs on CPU and applies the TPU block rules here.
  """
  named_tpu = backend == "tpu"
  backend = backend or jax.default_backend()
  backend = {"cuda": "gpu", "rocm": "gpu"}.get(backend, backend)
  if interpret is None:
    interpret = backend == "cpu"
  if interpret:
    return "interpret_tpu" if named_tpu else "interpret"
  if backend not in ("gpu", "tpu"):
    raise ValueError(
        f"Pallas kernels cannot be compiled for backend {backend!r}; pass interpret=True or use "
        "impl='xla' (lstmrec_jax.kernels.dispatch.get_recurrence does this for you)")
  return backend


def pallas_interpret(platform: str):
  """pallas_call's `interpret=`: TPU interpret mode, the generic interpreter, or compiled."""
  if platform == "interpret_tpu":
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
    # "raise" on an out-of-bounds read and NaN-filled fresh buffers: a block that reads past
    # its array, or an output block left unwritten, fails the comparison instead of passing.
    return pltpu.InterpretParams(out_of_bounds_reads="raise", uninitialized_memory="nan")
  return platform == "interpret"


def compiler_params(platform: str, num_warps: int | None, num_stages: int | None,
                    parallel_grid_dims: int = 0):
  """Triton params on GPU; Mosaic params on TPU (and in TPU interpret mode); None elsewhere.

  On GPU they must be passed explicitly: since jax 0.10 a bare pallas_call lowers to Mosaic GPU,
  and these kernels are written for the portable (Triton) lowering. Triton is deprecated in jax
  0.11 but still present; a Mosaic GPU port is future work.

  On TPU, `parallel_grid_dims` leading grid dims are declared "parallel" (their programs are
  independent): Mosaic may then split them over the TensorCores of a megacore chip (v4, v5p),
  and TPU interpret mode visits them in random order, which a hidden dependency would fail.
  """
  if platform in ("tpu", "interpret_tpu"):
    if not parallel_grid_dims:
      return None
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * parallel_grid_dims)
  if platform != "gpu":
    return None
  from jax.experimental.pallas import triton as pltriton  # pylint: disable=g-import-not-at-top
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def check_block(name: str, value: int, platform: str) -> None:
  """Block sizes must be positive; on GPU also powers of two >= 16 (Triton tensor sizes, dot);
  on TPU (compiled or TPU-interpreted) batch blocks are multiples of 8 sublanes (Mosaic)."""
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  if platform == "gpu" and (value & (value - 1) or value < _GPU_MIN_BLOCK):
    raise ValueError(f"{name}={value}: the Triton lowering needs a power of two >= "
                     f"{_GPU_MIN_BLOCK}")
  if platform in ("tpu", "interpret_tpu") and name == "block_b" and value % _TPU_SUBLANES:
    raise ValueError(f"{name}={value}: the Mosaic TPU lowering needs a multiple of "
                     f"{_TPU_SUBLANES} (sublanes) for the batch block")


def min_block(platform: str) -> int:
  """The smallest batch (and, on GPU, hidden) block the platform's lowering accepts."""
  if platform == "gpu":
    return _GPU_MIN_BLOCK
  return _TPU_SUBLANES if platform in ("tpu", "interpret_tpu") else 1


def check_inputs(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH) -> tuple[int, int, int]:
  """Validates the shapes of `lstm_recurrence`'s arguments; returns (B, L, H)."""
  if xp_BxLxG.ndim != 3:
    raise ValueError(f"xp must be (B, L, G), got shape {xp_BxLxG.shape}")
  batch, length, gates = xp_BxLxG.shape
  if w_hh_HxG.ndim != 2:
    raise ValueError(f"w_hh must be (H, G), got shape {w_hh_HxG.shape}")
  hidden = w_hh_HxG.shape[0]
  if gates != NUM_GATES * hidden or w_hh_HxG.shape[1] != gates:
    raise ValueError(f"xp has {gates} gates and w_hh is {w_hh_HxG.shape}; expected G = 4H")
  if batch < 1 or length < 1 or hidden < 1:
    raise ValueError(f"empty input: B={batch}, L={length}, H={hidden}")
  if mask_BxL.shape != (batch, length):
    raise ValueError(f"mask shape {mask_BxL.shape} does not match (B, L) = {(batch, length)}")
  if resets_BxL is not None and resets_BxL.shape != (batch, length):
    raise ValueError(f"resets shape {resets_BxL.shape} does not match (B, L) = "
                     f"{(batch, length)}")
  for name, x in (("h0", h0_BxH), ("c0", c0_BxH)):
    if x.shape != (batch, hidden):
      raise ValueError(f"{name} shape {x.shape} does not match (B, H) = {(batch, hidden)}")
  return batch, length, hidden


def pad_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Zero-pads x at the end of each axis up to `shape` (no-op when equal)."""
  if tuple(x.shape) == tuple(shape):
    return x
  return jnp.pad(x, [(0, s - d) for d, s in zip(x.shape, shape)])


def gate_split(x_ZxG: jax.Array, hidden: int, hidden_p: int) -> jax.Array:
  """(..., G) -> (..., 4, Hp) zero-padded per gate; a free reshape when hidden == hidden_p."""
  x = x_ZxG.reshape(*x_ZxG.shape[:-1], NUM_GATES, hidden)
  return pad_to(x, (*x.shape[:-1], hidden_p))


def gate_merge(x_Zx4xHp: jax.Array, hidden: int) -> jax.Array:
  """(..., 4, Hp) -> (..., G), dropping the padded units."""
  x = x_Zx4xHp[..., :hidden]
  return x.reshape(*x.shape[:-2], NUM_GATES * hidden)


def weight_layout(w_hh_HxG: jax.Array, hidden_p: int, compute_dtype) -> jax.Array:
  """W_hh as (Hp, 4, Hp) in the matmul dtype, cast once outside the time loop."""
  w = gate_split(w_hh_HxG.astype(jnp.float32), w_hh_HxG.shape[0], hidden_p)
  return pad_to(w, (hidden_p, NUM_GATES, hidden_p)).astype(compute_dtype)


def weight_grad(h_in_ZxHp: jax.Array, dgates_Zx4xHp: jax.Array, hidden: int,
                compute_dtype) -> jax.Array:
  """dW_hh = sum over steps and rows of h_in^T dgates: ONE matmul over all B*L positions.

  `h_in` is the state that entered the recurrent matmul (after resets). Operands in the matmul
  dtype with f32 accumulation, like the forward matmul. Returns (H, G) f32.
  """
  h = h_in_ZxHp.reshape(-1, h_in_ZxHp.shape[-1]).astype(compute_dtype)
  dg = dgates_Zx4xHp.reshape(-1, dgates_Zx4xHp.shape[-2] * dgates_Zx4xHp.shape[-1])
  dw = jnp.dot(h.T, dg.astype(compute_dtype), preferred_element_type=jnp.float32)
  dw = dw.reshape(h.shape[-1], NUM_GATES, -1)[:hidden]
  return gate_merge(dw, hidden)


# ---------------------------------------------------------------------------------------------
# Cell math on values (runs inside the kernels; plain jnp so it also runs in interpret mode).
# ---------------------------------------------------------------------------------------------


def cell_forward(a_i, a_f, a_g, a_o, c_in):
  """Gate nonlinearities and update from f32 pre-activations; same op order as lstm_cell."""
  i = jax.nn.sigmoid(a_i)
  f = jax.nn.sigmoid(a_f)
  g = jnp.tanh(a_g)
  o = jax.nn.sigmoid(a_o)
  c_new = f * c_in + i * g
  h_new = o * jnp.tanh(c_new)
  return (i, f, g, o), h_new, c_new


def cell_backward(i, f, g, o, c_in, dout, dh, dc, m):
  """One step's local gradients, all f32 (rows, H) values.

  Args:
    i, f, g, o: activated gates saved by the forward pass.
    c_in: cell state that entered the step (after the reset).
    dout: cotangent of this step's output.
    dh, dc: cotangents of the state carried out of this step.
    m: (rows, 1) bool, the step's mask.

  Returns:
    ((da_i, da_f, da_g, da_o) pre-activation gradients, dc_in the cotangent of c_in). The
    cotangent of h_in is `where(m, 0, dh) + sum_k da_k @ W_k^T`, done by the caller's matmul.
  """
  # A masked step outputs zero and carries (h, c) through unchanged, so only real steps reach
  # the cell; c' is recomputed (two flops) instead of being saved.
  c_new = f * c_in + i * g
  tc = jnp.tanh(c_new)
  dh_new = jnp.where(m, dout + dh, 0.0)
  dc_new = jnp.where(m, dc, 0.0) + dh_new * o * (1.0 - tc * tc)
  da_i = dc_new * g * i * (1.0 - i)
  da_f = dc_new * c_in * f * (1.0 - f)
  da_g = dc_new * i * (1.0 - g * g)
  da_o = dh_new * tc * o * (1.0 - o)
  dc_in = jnp.where(m, 0.0, dc) + dc_new * f
  return (da_i, da_f, da_g, da_o), dc_in


def dot_t(a, b):
  """a @ b^T with f32 accumulation (the backward's da @ W_k^T without materialising W^T)."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
