"""The offline RL results table (issue 26) from finished train.py workdirs' report.json.

For each variant (name=workdir, a name repeated once per seed) and head (the softmax head, and
the Q head where the model has one): test (or --split) HR / NDCG @ 5, 10, 20 over all targets,
over the high-reward targets and the others, and the reward of the hits (mean reward of the
targets hit in the top 10; summed reward per target), mean +- sample std over the seeds, and
each RL row's change against the first variant (the plain LSTM).

  python benchmarks/rl_table.py --runs plain=runs/plain_s0,plain=runs/plain_s1,... \\
      --out benchmarks/results/ml100k_rl_table_$(date +%F)
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import pathlib
import sys

import numpy as np

import train_throughput as tt  # benchmarks/: machine_info, write_result

KEYS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")
PARTS = ("overall", "high_reward", "low_reward")


def collect(runs: str, split: str) -> dict:
  by_name = collections.defaultdict(list)
  for item in runs.split(","):
    name, path = item.split("=", 1)
    by_name[name].append(path)
  rows = {}
  for name, paths in by_name.items():
    reports = [json.loads((pathlib.Path(p) / "report.json").read_text()) for p in paths]
    for scorer, head in (("model", "softmax"), ("model_q", "q")):
      if scorer not in reports[0]["splits"][split]:
        continue
      reps = [r["splits"][split][scorer] for r in reports]
      row = {"workdirs": paths, "steps": [r.get("step") for r in reports],
             "users": {p: reps[0][p]["users"] for p in PARTS}}
      for part in PARTS:
        for k in KEYS:
          row[f"{part}/{k}"] = [r[part][k] for r in reps]
      for k in ("hit_reward@10", "reward@10"):
        row[k] = [r["reward"][k] for r in reps]
      rows[f"{name} / {head}"] = row
  return rows


def _mean(xs) -> float | None:
  xs = [x for x in xs if x is not None]
  return float(np.mean(xs)) if xs else None


def _ms(xs) -> str:
  xs = [x for x in xs if x is not None]
  if not xs:
    return "-"
  return f"{np.mean(xs):.4f} +- {np.std(xs, ddof=1) if len(xs) > 1 else 0.0:.4f}"


def markdown(result) -> str:
  rows = result["rows"]
  first = next(iter(rows))
  # None: a part without targets (with reward 1 every target is high-reward; "others" is empty)
  base = {k: _mean(v) for k, v in rows[first].items() if k not in ("workdirs", "steps", "users")}
  users = rows[first]["users"]
  lines = [f"# Offline RL on the LSTM, {result['split']} split ({result['date']})", "",
           f"Command: `{result['command']}`; machine: {result['machine'].get('cpu_model')}.",
           f"Targets: all {users['overall']}, high-reward {users['high_reward']}, others "
           f"{users['low_reward']}. Mean +- sample std over seeds; (change) against `{first}`.",
           ""]
  header = ["variant / head", "seeds", "NDCG@10 all", "NDCG@10 high", "NDCG@10 others",
            "HR@10 all", "HR@10 high", "hit reward@10", "reward@10 per target"]
  lines += ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
  for name, r in rows.items():
    def cell(key):
      text = _ms(r[key])
      if name != first and base.get(key) and _mean(r[key]) is not None:
        text += f" ({100 * (_mean(r[key]) / base[key] - 1):+.1f}%)"
      return text
    lines.append(f"| {name} | {len(r['workdirs'])} | " + " | ".join(cell(k) for k in (
        "overall/NDCG@10", "high_reward/NDCG@10", "low_reward/NDCG@10", "overall/HR@10",
        "high_reward/HR@10", "hit_reward@10", "reward@10")) + " |")
  lines += ["", "All cut-offs:", "",
            "| variant / head | targets | " + " | ".join(KEYS) + " |",
            "|---|---|" + "---:|" * len(KEYS)]
  for name, r in rows.items():
    for part in PARTS:
      lines.append(f"| {name} | {part.split('_')[0]} | "
                   + " | ".join(_ms(r[f"{part}/{k}"]) for k in KEYS) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", required=True, help="name=workdir,... (the first name: the baseline)")
  p.add_argument("--split", default="test")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  result = {"date": datetime.date.today().isoformat(), "machine": tt.machine_info(),
            "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
            "split": args.split, "rows": collect(args.runs, args.split)}
  tt.write_result(result, args.out, "rl_table", markdown)


if __name__ == "__main__":
  main()
