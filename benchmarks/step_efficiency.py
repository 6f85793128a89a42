"""Hardware efficiency of the training step train.py runs: achieved FLOP/s beside a matmul roofline.

Shape legend: B packed rows, L history length, E item embedding size, H LSTM hidden size,
V catalog size, S shared sampled negatives, N = B * L positions, A attributes per item.

For each variant (configs/beauty.py with overrides, on the real Beauty file) and each way of
using the cores, a child process builds the run with `run.build_run`, compiles the step with
`train.steps.compile_train_step` (the function train.py calls), and times `--steps` steps on
real batches after a warm-up. In the same process it times a plain jitted matmul of the step's
largest shape (N x E by E x V for the exact softmax, N x E by E x S for the sampled one): the
practical roofline of these cores for this shape. Reported:

  step_ms, events/s            wall time per step (median of --rounds rounds), real events / s
  GFLOP / step (shapes)        counted from the shapes (`flops_from_shapes`, below, per phase)
  GFLOP / step (XLA)           XLA's own count of the compiled step (cost_analysis)
  achieved GFLOP/s             shape-counted FLOPs / step time
  roofline GFLOP/s             the matmul's FLOP/s in the same process
  efficiency                   achieved / roofline

Ways of using the cores (`--modes`):
  1core        taskset to one core, XLA's intra-op pool on it
  2core        both cores, XLA's intra-op threads (the default of train.py)
  2dev         both cores as two XLA CPU devices, the data-parallel mesh over them
               (--xla_force_host_platform_device_count=2, one thread each)

  python benchmarks/step_efficiency.py --out benchmarks/results/cpu_step_efficiency_$(date +%F)

`--host_malloc` sets the child's host allocator as train.py's flag of that name does
(`lstmrec_jax/hostmem.py`; default reuse, as train.py); a list (`system,reuse,one_arena`;
`both` = system,reuse) runs every (variant, mode) with each, one after the other, for a
side-by-side A/B. Each row also reports the minor page faults per timed step (getrusage).

`--profile_steps N` also traces N steps of the compiled step (jax.profiler, one device) and splits
their op time into matmuls and everything else (`op_split`), with the ceiling: the efficiency the
step would reach if its matmuls ran at the roofline and the rest took what it takes now.

Time it alone on the machine: the wall time is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# name -> (description, overrides of configs/beauty.py)
VARIANTS = {
    "recipe": ("the Beauty recipe: E = H = 256, exact f32 softmax (one pass), 32 packed rows",
               {}),
    "recipe_h64": ("the recipe at E = H = 64", {"model.embed_dim": 64, "model.hidden_size": 64}),
    "recipe_bf16": ("the recipe with bf16 matmul operands (f32 sums and cell state)",
                    {"model.compute_dtype": "bfloat16", "loss.compute_dtype": "bfloat16"}),
    "sampled": ("E = H = 256, sampled softmax over 2,048 shared negatives (logQ)",
                {"loss.kind": "sampled", "loss.num_negatives": 2048}),
    "sampled_h128": ("E = H = 128, sampled softmax, 2,048 negatives",
                     {"model.embed_dim": 128, "model.hidden_size": 128, "loss.kind": "sampled",
                      "loss.num_negatives": 2048}),
    "fast": ("the fast recipe (configs/beauty_fast.py): E = H = 128, sampled softmax over 2,048 "
             "negatives, 8 packed rows",
             {"model.embed_dim": 128, "model.hidden_size": 128, "loss.kind": "sampled",
              "loss.num_negatives": 2048, "input.batch_size": 8, "model.embed_dropout": 0.2,
              "model.output_dropout": 0.2}),
    "fast_l25": ("the fast recipe with rows of 25 positions, 16 a step (the same events a step)",
                 {"model.embed_dim": 128, "model.hidden_size": 128, "loss.kind": "sampled",
                  "loss.num_negatives": 2048, "input.batch_size": 16, "input.max_len": 25,
                  "model.embed_dropout": 0.2, "model.output_dropout": 0.2}),
    "recipe_bf16loss": ("the recipe with bf16 operands in the softmax only (f32 sums)",
                        {"loss.compute_dtype": "bfloat16"}),
    "wide": ("the wide config (configs/beauty_wide.py): E = H = 512, dropout 0.6, f32 softmax",
             {"model.embed_dim": 512, "model.hidden_size": 512, "model.embed_dropout": 0.6,
              "model.output_dropout": 0.6}),
    "wide_bf16loss": ("the wide config with bf16 operands in the softmax only",
                      {"model.embed_dim": 512, "model.hidden_size": 512,
                       "model.embed_dropout": 0.6, "model.output_dropout": 0.6,
                       "loss.compute_dtype": "bfloat16"}),
    "recipe_id": ("the recipe with id-only items (no attribute bag)", {"model.item_mode": "id"}),
    "recipe_nowd": ("the recipe without the recurrent weight drop",
                    {"model.recurrent_weight_dropout": 0.0}),
    "recipe_nodrop": ("the recipe without any dropout", {"model.recurrent_weight_dropout": 0.0,
                      "model.embed_dropout": 0.0, "model.output_dropout": 0.0}),
    "recipe_bf16loss_nb5": ("the recipe (bf16 softmax) with the co-occurrence neighbours: "
                            "model.item_neighbors=5, neighbor_weight=0.5",
                            {"loss.compute_dtype": "bfloat16", "model.item_neighbors": 5,
                             "model.neighbor_weight": 0.5}),
    "recipe_bf16loss_nb5sg": ("the same with neighbor_gradient=False (no scatter-add backward)",
                              {"loss.compute_dtype": "bfloat16", "model.item_neighbors": 5,
                               "model.neighbor_weight": 0.5, "model.neighbor_gradient": False}),
    "fast_nb5": ("the fast recipe with model.item_neighbors=5, neighbor_weight=0.5",
                 {"model.embed_dim": 128, "model.hidden_size": 128, "loss.kind": "sampled",
                  "loss.num_negatives": 2048, "input.batch_size": 8, "model.embed_dropout": 0.2,
                  "model.output_dropout": 0.2, "model.item_neighbors": 5,
                  "model.neighbor_weight": 0.5}),
    "recipe_bf16loss_nb5sg_teacher": ("the recipe of stop 41: the neighbours as a constant and "
                                      "the co-occurrence teacher (loss.teacher_weight=0.5, 10 "
                                      "partners a position; constant here)",
                                      {"loss.compute_dtype": "bfloat16",
                                       "model.item_neighbors": 5, "model.neighbor_weight": 0.5,
                                       "model.neighbor_gradient": False,
                                       "loss.teacher_weight": 0.5}),
    "fast_teacher": ("the fast recipe with the co-occurrence teacher, loss.teacher_weight=0.3",
                 {"model.embed_dim": 128, "model.hidden_size": 128, "loss.kind": "sampled",
                  "loss.num_negatives": 2048, "input.batch_size": 8, "model.embed_dropout": 0.2,
                  "model.output_dropout": 0.2, "loss.teacher_weight": 0.3}),
    "recipe_stop42": ("the recipe of stop 42 (configs/beauty.py as it is): bf16 softmax, the "
                      "neighbours as a constant, the co-occurrence teacher of next items "
                      "(constant 0.5 here; the transition prior does not enter training)",
                      {"loss.compute_dtype": "bfloat16", "model.item_neighbors": 5,
                       "model.neighbor_weight": 0.5, "model.neighbor_gradient": False,
                       "loss.teacher_weight": 0.5, "loss.teacher_direction": "next"}),
    "sampled_h64": ("E = H = 64, sampled softmax, 2,048 negatives",
                    {"model.embed_dim": 64, "model.hidden_size": 64, "loss.kind": "sampled",
                     "loss.num_negatives": 2048}),
}
MODES = ("1core", "2core", "2dev")


def flops_from_shapes(*, n: int, e: int, h: int, v: int, layers: int, loss: str,
                      negatives: int, attrs: int) -> dict[str, float]:
  """FLOPs of one training step by phase (multiply-add = 2 FLOPs; backward = 2 x forward).

  Per position: the LSTM's hoisted input projection (E -> 4H) and recurrence (H -> 4H) per
  layer; a projection H -> E when they differ; the item side (an attribute bag of A rows is
  additions only, counted as E per attribute); the loss: logits against V items (exact) or
  S + 1 (sampled) and their two gradients. The Adam update (~12 FLOPs a parameter) is
  counted apart. Example: n=1600, e=h=256, v=12102, exact -> softmax 29.7 GFLOP.
  """
  lstm = n * layers * 2 * (e * 4 * h + h * 4 * h) * 3
  proj = n * 2 * h * e * 3 if h != e else 0
  items = n * e * attrs * 3
  scored = v if loss in ("full", "chunked") else negatives + 1
  softmax = n * 2 * e * scored * 3
  return {"lstm": lstm, "projection": proj, "items": items, "softmax": softmax,
          "total": lstm + proj + items + softmax}


def hlo_op_kinds(hlo_text: str) -> dict[str, tuple[str, str, str]]:
  """name -> (kind, shape, op_name) of each instruction of a compiled module's text.

  kind is "matmul" for a dot and for a fusion whose computation holds a dot (XLA:CPU hands those
  to its matmul library, with what it fused around the product), "other" for everything else
  (elementwise passes, reductions, gathers, scatters, copies, loops' bookkeeping).
  """
  has_dot: dict[str, bool] = {}
  current = None
  for line in hlo_text.splitlines():
    head = re.match(r"\s*(?:ENTRY )?%([\w.\-]+) \(.*\{\s*$", line)
    if head:
      current = head.group(1)
      has_dot[current] = False
    elif current is not None and re.search(r" dot\(", line):
      has_dot[current] = True
  kinds = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
    if not m:
      continue
    name, shape, op = m.groups()
    source = re.search(r'op_name="([^"]+)"', line)
    source = source.group(1) if source else ""
    calls = re.search(r"calls=%([\w.\-]+)", line)
    matmul = op == "dot" or (op == "fusion" and calls is not None
                             and has_dot.get(calls.group(1), False))
    kinds.setdefault(name, ("matmul" if matmul else "other", shape, source))
  return kinds


def op_split(events: list[dict], kinds: dict[str, tuple[str, str, str]], steps: int,
             top: int = 12) -> dict[str, Any]:
  """Per-step ms of a trace's XLA ops by kind (see `hlo_op_kinds`), and the largest "other" ops.

  `events` are a Chrome trace's complete ("X") events; a loop (`while`) and the executor's own
  spans are skipped (their bodies' ops are counted one by one), as are events that name no
  instruction of the module.
  """
  totals = {"matmul": 0.0, "other": 0.0}
  per_op: dict[str, float] = {}
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name not in kinds or name.startswith("while"):
      continue
    kind = kinds[name][0]
    totals[kind] += e["dur"] / 1e3 / steps
    per_op[name] = per_op.get(name, 0.0) + e["dur"] / 1e3 / steps
  others = sorted((n for n in per_op if kinds[n][0] == "other"), key=per_op.get, reverse=True)
  return {"matmul_ms": totals["matmul"], "other_ms": totals["other"],
          "top_other": [{"op": n, "ms": per_op[n], "shape": kinds[n][1],
                         "source": kinds[n][2][-80:]} for n in others[:top]]}


def ceiling(gflop_per_step: float, roofline_gflops: float, other_ms: float,
            cores: int = 1) -> float:
  """The efficiency a step could reach if every matmul ran at the roofline and its other ops
  took what they take now: ideal matmul time / (ideal matmul time + other time).

  `other_ms` is thread time (a trace's op spans, summed); on `cores` cores it is taken as
  spread perfectly over them, so the ceiling is an upper bound there.
  """
  ideal_ms = gflop_per_step / roofline_gflops * 1e3
  return ideal_ms / (ideal_ms + other_ms / cores)


def profile_ops(compiled, state, placed, aux, steps: int) -> dict[str, Any]:
  """Traces `steps` calls of the compiled step (jax.profiler) and splits its ops' time."""
  import gzip  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  kinds = hlo_op_kinds(compiled.as_text())
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      t0 = time.perf_counter()
      for i in range(steps):
        state, out = compiled(state, placed[i % len(placed)], aux)
      jax.block_until_ready(out)
      traced_ms = (time.perf_counter() - t0) / steps * 1e3
    found = sorted(pathlib.Path(tmp).rglob("*.trace.json.gz"))
    if not found:
      return {"error": "jax.profiler wrote no trace"}
    with gzip.open(found[-1]) as f:
      events = json.load(f)["traceEvents"]
  return {"steps": steps, "traced_step_ms": traced_ms, **op_split(events, kinds, steps)}


def child(args) -> None:
  """One (variant, mode) in this process: prints one JSON line."""
  import resource  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import hostmem  # pylint: disable=g-import-not-at-top
  malloc_line = hostmem.configure(args.host_malloc)  # first: before jax starts its threads
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import optim  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.configs import beauty  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.mesh import to_global  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import steps  # pylint: disable=g-import-not-at-top

  _, overrides = VARIANTS[args.variant]
  c = beauty.get_config()
  # Variants are f32 and without the item neighbours or the teacher unless they say otherwise
  # (configs/beauty.py takes the bf16 softmax since stop 39 and the neighbours since stop 40): the
  # rows measured before keep their meaning, and bf16, the neighbours and the teacher are named
  # variants.
  c.loss.compute_dtype = "float32"
  c.model.item_neighbors = 0
  c.loss.teacher_weight = 0.0  # the co-occurrence teacher (stop 41): a named variant too
  c.data.path = args.data
  c.data.attributes_path = str(pathlib.Path(args.data).parent / "Beauty_item2attributes.json")
  c.data.cache_dir = args.cache_dir
  c.input.backend = "numpy"
  for key, value in overrides.items():
    group, name = key.split(".")
    c[group][name] = value
  devices = 2 if args.mode == "2dev" else 1
  c.train.num_devices = devices
  run = run_lib.build_run(run_lib.spec_from_config(c))
  spec, cfg = run.spec, run.model_cfg
  batches = pipeline.TrainBatches(run.dataset.train, batch_size=spec.input.batch_size,
                                  max_len=spec.input.max_len, seed=0, pack=True)
  host = [b for _, b in zip(range(args.steps), batches.epoch(0))]
  events = float(np.mean([b["mask_BxL"].sum() for b in host]))
  placed = [to_global(b, run.mesh) for b in host]
  tx = run.optimizer(10_000, batches.steps_per_epoch)
  train_fn, state_sh = steps.compile_train_step(run, tx)
  state = jax.device_put(optim.init_state(run.params, tx, 0), state_sh)
  aux = run.step_aux()
  lowered = train_fn.lower(state, placed[0], aux)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  for b in placed[:2]:  # warm-up
    state, out = train_fn(state, b, aux)
  jax.block_until_ready(out)
  rounds = []
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(args.rounds):
    t0 = time.perf_counter()
    for b in placed:
      state, out = train_fn(state, b, aux)
    jax.block_until_ready((state, out))
    rounds.append((time.perf_counter() - t0) / len(placed))
  faults_per_step = ((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)
                     / (args.rounds * len(placed)))
  step_s = statistics.median(rounds)
  n = spec.input.batch_size * spec.input.max_len
  attrs = int(getattr(run.dataset, "num_attrs", 0) and cfg.item_mode != "id")
  avg_attrs = 0
  if attrs:
    from lstmrec_jax.data import content  # pylint: disable=g-import-not-at-top
    a_VxA = content.attribute_array(run.dataset, known_V=np.ones(run.dataset.num_items, bool))
    avg_attrs = float((a_VxA > 0).sum(1).mean())
  shapes = flops_from_shapes(n=n, e=cfg.embed_dim, h=cfg.hidden_size, v=int(cfg.num_items),
                             layers=cfg.num_layers, loss=spec.loss.kind,
                             negatives=spec.loss.num_negatives, attrs=int(round(avg_attrs)))
  num_params = sum(x.size for x in jax.tree.leaves(run.params))
  # The practical roofline: the step's largest matmuls (the softmax's logits N x E @ E x W and
  # its two gradients N x W @ W x E, W x N @ N x E), jitted, same process, same cores; the
  # fastest of the three is the roofline (the step runs all three).
  width = int(cfg.num_items) if spec.loss.kind in ("full", "chunked") else spec.loss.num_negatives
  k = jax.random.split(jax.random.key(0), 3)
  u = jax.random.normal(k[0], (n, cfg.embed_dim))
  w = jax.random.normal(k[1], (width, cfg.embed_dim))
  g = jax.random.normal(k[2], (n, width))
  if devices > 1:  # as the step: positions split over the data axis
    from lstmrec_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    u, g = (jax.device_put(x, mesh_lib.batch_sharding(run.mesh)) for x in (u, g))
    w = mesh_lib.replicate(w, run.mesh)
  matmuls = {"logits NxE@ExW": (jax.jit(lambda u, w, g: u @ w.T), (u, w, g)),
             "dU NxW@WxE": (jax.jit(lambda u, w, g: g @ w), (u, w, g)),
             "dW WxN@NxE": (jax.jit(lambda u, w, g: g.T @ u), (u, w, g))}

  def gflops(fn, xs) -> float:
    """GFLOP/s of one N x E x W product: the median of `args.rounds` rounds of 5 calls."""
    jax.block_until_ready(fn(*xs))
    mm_rounds = []
    for _ in range(args.rounds):
      t0 = time.perf_counter()
      for _ in range(5):
        r = fn(*xs)
      jax.block_until_ready(r)
      mm_rounds.append((time.perf_counter() - t0) / 5)
    return 2 * n * cfg.embed_dim * width / statistics.median(mm_rounds) / 1e9

  roofs = {name: gflops(fn, xs) for name, (fn, xs) in matmuls.items()}
  roofline = max(roofs.values())
  # The same three products with bf16 operands (f32 sums), each written [M, K] @ [K, N] with
  # its operands laid out so (the one-pass loss's bf16 form): where the CPU has bf16 matmul units
  # (AMX), the practical roofline of a step whose softmax runs in bf16.
  bf = lambda x: jnp.asarray(np.asarray(x.astype(jnp.bfloat16)))  # a materialised copy
  mm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  roofs_bf16 = {}
  if devices == 1:
    bf16_pairs = {"logits NxE@ExW": (bf(u), bf(w.T)), "dU NxW@WxE": (bf(g), bf(w)),
                  "dW^T ExN@NxW": (bf(u.T), bf(g))}
    roofs_bf16 = {name: gflops(mm, xs) for name, xs in bf16_pairs.items()}
  roofline_bf16 = max(roofs_bf16.values()) if roofs_bf16 else float("nan")
  achieved = shapes["total"] / step_s / 1e9
  profile = {}
  if args.profile_steps:
    profile = profile_ops(compiled, state, placed, aux, args.profile_steps)
    if "other_ms" in profile:
      # Against the roofline of the products the step runs: a step whose softmax runs in bf16
      # (faster than the f32 matmul) would otherwise get a ceiling below what it achieves.
      bf16_step = spec.loss.compute_dtype != "float32" and roofs_bf16
      profile["ceiling_roofline"] = "bf16" if bf16_step else "f32"
      profile["cores"] = len(os.sched_getaffinity(0))
      profile["ceiling"] = ceiling(shapes["total"] / 1e9,
                                   roofline_bf16 if bf16_step else roofline, profile["other_ms"],
                                   profile["cores"])
  print("RESULT " + json.dumps({
      "variant": args.variant, "mode": args.mode, "devices": devices,
      "host_malloc": args.host_malloc, "host_malloc_log": malloc_line,
      "page_faults_per_step": round(faults_per_step),
      "shape": {"B": spec.input.batch_size, "L": spec.input.max_len, "N": n,
                "E": cfg.embed_dim, "H": cfg.hidden_size, "V": int(cfg.num_items),
                "loss": spec.loss.kind, "S": spec.loss.num_negatives, "attrs_per_item":
                avg_attrs, "params": int(num_params)},
      "events_per_step": events, "step_ms": step_s * 1e3, "events_per_s": events / step_s,
      "rounds_ms": [round(r * 1e3, 2) for r in rounds], "compile_s": round(compile_s, 2),
      "gflop_per_step_shapes": {k: v / 1e9 for k, v in shapes.items()},
      "mflop_per_event_shapes": shapes["total"] / events / 1e6,
      "adam_gflop_per_step": 12 * num_params / 1e9,
      "gflop_per_step_xla": xla_flops / 1e9,
      "achieved_gflops": achieved, "roofline_matmuls_gflops": roofs, "W": width,
      "roofline_gflops": roofline,
      "efficiency": achieved / roofline,
      "softmax_dtype": spec.loss.compute_dtype, "roofline_bf16_matmuls_gflops": roofs_bf16,
      "roofline_bf16_gflops": roofline_bf16,
      "efficiency_bf16": achieved / roofline_bf16, "profile": profile}), flush=True)


def markdown(result: dict[str, Any]) -> str:
  lines = [f"# Training-step efficiency on {result['machine'].get('cpu_model')} "
           f"({result['date']})", "",
           f"- command: `{result['command']}`", f"- machine: {json.dumps(result['machine'])}",
           f"- load average before: {result['load_before']}, after: {result['load_after']}",
           "- FLOPs per step are counted from the shapes (`flops_from_shapes` in the script: "
           "multiply-add = 2, backward = 2x forward); XLA's own count of the compiled step is "
           "beside them, but it counts a loop body (the scan over time, the loss's chunks) "
           "once. The roofline is the fastest of the step's three largest matmuls (the "
           "softmax's logits and its two gradients), jitted alone in the same process on the "
           "same cores. The bf16 roofline is the same with bf16 operands (f32 sums), each "
           "product [M, K] @ [K, N] (the layout of the one-pass loss's bf16 form; one device "
           "only): on a CPU with bf16 matmul units (AMX) it is several times the f32 one, and a "
           "step whose softmax runs in bf16 (`loss.compute_dtype`) is measured against both.", "",
           "| variant | mode | host malloc | faults/step | events/s | step ms | MFLOP/event | "
           "GFLOP/step (shapes) | "
           "GFLOP/step (XLA) | achieved GFLOP/s | roofline GFLOP/s (f32) | efficiency (f32) | "
           "roofline GFLOP/s (bf16) | efficiency (bf16) | softmax dtype | "
           "softmax / LSTM share |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
  for r in result["rows"]:
    if "error" in r:
      lines.append(f"| {r['variant']} | {r['mode']} | {r.get('host_malloc', '')} | failed: "
                   f"{r['error'][:80]} |" + " |" * 12)
      continue
    g = r["gflop_per_step_shapes"]
    lines.append(
        f"| {r['variant']} | {r['mode']} | {r.get('host_malloc', 'system')} | "
        f"{r.get('page_faults_per_step', float('nan')):,.0f} | {r['events_per_s']:,.0f} | "
        f"{r['step_ms']:.1f} | "
        f"{r['mflop_per_event_shapes']:.2f} | {g['total']:.2f} | "
        f"{r['gflop_per_step_xla']:.2f} | {r['achieved_gflops']:.1f} | "
        f"{r['roofline_gflops']:.1f} | {r['efficiency']:.0%} | "
        f"{r.get('roofline_bf16_gflops', float('nan')):.1f} | "
        f"{r.get('efficiency_bf16', float('nan')):.0%} | {r.get('softmax_dtype', 'float32')} | "
        f"{g['softmax'] / g['total']:.0%} / {g['lstm'] / g['total']:.0%} |")
  profiled = [r for r in result["rows"] if r.get("profile", {}).get("other_ms") is not None]
  if profiled:
    lines += ["", "Where a step's time goes (`--profile_steps`: a jax.profiler trace of the "
              "compiled step, its ops classified from the compiled module's text: matmuls are "
              "dots and the fusions XLA:CPU hands to its matmul library, the rest is every "
              "other op). The ceiling is the efficiency the step would reach if its matmuls ran "
              "at the roofline (bf16 where the softmax runs in bf16) and the rest took what it "
              "takes now. The ms are thread time (op spans summed over threads); on 2 cores the "
              "ceiling takes the other ops as spread perfectly over both, an upper bound.", "",
              "| variant | mode | traced step ms (wall) | matmul ms | other ms | ceiling (against) "
              "| largest other ops (ms) |",
              "|---|---|---:|---:|---:|---:|---|"]
    for r in profiled:
      pr = r["profile"]
      top = "; ".join(f"{o['op']} {o['shape']} {o['ms']:.1f} ({o['source'][-40:]})"
                      for o in pr["top_other"][:6])
      lines.append(f"| {r['variant']} | {r['mode']} | {pr['traced_step_ms']:.1f} | "
                   f"{pr['matmul_ms']:.1f} | {pr['other_ms']:.1f} | "
                   f"{pr['ceiling']:.0%} ({pr['ceiling_roofline']}) | {top} |")
  lines += ["", "Variants:"] + [f"- `{k}`: {d}" for k, (d, _) in VARIANTS.items()
                                if k in {r['variant'] for r in result['rows']}]
  return "\n".join(lines) + "\n"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variants", default="recipe,recipe_h64,sampled,sampled_h128")
  p.add_argument("--modes", default=",".join(MODES))
  p.add_argument("--steps", type=int, default=8, help="timed steps per round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--data", default=None)
  p.add_argument("--cache_dir", default=str(REPO / "cache"))
  p.add_argument("--out", default="")
  p.add_argument("--host_malloc", default="reuse", help="the child's host allocator "
                 "(lstmrec_jax/hostmem.py: reuse, one_arena, system), or several separated by "
                 "commas, run one after the other for each (variant, mode); both = system,reuse")
  p.add_argument("--profile_steps", type=int, default=0,
                 help="also trace this many steps and split their time into matmuls and the "
                 "rest (one device; 0: no trace)")
  p.add_argument("--child", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
  args = p.parse_args()
  from train_throughput import default_data_path, load_average, machine_info, write_result  # pylint: disable=g-import-not-at-top
  args.data = args.data or default_data_path()
  if args.child:
    args.variant, args.mode = args.child
    child(args)
    return
  rows = []
  load_before = load_average()
  mallocs = ("system,reuse" if args.host_malloc == "both" else args.host_malloc).split(",")
  for variant, mode, malloc in [(v, m, a) for v in args.variants.split(",")
                                for m in args.modes.split(",") for a in mallocs]:
    env = dict(os.environ)
    cmd = [sys.executable, __file__, "--child", variant, mode, "--steps", str(args.steps),
           "--rounds", str(args.rounds), "--data", args.data, "--cache_dir", args.cache_dir,
           "--host_malloc", malloc, "--profile_steps",
           str(args.profile_steps if mode != "2dev" else 0)]
    if mode == "1core":
      cmd = ["taskset", "-c", "0", *cmd]
    if mode == "2dev":
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
                          " --xla_cpu_multi_thread_eigen=false").strip()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    found = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    row = (json.loads(found[0]) if found else
           {"variant": variant, "mode": mode, "host_malloc": malloc,
            "error": (proc.stderr or "no output")[-400:]})
    rows.append(row)
    print(json.dumps({k: row.get(k) for k in ("variant", "mode", "host_malloc",
                                               "page_faults_per_step", "events_per_s",
                                               "efficiency", "error")}), flush=True)
  result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(
      ["python", *sys.argv]), "machine": machine_info(), "load_before": load_before,
            "load_after": load_average(), "rows": rows}
  write_result(result, args.out, "cpu_step_efficiency", markdown)


if __name__ == "__main__":
  main()
