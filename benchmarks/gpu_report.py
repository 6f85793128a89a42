"""Markdown tables from one or more `benchmarks/gpu_suite.py` JSON files.

Shape legend: B batch, L history length, H hidden size (= input size E).

For every (B, L, H, dtype) that has rows, the median forward and forward+backward times of each
layer variant, and the ratio of PyTorch nn.LSTM (cuDNN) to our best Pallas kernel (> 1: ours is
faster); then the full training step in events/s. Rows whose correctness check did not pass are
shown as `FAIL` and never enter a ratio. Several files (e.g. a run and its continuation on the
same card) are merged in the order given; a later row for the same key replaces an earlier one.

  python benchmarks/gpu_report.py benchmarks/results/gpu_suite_nvidia-h200_2026-11-28*.json \
      --out benchmarks/results/gpu_suite_nvidia-h200_2026-11-28.md

Imports neither jax nor tensorflow: it only reads JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

LAYER_ORDER = ("xla", "pallas_step", "pallas_persistent", "flax_nnx", "cudnn_jax", "torch_cudnn")
OURS = ("pallas_persistent", "pallas_step")
BASELINE = "torch_cudnn"


def load_rows(paths: list[pathlib.Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(file headers, merged rows); rows keyed by kind/variant/mode/shape/dtype, last one wins."""
  heads, merged = [], {}
  for path in paths:
    doc = json.loads(path.read_text())
    heads.append({"file": path.name, **{k: doc.get(k) for k in (
        "device", "jax_version", "jaxlib_version", "date", "command", "elapsed_s", "summary")}})
    for row in doc["rows"]:
      if row["status"] == "skipped":
        continue
      key = (row["kind"], row["variant"], row["mode"], row["B"], row["L"], row["H"], row["dtype"])
      merged[key] = row
  return heads, list(merged.values())


def _ms(row: dict[str, Any] | None) -> str:
  if row is None:
    return "-"
  if row["status"] == "unavailable":
    return "n/a"
  if row["status"] != "ok":
    return "error"
  if row.get("check") != "pass":
    return "FAIL"
  return f"{row['median_ms']:.3f}"


def _good(row: dict[str, Any] | None) -> bool:
  return row is not None and row["status"] == "ok" and row.get("check") == "pass"


def layer_table(rows: list[dict[str, Any]], mode: str) -> list[str]:
  """One line per shape: each variant's median ms, then cuDNN (PyTorch) / our best Pallas."""
  layer = {(r["variant"], r["B"], r["L"], r["H"], r["dtype"]): r for r in rows
           if r["kind"] == "layer" and r["mode"] == mode}
  shapes = sorted({k[1:] for k in layer}, key=lambda s: (s[3], s[1], s[2], s[0]))
  variants = [v for v in LAYER_ORDER if any(k[0] == v for k in layer)]
  lines = [f"| dtype | B | L | H | {' | '.join(variants)} | {BASELINE} / best Pallas |",
           "| --- | ---: | ---: | ---: |" + " ---: |" * (len(variants) + 1)]
  for b, l, h, dtype in shapes:
    cells = [_ms(layer.get((v, b, l, h, dtype))) for v in variants]
    ours = [layer[(v, b, l, h, dtype)]["median_ms"] for v in OURS
            if _good(layer.get((v, b, l, h, dtype)))]
    base = layer.get((BASELINE, b, l, h, dtype))
    ratio = f"{base['median_ms'] / min(ours):.2f}x" if ours and _good(base) else "-"
    lines.append(f"| {dtype} | {b} | {l} | {h} | {' | '.join(cells)} | {ratio} |")
  return lines


def step_table(rows: list[dict[str, Any]]) -> list[str]:
  steps = sorted((r for r in rows if r["kind"] == "train_step"),
                 key=lambda r: (r["B"], r["dtype"], LAYER_ORDER.index(r["variant"])))
  lines = ["| LSTM impl | dtype | B x L | V | median ms / step | events/s | first-step loss check |",
           "| --- | --- | --- | ---: | ---: | ---: | --- |"]
  for r in steps:
    eps = f"{r['events_per_s']:,.0f}" if _good(r) else _ms(r)
    med = f"{r['median_ms']:.3f}" if "median_ms" in r else "-"
    check = (f"{r['check']} (rel {r['rel_err']:.1e})" if "rel_err" in r
             else r.get("reason", "-")[:60])
    lines.append(f"| {r['variant']} | {r['dtype']} | {r['B']} x {r['L']} | {r.get('V', '-')} | "
                 f"{med} | {eps} | {check} |")
  return lines


def render(paths: list[pathlib.Path]) -> str:
  heads, rows = load_rows(paths)
  out = ["# GPU suite results", ""]
  for h in heads:
    out.append(f"- `{h['file']}`: {h['device']}, jax {h['jax_version']}, {h['date']}, "
               f"{h['elapsed_s']} s, summary {h['summary']}")
    out.append(f"  - command: `{h['command']}`")
  checked = [r for r in rows if r["status"] == "ok"]
  failed = [r for r in checked if r.get("check") != "pass"]
  out += ["", f"{len(checked)} measured rows, {len(failed)} failing their correctness check "
          "(each variant against an f32 reference in the same run; see the JSON for errors).",
          "", "## Full training step (SeqRecModel E=H=64, V=12102, full softmax, Adam)", ""]
  out += step_table(rows)
  for mode, title in (("fwd_bwd", "Forward + backward of one layer (median ms)"),
                      ("fwd", "Forward of one layer (median ms)")):
    out += ["", f"## {title}", ""] + layer_table(rows, mode)
  return "\n".join(out) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("json", nargs="+", type=pathlib.Path)
  p.add_argument("--out", type=pathlib.Path, default=None, help="markdown path (default: stdout)")
  args = p.parse_args(argv)
  text = render(args.json)
  if args.out:
    args.out.write_text(text)
  else:
    sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
