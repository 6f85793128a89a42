"""The Pallas LSTM kernels against `lstmrec_jax.core.lstm.lstm_recurrence`.

Written once, run twice: in the Pallas interpreter on CPU (always) and compiled on the device
(`native` ids, marked `gpu`, skipped where jax has no GPU). Shapes are tiny because interpret mode
is slow; "ragged" sizes are not multiples of the blocks, so the padding paths run too.

Shape legend: B batch, L time steps, H hidden size, G = 4H gates, E input size.
"""

from __future__ import annotations

import functools
import logging

import jax
from jax import export
import jax.numpy as jnp
import numpy as np
import pytest

from lstmrec_jax.kernels import dispatch
from lstmrec_jax.kernels import lstm_common
from lstmrec_jax.kernels import lstm_persistent
from lstmrec_jax.kernels import lstm_step
from lstmrec_jax.core import lstm as lstm_lib

ON_GPU = jax.default_backend() == "gpu"
MODES = [
    pytest.param(True, id="interpret"),
    pytest.param(False, id="native",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="needs a GPU")]),
]
# f32 is compared tightly (only the summation order differs; natively also the GPU's tanh/exp
# implementations); bf16 matmul operands round h to 8 bits, and a rounding flip early in the
# sequence moves later steps by ~1e-2.
TOL = {"f32": dict(atol=2e-5, rtol=2e-5), "bf16": dict(atol=3e-2, rtol=3e-2)}
NATIVE_TOL = {"f32": dict(atol=1e-4, rtol=1e-4), "bf16": TOL["bf16"]}


def _tol(dtype: str, interpret: bool):
  return (TOL if interpret else NATIVE_TOL)[dtype]
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


@pytest.fixture(autouse=True)
def _exact_f32_matmuls():
  # On a GPU both XLA and Triton would otherwise use TF32 for f32 matmuls.
  with jax.default_matmul_precision("highest"):
    yield


def _kernel(name: str, interpret: bool):
  """The kernels under test with small blocks in the interpreter, >= 16 (Triton) natively."""
  small = interpret
  if name == "step":
    blocks = lstm_step.StepBlocks(block_b=4, block_h=8) if small else lstm_step.StepBlocks()
    return functools.partial(lstm_step.lstm_recurrence_step, blocks=blocks, interpret=interpret)
  resident = {"persistent": None, "persistent_streamed": False}[name]
  blocks = lstm_persistent.PersistentBlocks(block_b=4 if small else 16, resident_weights=resident)
  return functools.partial(lstm_persistent.lstm_persistent, blocks=blocks, interpret=interpret)


def _case(name: str, seed: int = 0) -> dict[str, jax.Array]:
  """Inputs of lstm_recurrence. 'ragged' and 'aligned' have right padding, an interior masked
  step, packed rows (resets, one on a masked step) and a non-zero initial state; 'full' is
  unmasked with no resets and a zero initial state."""
  batch, length, hidden = {"ragged": (5, 6, 12), "aligned": (8, 4, 16), "full": (8, 5, 16)}[name]
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  xp = jax.random.normal(ks[0], (batch, length, 4 * hidden))
  w_hh = jax.random.normal(ks[1], (hidden, 4 * hidden)) * (1.5 / np.sqrt(hidden))
  if name == "full":
    zeros = jnp.zeros((batch, hidden))
    return dict(xp=xp, w_hh=w_hh, mask=jnp.ones((batch, length), bool), resets=None, h0=zeros,
                c0=zeros)
  lengths = np.minimum(np.array([length, length - 2, 3, length, 1, 2, length, 4])[:batch], length)
  mask = np.arange(length)[None, :] < lengths[:, None]
  mask[0, 2] = False                     # interior masked step
  resets = np.zeros((batch, length), bool)
  resets[1, 2] = True                    # a second history starts inside row 1
  resets[3, [0, 2]] = True               # row 3: reset at the start and mid-row
  resets[0, 2] = True                    # a reset on a masked step: the state becomes zero
  return dict(xp=xp, w_hh=w_hh, mask=jnp.asarray(mask), resets=jnp.asarray(resets),
              h0=jax.random.normal(ks[2], (batch, hidden)) * 0.5,
              c0=jax.random.normal(ks[3], (batch, hidden)) * 0.5)


def _args(case):
  return case["xp"], case["w_hh"], case["mask"], case["resets"], case["h0"], case["c0"]


def _assert_close(actual, expected, tol, what):
  np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                             err_msg=what, **tol)


# (kernel, dtype, case) combinations: every kernel on every case in f32, bf16 on the hard cases.
COMBOS = [(k, d, c) for k in ("step", "persistent") for d, c in
          (("f32", "ragged"), ("f32", "aligned"), ("f32", "full"), ("bf16", "ragged"),
           ("bf16", "aligned"))] + [("persistent_streamed", "f32", "ragged")]


@pytest.mark.parametrize("interpret", MODES)
@pytest.mark.parametrize("kernel,dtype,case", COMBOS)
def test_forward_matches_lstm_recurrence(kernel, dtype, case, interpret):
  args = _args(_case(case))
  cd = DTYPES[dtype]
  out, (h_t, c_t) = jax.jit(functools.partial(_kernel(kernel, interpret), compute_dtype=cd))(
      *args)
  ref_out, (ref_h, ref_c) = lstm_lib.lstm_recurrence(*args, compute_dtype=cd)
  assert out.shape == ref_out.shape and out.dtype == jnp.float32
  _assert_close(out, ref_out, _tol(dtype, interpret), "h for every step")
  _assert_close(h_t, ref_h, _tol(dtype, interpret), "final h")
  _assert_close(c_t, ref_c, _tol(dtype, interpret), "final c")
  if case != "full":  # padded steps output exactly zero
    assert not np.any(np.asarray(out)[~np.asarray(args[2])])


@pytest.mark.parametrize("interpret", MODES)
@pytest.mark.parametrize("kernel,dtype,case", COMBOS)
def test_gradients_match_lstm_recurrence(kernel, dtype, case, interpret):
  c = _case(case)
  cd = DTYPES[dtype]
  mask, resets = c["mask"], c["resets"]
  ks = jax.random.split(jax.random.PRNGKey(1), 3)
  ct_out = jax.random.normal(ks[0], c["xp"].shape[:2] + (c["h0"].shape[1],))
  ct_h, ct_c = (jax.random.normal(k, c["h0"].shape) for k in ks[1:])

  def loss(fn):
    def f(xp, w_hh, h0, c0):  # a random linear functional of every output
      out, (h_t, c_t) = fn(xp, w_hh, mask, resets, h0, c0, compute_dtype=cd)
      return jnp.sum(out * ct_out) + jnp.sum(h_t * ct_h) + jnp.sum(c_t * ct_c)
    return f

  primals = (c["xp"], c["w_hh"], c["h0"], c["c0"])
  value, grads = jax.jit(jax.value_and_grad(loss(_kernel(kernel, interpret)),
                                            argnums=(0, 1, 2, 3)))(*primals)
  ref_value, ref_grads = jax.value_and_grad(loss(lstm_lib.lstm_recurrence),
                                            argnums=(0, 1, 2, 3))(*primals)
  _assert_close(value, ref_value, _tol(dtype, interpret), "loss")
  for name, g, ref in zip(("dxp", "dw_hh", "dh0", "dc0"), grads, ref_grads):
    assert g.shape == ref.shape and g.dtype == ref.dtype, name
    scale = float(jnp.max(jnp.abs(ref))) or 1.0  # compare relative to the gradient's size
    _assert_close(g / scale, ref / scale, _tol(dtype, interpret), name)


@pytest.mark.parametrize("interpret", MODES)
def test_single_fused_step_matches_reference(interpret):
  c = _case("ragged")
  t = 2  # a step with a masked row, resets and a reset on a masked row
  args = (c["xp"][:, t], c["w_hh"], c["mask"][:, t], c["resets"][:, t], c["h0"], c["c0"])
  blocks = lstm_step.StepBlocks(block_b=4, block_h=8) if interpret else lstm_step.StepBlocks()
  out, (h, cc) = lstm_step.lstm_step(*args, blocks=blocks, interpret=interpret)
  ref_out, (ref_h, ref_c) = lstm_step.lstm_step_reference(*args)
  for a, b, what in ((out, ref_out, "out"), (h, ref_h, "h"), (cc, ref_c, "c")):
    _assert_close(a, b, _tol("f32", interpret), what)


def test_references_match_lstm_recurrence():
  args = _args(_case("ragged"))
  expected = lstm_lib.lstm_recurrence(*args)
  for ref in (lstm_step.lstm_recurrence_step_reference, lstm_persistent.lstm_persistent_reference):
    for a, b in zip(jax.tree.leaves(ref(*args)), jax.tree.leaves(expected)):
      _assert_close(a, b, TOL["f32"], ref.__name__)


@pytest.mark.parametrize("wrapper", [lstm_step.lstm_recurrence_step,
                                     lstm_persistent.lstm_persistent])
def test_wrappers_reject_bad_shapes_and_blocks(wrapper):
  c = _case("ragged")
  xp, w, mask, resets, h0, c0 = _args(c)
  run = functools.partial(wrapper, interpret=True)
  with pytest.raises(ValueError, match="G = 4H"):
    run(xp[..., :-1], w, mask, resets, h0, c0)
  with pytest.raises(ValueError, match="mask shape"):
    run(xp, w, mask[:, :-1], resets, h0, c0)
  with pytest.raises(ValueError, match="resets shape"):
    run(xp, w, mask, resets[:-1], h0, c0)
  with pytest.raises(ValueError, match="c0 shape"):
    run(xp, w, mask, resets, h0, c0[:, :-1])
  with pytest.raises(ValueError, match="xp must be"):
    run(xp[0], w, mask, resets, h0, c0)
  bad = (lstm_step.StepBlocks(block_b=0) if wrapper is lstm_step.lstm_recurrence_step
         else lstm_persistent.PersistentBlocks(block_b=0))
  with pytest.raises(ValueError, match="block_b"):
    run(xp, w, mask, resets, h0, c0, blocks=bad)
  # Compiled for a GPU, blocks must be powers of two >= 16 (Triton); checked before lowering.
  with pytest.raises(ValueError, match="power of two"):
    wrapper(xp, w, mask, resets, h0, c0, interpret=False, backend="gpu",
            blocks=type(bad)(block_b=8))


@pytest.mark.skipif(ON_GPU, reason="the native variants cover this on a GPU")
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_kernels_lower_to_triton_for_cuda(dtype):
  """Without a GPU: the Triton lowering (Pallas -> Triton IR) accepts both kernels, forward and
  backward. Triton's own compile to PTX, and speed, are left to the GPU suite."""
  batch, length, hidden = 20, 3, 48  # padded to 32 rows and 64 units
  args = (jnp.zeros((batch, length, 4 * hidden)), jnp.zeros((hidden, 4 * hidden)),
          jnp.ones((batch, length), bool), jnp.zeros((batch, length), bool),
          jnp.zeros((batch, hidden)), jnp.zeros((batch, hidden)))
  triton_call = "__gpu$xla.gpu.triton"
  for wrapper in (lstm_step.lstm_recurrence_step, lstm_persistent.lstm_persistent):
    def loss(*a, wrapper=wrapper):
      out, (h_t, c_t) = wrapper(*a, compute_dtype=DTYPES[dtype], interpret=False, backend="gpu")
      return jnp.sum(out) + jnp.sum(h_t) + jnp.sum(c_t)
    exported = export.export(
        jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 4, 5))), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(triton_call)])(*args)
    assert exported.mlir_module().count(triton_call) >= 2, wrapper.__name__  # fwd and bwd


def test_dispatch_xla_and_cpu_fallback(caplog):
  assert dispatch.get_recurrence("xla") is lstm_lib.lstm_recurrence
  with pytest.raises(ValueError, match="unknown LSTM impl"):
    dispatch.get_recurrence("cudnn")
  with pytest.raises(ValueError, match="unknown backend"):
    dispatch.get_recurrence("pallas", backend="metal")
  dispatch._warned.clear()
  with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
    first = dispatch.get_recurrence("pallas", backend="cpu")
    second = dispatch.get_recurrence("pallas", backend="cpu")
  assert first is lstm_lib.lstm_recurrence and second is lstm_lib.lstm_recurrence
  assert len([r for r in caplog.records if "using 'xla'" in r.getMessage()]) == 1
  assert dispatch.resolved_impl("pallas", 64, backend="cpu") == "xla"
  assert dispatch.resolved_impl("pallas", 64, backend="gpu") == "pallas_persistent"
  assert dispatch.resolved_impl("pallas", 256, backend="gpu") == "pallas_step"
  assert dispatch.resolved_impl("pallas_step", 64, backend="cpu", interpret=True) == "pallas_step"
  if not ON_GPU and jax.default_backend() == "cpu":
    assert dispatch.default_impl() == "xla"


def test_dispatch_auto_picks_what_measured_fastest(caplog):
  """'auto': the persistent kernel on a GPU while H <= 128, else the XLA scan, silently on CPU."""
  dispatch._warned.clear()
  with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
    assert dispatch.get_recurrence("auto", backend="cpu") is lstm_lib.lstm_recurrence
  assert not caplog.records
  assert dispatch.resolved_impl("auto", 64, backend="cpu") == "xla"
  assert dispatch.resolved_impl("auto", 128, backend="gpu") == "pallas_persistent"
  assert dispatch.resolved_impl("auto", 256, backend="gpu") == "xla"
  assert dispatch.resolved_impl("auto", 64, backend="tpu") == "xla"
  # Interpreted, "auto" runs the persistent kernel and gives lstm_recurrence's result.
  args = _args(_case("ragged"))
  expected = lstm_lib.lstm_recurrence(*args)
  got = dispatch.get_recurrence("auto", interpret=True,
                                persistent_blocks=lstm_persistent.PersistentBlocks(4))(*args)
  _assert_close(got[0], expected[0], TOL["f32"], "auto")


def test_dispatch_interpret_runs_the_kernels():
  args = _args(_case("ragged"))
  expected = lstm_lib.lstm_recurrence(*args)
  for impl in ("pallas", "pallas_step", "pallas_persistent"):
    fn = dispatch.get_recurrence(impl, interpret=True, step_blocks=lstm_step.StepBlocks(4, 8),
                                 persistent_blocks=lstm_persistent.PersistentBlocks(4))
    assert fn.impl == impl
    for a, b in zip(jax.tree.leaves(fn(*args)), jax.tree.leaves(expected)):
      _assert_close(a, b, TOL["f32"], impl)


@pytest.mark.parametrize("interpret", MODES)
def test_training_matches_xla(interpret):
  """Three SGD steps on a toy regression through the layer give the same losses either way."""
  batch, length, emb, hidden = 6, 5, 8, 12
  ks = jax.random.split(jax.random.PRNGKey(3), 6)
  x = jax.random.normal(ks[0], (batch, length, emb))
  y = jax.random.normal(ks[1], (batch, length))
  mask = jnp.arange(length)[None, :] < jnp.array([5, 3, 5, 1, 4, 2])[:, None]
  resets = jnp.zeros((batch, length), bool).at[2, 3].set(True)
  params0 = dict(w_ih=jax.random.normal(ks[2], (emb, 4 * hidden)) * 0.3,
                 w_hh=jax.random.normal(ks[3], (hidden, 4 * hidden)) * 0.3,
                 b=jnp.zeros((4 * hidden,)), w_out=jax.random.normal(ks[4], (hidden,)) * 0.3)

  def train(recurrence):
    def loss_fn(p):
      xp = lstm_lib.input_projection(x, p["w_ih"], p["b"])
      zeros = jnp.zeros((batch, hidden))
      h, _ = recurrence(xp, p["w_hh"], mask, resets, zeros, zeros)
      err = jnp.where(mask, h @ p["w_out"] - y, 0.0)
      return jnp.sum(err ** 2) / jnp.sum(mask)

    @jax.jit
    def sgd_step(p):
      loss, g = jax.value_and_grad(loss_fn)(p)
      return jax.tree.map(lambda a, b: a - 0.5 * b, p, g), loss

    params, losses = params0, []
    for _ in range(3):
      params, loss = sgd_step(params)
      losses.append(float(loss))
    return losses, params

  ref_losses, ref_params = train(lstm_lib.lstm_recurrence)
  assert ref_losses[-1] < ref_losses[0]  # the toy problem does train
  for impl in ("pallas_step", "pallas_persistent"):
    fn = dispatch.get_recurrence(
        impl, interpret=interpret,
        step_blocks=lstm_step.StepBlocks(4, 8) if interpret else None,
        persistent_blocks=lstm_persistent.PersistentBlocks(4) if interpret else None)
    losses, params = train(fn)
    np.testing.assert_allclose(losses, ref_losses, err_msg=impl, **_tol("f32", interpret))
    for name in params:
      _assert_close(params[name], ref_params[name], _tol("f32", interpret), impl + name)


def test_padded_units_and_rows_stay_zero():
  """The padding argument of lstm_common's docstring, on the raw (padded) kernel outputs."""
  c = _case("ragged")
  plan = lstm_persistent._make_plan(5, 6, 12, jnp.float32, lstm_persistent.PersistentBlocks(4),
                                    True, None)
  assert (plan.batch_p, plan.hidden_p) == (8, 16)
  flags = lambda x: lstm_common.pad_to(x.astype(jnp.float32)[..., None], (8, 6, 1))
  out, h_t, c_t = lstm_persistent._forward_call(plan, save=False)(
      lstm_common.pad_to(lstm_common.gate_split(c["xp"], 12, 16), (8, 6, 4, 16)),
      lstm_common.weight_layout(c["w_hh"], 16, jnp.float32), flags(c["mask"]),
      flags(c["resets"]), lstm_common.pad_to(c["h0"], (8, 16)),
      lstm_common.pad_to(c["c0"], (8, 16)))
  for x in (out[..., 12:], h_t[:, 12:], c_t[:, 12:], out[5:], h_t[5:], c_t[5:]):
    assert not np.any(np.asarray(x))
  np.testing.assert_array_equal(
      lstm_common.gate_merge(lstm_common.gate_split(c["xp"], 12, 16), 12), c["xp"])


# ---------------------------------------------------------------------------------------------
# TPU, without a TPU (kernels/README.md, "TPU"): the persistent kernel (what dispatch runs on a
# TPU for impl='pallas') in Pallas's TPU interpret mode, and compiled for TPU by libtpu ahead of
# time; 'auto' stays on the XLA scan on a TPU.
# ---------------------------------------------------------------------------------------------

_TPU_BLOCKS = lstm_persistent.PersistentBlocks(block_b=8)  # one Mosaic sublane tile of rows


def _two_tile_case() -> dict[str, jax.Array | None]:
  """The 'ragged' case twice over (B = 10 -> two 8-row programs, one half padding)."""
  a, b = _case("ragged", seed=0), _case("ragged", seed=5)
  return {k: a[k] if k == "w_hh" else jnp.concatenate([a[k], b[k]]) for k in a}


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_persistent_kernel_in_tpu_interpret_mode(dtype):
  """TPU interpret mode (pltpu.InterpretParams): VMEM/HBM simulated, out-of-bounds reads raise,
  fresh buffers are NaN, the 'parallel' batch grid runs in random order; forward and gradients
  equal lstm_recurrence's."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  assert isinstance(lstm_common.pallas_interpret("interpret_tpu"), pltpu.InterpretParams)
  c = _two_tile_case()
  cd = DTYPES[dtype]
  plan = lstm_persistent._make_plan(10, 6, 12, cd, _TPU_BLOCKS, True, "tpu")
  assert (plan.platform, plan.block_b, plan.batch_p) == ("interpret_tpu", 8, 16)
  kernel = functools.partial(lstm_persistent.lstm_persistent, blocks=_TPU_BLOCKS, interpret=True,
                             backend="tpu", compute_dtype=cd)
  ks = jax.random.split(jax.random.PRNGKey(2), 3)
  ct_out = jax.random.normal(ks[0], c["xp"].shape[:2] + (c["h0"].shape[1],))
  ct_h, ct_c = (jax.random.normal(k, c["h0"].shape) for k in ks[1:])

  def loss(fn):
    def f(xp, w_hh, h0, c0):
      out, (h_t, c_t) = fn(xp, w_hh, c["mask"], c["resets"], h0, c0)
      return jnp.sum(out * ct_out) + jnp.sum(h_t * ct_h) + jnp.sum(c_t * ct_c), out
    return f

  primals = (c["xp"], c["w_hh"], c["h0"], c["c0"])
  (value, out), grads = jax.jit(jax.value_and_grad(loss(kernel), argnums=(0, 1, 2, 3),
                                                   has_aux=True))(*primals)
  (ref_value, ref_out), ref_grads = jax.value_and_grad(
      loss(functools.partial(lstm_lib.lstm_recurrence, compute_dtype=cd)), argnums=(0, 1, 2, 3),
      has_aux=True)(*primals)
  tol = TOL[dtype]
  _assert_close(out, ref_out, tol, "h for every step")
  assert not np.any(np.asarray(out)[~np.asarray(c["mask"])])
  _assert_close(value, ref_value, tol, "loss")
  for name, g, ref in zip(("dxp", "dw_hh", "dh0", "dc0"), grads, ref_grads):
    scale = float(jnp.max(jnp.abs(ref))) or 1.0
    _assert_close(g / scale, ref / scale, tol, name)


def test_tpu_block_rules_are_checked_before_lowering():
  """Mosaic needs batch blocks in multiples of 8 sublanes: refused in TPU interpret mode and
  compiled for TPU alike, with the reason; the generic interpreter keeps accepting any size."""
  args = _args(_case("ragged"))
  for interpret in (True, False):
    with pytest.raises(ValueError, match="multiple of 8"):
      lstm_persistent.lstm_persistent(*args, interpret=interpret, backend="tpu",
                                      blocks=lstm_persistent.PersistentBlocks(block_b=4))
  # The default block clamps to the problem but never below one sublane tile.
  plan = lstm_persistent._make_plan(3, 2, 5, jnp.float32, lstm_persistent.PersistentBlocks(),
                                    None, "tpu")
  assert (plan.platform, plan.block_b, plan.batch_p, plan.hidden_p) == ("tpu", 8, 8, 8)
  assert lstm_persistent._make_plan(3, 2, 5, jnp.float32, lstm_persistent.PersistentBlocks(4),
                                    True, None).platform == "interpret"


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_persistent_kernel_exports_for_tpu(dtype):
  """Without libtpu: jax.export lowers the kernel, forward and backward, to Mosaic for the 'tpu'
  platform, which applies Pallas's TPU block-shape and memory-space checks (the (8, 128) rule on
  every BlockSpec). Mosaic's own compile is test_persistent_kernel_compiles_for_tpu."""
  batch, length, hidden = 20, 3, 48  # padded to 24 rows and 64 units, 3 programs of 8 rows
  args = (jnp.zeros((batch, length, 4 * hidden)), jnp.zeros((hidden, 4 * hidden)),
          jnp.ones((batch, length), bool), jnp.zeros((batch, length), bool),
          jnp.zeros((batch, hidden)), jnp.zeros((batch, hidden)))

  def loss(*a):
    out, (h_t, c_t) = lstm_persistent.lstm_persistent(
        *a, compute_dtype=DTYPES[dtype], interpret=False, backend="tpu", blocks=_TPU_BLOCKS)
    return jnp.sum(out) + jnp.sum(h_t) + jnp.sum(c_t)

  exported = export.export(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 4, 5))),
                           platforms=["tpu"])(*args)
  module = exported.mlir_module()
  assert module.count("tpu_custom_call") >= 2  # fwd and bwd
  assert "lstm_persistent" in module and "lstm_persistent_backward" in module


_AOT_SCRIPT = r"""
import sys
import jax, jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding
from lstmrec_jax.kernels import lstm_persistent
topology, dtype = sys.argv[1], sys.argv[2]
device = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices[0]
sds = lambda s, d=jnp.float32: jax.ShapeDtypeStruct(s, d, sharding=SingleDeviceSharding(device))
B, L, H = 20, 5, 48
args = (sds((B, L, 4 * H)), sds((H, 4 * H)), sds((B, L), bool), sds((B, L), bool), sds((B, H)),
        sds((B, H)))
def loss(*a):
  out, (h, c) = lstm_persistent.lstm_persistent(
      *a, compute_dtype=jnp.dtype(dtype), interpret=False, backend="tpu",
      blocks=lstm_persistent.PersistentBlocks(block_b=8))
  return jnp.sum(out) + jnp.sum(h) + jnp.sum(c)
for fn in (loss, jax.grad(loss, argnums=(0, 1, 4, 5))):
  compiled = jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",)).compile()
  assert "tpu_custom_call" in compiled.as_text()
print("COMPILED_FOR_TPU", topology, dtype)
"""


def _libtpu_dir() -> str | None:
  """Where libtpu is importable from: $LSTMREC_LIBTPU_DIR (a `pip install --target` folder, so
  the test process itself never loads it), or this environment."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  folder = os.environ.get("LSTMREC_LIBTPU_DIR")
  if folder:
    return folder if os.path.isdir(os.path.join(folder, "libtpu")) else None
  spec = importlib.util.find_spec("libtpu")
  return "" if spec is not None else None


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="on a TPU the kernels run natively")
@pytest.mark.parametrize("topology,dtype", [("v5e:2x2", "bfloat16"), ("v4:2x2x1", "float32")])
def test_persistent_kernel_compiles_for_tpu(topology, dtype):
  """Deviceless AOT: libtpu's compiler (Mosaic included: layouts, VMEM allocation) compiles the
  kernel, forward and backward, for a TPU generation this machine does not have."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  folder = _libtpu_dir()
  if folder is None:
    pytest.skip("libtpu is not installed; `pip install --no-deps --target DIR libtpu==0.0.42.1` "
                "and set LSTMREC_LIBTPU_DIR=DIR to run the TPU compile check")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(p for p in (root, folder, os.environ.get("PYTHONPATH"))
                                        if p))
  proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, topology, dtype], env=env, cwd=root,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0 and "COMPILED_FOR_TPU" in proc.stdout, proc.stderr[-3000:]


def test_dispatch_auto_is_the_xla_scan_on_tpu(monkeypatch):
  """On a TPU (simulated: jax reports a 'tpu' backend) 'auto' and default_impl() are the XLA
  scan until a TPU run says otherwise; an explicit 'pallas' is the persistent kernel there."""
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  monkeypatch.delenv(dispatch.INTERPRET_ENV, raising=False)
  assert dispatch.default_impl() == "xla"
  for hidden in (16, 64, 128, 256):
    assert dispatch.get_recurrence("auto") is lstm_lib.lstm_recurrence
    assert dispatch.resolved_impl("auto", hidden) == "xla"
    assert dispatch.resolved_impl("pallas", hidden) == "pallas_persistent"
  assert dispatch.get_recurrence("pallas").impl == "pallas"
