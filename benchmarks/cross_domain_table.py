"""The cross-domain results table: per dataset, domain, protocol and model, mean +- std over seeds.

Reads the report.json of finished runs named `<prefix>_<variant>_s<seed>` under --runs (the
configs/food_kitchen.py / beauty_electronics.py variants: the per-domain baseline (a) is the pair
of runs `<prefix>_<DomainA>_s<seed>` and `<prefix>_<DomainB>_s<seed>`, each giving its own
domain's column), and the domain_cold_start_best.json of the models named in --cold_start.
Writes <out>.md and <out>.json (machine, command, date, commit, every run's numbers).

  python benchmarks/cross_domain_table.py --runs runs --prefix be --domains Beauty,Electronics \
      --models merged,xd --seeds 0,1,2 --out benchmarks/results/cross_domain_be

No training here: train the runs first (docs/results.md has the commands).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import sys

import numpy as np

KEYS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")
PROTOCOLS = ("full", "sampled")
LABELS = {"a": "(a) one model per domain", "merged": "(b) merged LSTM",
          "merged_ds": "merged LSTM + domain softmax", "xd_shared": "xd_shared",
          "xd": "cross-domain LSTM (xd_lstm)",
          "transfer": "transfer: merged LSTM fine-tuned on the domain"}
# Models whose runs hold one domain each (named after it): baseline (a) and the transfer runs.
PER_DOMAIN = {"a": "{prefix}_{domain}_s{seed}", "transfer": "{prefix}_transfer_{domain}_s{seed}"}


def run_name(prefix: str, model: str, domain: str, seed: int) -> str:
  """The workdir name of `model`'s run for `domain` (per-domain models) and `seed`."""
  return PER_DOMAIN.get(model, "{prefix}_{model}_s{seed}").format(
      prefix=prefix, model=model, domain=domain, seed=seed)


def _load(path: pathlib.Path) -> dict | None:
  return json.loads(path.read_text()) if path.is_file() else None


def _domain_values(report: dict, domain: str, protocol: str, split: str = "test") -> dict:
  entry = report["splits"][split]["by_domain"][domain]
  return {k: entry[protocol]["model"]["overall"][k] for k in KEYS}


def collect(runs: pathlib.Path, prefix: str, domains: list[str], models: list[str],
            seeds: list[int]) -> dict:
  """{model: {domain: {protocol: {"runs": [...], "mean": {...}, "std": {...}}}}}."""
  out: dict = {}
  for model in ["a", *models]:
    for domain in domains:
      for protocol in PROTOCOLS:
        rows = []
        for seed in seeds:
          name = run_name(prefix, model, domain, seed)
          report = _load(runs / name / "report.json")
          if report is None:
            continue
          rows.append({"run": name, "step": report.get("step"),
                       **_domain_values(report, domain, protocol)})
        if not rows:
          continue
        values = {k: np.array([r[k] for r in rows]) for k in KEYS}
        out.setdefault(model, {}).setdefault(domain, {})[protocol] = {
            "runs": rows, "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}}
  return out


def cold_start(runs: pathlib.Path, prefix: str, domains: list[str], models: list[str],
               seeds: list[int]) -> dict:
  """{model: {domain: {protocol: {bucket: (mean NDCG@10, std, pairs)}}}} from the
  domain_cold_start_best.json files (model "a": the per-domain runs)."""
  out: dict = {}
  for model in models:
    for domain in domains:
      reps = []
      for seed in seeds:
        name = run_name(prefix, model, domain, seed)
        rep = _load(runs / name / "domain_cold_start_best.json")
        if rep is not None:
          reps.append(rep)
      for protocol in PROTOCOLS:
        for bucket in ("0-2", "3-5", "6+"):
          vals = [r["buckets"][domain][protocol][bucket] for r in reps
                  if protocol in r["buckets"].get(domain, {})]
          if not vals:
            continue
          ndcg = np.array([v["NDCG@10"] for v in vals if v["NDCG@10"] is not None], float)
          if not len(ndcg):
            continue
          out.setdefault(model, {}).setdefault(domain, {}).setdefault(protocol, {})[bucket] = (
              float(ndcg.mean()), float(ndcg.std(ddof=1)) if len(ndcg) > 1 else 0.0,
              int(vals[0]["users"]), len(ndcg))
  return out


def _mean_std(m: float, s: float, n: int) -> str:
  """"m +- s" over n > 1 runs; one run has no spread to show (its value alone)."""
  return f"{m:.4f} +- {s:.4f}" if n > 1 else f"{m:.4f}"


def _cell(block, key, bold=False) -> str:
  text = _mean_std(block["mean"][key], block["std"][key], len(block["runs"]))
  return f"**{text}**" if bold else text


def markdown(table: dict, domains: list[str], models: list[str], title: str,
             cold: dict | None, seeds: list[int]) -> str:
  lines = [f"# {title}", ""]
  for protocol in PROTOCOLS:
    lines += [(f"## test, {protocol} protocol: NDCG@10 / HR@10 / MRR, mean +- std over seeds "
              f"{','.join(map(str, seeds))}"), "",
              "| model | " + " | ".join(f"{d} {k}" for d in domains
                                       for k in ("NDCG@10", "HR@10", "MRR")) + " |",
              "|---|" + "---:|" * (3 * len(domains))]
    for model in ["a", *models]:
      if model not in table:
        continue
      cells = []
      for d in domains:
        block = table[model].get(d, {}).get(protocol)
        if block is None:
          cells += ["-"] * 3
          continue
        best = max(table[m][d][protocol]["mean"]["NDCG@10"] for m in table
                   if protocol in table[m].get(d, {}))
        cells += [_cell(block, "NDCG@10", bold=block["mean"]["NDCG@10"] == best),
                  _cell(block, "HR@10"), _cell(block, "MRR")]
      counts = sorted({len(b[protocol]["runs"]) for b in table[model].values() if protocol in b})
      lines.append(f"| {LABELS.get(model, model)} ({'/'.join(map(str, counts))} runs) | "
                   + " | ".join(cells) + " |")
    lines.append("")
  lines += ["## every metric (test)", "", "| model | domain | protocol | " + " | ".join(KEYS)
            + " |", "|---|---|---|" + "---:|" * len(KEYS)]
  for model in ["a", *models]:
    for d in domains:
      for protocol in PROTOCOLS:
        block = table.get(model, {}).get(d, {}).get(protocol)
        if block is not None:
          lines.append(f"| {LABELS.get(model, model)} | {d} | {protocol} | "
                       + " | ".join(_cell(block, k) for k in KEYS) + " |")
  if cold:
    lines += ["", "## test NDCG@10 by target-domain events before the test item", "",
              ("Own histories, and the same users with their history cut to the last m events of"
              " the target domain (m = 0..5; the other domain's events kept): `pairs` is the "
              "number of (user, m) pairs in the bucket."), "",
              "| model | domain | protocol | " + " | ".join(
                  f"{b} (pairs)" for b in ("0-2", "3-5", "6+")) + " |", "|---|---|---|---:|---:|---:|"]
    for model, by_domain in cold.items():
      for d, by_protocol in by_domain.items():
        for protocol, buckets in by_protocol.items():
          cells = [f"{_mean_std(buckets[b][0], buckets[b][1], buckets[b][3])} ({buckets[b][2]})"
                   if b in buckets else "-" for b in ("0-2", "3-5", "6+")]
          lines.append(f"| {LABELS.get(model, model)} | {d} | {protocol} | "
                       + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", required=True)
  parser.add_argument("--prefix", required=True)
  parser.add_argument("--domains", required=True)
  parser.add_argument("--models", default="merged,xd")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--cold_start", default="", help="models with domain_cold_start reports")
  parser.add_argument("--title", default="")
  parser.add_argument("--trained_on", default="", help="where the runs were trained (the header)")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  runs, domains = pathlib.Path(args.runs), args.domains.split(",")
  models = [m for m in args.models.split(",") if m]
  seeds = [int(s) for s in args.seeds.split(",")]
  table = collect(runs, args.prefix, domains, models, seeds)
  cold = (cold_start(runs, args.prefix, domains, args.cold_start.split(","), seeds)
          if args.cold_start else None)
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
  except OSError:
    commit = ""
  meta = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
          "machine": f"{platform.processor() or platform.machine()}, "
                     f"{len(__import__('os').sched_getaffinity(0))} cores visible",
          "commit": commit, "trained_on": args.trained_on}
  title = args.title or f"Cross-domain results: {args.prefix} ({', '.join(domains)})"
  text = markdown(table, domains, models, title, cold, seeds)
  header = (f"Date {meta['date']}, commit {meta['commit']}; table made on: {meta['machine']}.\n"
            + (f"Runs trained on: {args.trained_on}.\n" if args.trained_on else "") +
            f"Command: `{meta['command']}`\n\n")
  out = pathlib.Path(args.out)
  out.with_suffix(".md").write_text(text.replace("\n\n", "\n\n" + header, 1))
  out.with_suffix(".json").write_text(json.dumps({"meta": meta, "table": table, "cold_start":
                                                  cold}, indent=1))
  print(text)


if __name__ == "__main__":
  main()
