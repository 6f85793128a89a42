"""The picture a user looks at: test NDCG@10 against wall time, several recipes on one plot.

Reads result JSONs of `benchmarks/time_to_quality.py` (one per recipe, measured back to back on
one machine) and draws each recipe's curve (the test NDCG@10 of the checkpoint chosen on
validation by that time), the peer's point (its test NDCG@10 at the end of its training, from a
JSON written by the peer harness or given on the command line) and the best published level as
a horizontal line.

  python benchmarks/plot_time_to_quality.py --title "Amazon Beauty, 2 CPU cores" \
      --curve "recipe (configs/beauty.py)=benchmarks/results/ttq_beauty_recipe_2026-12-04.json" \
      --curve "fast (configs/beauty_fast.py)=benchmarks/results/ttq_beauty_fast_2026-12-04.json" \
      --peer "official GRU4Rec=0.0463@165" --published "BSARec (best peer-reviewed)=0.0611" \
      --published "KERec=0.0623" --out benchmarks/results/ttq_beauty_2026-12-04.png
"""

from __future__ import annotations

import argparse
import json
import pathlib


def parse_pair(text: str) -> tuple[str, str]:
  """'label=value' -> (label, value); the label may hold '=' signs up to the last one."""
  label, _, value = text.rpartition("=")
  if not label:
    raise SystemExit(f"expected LABEL=VALUE, got {text!r}")
  return label, value


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--title", required=True)
  p.add_argument("--curve", action="append", default=[], help="LABEL=result.json")
  p.add_argument("--peer", action="append", default=[], help="LABEL=NDCG@SECONDS")
  p.add_argument("--published", action="append", default=[], help="LABEL=NDCG")
  p.add_argument("--out", required=True)
  args = p.parse_args()
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for i, spec in enumerate(args.curve):
    label, path = parse_pair(spec)
    result = json.loads(pathlib.Path(path).read_text())
    xs = [r["wall_s"] for r in result["curve"]]
    ys = [r["test_ndcg10"] for r in result["curve"]]
    ax.plot(xs, ys, "o-", color=f"C{i}", ms=3, label=label)
  for i, spec in enumerate(args.peer):
    label, value = parse_pair(spec)
    ndcg, seconds = (float(x) for x in value.split("@"))
    ax.plot([seconds], [ndcg], "s", color="C3", ms=8, label=f"{label}: {ndcg:.4f} in {seconds:.0f} s")
    ax.axhline(ndcg, color="C3", ls=":", lw=1)
    ax.axvline(seconds / 2, color="C3", ls="--", lw=0.8, alpha=0.6)
  levels = sorted((float(value), label) for label, value in map(parse_pair, args.published))
  for value, _ in levels:
    ax.axhline(value, color="gray", ls="--", lw=1)
  # Labels at least a line apart (close levels, e.g. 0.0608 and 0.0611, would overprint).
  lo, hi = ax.get_ylim()
  gap, placed = (hi - lo) * 0.035, []
  for value, label in levels:
    y = max(value, placed[-1] + gap) if placed else value
    placed.append(y)
    ax.text(ax.get_xlim()[1], y, f" {label} {value:.4f}", va="center", ha="left", fontsize=7,
            color="gray")
  ax.set_xlabel("wall time from launch, s (the dashed red line: half the peer's time)")
  ax.set_ylabel("test NDCG@10 (checkpoint chosen on validation)")
  ax.set_title(args.title)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.out, dpi=120)
  print(args.out)


if __name__ == "__main__":
  main()
