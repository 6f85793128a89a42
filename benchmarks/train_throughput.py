"""CPU training throughput on Amazon Beauty: packed vs padded, exact vs sampled softmax, PyTorch.

Shape legend: B batch rows, L history length (max_len), E item embedding size, H LSTM hidden
size, V catalog size, S shared sampled negatives, N = B*L positions per step.

Measures real training events per second (non-padding input positions, each with a target) of
the trainer's own jitted `lstmrec_jax.train.steps.train_step` (SeqRecModel E=H=64, one LSTM layer,
tied output table, dropout 0.3/0.3, AdamW with clipping, as configs/beauty.py), for:

  jax_{packed,padded}_chunked_f32    exact full softmax over all V items (chunked, f32 operands)
  jax_packed_chunked_bf16            same loss, bf16 matmul operands with f32 accumulation
  jax_packed_onepass_{f32,bf16}      same loss with chunk_size >= V: one pass forms the gradients
                                     (3 matmuls, 1 exp per logit instead of 4 and 2)
  jax_packed_chunked_f32_unblocked   row_block = N: one N x C block per chunk (the layout before
                                     row blocking), to measure what the cache blocking buys
  jax_packed_full_f32                the materialised N x V softmax (reference)
  jax_{packed,padded}_sampled        sampled softmax, S shared negatives (popularity^0.5, logQ)
  jax_packed_sampled_nohoist         input projection inside the scan instead of hoisted
  jax_packed_b<B>_{sampled,onepass_bf16}  the same at --big_batch_size rows per step (the LSTM's
                                     50 sequential steps are amortised over more rows)
  before_packed_{chunked_f32,sampled}  with --baseline_losses: an older losses.py, same rounds
  torch_padded_{full,sampled}_t<n>   an equivalent PyTorch CPU model on n threads (nn.Embedding, nn.LSTM,
                                     tied output, same losses, AdamW + clipping), written for this
                                     benchmark only; skipped with the reason if torch is missing

PyTorch's nn.LSTM cannot reset its state inside a row, so it trains on padded rows and computes
its loss at the real positions only (`out[mask]`); the JAX step scores every one of the B*L
positions of a row (padding gets weight 0), which is why packing matters for it.

Timing: variants are interleaved in rounds (round r runs every variant once), so a change in the
machine's load hits all of them alike; each round times --steps steps on batches prepared before
the clock starts, ending with `block_until_ready`. Reported per variant: the median and best
events/s over rounds (wall clock), and the process CPU seconds per step (less sensitive to other
processes on a shared machine). Ratios are against jax_packed_chunked_f32 from the same rounds.

Run from the repository root (data from --data or $LSTMREC_SHARED_DATA/amazon-beauty/Beauty.txt):
  python benchmarks/train_throughput.py --out benchmarks/results/cpu_train_throughput_$(date +%F)
writes <out>.json and <out>.md. About 5 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

REFERENCE = "jax_packed_chunked_f32"


def machine_info() -> dict[str, Any]:
  """CPU model, cores and the ISA flags that matter for the matmuls; load average now."""
  info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count(), "jax": jax.__version__}
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["cpu_model"] = fields.get("Model name")
    info["cores_per_socket"] = fields.get("Core(s) per socket")
    info["threads_per_core"] = fields.get("Thread(s) per core")
    flags = fields.get("Flags", "").split()
    info["isa"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                   if f in flags]
  except (OSError, subprocess.CalledProcessError) as e:
    info["lscpu_error"] = str(e)
  info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  return info


def load_average() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def write_result(result: dict[str, Any], out: str, default_stem: str,
                 markdown_fn: Callable[[dict[str, Any]], str]) -> None:
  """<out>.json and <out>.md (default: benchmarks/results/<default_stem>_<date>); prints the md."""
  out = out or str(REPO / "benchmarks" / "results" /
                   f"{default_stem}_{datetime.date.today().isoformat()}")
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(out + ".json").write_text(json.dumps(result, indent=1) + "\n")
  text = markdown_fn(result)
  pathlib.Path(out + ".md").write_text(text)
  print(text)


def default_data_path() -> str:
  shared = os.environ.get("LSTMREC_SHARED_DATA")
  base = pathlib.Path(shared) if shared else REPO.parent / "shared" / "data"
  return str(base / "amazon-beauty" / "Beauty.txt")


class Variant:
  """One thing to time: `prepare()` compiles and warms up, `run(steps)` trains `steps` steps."""

  def __init__(self, name: str, description: str):
    self.name, self.description = name, description
    self.rounds: list[dict[str, float]] = []
    self.info: dict[str, Any] = {}

  def prepare(self) -> None:
    raise NotImplementedError

  def run(self, steps: int) -> int:
    """Trains `steps` steps; returns the real events trained on (blocks until done)."""
    raise NotImplementedError


class JaxVariant(Variant):
  """The trainer's jitted train_step on pre-built batches."""

  def __init__(self, name, description, *, dataset, batches, loss_kwargs, model_kwargs,
               log_q_V, seed, warmup, losses_module=None):
    super().__init__(name, description)
    self.dataset, self.batches = dataset, batches
    self.loss_kwargs, self.model_kwargs = loss_kwargs, model_kwargs
    self.log_q_V, self.seed, self.warmup = log_q_V, seed, warmup
    self.losses_module = losses_module

  def prepare(self):
    from lstmrec_jax.configs import base
    from lstmrec_jax import losses
    from lstmrec_jax import run as run_lib
    from lstmrec_jax import optim
    from lstmrec_jax.train import steps as steps_lib
    config = base.get_base_config()
    config.seed = self.seed
    config.model.update(self.model_kwargs)
    config.loss.update(self.loss_kwargs)
    config.train.num_devices = 1
    config.optim.warmup_steps = 100  # steps: this benchmark has no epochs
    run = run_lib.build_run(run_lib.spec_from_config(config), dataset=self.dataset)
    tx = run.optimizer(total_steps=10_000)
    loss_cfg = run.spec.loss
    self.fn = jax.jit(functools.partial(steps_lib.train_step, graphdef=run.graphdef, tx=tx,
                                        loss_cfg=loss_cfg), donate_argnums=0)
    self.aux = {"consts": run.consts,
                "log_q_V": self.log_q_V if losses.needs_log_q(loss_cfg) else None}
    self.state = optim.init_state(run.params, tx, self.seed)
    self.device_batches = [jax.device_put(b) for b in self.batches]
    self.events = [int(b["mask_BxL"].sum()) for b in self.batches]
    t0 = time.perf_counter()
    saved = steps_lib.losses
    if self.losses_module is not None:  # traced once, on this first call, with the old losses
      steps_lib.losses = self.losses_module
    try:
      self.state, out = self.fn(self.state, self.device_batches[0], self.aux)
      jax.block_until_ready(out)
    finally:
      steps_lib.losses = saved
    self.info["compile_and_first_step_s"] = round(time.perf_counter() - t0, 2)
    self.info["first_loss"] = float(out["loss"])
    self.next = 1
    self.run(self.warmup)

  def run(self, steps):
    events = 0
    for _ in range(steps):
      i = self.next % len(self.device_batches)
      self.state, out = self.fn(self.state, self.device_batches[i], self.aux)
      events += self.events[i]
      self.next += 1
    jax.block_until_ready((self.state, out))
    self.info["last_loss"] = float(out["loss"])
    return events


class TorchVariant(Variant):
  """An equivalent PyTorch model: embedding, 1-layer LSTM, tied output, same loss, AdamW."""

  def __init__(self, name, description, *, num_items, batches, kind, embed, hidden, dropout,
               num_negatives, log_q_V, seed, warmup, threads):
    super().__init__(name, description)
    self.num_items, self.batches, self.kind = num_items, batches, kind
    self.embed, self.hidden, self.dropout = embed, hidden, dropout
    self.num_negatives, self.log_q_V = num_negatives, log_q_V
    self.seed, self.warmup, self.threads = seed, warmup, threads

  def prepare(self):
    import torch
    from torch import nn
    torch.manual_seed(self.seed)
    torch.set_num_threads(self.threads)
    embed, hidden = self.embed, self.hidden

    class Model(nn.Module):
      def __init__(self, num_items):
        super().__init__()
        self.emb = nn.Embedding(num_items, embed, padding_idx=0)
        nn.init.normal_(self.emb.weight, std=embed ** -0.5)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, embed) if hidden != embed else nn.Identity()

    self.torch = torch
    self.model = Model(self.num_items)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.0)
    self.q = torch.exp(torch.as_tensor(np.asarray(self.log_q_V), dtype=torch.float32))
    self.log_q = torch.as_tensor(np.asarray(self.log_q_V), dtype=torch.float32)
    self.tensors = [{k: torch.as_tensor(np.asarray(v)) for k, v in b.items()}
                    for b in self.batches]
    self.events = [int(b["mask_BxL"].sum()) for b in self.batches]
    self.info["torch"] = torch.__version__
    self.info["threads"] = torch.get_num_threads()
    t0 = time.perf_counter()
    self.info["first_loss"] = self._step(self.tensors[0])  # threads set just above
    self.info["compile_and_first_step_s"] = round(time.perf_counter() - t0, 2)
    self.next = 1
    self.run(self.warmup)

  def _step(self, batch) -> float:
    torch, m = self.torch, self.model
    f = torch.nn.functional
    mask = batch["mask_BxL"]
    x = f.dropout(m.emb(batch["inputs_BxL"].long()), self.dropout, training=True)
    h, _ = m.lstm(x)
    user_NxE = f.dropout(m.proj(h)[mask], self.dropout, training=True)  # real positions only
    targets_N = batch["targets_BxL"][mask].long()
    table_VxE = m.emb.weight
    if self.kind == "full":
      logits_NxV = user_NxE @ table_VxE.T
      logits_NxV[:, 0] = float("-inf")  # padding is never a class
      loss = f.cross_entropy(logits_NxV, targets_N)
    else:  # sampled softmax with logQ correction and accidental-hit removal, as losses.py
      neg_S = torch.multinomial(self.q, self.num_negatives, replacement=True)
      target_N = (user_NxE * table_VxE[targets_N]).sum(1)
      logits_NxS = user_NxE @ table_VxE[neg_S].T - self.log_q[neg_S] - np.log(self.num_negatives)
      logits_NxS = logits_NxS.masked_fill(neg_S[None, :] == targets_N[:, None], float("-inf"))
      loss = (torch.logsumexp(torch.cat([target_N[:, None], logits_NxS], 1), 1) - target_N).mean()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    self.opt.step()
    return float(loss.detach())

  def run(self, steps):
    self.torch.set_num_threads(self.threads)  # process-wide: the other torch rows change it
    events = 0
    for _ in range(steps):
      i = self.next % len(self.tensors)
      self.info["last_loss"] = self._step(self.tensors[i])
      events += self.events[i]
      self.next += 1
    return events


def _load_baseline_losses(path: str):
  """An older losses.py as a stand-in for `steps.losses`, dropping keywords it does not know."""
  # Made with e.g. `git show <rev>:lstmrec_jax/losses.py > /tmp/losses_before.py`.
  import importlib.util
  import inspect
  import types
  spec = importlib.util.spec_from_file_location("baseline_losses", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  shim = types.SimpleNamespace(**vars(module))
  for name in ("chunked_softmax_cross_entropy", "softmax_cross_entropy",
               "sampled_softmax_cross_entropy"):
    fn = getattr(module, name)
    known = set(inspect.signature(fn).parameters)
    setattr(shim, name, functools.partial(
        lambda *a, _fn, _known, **kw: _fn(*a, **{k: v for k, v in kw.items() if k in _known}),
        _fn=fn, _known=known))
  return shim


def build_variants(args, dataset) -> tuple[list[Variant], dict[str, Any], list[dict]]:
  """Every variant selected by --variants, plus data facts (padding fractions) and skips."""
  from lstmrec_jax import losses
  from lstmrec_jax.data import pipeline
  facts: dict[str, Any] = {"num_items_V": int(dataset.num_items), "num_users": int(dataset.num_users)}
  batch_sets = {}
  for pack, batch_size in ((True, args.batch_size), (False, args.batch_size),
                           (True, args.big_batch_size)):
    if not batch_size:
      continue
    tb = pipeline.TrainBatches(dataset.train, batch_size=batch_size, max_len=args.max_len,
                               seed=args.seed, pack=pack)
    key = ("packed" if pack else "padded") + (
        f"_b{batch_size}" if batch_size != args.batch_size else "")
    batch_sets[key] = [b for _, b in zip(range(args.num_batches), tb.epoch(0))]
    facts[key] = {"padding_fraction": round(tb.padding_fraction, 4), "rows": tb.num_rows,
                  "steps_per_epoch": tb.steps_per_epoch, "real_positions": tb.real_positions,
                  "real_events_per_step_mean": round(
                      float(np.mean([b["mask_BxL"].sum() for b in batch_sets[key]])), 1)}
  log_q_V = losses.popularity_log_q(jnp.asarray(dataset.item_counts_V), 0.5)
  model = {"embed_dim": args.embed, "hidden_size": args.embed, "embed_dropout": 0.3,
           "output_dropout": 0.3}
  chunked = {"kind": "chunked", "chunk_size": args.chunk_size}
  sampled = {"kind": "sampled", "num_negatives": args.num_negatives, "alpha": 0.5}
  n = args.batch_size * args.max_len
  specs = [
      ("jax_packed_chunked_f32", "packed", chunked, {}, "exact softmax, f32 operands"),
      ("jax_padded_chunked_f32", "padded", chunked, {}, "exact softmax, f32, padded rows"),
      ("jax_packed_chunked_bf16", "packed", {**chunked, "compute_dtype": "bfloat16"}, {},
       "exact softmax, bf16 operands / f32 accumulation"),
      ("jax_packed_onepass_f32", "packed", {**chunked, "chunk_size": args.one_pass_chunk_size},
       {}, "exact softmax, one chunk >= V: gradients formed in the forward pass"),
      ("jax_packed_onepass_bf16", "packed", {**chunked, "chunk_size": args.one_pass_chunk_size,
                                             "compute_dtype": "bfloat16"}, {},
       "exact softmax, one pass, bf16 operands / f32 accumulation"),
      ("jax_packed_chunked_f32_unblocked", "packed", {**chunked, "row_block": n}, {},
       "exact softmax, f32, one N x C block per chunk (no row blocking)"),
      ("jax_packed_full_f32", "packed", {"kind": "full"}, {}, "materialised N x V softmax"),
      ("jax_packed_sampled", "packed", sampled, {}, f"sampled softmax, {args.num_negatives} negatives"),
      ("jax_padded_sampled", "padded", sampled, {}, "sampled softmax, padded rows"),
      ("jax_packed_sampled_nohoist", "packed", sampled, {"hoist_input_projection": False},
       "sampled softmax, input projection inside the scan"),
  ]
  if args.big_batch_size:
    big = f"packed_b{args.big_batch_size}"
    specs += [(f"jax_{big}_sampled", big, sampled, {}, "sampled softmax, bigger batch"),
              (f"jax_{big}_onepass_bf16", big, {**chunked, "chunk_size": args.one_pass_chunk_size,
                                                "compute_dtype": "bfloat16"}, {},
               "exact softmax, one pass, bf16, bigger batch")]
  old_losses = _load_baseline_losses(args.baseline_losses) if args.baseline_losses else None
  if old_losses is not None:
    specs += [("before_packed_chunked_f32", "packed", chunked, {},
               f"exact softmax with the losses module of {args.baseline_losses}", old_losses),
              ("before_packed_sampled", "packed", sampled, {},
               f"sampled softmax with the losses module of {args.baseline_losses}", old_losses)]
  wanted = args.variants.split(",") if args.variants else None
  variants: list[Variant] = []
  skipped = []
  for name, rows, loss_kwargs, model_extra, desc, *module in specs:
    if wanted is None or name in wanted:
      variants.append(JaxVariant(name, desc, dataset=dataset, batches=batch_sets[rows],
                                 loss_kwargs=loss_kwargs, model_kwargs={**model, **model_extra},
                                 log_q_V=log_q_V, seed=args.seed, warmup=args.warmup,
                                 losses_module=module[0] if module else None))
  for threads in [int(t) or os.cpu_count() for t in args.torch_threads.split(",")]:
    for kind in ("full", "sampled"):
      name = f"torch_padded_{kind}_t{threads}"
      if wanted is not None and name not in wanted:
        continue
      try:
        import torch  # noqa: F401  # benchmark-only dependency, not in requirements.txt
      except ImportError as e:
        skipped.append({"name": name, "reason": f"torch is not installed ({e})"})
        continue
      variants.append(TorchVariant(
          name, f"PyTorch CPU, {kind} softmax, padded rows, loss at real positions only, "
          f"{threads} threads", num_items=int(dataset.num_items), batches=batch_sets["padded"],
          kind=kind, embed=args.embed, hidden=args.embed, dropout=0.3,
          num_negatives=args.num_negatives, log_q_V=log_q_V, seed=args.seed,
          warmup=args.warmup, threads=threads))
  return variants, facts, skipped


def summarize(variants: list[Variant], steps: int) -> list[dict[str, Any]]:
  rows = []
  ref = next((v for v in variants if v.name == REFERENCE), None)
  for v in variants:
    if not v.rounds:
      rows.append({"name": v.name, "description": v.description, **v.info, "status": "failed"})
      continue
    ev_s = [r["events"] / r["wall_s"] for r in v.rounds]
    row = {"name": v.name, "description": v.description, "status": "ok",
           "events_per_s_median": round(statistics.median(ev_s)),
           "events_per_s_best": round(max(ev_s)),
           "wall_s_per_step_median": round(statistics.median(r["wall_s"] for r in v.rounds) / steps, 4),
           "cpu_s_per_step_median": round(statistics.median(r["cpu_s"] for r in v.rounds) / steps, 4),
           "cpu_s_per_1k_events": round(statistics.median(
               1e3 * r["cpu_s"] / r["events"] for r in v.rounds), 4),
           "events_per_step": round(statistics.mean(r["events"] for r in v.rounds) / steps, 1),
           "rounds": v.rounds, **v.info}
    if ref is not None and ref.rounds:
      # Per-round ratios (same load), then their median.
      row["speedup_vs_reference_wall"] = round(statistics.median(
          (r["events"] / r["wall_s"]) / (q["events"] / q["wall_s"])
          for r, q in zip(v.rounds, ref.rounds)), 3)
      row["speedup_vs_reference_cpu"] = round(statistics.median(
          (r["events"] / r["cpu_s"]) / (q["events"] / q["cpu_s"])
          for r, q in zip(v.rounds, ref.rounds)), 3)
    rows.append(row)
  return rows


def markdown(result: dict[str, Any]) -> str:
  m = result["machine"]
  lines = [f"# CPU training throughput, Amazon Beauty ({result['date']})", "",
           f"- machine: {m.get('cpu_model')}, {m.get('cpu_count')} cores "
           f"({', '.join(m.get('isa', []))}); jax {m['jax']}",
           f"- command: `{result['command']}`",
           f"- load average (1, 5, 15 min) before: {result['load_average_before']}, after: "
           f"{result['load_average_after']}",
           f"- settings: {json.dumps(result['settings'])}",
           f"- padding fraction: packed {result['data']['packed']['padding_fraction']:.2%}, "
           f"padded {result['data']['padded']['padding_fraction']:.2%} "
           f"(real events per step: packed {result['data']['packed']['real_events_per_step_mean']}"
           f", padded {result['data']['padded']['real_events_per_step_mean']})", "",
           "| variant | real events/s (median) | best | CPU s / 1k events | vs reference "
           "(wall) | vs reference (CPU time) | first loss |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in result["variants"]:
    if r["status"] != "ok":
      lines.append(f"| {r['name']} | failed | | | | | |")
      continue
    lines.append(f"| {r['name']} | {r['events_per_s_median']:,} | {r['events_per_s_best']:,} | "
                 f"{r['cpu_s_per_1k_events']} | {r.get('speedup_vs_reference_wall', '')} | "
                 f"{r.get('speedup_vs_reference_cpu', '')} | {r.get('first_loss', 0):.4f} |")
  for s in result["skipped"]:
    lines.append(f"| {s['name']} | skipped: {s['reason']} | | | | | |")
  lines += ["", f"Reference: {REFERENCE}. Rounds interleave the variants; see the JSON for every "
            "round."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default=default_data_path(), help="Beauty.txt (seqfile format)")
  p.add_argument("--cache_dir", default="", help="dataset npz cache folder ('' = none)")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--big_batch_size", type=int, default=1024,
                 help="also time the sampled and one-pass bf16 steps at this batch (0 = off)")
  p.add_argument("--max_len", type=int, default=50)
  p.add_argument("--embed", type=int, default=64, help="E = H")
  p.add_argument("--chunk_size", type=int, default=4096, help="items per chunk (configs/base.py)")
  p.add_argument("--one_pass_chunk_size", type=int, default=16384,
                 help="chunk size of the one-pass variants (>= V so the catalog is one chunk)")
  p.add_argument("--num_negatives", type=int, default=2048)
  p.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  p.add_argument("--num_batches", type=int, default=8, help="distinct batches cycled through")
  p.add_argument("--torch_threads", default="1,0",
                 help="comma-separated torch thread counts, one set of torch rows each (0 = all"
                 " cores; on a loaded machine 1 thread avoids OpenMP oversubscription)")
  p.add_argument("--variants", default="", help="comma-separated names (default: all)")
  p.add_argument("--baseline_losses", default="",
                 help="an older losses.py to time as before_* variants in the same rounds")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="", help="output path without extension (.json and .md)")
  p.add_argument("--host_malloc", default="reuse", help="the host allocator of this process, "
                 "JAX and PyTorch alike (lstmrec_jax/hostmem.py: reuse as train.py, one_arena, "
                 "system)")
  args = p.parse_args(argv)
  from lstmrec_jax import hostmem
  host_malloc = hostmem.configure(args.host_malloc)
  print(host_malloc, flush=True)

  from lstmrec_jax import data as data_lib
  load_before = load_average()
  from lstmrec_jax.configs import base
  dataset = data_lib.load_dataset(data_lib.DataConfig.from_mapping(base.group(
      "data", format="seqfile", path=args.data, attributes_path=False,
      cache_dir=args.cache_dir or "")))
  variants, facts, skipped = build_variants(args, dataset)
  for v in variants:
    print(f"preparing {v.name} ...", flush=True)
    v.prepare()
  for r in range(args.rounds):
    for v in variants:
      t0, c0 = time.perf_counter(), time.process_time()
      events = v.run(args.steps)
      v.rounds.append({"events": events, "wall_s": round(time.perf_counter() - t0, 4),
                       "cpu_s": round(time.process_time() - c0, 4)})
      print(f"round {r} {v.name}: {events / v.rounds[-1]['wall_s']:,.0f} events/s", flush=True)
  result = {
      "benchmark": "train_throughput", "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "host_malloc": host_malloc,
      "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + (argv or sys.argv[1:])),
      "machine": machine_info(), "load_average_before": load_before,
      "load_average_after": load_average(), "settings": {
          k: v for k, v in vars(args).items() if k not in ("out", "cache_dir")},
      "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
      "data": facts, "reference": REFERENCE, "variants": summarize(variants, args.steps),
      "skipped": skipped,
      "targets": {"exact_full_softmax_events_per_s": 20_000, "sampled_events_per_s": 50_000}}
  write_result(result, args.out, "cpu_train_throughput", markdown)
  return result


if __name__ == "__main__":
  main()
