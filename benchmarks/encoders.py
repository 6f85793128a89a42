"""Training and evaluation throughput of the LSTM, GRU and Transformer encoders on Amazon Beauty.

Each variant is a config file of the encoder comparison (docs/results.md, "Encoders side by
side"): the real trainer's jitted step (`run.build_run` + `train.steps.train_step`) on the
config's own batches, and the real evaluation step (`scoring.steps.eval_step`) on validation
batches. Variants are interleaved in rounds, so a change in the machine's load hits all alike;
reported: median real training events/s over rounds and evaluation users/s.

  python benchmarks/encoders.py --out benchmarks/results/cpu_encoders_$(date +%F)

Run it alone on the machine (nothing else CPU-bound): about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import numpy as np

import train_throughput as tt  # benchmarks/: machine_info, write_result, load_average

VARIANTS = {  # name -> (config file, overrides)
    "lstm": ("configs/beauty.py", {}),
    "gru": ("configs/beauty_gru.py", {}),
    "transformer_e256": ("configs/beauty_transformer.py", {}),
    "transformer_e128": ("configs/beauty_transformer.py",
                         {"model.embed_dim": 128, "model.hidden_size": 128}),
}


def load_config(path: str, overrides: dict):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("bench_config", tt.REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  for key, value in overrides.items():
    group, name = key.split(".")
    c[group][name] = value
  c.train.num_devices = 1
  return c


class Encoder:
  """One config: compiled train and eval steps, batches prepared before any clock starts."""

  def __init__(self, name, config, dataset, steps, eval_batches):
    import jax  # pylint: disable=g-import-not-at-top
    from lstmrec_jax import optim  # pylint: disable=g-import-not-at-top
    from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
    from lstmrec_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    from lstmrec_jax.scoring import steps as scoring  # pylint: disable=g-import-not-at-top
    from lstmrec_jax.train import steps as steps_lib  # pylint: disable=g-import-not-at-top
    self.name = name
    spec = run_lib.spec_from_config(config)
    run = run_lib.build_run(spec, dataset=dataset)
    tb = pipeline.TrainBatches(dataset.train, batch_size=spec.input.batch_size,
                               max_len=spec.input.max_len, seed=0, pack=spec.input.pack)
    self.batches = [jax.device_put(b) for _, b in zip(range(steps), tb.epoch(0))]
    self.events = [int(b["mask_BxL"].sum()) for b in self.batches]
    tx = run.optimizer(10_000, tb.steps_per_epoch)
    self.step = jax.jit(functools.partial(steps_lib.train_step, graphdef=run.graphdef, tx=tx,
                                          loss_cfg=spec.loss), donate_argnums=0)
    self.aux = run.step_aux()
    self.state = optim.init_state(run.params, tx, 0)
    self.state, out = self.step(self.state, self.batches[0], self.aux)  # compile + warm up
    jax.block_until_ready(out)
    keys = ("inputs_BxL", "mask_BxL", "targets_B", "seen_BxS")
    self.eval_inputs = [{k: jax.device_put(b[k]) for k in keys} for _, b in zip(
        range(eval_batches), pipeline.eval_batches(dataset.valid,
                                                   batch_size=spec.input.eval_batch_size,
                                                   max_len=spec.input.max_len))]
    self.eval_fn = jax.jit(functools.partial(scoring.eval_step, graphdef=run.graphdef,
                                             exclude_seen=True, chunk_size=spec.eval.chunk_size))
    self.consts = run.consts
    jax.block_until_ready(self.eval_fn(self.state.params, self.consts, self.eval_inputs[0]))
    self.params = sum(x.size for x in jax.tree.leaves(run.params))
    self.train_rounds, self.eval_rounds = [], []

  def time_round(self) -> None:
    import jax  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    for b in self.batches:
      self.state, out = self.step(self.state, b, self.aux)
    jax.block_until_ready(out)
    self.train_rounds.append(sum(self.events) / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    users = 0
    for b in self.eval_inputs:
      ranks = self.eval_fn(self.state.params, self.consts, b)
      users += b["targets_B"].shape[0]
    jax.block_until_ready(ranks)
    self.eval_rounds.append(users / (time.perf_counter() - t0))


def markdown(result) -> str:
  lines = [f"# Encoders on Amazon Beauty: CPU throughput ({result['date']})", "",
           f"Machine: {result['machine'].get('cpu_model')}, {result['machine']['cpu_count']} "
           f"cores; load average before {result['load_before']}, after {result['load_after']}.",
           f"Command: `{result['command']}`", "",
           "| encoder | config | params | train events/s (median of rounds) | eval users/s |",
           "|---|---|---:|---:|---:|"]
  for r in result["rows"]:
    lines.append(f"| {r['name']} | `{r['config']}` {r['overrides'] or ''} | {r['params']:,} | "
                 f"{r['train_events_per_s']:,.0f} | {r['eval_users_per_s']:,.0f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--steps", type=int, default=20, help="train steps per round")
  p.add_argument("--eval_batches", type=int, default=4, help="eval batches per round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  load_before = tt.load_average()
  names = args.variants.split(",")
  dataset = run_lib.load_data(run_lib.spec_from_config(load_config(*VARIANTS[names[0]])))
  encoders = []
  for name in names:
    print(f"preparing {name} ...", flush=True)
    encoders.append(Encoder(name, load_config(*VARIANTS[name]), dataset, args.steps,
                            args.eval_batches))
  for r in range(args.rounds):
    for enc in encoders:
      enc.time_round()
    print(f"round {r + 1}: " + ", ".join(f"{e.name} {e.train_rounds[-1]:,.0f} ev/s"
                                         for e in encoders), flush=True)
  rows = [{"name": e.name, "config": VARIANTS[e.name][0], "overrides": VARIANTS[e.name][1],
           "params": int(e.params), "train_events_per_s": statistics.median(e.train_rounds),
           "train_rounds": e.train_rounds, "eval_users_per_s": statistics.median(e.eval_rounds),
           "eval_rounds": e.eval_rounds} for e in encoders]
  import datetime  # pylint: disable=g-import-not-at-top
  result = {"date": datetime.date.today().isoformat(), "machine": tt.machine_info(),
            "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
            "load_before": load_before, "load_after": tt.load_average(), "rows": rows,
            "settings": vars(args)}
  tt.write_result(result, args.out, "cpu_encoders", markdown)


if __name__ == "__main__":
  main()
