"""Quality against wall time: when does a recipe pass the official GRU4Rec's test NDCG@10?

Runs `train.py` once (a fresh workdir, every validation's checkpoint kept) and reads the curve
from it. For each validation (a time budget: the wall time from launching train.py to the end of
that validation, start-up, data loading, compiles and earlier validations included), the
checkpoint a user stopping there would keep is the best on validation so far; its test NDCG@10
is read after the run (the run itself never sees the test split). Reported per budget: wall time,
epoch, best validation NDCG@10 so far, and the chosen checkpoint's test NDCG@10 / HR@10; then the
first wall time at which that test NDCG@10 reaches the floor, beside the peer's time to it.

  python benchmarks/time_to_quality.py --name beauty --config configs/beauty.py \
      --floor 0.0463 --peer_minutes 2.9 --max_minutes 5 -- \
      --config.train.eval_every_epochs=1 --config.train.valid_users=5000 --config.train.patience=0
  python benchmarks/time_to_quality.py --name games --config configs/games.py \
      --floor 0.0506 --peer_minutes 4.8 --max_minutes 7 -- \
      --config.train.eval_every_epochs=1 --config.train.valid_users=5000 --config.train.patience=0

Arguments after `--` go to train.py as they are (config overrides). Time it alone on the
machine: nothing else may run (the wall time is the result). `--phase run` trains and times only,
`--phase analyze` (later, untimed) evaluates the chosen checkpoints on test and writes the files. Writes
benchmarks/results/time_to_quality_<name>_<date>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]


def validations(workdir: pathlib.Path) -> list[dict[str, Any]]:
  """(step, unix time, epoch, valid NDCG@10) of every validation in a run's metrics.jsonl.

  The epoch comes from the training rows' step / epoch (NaN when no row logged an epoch)."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps_per_epoch = next((r["step"] / r["epoch"] for r in rows if r.get("epoch")), None)
  return [{"step": r["step"], "time": r["time"], "valid_ndcg10": r["valid/NDCG@10"],
           "epoch": r["step"] / steps_per_epoch if steps_per_epoch else float("nan")}
          for r in rows if "valid/NDCG@10" in r]


def curve(points: list[dict[str, Any]], started: float) -> list[dict[str, Any]]:
  """Each validation with the best-so-far step (ties keep the earlier, as the trainer does)."""
  best, rows = None, []
  for p in points:
    if best is None or p["valid_ndcg10"] > best["valid_ndcg10"]:
      best = p
    rows.append({"wall_s": round(p["time"] - started, 1), "step": p["step"], "epoch": p["epoch"],
                 "valid_ndcg10": p["valid_ndcg10"], "chosen_step": best["step"],
                 "chosen_valid_ndcg10": best["valid_ndcg10"]})
  return rows


def test_metrics(workdir: pathlib.Path, steps: list[int]) -> dict[int, dict[str, float]]:
  """Test NDCG@10 / HR@10 of each step's checkpoint (the data loaded once)."""
  sys.path.insert(0, str(REPO))
  from lstmrec_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.cli import common  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.evaluation import ranking  # pylint: disable=g-import-not-at-top
  run_lib.set_older_workdir_defaults(common.base_defaults())  # runs saved before newer keys
  restored = workdir_lib.restore_run(workdir, which=str(steps[0]))
  run, spec = restored.run, restored.run.spec
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  out = {}
  try:
    for step in steps:
      params, _, got = checkpointer.restore_params(run.params, str(step), run.mesh)
      if got != step:
        raise RuntimeError(f"asked for the checkpoint of step {step}, got {got}")
      report = ranking.evaluate_params(
          run.graphdef, params, run.consts, run.dataset, splits=("test",), mesh=run.mesh,
          batch_size=spec.input.eval_batch_size, max_len=spec.input.max_len,
          exclude_seen=spec.eval.exclude_seen, chunk_size=spec.eval.chunk_size,
          seen_targets=spec.eval.seen_targets, beyond_k=0)
      overall = report["splits"]["test"]["model"]["overall"]
      out[step] = {"NDCG@10": overall["NDCG@10"], "HR@10": overall["HR@10"]}
      print(f"step {step}: test NDCG@10 {overall['NDCG@10']:.4f}", flush=True)
  finally:
    checkpointer.close()
  return out


def plot(result: dict[str, Any], path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = result["curve"]
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  ax.plot([r["wall_s"] / 60 for r in rows], [r["test_ndcg10"] for r in rows], "o-",
          label=f"lstmrec_jax ({result['config']}), checkpoint chosen on validation")
  ax.axhline(result["floor"], color="gray", ls="--", lw=1)
  ax.plot([result["peer_minutes"]], [result["floor"]], "s", color="C3",
          label=f"official GRU4Rec: {result['floor']} in {result['peer_minutes']} min")
  if result["minutes_to_floor"] is not None:
    ax.axvline(result["minutes_to_floor"], color="C0", ls=":", lw=1)
  ax.set_xlabel("wall time from launch, minutes (2 CPU cores)")
  ax.set_ylabel("test NDCG@10")
  ax.set_title(f"Time to quality: {result['name']}")
  ax.legend(loc="lower right", fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
  reached = (f"**{result['minutes_to_floor'] * 60:.0f} s ({result['minutes_to_floor']:.2f} "
             f"min)**" if result["minutes_to_floor"] is not None else "**not reached**")
  # Files written before `stopped_by_cap` existed: a cap was given, so say it may have ended it.
  stopped = result.get("stopped_by_cap")
  if stopped is None:
    stopped = bool(result["max_minutes"])
  lines = [f"# Time to quality: {result['name']}", "",
           f"- date: {result['date']}", f"- command: `{result['command']}`",
           f"- train.py: `{result['train_command']}`", f"- machine: {result['machine']}",
           f"- run wall time (launch to exit): {result['run_wall_s']:.0f} s"
           + (f" (stopped by --max_minutes {result['max_minutes']})" if stopped
              else " (to its end, final evaluation included)"),
           *([f"- timing file: {result['timing_note']}"] if result.get("timing_note") else []), "",
           f"Floor (official GRU4Rec test NDCG@10): {result['floor']} in "
           f"{result['peer_minutes']} min on these 2 cores. Reached here at {reached}; goal "
           f"<= {result['peer_minutes'] * 60 / 2:.0f} s (half the peer's time).", "",
           "| wall s | epoch | step | valid NDCG@10 | chosen step | test NDCG@10 | test HR@10 |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
  for r in result["curve"]:
    lines.append(f"| {r['wall_s']:.0f} | {r['epoch']:.2f} | {r['step']} | "
                 f"{r['valid_ndcg10']:.4f} | {r['chosen_step']} | {r['test_ndcg10']:.4f} | "
                 f"{r['test_hr10']:.4f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  argv = sys.argv[1:]
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--name", required=True)
  p.add_argument("--config", required=True, help="a train.py --config value")
  p.add_argument("--floor", type=float, required=True, help="the peer's test NDCG@10")
  p.add_argument("--peer_minutes", type=float, required=True, help="the peer's time to it")
  p.add_argument("--workdir", default=None, help="default runs/time_to_quality/<name>")
  p.add_argument("--cpus", default="", help="taskset list for train.py ('' = all)")
  p.add_argument("--max_minutes", type=float, default=0, help="stop train.py (SIGTERM: it "
                 "saves and exits) after this long; the curve ends there (0 = run to its end)")
  p.add_argument("--out", default=None, help="results path stem")
  p.add_argument("--phase", choices=("both", "run", "analyze"), default="both",
                 help="run: train and time only (the test evaluations, which are not timed, "
                 "can then wait until the timed runs of a session are over); analyze: the test "
                 "evaluations and the result files of an earlier --phase run (same --workdir)")
  args = p.parse_args(argv)
  workdir = pathlib.Path(args.workdir or REPO / "runs" / "time_to_quality" / args.name)
  timing_file = workdir / "time_to_quality_run.json"
  if args.phase != "analyze":
    if workdir.exists():
      shutil.rmtree(workdir)  # a fresh run: a resumed one would not time from its start
    cmd = [sys.executable, str(REPO / "train.py"), f"--config={args.config}",
           f"--workdir={workdir}", "--config.train.keep_checkpoints=1000",
           "--config.train.progress_bar=False", *extra]
    if args.cpus:
      cmd = ["taskset", "-c", args.cpus, *cmd]
    load = os.getloadavg()
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO)
    capped = False
    try:
      proc.wait(timeout=args.max_minutes * 60 if args.max_minutes else None)
    except subprocess.TimeoutExpired:
      capped = True
      proc.send_signal(signal.SIGTERM)
      proc.wait()
    run_wall = time.time() - started
    # Stopped by the cap, train.py saves at the next step and exits 0; the cap can also land in
    # its final report, after the last validation, which SIGTERM ends with -15. Either way the
    # curve up to the cap is in its metrics.jsonl.
    if proc.returncode != 0 and not capped:
      raise SystemExit(f"train.py exited with {proc.returncode}: {' '.join(cmd)}")
    timing_file.write_text(json.dumps(
        {"started": started, "run_wall_s": run_wall, "train_command": cmd,
         "stopped_by_cap": capped, "returncode": proc.returncode,
         "loadavg_at_start": list(load), "max_minutes": args.max_minutes,
         "date": datetime.datetime.now().isoformat(timespec="seconds"),
         "command": " ".join(["python", *sys.argv])}) + "\n")
    if args.phase == "run":
      print(f"{args.name}: ran {run_wall:.0f} s; analyze with --phase analyze --workdir {workdir}")
      return
  timing = json.loads(timing_file.read_text())
  started, run_wall, cmd = timing["started"], timing["run_wall_s"], timing["train_command"]
  load, args.max_minutes = timing["loadavg_at_start"], timing["max_minutes"]
  rows = curve(validations(workdir), started)
  tests = test_metrics(workdir, sorted({r["chosen_step"] for r in rows}))
  for r in rows:
    r["test_ndcg10"] = tests[r["chosen_step"]]["NDCG@10"]
    r["test_hr10"] = tests[r["chosen_step"]]["HR@10"]
  first = next((r for r in rows if r["test_ndcg10"] >= args.floor), None)
  result = {"name": args.name, "config": args.config, "overrides": extra,
            "date": timing["date"],
            "command": timing["command"], "train_command": " ".join(cmd),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "loadavg_at_start": list(load)},
            "floor": args.floor, "peer_minutes": args.peer_minutes, "run_wall_s": run_wall,
            "max_minutes": args.max_minutes,
            "stopped_by_cap": timing.get("stopped_by_cap"),
            **({"timing_note": timing["note"]} if timing.get("note") else {}),
            "minutes_to_floor": None if first is None else first["wall_s"] / 60,
            "curve": rows}
  out = pathlib.Path(args.out or REPO / "benchmarks" / "results" /
                     f"time_to_quality_{args.name}_{datetime.date.today().isoformat()}")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
  text = markdown(result)
  out.with_suffix(".md").write_text(text)
  plot(result, out.with_suffix(".png"))
  print(text)


if __name__ == "__main__":
  main()
