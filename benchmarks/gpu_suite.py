"""GPU benchmark suite of the LSTM recurrence: our XLA scan and Pallas kernels against baselines.

Shape legend: B batch, L history length, E input size (= H here), H hidden size, G = 4H gates,
V catalog size.

For recommender shapes (B in 128/512/2048, L in 50/200, H in 64/128/256, bf16 and f32) it times
the forward and the forward+backward of one LSTM layer (input projection included) for:
  xla                our lstm_recurrence (hoisted projection + lax.scan);
  pallas_step        kernels/lstm_step.py (fused step kernel in a scan);
  pallas_persistent  kernels/lstm_persistent.py (time loop inside the kernel);
  flax_nnx           flax nnx.RNN(nnx.OptimizedLSTMCell), our weights loaded into its layout;
  cudnn_jax          cuDNN through jax.experimental.rnn.lstm (f32 only), weights packed flat;
  torch_cudnn        PyTorch nn.LSTM (cuDNN) on the same GPU, weights copied in;
and the whole training step of a Beauty-sized model (V=12102, E=H=64, L=50, B=256 and 2048 rows)
for each LSTM impl, if lstmrec_jax.model.modules and lstmrec_jax.losses are importable.

Every variant is checked in the same run against an f32 reference (our lstm_recurrence in f32
with exact f32 matmuls) on one fixed input: the forward compares h_BxLxH, the forward+backward
the gradient with respect to the input x (layout-free across frameworks); max abs error and the
error relative to the reference's max are recorded with pass/fail. Gate orders: ours, PyTorch's
and cuDNN's are all (i, f, g, o); flax's OptimizedLSTMCell splits its dense output as (i, f, g, o)
too, with the bias on dense_h. So the mapping is a transpose (PyTorch/cuDNN store W as G x in)
and putting our single bias b where each framework has its bias (PyTorch/cuDNN: b_ih = b,
b_hh = 0). A wrong mapping fails the check.

Timing: on-device, `jax.block_until_ready` (torch.cuda.synchronize for torch); the first call
(compile) is reported as compile_s, then --warmup untimed runs, then the median of --runs timed
runs, each on fresh random inputs made (and finished) before its clock starts.

Run on a GPU box from the repository root (about 5 minutes on one H100):
  timeout 330 python benchmarks/gpu_suite.py --out benchmarks/results/gpu_suite_h100_$(date +%F).json
Reduced mode (CPU, Pallas interpreted, tiny shapes, under a minute; what tests/test_gpu_suite.py
runs): python benchmarks/gpu_suite.py --reduced --out /tmp/gpu_suite.json

--budget_s (default 270) stops starting new work when the remaining budget is smaller than the
longest unit seen so far; everything not run is recorded as skipped, and the JSON is rewritten
after every unit, so even a killed run leaves its results.

This script imports no tensorflow and no ml_collections (the GPU box has neither); the JSON
records whether tensorflow ended up in sys.modules.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform as py_platform
import re
import statistics
import sys
import time
import traceback
from typing import Any, Callable

# Before jax starts: torch shares the GPU, so jax must not grab 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from lstmrec_jax.kernels import dispatch  # pylint: disable=g-import-not-at-top
from lstmrec_jax.kernels import lstm_persistent  # pylint: disable=g-import-not-at-top
from lstmrec_jax.kernels import lstm_step  # pylint: disable=g-import-not-at-top
from lstmrec_jax.core import lstm as lstm_lib  # pylint: disable=g-import-not-at-top

LAYER_VARIANTS = ("xla", "pallas_step", "pallas_persistent", "flax_nnx", "cudnn_jax",
                  "torch_cudnn")
STEP_IMPLS = ("xla", "pallas_step", "pallas_persistent")
MODES = ("fwd", "fwd_bwd")
DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}
# Errors relative to the reference's max |value|: f32 runs use TF32 matmuls by default on an
# H100 (XLA, Triton, cuDNN), bf16 rounds every step's h; gradients accumulate over L steps.
TOLERANCE = {("f32", "fwd"): 1e-2, ("f32", "fwd_bwd"): 2e-2,
             ("bf16", "fwd"): 5e-2, ("bf16", "fwd_bwd"): 1e-1}


class Unavailable(Exception):
  """A baseline that cannot run here (missing package, no GPU, unsupported dtype)."""


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int
  length: int
  hidden: int
  dtype: str  # key of DTYPES

  @property
  def events(self) -> int:
    return self.batch * self.length


# ---------------------------------------------------------------------------------------------
# Problem data and the f32 reference
# ---------------------------------------------------------------------------------------------


def make_params(hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Our layer parameters (E = H), at the usual 1/sqrt(H) scale, as numpy f32."""
  rng = np.random.default_rng(seed)
  scale = 1.0 / np.sqrt(hidden)
  g = 4 * hidden
  return {"w_ih": (rng.standard_normal((hidden, g)) * scale).astype(np.float32),
          "w_hh": (rng.standard_normal((hidden, g)) * scale).astype(np.float32),
          "b": (rng.standard_normal((g,)) * 0.1).astype(np.float32)}


def our_layer(params, x_BxLxE, compute_dtype, recurrence=lstm_lib.lstm_recurrence):
  """One layer the way lstm_layer runs it: hoisted projection, then the recurrence."""
  batch, length, _ = x_BxLxE.shape
  hidden = params["w_hh"].shape[0]
  xp = lstm_lib.input_projection(x_BxLxE, params["w_ih"], params["b"], compute_dtype)
  zeros = jnp.zeros((batch, hidden), jnp.float32)
  h, _ = recurrence(xp, params["w_hh"], jnp.ones((batch, length), bool), None, zeros, zeros,
                    compute_dtype=compute_dtype)
  return h


@dataclasses.dataclass
class Reference:
  x: np.ndarray         # the fixed check input, B x L x E
  cotangent: np.ndarray  # the fixed output cotangent, B x L x H
  h: np.ndarray
  dx: np.ndarray


def make_reference(shape: Shape, params) -> Reference:
  rng = np.random.default_rng(1234)
  x = rng.standard_normal((shape.batch, shape.length, shape.hidden)).astype(np.float32)
  ct = rng.standard_normal((shape.batch, shape.length, shape.hidden)).astype(np.float32)
  p = jax.tree.map(jnp.asarray, params)
  with jax.default_matmul_precision("highest"):  # exact f32, not TF32
    h = jax.jit(lambda p, x: our_layer(p, x, jnp.float32))(p, x)
    dx = jax.jit(jax.grad(lambda x: jnp.sum(our_layer(p, x, jnp.float32) * ct)))(x)
  return Reference(x, ct, np.asarray(h), np.asarray(dx))


# ---------------------------------------------------------------------------------------------
# Variants: build(shape, params, reference, settings) -> Runner
# ---------------------------------------------------------------------------------------------


class Runner:
  """One implementation at one shape: fresh inputs, the two timed modes, numpy outputs."""

  info: dict[str, Any] = {}

  def make_input(self, seed: int):
    raise NotImplementedError

  def from_numpy(self, x: np.ndarray):
    raise NotImplementedError

  def run(self, mode: str, x):
    raise NotImplementedError

  def block(self, result) -> None:
    raise NotImplementedError

  def output(self, mode: str, result) -> np.ndarray:
    """h_BxLxH for 'fwd', dL/dx for 'fwd_bwd', as f32 numpy."""
    raise NotImplementedError


class JaxRunner(Runner):
  """Any jax function (params, x_BxLxE) -> h_BxLxH; fwd_bwd is value_and_grad wrt params and x."""

  def __init__(self, forward: Callable, params, shape: Shape, cotangent: np.ndarray,
               info: dict[str, Any]):
    self.params = params
    self.shape = shape
    self.info = info
    ct = jnp.asarray(cotangent)
    self._fwd = jax.jit(forward)
    loss = lambda p, x: jnp.sum(forward(p, x).astype(jnp.float32) * ct)
    self._fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

  def make_input(self, seed: int):
    s = self.shape
    return jax.random.normal(jax.random.PRNGKey(seed), (s.batch, s.length, s.hidden), jnp.float32)

  def from_numpy(self, x):
    return jnp.asarray(x)

  def run(self, mode, x):
    return self._fwd(self.params, x) if mode == "fwd" else self._fwd_bwd(self.params, x)

  def block(self, result):
    jax.block_until_ready(result)

  def output(self, mode, result):
    if mode == "fwd":
      return np.asarray(result, np.float32)
    _, (_, dx) = result
    return np.asarray(dx, np.float32)


def build_ours(name: str, shape: Shape, params, ref: Reference, settings) -> Runner:
  compute_dtype = DTYPES[shape.dtype]
  info: dict[str, Any] = {}
  if name == "xla":
    recurrence = lstm_lib.lstm_recurrence
  elif name == "pallas_step":
    blocks = lstm_step.StepBlocks()
    recurrence = lambda *a, **k: lstm_step.lstm_recurrence_step(
        *a, **k, blocks=blocks, interpret=settings.interpret)
    info["blocks"] = dataclasses.asdict(blocks)
  else:
    # "_stream" re-reads W_hh every step even where the default would keep it on chip: an
    # opt-in variant (--variants) to measure that policy on hardware.
    blocks = lstm_persistent.PersistentBlocks(
        resident_weights=False if name == "pallas_persistent_stream" else None)
    recurrence = lambda *a, **k: lstm_persistent.lstm_persistent(
        *a, **k, blocks=blocks, interpret=settings.interpret)
    plan = lstm_persistent._make_plan(  # pylint: disable=protected-access
        shape.batch, shape.length, shape.hidden, compute_dtype, blocks, settings.interpret, None)
    info["blocks"] = dataclasses.asdict(blocks)
    info["resident_weights"] = plan.resident_weights
  if name != "xla":
    info["pallas_mode"] = "interpret" if settings.interpret else "compiled (Triton)"
  p = jax.tree.map(jnp.asarray, params)
  forward = lambda p, x: our_layer(p, x, compute_dtype, recurrence)
  return JaxRunner(forward, p, shape, ref.cotangent, info)


def build_flax(shape: Shape, params, ref: Reference, settings) -> Runner:
  del settings
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise Unavailable(f"flax not importable: {e}") from e
  h = shape.hidden
  dtype = None if shape.dtype == "f32" else DTYPES[shape.dtype]
  cell = nnx.OptimizedLSTMCell(h, h, dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  # Flax: y = x @ dense_i.kernel + h @ dense_h.kernel + dense_h.bias, split as (i, f, g, o):
  # our (E, G) / (H, G) layout and gate order as they are.
  cell.dense_i.kernel.value = jnp.asarray(params["w_ih"])
  cell.dense_h.kernel.value = jnp.asarray(params["w_hh"])
  cell.dense_h.bias.value = jnp.asarray(params["b"])
  rnn = nnx.RNN(cell, rngs=False)
  graphdef, p, rest = nnx.split(rnn, nnx.Param, ...)
  zeros = jnp.zeros((shape.batch, h), jnp.float32)

  def forward(p, x):
    model = nnx.merge(graphdef, p, rest)
    return model(x, initial_carry=(zeros, zeros))  # flax's carry is (c, h)

  import flax  # pylint: disable=g-import-not-at-top
  return JaxRunner(forward, p, shape, ref.cotangent,
                   {"flax": flax.__version__, "cell": "nnx.OptimizedLSTMCell",
                    "cell_dtype": str(dtype)})


def _cudnn_weights(params) -> np.ndarray:
  """cuDNN's flat LSTM weights, one layer: W_ih (G x E), W_hh (G x H), b_ih, b_hh, row-major."""
  g = params["b"].shape[0]
  return np.concatenate([params["w_ih"].T.ravel(), params["w_hh"].T.ravel(), params["b"],
                         np.zeros((g,), np.float32)])


def build_cudnn(shape: Shape, params, ref: Reference, settings) -> Runner:
  if shape.dtype != "f32":
    raise Unavailable("jax.experimental.rnn (cuDNN) supports f32 only")
  try:
    from jax.experimental import rnn  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise Unavailable(f"jax.experimental.rnn not importable: {e}") from e
  h = shape.hidden
  weights = jnp.asarray(_cudnn_weights(params))
  zeros = jnp.zeros((1, shape.batch, h), jnp.float32)
  seq_lengths = jnp.full((shape.batch,), shape.length, jnp.int32)
  on_gpu = jax.default_backend() == "gpu" and getattr(rnn, "gpu_rnn", None) is not None
  if on_gpu:
    def forward(w, x):
      y, _, _ = rnn.lstm(x, zeros, zeros, w, seq_lengths, h, h, 1, 0.0, False)
      return y
    info = {"path": "jax.experimental.rnn.lstm (cuDNN)"}
  elif settings.reduced:
    # No cuDNN here: run jax's own reference of the same API on the packed weights, which checks
    # our packing (what the GPU run relies on); its timings mean nothing.
    def forward(w, x):
      w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, h, h, 1, False)
      y, _, _ = rnn.lstm_ref(x, zeros, zeros, w_ih, w_hh, b_ih, b_hh, seq_lengths, h, h, 1,
                             0.0, False)
      return y
    info = {"path": "jax.experimental.rnn.lstm_ref (no cuDNN here: checks the weight packing "
                    "only; timings are not cuDNN's)"}
  else:
    raise Unavailable(f"cuDNN RNN needs a CUDA backend (have {jax.default_backend()!r})")
  return JaxRunner(forward, weights, shape, ref.cotangent, info)


class TorchRunner(Runner):
  """PyTorch nn.LSTM (cuDNN on a GPU) with our weights copied in."""

  def __init__(self, shape: Shape, params, ref: Reference, settings):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise Unavailable(f"torch not importable: {e}") from e
    self.torch = torch
    if torch.cuda.is_available():
      self.device = "cuda"
    elif settings.reduced:
      self.device = "cpu"
    else:
      raise Unavailable("torch sees no CUDA device")
    self.shape = shape
    self.dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[shape.dtype]
    h = shape.hidden
    lstm = torch.nn.LSTM(h, h, num_layers=1, batch_first=True)
    with torch.no_grad():  # PyTorch stores W as (G, in) with the same (i, f, g, o) order.
      lstm.weight_ih_l0.copy_(torch.from_numpy(params["w_ih"].T.copy()))
      lstm.weight_hh_l0.copy_(torch.from_numpy(params["w_hh"].T.copy()))
      lstm.bias_ih_l0.copy_(torch.from_numpy(params["b"]))
      lstm.bias_hh_l0.zero_()
    self.lstm = lstm.to(self.device, self.dtype)
    self.ct = torch.from_numpy(ref.cotangent).to(self.device)
    self.info = {"torch": torch.__version__, "device": self.device,
                 "cudnn": torch.backends.cudnn.version() if self.device == "cuda" else None,
                 "allow_tf32": bool(torch.backends.cudnn.allow_tf32)}

  def make_input(self, seed):
    gen = self.torch.Generator(device=self.device).manual_seed(seed)
    s = self.shape
    return self.torch.randn((s.batch, s.length, s.hidden), generator=gen, device=self.device,
                            dtype=self.dtype)

  def from_numpy(self, x):
    return self.torch.from_numpy(x).to(self.device, self.dtype)

  def run(self, mode, x):
    if mode == "fwd":
      with self.torch.no_grad():
        return self.lstm(x)[0]
    self.lstm.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = self.lstm(x)[0]
    loss = (y.float() * self.ct).sum()
    loss.backward()  # grads of the weights and of x, like jax's value_and_grad
    return loss, x.grad

  def block(self, result):
    if self.device == "cuda":
      self.torch.cuda.synchronize()

  def output(self, mode, result):
    y = result if mode == "fwd" else result[1]
    return y.detach().float().cpu().numpy()


BUILDERS: dict[str, Callable[..., Runner]] = {
    "xla": lambda *a: build_ours("xla", *a),
    "pallas_step": lambda *a: build_ours("pallas_step", *a),
    "pallas_persistent": lambda *a: build_ours("pallas_persistent", *a),
    "pallas_persistent_stream": lambda *a: build_ours("pallas_persistent_stream", *a),
    "flax_nnx": build_flax,
    "cudnn_jax": build_cudnn,
    "torch_cudnn": TorchRunner,
}


# ---------------------------------------------------------------------------------------------
# Full training step of the recommender
# ---------------------------------------------------------------------------------------------


def build_train_step(impl: str, dtype: str, settings, batch_size: int | None = None):
  """Returns (step_fn, state, make_batch, check_fn, info): the step train.py runs.

  The run is built by `run.build_run` from configs/base.py's defaults with the suite's shape
  (a synthetic catalog of V items, E = H, B rows of L events) and the variant's `lstm_impl` and
  matmul dtype; the step is `train.steps.compile_train_step` of that run (loss, optimizer,
  dropout keys and shardings as in training). `step_fn(state, batch, key)` ignores `key`: the
  step folds its dropout key from the state. `check_fn(batch)` is the loss at the initial
  parameters without dropout.

  Raises Unavailable when the library cannot be imported here.
  """
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from lstmrec_jax import optim  # pylint: disable=g-import-not-at-top
    from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
    from lstmrec_jax.configs import base  # pylint: disable=g-import-not-at-top  (no ml_collections)
    from lstmrec_jax.train import steps  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise Unavailable(f"the library is not importable: {e}") from e
  v, e_dim, b, l = settings.step_shape
  b = batch_size or b
  matmul = {"f32": "float32", "bf16": "bfloat16"}[dtype]
  config = {g: base.group(g) for g in run_lib.GROUPS}
  config.update(seed=0, auto=())
  config["data"].update(format="synthetic", cache_dir="",
                        synthetic={"num_users": 400, "num_items": v - 1, "seed": 0,
                                   "min_length": 20, "num_clusters": max(1, min(20, v // 4))})
  config["input"].update(max_len=l, batch_size=b, eval_batch_size=b, backend="numpy")
  config["model"].update(embed_dim=e_dim, hidden_size=e_dim, lstm_impl=impl,
                         compute_dtype=matmul)
  config["loss"].update(compute_dtype=matmul)
  config["train"].update(num_devices=1)
  run = run_lib.build_run(run_lib.spec_from_config(config), num_devices=1)
  num_items = int(run.dataset.num_items)
  tx = run.optimizer(10_000, 100)
  train_fn, state_sh = steps.compile_train_step(run, tx)
  state = jax.device_put(optim.init_state(run.params, tx, 0), state_sh)
  aux = run.step_aux()

  def step(state, batch, key):
    del key  # dropout keys are fold_in(state.rng, step), as in training
    new, out = train_fn(state, batch, aux)
    return new, out["loss"]

  def make_batch(seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"inputs_BxL": jax.random.randint(k1, (b, l), 1, num_items),
            "targets_BxL": jax.random.randint(k2, (b, l), 1, num_items),
            "mask_BxL": jnp.ones((b, l), bool), "resets_BxL": jnp.zeros((b, l), bool)}

  params = run.params

  @jax.jit
  def check(batch):
    model = nnx.merge(run.graphdef, params, aux["consts"])
    return steps.sequence_loss(model, batch, None, run.spec.loss, aux.get("log_q_V"))

  info = {"V": num_items, "E": e_dim, "H": e_dim, "B": b, "L": l,
          "optimizer": "the run's (optax AdamW, optim group defaults)", "step": "train.py's",
          "loss": run.spec.loss.kind, "resolved_impl": dispatch.resolved_impl(impl, e_dim),
          "dropout": [run.model_cfg.embed_dropout, run.model_cfg.output_dropout]}
  return step, state, make_batch, check, info


# ---------------------------------------------------------------------------------------------
# The suite: units of work under a time budget, rows written as they come
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
  reduced: bool
  runs: int
  warmup: int
  budget_s: float
  out: pathlib.Path
  shapes: list[Shape]
  variants: list[str]
  step_impls: list[str]
  step_dtypes: list[str]
  step_shape: tuple[int, int, int, int]  # V, E=H, B, L
  step_batches: list[int]  # batch sizes of the training-step rows (the first is step_shape's B)
  interpret: bool


class Suite:
  """Runs units in order, skipping the rest once the time budget cannot fit another one."""

  def __init__(self, settings: Settings, command: str):
    self.s = settings
    self.command = command
    self.t0 = time.monotonic()
    self.rows: list[dict[str, Any]] = []
    self.unit_s: list[float] = []
    self.meta = _environment()

  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def over_budget(self) -> bool:
    longest = max(self.unit_s, default=0.0)
    return self.elapsed() + longest > self.s.budget_s

  def add(self, row: dict[str, Any]) -> None:
    self.rows.append(row)
    self.write()

  def write(self) -> None:
    ok = [r for r in self.rows if r["status"] == "ok"]
    doc = {
        **self.meta,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": self.command,
        "reduced": self.s.reduced,
        "settings": {"runs": self.s.runs, "warmup": self.s.warmup, "budget_s": self.s.budget_s,
                     "variants": self.s.variants, "step_impls": self.s.step_impls,
                     "pallas_interpret": self.s.interpret,
                     "shapes": [dataclasses.asdict(x) for x in self.s.shapes],
                     "tolerance_rel": {f"{d}/{m}": t for (d, m), t in TOLERANCE.items()}},
        "elapsed_s": round(self.elapsed(), 2),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "ml_collections_imported": "ml_collections" in sys.modules,
        "summary": {
            "rows": len(self.rows), "ok": len(ok),
            "failed": sum(r["status"] == "failed" for r in self.rows),
            "skipped": sum(r["status"] == "skipped" for r in self.rows),
            "unavailable": sum(r["status"] == "unavailable" for r in self.rows),
            "check_failed": sum(r.get("check") == "fail" for r in self.rows)},
        "rows": self.rows,
    }
    self.s.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = self.s.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(self.s.out)

  def unit(self, rows_if_skipped: list[dict[str, Any]], work: Callable[[], None]) -> None:
    """Runs `work` (which adds its own rows) unless the budget is spent."""
    if self.over_budget():
      for row in rows_if_skipped:
        self.add({**row, "status": "skipped",
                  "reason": f"time budget: {self.elapsed():.0f}s of --budget_s="
                            f"{self.s.budget_s:.0f} used"})
      return
    start = time.monotonic()
    work()
    self.unit_s.append(time.monotonic() - start)

  # -- layer benchmarks ---------------------------------------------------------------------

  def layer_units(self) -> None:
    for shape in self.s.shapes:
      params = make_params(shape.hidden)
      cache: dict[str, Reference] = {}

      def reference(shape=shape, params=params, cache=cache):
        if "ref" not in cache:
          cache["ref"] = make_reference(shape, params)
        return cache["ref"]

      for variant in self.s.variants:
        base = {"kind": "layer", "variant": variant, "B": shape.batch, "L": shape.length,
                "H": shape.hidden, "E": shape.hidden, "dtype": shape.dtype}
        self.unit([{**base, "mode": m} for m in MODES],
                  lambda v=variant, s=shape, b=base: self._layer(v, s, params, reference, b))
      cache.clear()

  def _layer(self, variant, shape, params, reference, base) -> None:
    try:
      ref = reference()
      runner = BUILDERS[variant](shape, params, ref, self.s)
    except Unavailable as e:
      for mode in MODES:
        self.add({**base, "mode": mode, "status": "unavailable", "reason": str(e)})
      return
    except Exception as e:  # pylint: disable=broad-except
      for mode in MODES:
        self.add({**base, "mode": mode, "status": "failed", "reason": _reason(e)})
      return
    for mode in MODES:
      row = {**base, "mode": mode, **{"info": runner.info}}
      try:
        row.update(self._measure(runner, mode))
        row.update(self._check(runner, mode, ref, shape.dtype))
        row["status"] = "ok"
        row["events_per_s"] = shape.events / (row["median_ms"] / 1e3)
      except Exception as e:  # pylint: disable=broad-except
        row.update(status="failed", reason=_reason(e))
      self.add(row)
    del runner

  def _measure(self, runner: Runner, mode: str) -> dict[str, Any]:
    x = runner.make_input(10_000)
    runner.block(x)
    start = time.perf_counter()
    runner.block(runner.run(mode, x))
    compile_s = time.perf_counter() - start
    for i in range(self.s.warmup):
      x = runner.make_input(20_000 + i)
      runner.block(x)
      runner.block(runner.run(mode, x))
    times = []
    for i in range(self.s.runs):
      x = runner.make_input(30_000 + i)  # fresh inputs, finished before the clock starts
      runner.block(x)
      start = time.perf_counter()
      result = runner.run(mode, x)
      runner.block(result)
      times.append(time.perf_counter() - start)
      del result
    return {"compile_s": round(compile_s, 3), "median_ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3, "runs_ms": [round(t * 1e3, 4) for t in times]}

  def _check(self, runner: Runner, mode: str, ref: Reference, dtype: str) -> dict[str, Any]:
    result = runner.run(mode, runner.from_numpy(ref.x))
    runner.block(result)
    got = runner.output(mode, result)
    want = ref.h if mode == "fwd" else ref.dx
    if got.shape != want.shape:
      return {"check": "fail", "check_reason": f"shape {got.shape} != {want.shape}"}
    err = float(np.max(np.abs(got - want)))
    rel = err / max(float(np.max(np.abs(want))), 1e-30)
    tol = TOLERANCE[(dtype, mode)]
    finite = bool(np.all(np.isfinite(got)))
    return {"checked": "h" if mode == "fwd" else "dL/dx", "max_abs_err": err, "rel_err": rel,
            "tol_rel": tol, "check": "pass" if finite and rel <= tol else "fail"}

  # -- full training step --------------------------------------------------------------------

  def step_units(self) -> None:
    v, e_dim, _, l = self.s.step_shape
    for b in self.s.step_batches:
      ref_loss: dict[str, float] = {}  # per batch size: the check's f32 loss
      for dtype in self.s.step_dtypes:
        for impl in self.s.step_impls:
          base = {"kind": "train_step", "variant": impl, "mode": "train_step", "B": b, "L": l,
                  "H": e_dim, "E": e_dim, "V": v, "dtype": dtype}
          self.unit([base], lambda i=impl, d=dtype, r=base, ref=ref_loss:
                    self._train_step(i, d, r, ref))

  def _train_step(self, impl, dtype, base, ref_loss) -> None:
    row = dict(base)
    try:
      if "f32" not in ref_loss:  # the check: the xla model's f32 loss on the same batch
        with jax.default_matmul_precision("highest"):
          _, _, make_batch, check, _ = build_train_step("xla", "f32", self.s, base["B"])
          ref_loss["f32"] = float(check(make_batch(99)))
      step, state, make_batch, check, info = build_train_step(impl, dtype, self.s, base["B"])
      row["info"] = info
      loss = float(check(make_batch(99)))
      key = jax.random.PRNGKey(0)
      batch = make_batch(0)
      start = time.perf_counter()
      state, out = step(state, batch, jax.random.fold_in(key, 0))
      jax.block_until_ready(out)
      row["compile_s"] = round(time.perf_counter() - start, 3)
      for i in range(self.s.warmup):
        state, out = step(state, make_batch(1 + i), jax.random.fold_in(key, 1 + i))
        jax.block_until_ready(out)
      times = []
      for i in range(self.s.runs):
        batch = make_batch(100 + i)
        jax.block_until_ready(batch)
        start = time.perf_counter()
        state, out = step(state, batch, jax.random.fold_in(key, 100 + i))
        jax.block_until_ready((state, out))
        times.append(time.perf_counter() - start)
      med = statistics.median(times)
      tol = 1e-3 if dtype == "f32" else 2e-2
      rel = abs(loss - ref_loss["f32"]) / abs(ref_loss["f32"])
      row.update(status="ok", median_ms=med * 1e3, min_ms=min(times) * 1e3,
                 runs_ms=[round(t * 1e3, 4) for t in times],
                 events_per_s=base["B"] * base["L"] / med, checked="first-step loss",
                 loss=loss, ref_loss=ref_loss["f32"], rel_err=rel, max_abs_err=abs(
                     loss - ref_loss["f32"]), tol_rel=tol,
                 check="pass" if np.isfinite(loss) and rel <= tol else "fail")
    except Unavailable as e:
      row.update(status="unavailable", reason=str(e))
    except Exception as e:  # pylint: disable=broad-except
      row.update(status="failed", reason=_reason(e))
    self.add(row)


def _reason(e: BaseException) -> str:
  tb = traceback.extract_tb(e.__traceback__)
  where = f" at {tb[-1].filename.split('/')[-1]}:{tb[-1].lineno}" if tb else ""
  return f"{type(e).__name__}: {str(e)[:600]}{where}"


def _environment() -> dict[str, Any]:
  dev = jax.devices()[0]
  meta = {"suite": "lstmrec_jax GPU suite (benchmarks/gpu_suite.py)",
          "device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
          "device_count": jax.device_count(), "jax_version": jax.__version__,
          "python": py_platform.python_version(), "host": py_platform.node()}
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    meta["jaxlib_version"] = jaxlib.__version__
  except ImportError:
    pass
  return meta


def _parse_shapes(text: str, dtypes: list[str]) -> list[Shape]:
  """'512x50x64,128x200x256' -> Shapes (B x L x H) for each dtype."""
  shapes = []
  for item in text.split(","):
    b, l, h = (int(v) for v in item.lower().split("x"))
    shapes += [Shape(b, l, h, d) for d in dtypes]
  return shapes


def default_shapes(dtypes: list[str]) -> list[Shape]:
  """Recommender shapes, most useful first (budget cuts from the end): L=50 before L=200, then H,
  then B; both dtypes of a shape next to each other."""
  return [Shape(b, l, h, d) for l in (50, 200) for h in (64, 128, 256) for b in (128, 512, 2048)
          for d in dtypes]


def results_name(device: str) -> str:
  """benchmarks/results/ file name: gpu_suite_<device slug>_<date>.json."""
  slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"
  return f"gpu_suite_{slug}_{datetime.date.today().isoformat()}.json"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--reduced", action="store_true",
                 help="tiny shapes, Pallas interpreted, 2 timed runs: a CPU smoke run (< 1 min)")
  p.add_argument("--out", type=pathlib.Path, default=None,
                 help="JSON path (default $OUT/gpu_suite.json if OUT is set, else "
                      "benchmarks/results/gpu_suite_<device>_<date>.json)")
  p.add_argument("--budget_s", type=float, default=270.0,
                 help="stop starting new work when this many seconds cannot fit another unit")
  p.add_argument("--runs", type=int, default=None, help="timed runs (median); default 5, 2")
  p.add_argument("--warmup", type=int, default=None, help="untimed runs after compile; 1, 0")
  p.add_argument("--shapes", default=None, help="BxLxH list, e.g. 512x50x64,2048x200x128")
  p.add_argument("--dtypes", default="bf16,f32", help="comma list of bf16, f32")
  p.add_argument("--variants", default=",".join(LAYER_VARIANTS),
                 help="layer variants to run (also: pallas_persistent_stream)")
  p.add_argument("--step_batches", default="256,2048",
                 help="batch sizes (rows of L=50) of the full training step, most useful first")
  p.add_argument("--step_impls", default=",".join(STEP_IMPLS),
                 help="LSTM impls for the full training step ('' to skip it)")
  return p.parse_args(argv)


def make_settings(args: argparse.Namespace) -> Settings:
  dtypes = [d for d in args.dtypes.split(",") if d]
  for d in dtypes:
    if d not in DTYPES:
      raise SystemExit(f"unknown dtype {d!r}; expected bf16 or f32")
  variants = [v for v in args.variants.split(",") if v]
  for v in variants:
    if v not in BUILDERS:
      raise SystemExit(f"unknown variant {v!r}; expected some of {tuple(BUILDERS)}")
  step_impls = [i for i in args.step_impls.split(",") if i]
  if args.reduced:
    shapes = _parse_shapes(args.shapes or "8x6x16", dtypes)
    step_shape = (300, 16, 8, 6)
    step_dtypes = ["f32"]
    step_batches = [8]
  else:
    shapes = _parse_shapes(args.shapes, dtypes) if args.shapes else default_shapes(dtypes)
    step_shape = (12102, 64, 256, 50)  # Amazon Beauty: V items (+ padding row), E = H = 64
    step_dtypes = dtypes
    # 256 rows is the CPU recipe's scale; 2048 rows is what one GPU step should be fed.
    step_batches = [int(b) for b in args.step_batches.split(",") if b]
    step_shape = (step_shape[0], step_shape[1], step_batches[0], step_shape[3])
  out = args.out
  if out is None:
    out = (pathlib.Path(os.environ["OUT"]) / "gpu_suite.json" if os.environ.get("OUT")
           else _REPO / "benchmarks" / "results" / results_name(_environment()["device"]))
  return Settings(
      reduced=args.reduced, runs=args.runs or (2 if args.reduced else 5),
      warmup=args.warmup if args.warmup is not None else (0 if args.reduced else 1),
      budget_s=args.budget_s, out=out, shapes=shapes, variants=variants, step_impls=step_impls,
      step_dtypes=step_dtypes, step_shape=step_shape, step_batches=step_batches,
      # Compiled Pallas needs a GPU/TPU; anywhere else (the reduced CPU run) it is interpreted.
      interpret=jax.default_backend() not in ("gpu", "tpu"))


def print_table(rows: list[dict[str, Any]]) -> None:
  head = (f"{'kind':<10} {'variant':<24} {'mode':<10} {'B':>5} {'L':>4} {'H':>4} {'dtype':<5} "
          f"{'status':<11} {'median_ms':>10} {'events/s':>11} {'rel_err':>8} check")
  print(head)
  print("-" * len(head))
  for r in rows:
    med = f"{r['median_ms']:.3f}" if "median_ms" in r else "-"
    eps = f"{r['events_per_s']:.3g}" if "events_per_s" in r else "-"
    err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
    print(f"{r['kind']:<10} {r['variant']:<24} {r['mode']:<10} {r['B']:>5} {r['L']:>4} "
          f"{r['H']:>4} {r['dtype']:<5} {r['status']:<11} {med:>10} {eps:>11} {err:>8} "
          f"{r.get('check', '')}"
          + (f"  ({r['reason'][:90]})" if r["status"] != "ok" and "reason" in r else ""))


def main(argv=None) -> int:
  args = parse_args(argv)
  settings = make_settings(args)
  previous = os.environ.get(dispatch.INTERPRET_ENV)
  if settings.reduced and settings.interpret:
    # The model resolves lstm_impl through kernels.dispatch without interpret=; this is
    # how the reduced CPU run reaches the kernels there instead of the XLA fallback.
    os.environ[dispatch.INTERPRET_ENV] = "1"
  try:
    suite = Suite(settings, " ".join([sys.executable, *sys.argv]) if argv is None
                  else f"gpu_suite.main({argv!r})")
    print(f"device: {suite.meta['device']} ({suite.meta['platform']}), jax {jax.__version__}, "
          f"budget {settings.budget_s:.0f}s, out {settings.out}", flush=True)
    if settings.step_impls:
      suite.step_units()
    suite.layer_units()
    suite.write()
  finally:  # main() may run in-process (tests): leave the environment as it was
    if previous is None:
      os.environ.pop(dispatch.INTERPRET_ENV, None)
    else:
      os.environ[dispatch.INTERPRET_ENV] = previous
  print_table(suite.rows)
  summary = json.loads(settings.out.read_text())["summary"]
  print(f"\n{summary} in {suite.elapsed():.1f}s -> {settings.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
