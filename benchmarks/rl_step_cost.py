"""The offline RL step's cost against the plain step at the same shape (issue 26: at most 1.5x).

Each variant is the real trainer's jitted step (`train.steps.compile_train_step`, what train.py
runs) of one config, on that config's own training batches (with rewards), compiled and warmed
up before any clock starts. Variants are interleaved in rounds (one round = `--steps` steps of
each), so a change in the machine's load hits all alike; reported: the median over rounds of
the time per step, and each RL step's ratio to the plain one. SAC and SA2C are timed in their
weighted phase (past the warm-up; the warm-up phase computes the same terms).

  taskset -c 1 python benchmarks/rl_step_cost.py                # ML-100K recipe (B 64, L 200)
  taskset -c 1 python benchmarks/rl_step_cost.py --recipe beauty   # Beauty (B 256, L 50)

Run it alone on its core, when the load is lowest (the result file states the load average
before and after): about 2 minutes for ML-100K.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import train_throughput as tt  # benchmarks/: machine_info, write_result, load_average

RECIPES = {  # name -> (config file, its data path below the shared data folder)
    "ml100k": ("configs/ml100k_rl.py", "ml-100k"),
    "beauty": ("configs/beauty.py", "amazon-beauty/Beauty.txt"),
}
# "sac_critic": SAC with rl.td_to_encoder=False (the Q heads learn on the states, the encoder
# from the weighted CE alone: the ML-100K recipe's best head, docs/results.md).
OBJECTIVES = ("plain", "sqn", "sac", "sa2c", "sac_critic")


def load_config(recipe: str, objective: str, data_root: str):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, data = RECIPES[recipe]
  spec = importlib.util.spec_from_file_location("bench_config", tt.REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  kind = objective.removesuffix("_critic")
  c = module.get_config(kind) if recipe == "ml100k" else module.get_config()
  if recipe != "ml100k" and kind != "plain":
    c.loss.kind = kind
    c.model.q_head = True
  if objective.endswith("_critic"):
    c.rl.td_to_encoder = False
  c.data.path = f"{data_root}/{data}"
  c.train.num_devices = 1
  return c


class Step:
  """One objective: the compiled train step and its batches, prepared before any clock."""

  def __init__(self, name, config, dataset, steps):
    import jax  # pylint: disable=g-import-not-at-top
    from lstmrec_jax import optim  # pylint: disable=g-import-not-at-top
    from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
    from lstmrec_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    from lstmrec_jax.train import steps as steps_lib  # pylint: disable=g-import-not-at-top
    self.name = name
    spec = run_lib.spec_from_config(config)
    run = run_lib.build_run(spec, dataset=dataset, num_devices=1)
    tb = pipeline.TrainBatches(dataset.train, batch_size=spec.input.batch_size,
                               max_len=spec.input.max_len, seed=0, pack=spec.input.pack,
                               backend="numpy", rewards_N=dataset.train_rewards())
    batches = []
    epoch = 0
    while len(batches) < steps:
      batches += list(tb.epoch(epoch))
      epoch += 1
    self.batches = [jax.device_put(b) for b in batches[:steps]]
    self.shape = tuple(self.batches[0]["inputs_BxL"].shape)
    tx = run.optimizer(10_000, tb.steps_per_epoch)
    self.step, _ = steps_lib.compile_train_step(run, tx)
    self.aux = run.step_aux()  # rl_start_step 0: the weighted phase
    self.state = optim.init_state(run.params, tx, 0)
    for b in self.batches[:2]:  # compile + warm up
      self.state, out = self.step(self.state, b, self.aux)
    jax.block_until_ready(out)
    self.params = sum(x.size for x in jax.tree.leaves(run.params))
    self.rounds: list[float] = []

  def time_round(self) -> None:
    import jax  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    for b in self.batches:
      self.state, out = self.step(self.state, b, self.aux)
    jax.block_until_ready(out)
    self.rounds.append((time.perf_counter() - t0) / len(self.batches))


def markdown(result) -> str:
  plain = result["rows"][0]["ms_per_step"]
  lines = [f"# Offline RL step cost, {result['recipe']} recipe ({result['date']})", "",
           f"Machine: {result['machine'].get('cpu_model')}, {result['machine']['cpu_count']} "
           f"cores (this run pinned to one: `taskset -c 1`); load average (1, 5, 15 min) before "
           f"{result['load_before']}, after {result['load_after']}.",
           f"Command: `{result['command']}`",
           f"Shape: batch x length {result['shape']}, V = {result['num_items']}; "
           f"{result['settings']['rounds']} interleaved rounds of "
           f"{result['settings']['steps']} steps each, median over rounds.", "",
           "| objective | params | ms / step (median) | rounds (ms / step) | ratio to plain |",
           "|---|---:|---:|---|---:|"]
  for r in result["rows"]:
    lines.append(f"| {r['name']} | {r['params']:,} | {r['ms_per_step']:.1f} | "
                 + ", ".join(f"{x:.1f}" for x in r["rounds_ms"])
                 + f" | {r['ms_per_step'] / plain:.2f}x |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--recipe", default="ml100k", choices=sorted(RECIPES))
  p.add_argument("--objectives", default=",".join(OBJECTIVES))
  p.add_argument("--steps", type=int, default=12, help="train steps per round")
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--data_root", default=str(pathlib.Path(tt.default_data_path()).parents[1]),
                 help="the shared data folder ($LSTMREC_SHARED_DATA, else ../shared/data)")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  names = args.objectives.split(",")
  if names[0] != "plain":
    raise SystemExit("--objectives must start with plain (the ratios' denominator)")
  dataset = run_lib.load_data(run_lib.spec_from_config(
      load_config(args.recipe, "sqn", args.data_root)))
  steps = []
  for name in names:
    print(f"preparing {name} ...", flush=True)
    steps.append(Step(name, load_config(args.recipe, name, args.data_root), dataset,
                      args.steps))
  load_before = tt.load_average()
  for r in range(args.rounds):
    for s in steps:
      s.time_round()
    print(f"round {r + 1}: " + ", ".join(f"{s.name} {1e3 * s.rounds[-1]:.1f} ms"
                                         for s in steps), flush=True)
  rows = [{"name": s.name, "params": int(s.params),
           "ms_per_step": 1e3 * statistics.median(s.rounds),
           "rounds_ms": [1e3 * x for x in s.rounds]} for s in steps]
  import datetime  # pylint: disable=g-import-not-at-top
  result = {"date": datetime.date.today().isoformat(), "machine": tt.machine_info(),
            "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
            "recipe": args.recipe, "shape": list(steps[0].shape),
            "num_items": int(dataset.num_items), "load_before": load_before,
            "load_after": tt.load_average(), "rows": rows, "settings": vars(args),
            "ratios": {r["name"]: r["ms_per_step"] / rows[0]["ms_per_step"] for r in rows}}
  tt.write_result(result, args.out, f"rl_step_cost_{args.recipe}", markdown)


if __name__ == "__main__":
  main()
