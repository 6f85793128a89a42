"""Catalog scale on CPU: a 10^6-item catalog, exact chunked softmax vs sampled softmax, ranking.

Shape legend: B batch rows (users), L history length, N = B*L positions, E = H embedding and
LSTM size, V catalog size, S shared sampled negatives, C items per chunk.

For a synthetic catalog (item ids drawn Zipf-like, so popularity is skewed as in real logs) it
measures, each variant in its own subprocess so its peak RSS is its own:

  train_chunked     the trainer's jitted train_step with the exact chunked full softmax
  train_sampled     the same step with sampled softmax (S shared negatives, logQ correction)
  train_full        the materialised N x V softmax: compiled only (memory analysis), never run
  eval_V<V>         the trainer's eval_step (LSTM over the history + chunked full ranking with
                    seen items removed) at V = 10^5 and 10^6, in users/s

Reported per variant: median step (or batch) time, events/s or users/s, XLA's compiled memory
analysis (temp, argument and output bytes) and the process's peak RSS.

Run from the repository root (about 5 minutes on 2 cores with the defaults):
  python benchmarks/catalog_scale.py --out benchmarks/results/cpu_catalog_scale_$(date +%F)
writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _zipf_ids(rng: np.random.Generator, num_items: int, shape) -> np.ndarray:
  """Item ids in 1..V-1 with a Zipf-like popularity (rank r drawn with weight ~ 1/r)."""
  u = rng.random(shape)
  # Inverse CDF of the continuous 1/r density on [1, V): r = V^u.
  return np.minimum((num_items - 1) ** u, num_items - 1).astype(np.int32)


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  return {"temp_bytes": int(m.temp_size_in_bytes), "argument_bytes": int(m.argument_size_in_bytes),
          "output_bytes": int(m.output_size_in_bytes)}


def run_variant(name: str, args) -> dict[str, Any]:
  """Runs one variant in this process; returns its row."""
  import jax
  import jax.numpy as jnp
  from lstmrec_jax import losses
  from lstmrec_jax import model as model_lib
  from lstmrec_jax import config_keys
  from lstmrec_jax import optim
  from lstmrec_jax import run as run_lib
  from lstmrec_jax.configs import base
  from lstmrec_jax.model import modules
  from lstmrec_jax.scoring import steps as scoring
  from lstmrec_jax.train import steps as steps_lib

  def model_config(v):
    return modules.ModelConfig.from_mapping(
        base.group("model", embed_dim=args.embed, hidden_size=args.embed), num_items=v,
        max_len=args.max_len)

  rng = np.random.default_rng(args.seed)
  row: dict[str, Any] = {"name": name}
  if name.startswith("train_"):
    kind = name.removeprefix("train_")
    v = args.num_items
    model_cfg = model_config(v)
    graphdef, params, consts = model_lib.create_model(model_cfg, args.seed)
    optim_cfg = config_keys.build_group(optim.OptimConfig, "optim",
                                        base.group("optim", warmup_steps=100))
    tx = optim.make_optimizer(optim_cfg, total_steps=1000)
    loss_cfg = losses.LossConfig.from_mapping(base.group(
        "loss", kind=kind, chunk_size=args.chunk_size, num_negatives=args.num_negatives))
    counts_V = np.bincount(_zipf_ids(rng, v, 10 * v), minlength=v)
    aux = {"consts": consts, "log_q_V": losses.popularity_log_q(jnp.asarray(counts_V), 0.5)
           if losses.needs_log_q(kind) else None}
    fn = jax.jit(functools.partial(steps_lib.train_step, graphdef=graphdef, tx=tx,
                                   loss_cfg=loss_cfg), donate_argnums=0)
    b, l = args.batch_size, args.max_len
    batches = [{"inputs_BxL": _zipf_ids(rng, v, (b, l)), "targets_BxL": _zipf_ids(rng, v, (b, l)),
                "mask_BxL": np.ones((b, l), bool), "resets_BxL": np.zeros((b, l), bool)}
               for _ in range(2)]
    state = optim.init_state(params, tx, args.seed)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batches[0], aux).compile()
    row.update(compile_s=round(time.perf_counter() - t0, 2), **_memory(compiled))
    row["loss"] = kind
    row["settings"] = {"V": v, "B": b, "L": l, "E": args.embed, "chunk_size": args.chunk_size,
                       "num_negatives": args.num_negatives if kind == "sampled" else None}
    if kind == "full":
      row["note"] = "compiled only, not run: its temporaries hold the N x V f32 logits"
      row["logits_bytes"] = b * l * v * 4
    else:
      times = []
      for i in range(args.train_steps + 1):  # the first call is a warm-up
        t0 = time.perf_counter()
        state, out = compiled(state, batches[i % 2], aux)
        jax.block_until_ready(out)
        if i:
          times.append(time.perf_counter() - t0)
      row["step_s_median"] = round(statistics.median(times), 3)
      row["step_s_all"] = [round(t, 3) for t in times]
      row["events_per_s"] = round(b * l / statistics.median(times))
      row["last_loss"] = float(out["loss"])
  elif name.startswith("eval_V"):
    v = int(float(name.removeprefix("eval_V")))
    model_cfg = model_config(v)
    graphdef, params, consts = model_lib.create_model(model_cfg, args.seed)
    fn = jax.jit(functools.partial(scoring.eval_step, graphdef=graphdef, exclude_seen=True,
                                   chunk_size=args.eval_chunk_size))
    b, l = args.eval_batch_size, args.max_len
    batches = []
    for _ in range(2):
      inputs = _zipf_ids(rng, v, (b, l))
      batches.append({"inputs_BxL": inputs, "mask_BxL": np.ones((b, l), bool),
                      "targets_B": _zipf_ids(rng, v, (b,)), "seen_BxS": inputs})
    t0 = time.perf_counter()
    compiled = fn.lower(params, consts, batches[0]).compile()
    row.update(compile_s=round(time.perf_counter() - t0, 2), **_memory(compiled))
    row["settings"] = {"V": v, "users_per_batch": b, "L": l, "E": args.embed,
                       "chunk_size": args.eval_chunk_size, "seen_width": l}
    row["scores_bytes_if_materialised"] = b * v * 4
    times = []
    for i in range(args.eval_batches + 1):
      t0 = time.perf_counter()
      ranks = compiled(params, consts, batches[i % 2])
      jax.block_until_ready(ranks)
      if i:
        times.append(time.perf_counter() - t0)
    row["batch_s_median"] = round(statistics.median(times), 3)
    row["users_per_s"] = round(b / statistics.median(times))
  else:
    raise ValueError(f"unknown variant {name!r}")
  row["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  return row


def markdown(result: dict[str, Any]) -> str:
  m = result["machine"]
  mb = lambda x: f"{x / 2**20:,.0f}" if isinstance(x, (int, float)) else ""
  lines = [f"# CPU catalog scale, synthetic V = {result['settings']['num_items']:,} "
           f"({result['date']})", "",
           f"- machine: {m.get('cpu_model')}, {m.get('cpu_count')} cores "
           f"({', '.join(m.get('isa', []))}); jax {m['jax']}",
           f"- command: `{result['command']}`",
           f"- load average (1, 5, 15 min) before: {result['load_average_before']}, after: "
           f"{result['load_average_after']}",
           f"- settings: {json.dumps(result['settings'])}", "",
           "| variant | V | step / batch s | events/s or users/s | XLA temp MB | XLA args MB | "
           "peak RSS MB |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in result["variants"]:
    if "error" in r:
      lines.append(f"| {r['name']} | error: {r['error'][:120]} | | | | | |")
      continue
    speed = r.get("events_per_s") or r.get("users_per_s") or "compiled only"
    lines.append(f"| {r['name']} | {r['settings']['V']:,} | "
                 f"{r.get('step_s_median', r.get('batch_s_median', ''))} | "
                 f"{speed if isinstance(speed, str) else f'{speed:,}'} | {mb(r['temp_bytes'])} | "
                 f"{mb(r['argument_bytes'])} | {r['max_rss_mb']:,} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--num_items", type=int, default=1_000_000, help="V of the training variants")
  p.add_argument("--eval_items", default="100000,1000000", help="V of the eval variants")
  p.add_argument("--batch_size", type=int, default=32, help="training rows (N = B * L)")
  p.add_argument("--max_len", type=int, default=50)
  p.add_argument("--embed", type=int, default=64, help="E = H")
  p.add_argument("--chunk_size", type=int, default=8192, help="training loss chunk")
  p.add_argument("--num_negatives", type=int, default=2048)
  p.add_argument("--train_steps", type=int, default=2, help="timed steps (after one warm-up)")
  p.add_argument("--eval_batch_size", type=int, default=256)
  p.add_argument("--eval_chunk_size", type=int, default=8192)
  p.add_argument("--eval_batches", type=int, default=2, help="timed batches (after a warm-up)")
  p.add_argument("--variants", default="", help="comma-separated names (default: all)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--only", default="", help=argparse.SUPPRESS)  # child process: one variant
  p.add_argument("--out", default="", help="output path without extension (.json and .md)")
  args = p.parse_args(argv)
  if args.only:
    print("ROW " + json.dumps(run_variant(args.only, args)), flush=True)
    return {}

  from train_throughput import load_average, machine_info, write_result
  names = ["train_chunked", "train_sampled", "train_full"] + [
      f"eval_V{int(v)}" for v in args.eval_items.split(",") if v]
  if args.variants:
    names = [n for n in names if n in args.variants.split(",")]
  load_before = load_average()
  rows = []
  child_argv = [a for a in (argv if argv is not None else sys.argv[1:])]
  for name in names:
    print(f"running {name} ...", flush=True)
    proc = subprocess.run([sys.executable, __file__, *child_argv, "--only", name],
                          capture_output=True, text=True, cwd=REPO)
    found = [l for l in proc.stdout.splitlines() if l.startswith("ROW ")]
    if proc.returncode or not found:
      rows.append({"name": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
    else:
      rows.append(json.loads(found[-1][4:]))
    print(json.dumps(rows[-1])[:300], flush=True)
  result = {"benchmark": "catalog_scale",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + child_argv),
            "machine": machine_info(), "load_average_before": load_before,
            "load_average_after": load_average(),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "only")},
            "variants": rows}
  write_result(result, args.out, "cpu_catalog_scale", markdown)
  return result


if __name__ == "__main__":
  main()
