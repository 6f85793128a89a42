"""train.py + eval.py end to end on one accelerator, with the numpy input backend; one JSON out.

On a GPU box (requirements/cuda12.txt or cuda13.txt installed, Beauty under ../shared/data):

  python benchmarks/gpu_train_e2e.py --preset recipe --tag recipe   # Beauty's recipe as it is
  python benchmarks/gpu_train_e2e.py                       # Beauty, the accelerator preset
  python benchmarks/gpu_train_e2e.py --set model.lstm_impl=xla --tag xla   # another variant

Presets: `recipe` runs the config file as it is (the CPU recipe's batch of 32 packed rows, an f32
model and, since stop 39, bf16 softmax operands; its quality is the published one) with only the
input backend and logging set; `accelerator`
(default) adds bf16 operands and a batch of 1,024 rows, which on Beauty is 2.5 steps an epoch: a
throughput setting whose quality at the config's epochs is not tuned.

On CPU, to check the script itself (synthetic data, two epochs, ~30 s on 2 cores):

  python benchmarks/gpu_train_e2e.py --tiny --out /tmp/e2e.json

It records: time to the first training step (data + compile, from metrics.jsonl's first row), the
real trainer's events/s (median of the logged windows after the first), the wall time until
validation NDCG@10 first reaches `--target_valid_ndcg` (the CPU recipe's, docs/results.md), and
test NDCG@10 / HR@10 of the best checkpoint from eval.py. Results go to
benchmarks/results/gpu_train_e2e_<date>[_tag].json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
# The Beauty recipe on an accelerator: bf16 matmul operands (f32 cell state and softmax sums),
# accelerator-sized batches, the kernel chosen by lstm_impl=auto, no TensorFlow in the loop.
GPU_RECIPE = {
    "input.backend": "numpy",
    "input.batch_size": 1024,
    "input.eval_batch_size": 2048,
    "model.compute_dtype": "bfloat16",
    "loss.compute_dtype": "bfloat16",
    "model.lstm_impl": "auto",
    "optim.learning_rate": 3e-3,  # 4x the CPU batch: a larger step (untuned; say so in results)
    "train.log_every_steps": 20,
    "train.progress_bar": False,
}
# The config as it is, but for what the device lacks (TensorFlow) and a quiet log.
RECIPE = {
    "input.backend": "numpy",
    "train.log_every_steps": 20,
    "train.progress_bar": False,
}
PRESETS = {"accelerator": GPU_RECIPE, "recipe": RECIPE}
# A few seconds of synthetic training on CPU: checks the script, measures nothing.
TINY = {
    "data.synthetic.num_users": 200, "data.synthetic.num_items": 80, "data.cache_dir": "",
    "input.max_len": 12, "input.batch_size": 16, "input.eval_batch_size": 32,
    "model.embed_dim": 8, "model.hidden_size": 8, "model.compute_dtype": "float32",
    "loss.compute_dtype": "float32", "train.num_epochs": 2, "train.log_every_steps": 1,
}
BEAUTY_VALID_NDCG = 0.0774  # CPU recipe, seed 0 (docs/results.md)


def _flags(overrides: dict[str, object]) -> list[str]:
  out = []
  for key, value in overrides.items():
    value = str(value).lower() if isinstance(value, bool) else value
    out.append(f"--config.{key}={value}")
  return out


def _parse_set(items: list[str]) -> dict[str, str]:
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--set takes key=value, got {item!r}")
    out[key] = value
  return out


def _run(cmd: list[str], log: pathlib.Path) -> float:
  """Runs `cmd` in the repository with its output teed to `log`; returns the wall seconds."""
  start = time.time()
  with open(log, "w") as f:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:
      sys.stdout.write(line)
      f.write(line)
    proc.wait()
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}); see {log}")
  return time.time() - start


def summarize(workdir: pathlib.Path, launched: float, target: float) -> dict[str, object]:
  """Timings and throughput from a finished workdir's metrics.jsonl."""
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "loss" in r]
  valid_rows = [r for r in rows if "valid/NDCG@10" in r]
  first = train_rows[0]["time"] if train_rows else None
  rates = [r["events_per_s"] for r in train_rows[1:]] or [r["events_per_s"] for r in train_rows]
  reached = next((r for r in valid_rows if r["valid/NDCG@10"] >= target), None)
  return {
      "time_to_first_logged_step_s": round(first - launched, 1) if first else None,
      "first_logged_step": train_rows[0]["step"] if train_rows else None,
      "events_per_s_median": float(sorted(rates)[len(rates) // 2]) if rates else None,
      "events_per_s_max": float(max(rates)) if rates else None,
      "steps": train_rows[-1]["step"] if train_rows else 0,
      "target_valid_ndcg": target,
      "wall_to_target_s_from_launch": round(reached["time"] - launched, 1) if reached else None,
      "wall_to_target_s_from_first_step": (round(reached["time"] - first, 1)
                                           if reached and first else None),
      "target_reached_at_step": reached["step"] if reached else None,
      "best_valid_ndcg": max((r["valid/NDCG@10"] for r in valid_rows), default=None),
  }


def _environment() -> dict[str, object]:
  import jax  # pylint: disable=g-import-not-at-top
  env: dict[str, object] = {"python": platform.python_version(), "jax": jax.__version__,
                            "devices": [str(d) for d in jax.devices()],
                            "backend": jax.default_backend()}
  if shutil.which("nvidia-smi"):
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True)
    env["nvidia_smi"] = q.stdout.strip()
  return env


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/beauty.py")
  p.add_argument("--workdir", default=None, help="default: a fresh runs/gpu_e2e_<time>")
  p.add_argument("--preset", choices=sorted(PRESETS), default="accelerator")
  p.add_argument("--tiny", action="store_true", help="synthetic data, 2 tiny epochs (CPU check)")
  p.add_argument("--num_epochs", type=int, default=None, help="override train.num_epochs")
  p.add_argument("--target_valid_ndcg", type=float, default=BEAUTY_VALID_NDCG)
  p.add_argument("--set", action="append", default=[], help="extra key=value config overrides")
  p.add_argument("--tag", default="")
  p.add_argument("--out", default=None)
  args = p.parse_args()

  stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
  config = "configs/default.py" if args.tiny else args.config
  overrides = {**PRESETS[args.preset], **(TINY if args.tiny else {}), **_parse_set(args.set)}
  if args.num_epochs:
    overrides["train.num_epochs"] = args.num_epochs
  workdir = pathlib.Path(args.workdir or REPO / "runs" / f"gpu_e2e_{stamp}").absolute()
  if (workdir / "config.json").exists():
    raise SystemExit(f"{workdir} holds a run already; the timings need a fresh workdir")
  workdir.mkdir(parents=True)

  launched = time.time()
  train_s = _run([sys.executable, "train.py", "--config", config, "--workdir", str(workdir),
                  *_flags(overrides)], workdir / "train.log")
  eval_s = _run([sys.executable, "eval.py", "--workdir", str(workdir), "--splits", "valid,test"],
                workdir / "eval.log")
  test = json.loads((workdir / "eval_best.json").read_text())["splits"]["test"]["model"]
  result = {
      "config": config, "preset": args.preset, "overrides": overrides, "workdir": str(workdir),
      "train_py_wall_s": round(train_s, 1), "eval_py_wall_s": round(eval_s, 1),
      **summarize(workdir, launched, args.target_valid_ndcg),
      "test_NDCG@10": test["overall"]["NDCG@10"], "test_HR@10": test["overall"]["HR@10"],
      "test_users": test["overall"]["users"], "environment": _environment(),
      "date": stamp,
  }
  out = pathlib.Path(args.out or REPO / "benchmarks" / "results" /
                     f"gpu_train_e2e_{stamp[:8]}{'_' + args.tag if args.tag else ''}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))
  print(f"results: {out}")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
