"""Picks the implementation of `lstm_recurrence`: the XLA scan or one of the Pallas kernels.

Every implementation returned here has `lstm_recurrence`'s signature and semantics:
  f(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH, *, compute_dtype)
    -> (h_BxLxH, LSTMState(h_BxH, c_BxH))
(B batch, L time steps, H hidden size, G = 4H gates), and is differentiable.

impl:
  "xla"                the lax.scan in lstmrec_jax/core/lstm.py (the reference, runs anywhere);
  "pallas_step"        kernels/lstm_step.py, one fused kernel per time step inside a lax.scan;
  "pallas_persistent"  kernels/lstm_persistent.py, the whole time loop in one kernel;
  "pallas"             the better of the two for the shape, chosen per call: persistent while the
                       padded H is <= 128 (W_hh fits on chip), else the step kernel (on TPU always
                       persistent: the step kernel's hidden tiles are below Mosaic's 128 lanes);
  "auto"               what measured fastest (benchmarks/README.md, H200): the persistent kernel on
                       a GPU while the padded H is <= 128, the XLA scan everywhere else (the step
                       kernel lost to the scan at every shape, H > 128 is not measured yet; TPU
                       is not validated). Never warns: on CPU it simply is "xla".
Pallas on CPU can only be interpreted (slow; for tests), so a Pallas impl asked for on CPU falls
back to "xla" with a warning, unless interpret=True was passed explicitly or the environment sets
LSTMREC_PALLAS_INTERPRET=1 (which reaches callers that cannot pass it, e.g. `lstm_layer(impl=)`
in the reduced GPU suite).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import jax
import jax.numpy as jnp

from lstmrec_jax.kernels import lstm_common as common
from lstmrec_jax.kernels import lstm_persistent
from lstmrec_jax.kernels import lstm_step
from lstmrec_jax.core import lstm as lstm_lib

IMPLS = ("xla", "auto", "pallas", "pallas_step", "pallas_persistent")
# Padded hidden size up to which "pallas" picks the persistent kernel.
_PERSISTENT_MAX_HIDDEN = 128

INTERPRET_ENV = "LSTMREC_PALLAS_INTERPRET"


def _fits_persistent(hidden: int) -> bool:
  """Whether W_hh of hidden size H is small enough for the persistent kernel (padded H <= 128)."""
  return common.next_pow2(hidden) <= _PERSISTENT_MAX_HIDDEN

_log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()


def _platform(backend: str) -> str:
  """'auto' -> the default JAX backend; 'cuda'/'rocm' -> 'gpu'."""
  name = jax.default_backend() if backend == "auto" else backend
  return {"cuda": "gpu", "rocm": "gpu"}.get(name, name)


def default_impl() -> str:
  """'pallas' on a GPU, else 'xla' (CPU has no compiled Pallas; TPU is not validated yet)."""
  return "pallas" if _platform("auto") == "gpu" else "xla"


def get_recurrence(impl: str, *, backend: str = "auto", interpret: bool | None = None,
                   step_blocks: lstm_step.StepBlocks | None = None,
                   persistent_blocks: lstm_persistent.PersistentBlocks | None = None
                   ) -> Callable[..., tuple[jax.Array, lstm_lib.LSTMState]]:
  """Returns an `lstm_recurrence`-compatible function for `impl`.

  Args:
    impl: one of IMPLS (see the module docstring).
    backend: 'auto' (jax.default_backend()), 'cpu', 'gpu' or 'tpu': the lowering the kernels use.
    interpret: True runs the Pallas kernels in the interpreter (any backend, slow); None means
      "compiled on GPU/TPU, fall back to xla on CPU" unless $LSTMREC_PALLAS_INTERPRET is 1.
    step_blocks, persistent_blocks: block sizes; None means the kernels' defaults.

  Returns:
    f(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH, *, compute_dtype=f32); its
    `impl` attribute names what actually runs ("pallas" resolves per call).

  Raises:
    ValueError: for an unknown impl or backend.
  """
  if impl not in IMPLS:
    raise ValueError(f"unknown LSTM impl {impl!r}; expected one of {IMPLS}")
  if interpret is None and os.environ.get(INTERPRET_ENV) == "1":
    interpret = True
  platform = _platform(backend)
  if platform not in ("cpu", "gpu", "tpu"):
    raise ValueError(f"unknown backend {backend!r}; expected 'auto', 'cpu', 'gpu' or 'tpu'")
  if impl == "xla" or (impl == "auto" and platform != "gpu" and not interpret):
    return lstm_lib.lstm_recurrence
  if platform == "cpu" and not interpret:
    if (impl, platform) not in _warned:
      _warned.add((impl, platform))
      _log.warning("LSTM impl %r asked for on CPU, where Pallas only runs interpreted; using "
                   "'xla' (pass interpret=True to run the kernel anyway).", impl)
    return lstm_lib.lstm_recurrence

  kernel_backend = None if interpret else platform
  step = functools.partial(lstm_step.lstm_recurrence_step, blocks=step_blocks or
                           lstm_step.StepBlocks(), interpret=interpret, backend=kernel_backend)
  persistent = functools.partial(
      lstm_persistent.lstm_persistent, blocks=persistent_blocks or
      lstm_persistent.PersistentBlocks(), interpret=interpret, backend=kernel_backend)

  def choose(hidden: int):
    if impl == "auto":
      return persistent if _fits_persistent(hidden) else lstm_lib.lstm_recurrence
    if impl == "pallas_step":
      return step
    if impl == "pallas_persistent" or platform == "tpu":
      return persistent
    return persistent if _fits_persistent(hidden) else step

  def recurrence(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH, *,
                 compute_dtype=jnp.float32):
    return choose(w_hh_HxG.shape[0])(xp_BxLxG, w_hh_HxG, mask_BxL, resets_BxL, h0_BxH, c0_BxH,
                                     compute_dtype=compute_dtype)

  recurrence.impl = impl
  recurrence.__name__ = f"lstm_recurrence_{impl}"
  return recurrence


def resolved_impl(impl: str, hidden: int, *, backend: str = "auto",
                  interpret: bool | None = None) -> str:
  """What `get_recurrence(impl, ...)` runs for hidden size H.

  E.g. ('pallas', 64) -> 'pallas_persistent' and ('pallas', 256) -> 'pallas_step' on a GPU;
  anything but interpret=True -> 'xla' on CPU.
  """
  platform = _platform(backend)
  if interpret is None and os.environ.get(INTERPRET_ENV) == "1":
    interpret = True
  if impl == "xla" or (platform == "cpu" and not interpret):
    return "xla"
  if impl == "auto":
    if platform != "gpu" and not interpret:
      return "xla"
    return "pallas_persistent" if _fits_persistent(hidden) else "xla"
  if impl != "pallas":
    return impl
  if platform == "tpu" or _fits_persistent(hidden):
    return "pallas_persistent"
  return "pallas_step"
