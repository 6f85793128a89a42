"""Sequence augmentation, one lever at a time: validation (and test) NDCG@10 against the recipe.

Each lever is the config plus one `augment` setting (below); every (lever, seed) is an ordinary
training run in OUT_DIR/<lever>_s<seed> (resumed when rerun), evaluated at its best validation
checkpoint. The table gives mean +- std over the seeds of valid and test NDCG@10 / HR@10 and the
validation gain over the baseline, flagged when it exceeds the baseline's seed spread (2 x std
with several seeds; with one seed, no flag: run 3 seeds for anything you adopt).

  python benchmarks/augment_sweep.py --config configs/beauty.py --out_dir runs/aug_beauty \
      --results benchmarks/results/beauty_augment --seeds 0
  # then the best combination over 3 seeds, e.g.:
  python benchmarks/augment_sweep.py --config configs/beauty.py --out_dir runs/aug_beauty \
      --results benchmarks/results/beauty_augment_final --seeds 0,1,2 \
      --levers baseline --combine crop,mask

  python benchmarks/augment_sweep.py --tiny --out_dir /tmp/aug    # seconds, the test's run

CPU (Beauty recipe, one core): ~15 min per run without the contrastive lever (the transforms
run in the prefetch thread), ~25 min with it (two more encoder passes per step): 7 levers x 1
seed ~ 2 h; Games (configs/games.py) ~1.5x that.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import study_common  # noqa: E402  (puts the repository root on sys.path)

import numpy as np  # noqa: E402

LEVERS = {
    "baseline": (),
    "crop": ("augment.crop_prob=0.5", "augment.crop_ratio=0.6"),
    "mask": ("augment.mask_prob=0.5", "augment.mask_ratio=0.2"),
    "reorder": ("augment.reorder_prob=0.5", "augment.reorder_ratio=0.2"),
    "insert": ("augment.insert_prob=0.5", "augment.insert_ratio=0.2"),
    "substitute": ("augment.substitute_prob=0.5", "augment.substitute_ratio=0.2"),
    # CL4SRec-style: the next-item loss on clean rows, InfoNCE between two augmented views.
    "contrastive": ("augment.crop_prob=0.5", "augment.mask_prob=0.5", "augment.reorder_prob=0.5",
                    "augment.contrastive_weight=0.1", "augment.temperature=1.0",
                    "augment.views_only=true"),
}
KEYS = ("NDCG@10", "HR@10")


def _finished_report(config, workdir: pathlib.Path) -> dict | None:
  """The report of a finished run of exactly `config` in `workdir` (None: train or resume)."""
  from lstmrec_jax import config_keys  # pylint: disable=g-import-not-at-top
  report, saved = workdir / "report.json", workdir / "config.json"
  if not (report.is_file() and saved.is_file()):
    return None
  if json.loads(saved.read_text()) != json.loads(json.dumps(config_keys.plain(config))):
    return None  # another config: train_and_evaluate refuses it with the differing keys
  return json.loads(report.read_text())


def run_lever(config, workdir: pathlib.Path) -> dict:
  from lstmrec_jax import config_keys  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.configs import base  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import loop  # pylint: disable=g-import-not-at-top
  defaults = run_lib.flatten(config_keys.plain(base.get_base_config()))
  # A finished (lever, seed) is read, not evaluated again: a rerun that adds levers or seeds
  # costs only the new runs.
  report = _finished_report(config, workdir)
  if report is None:
    report = loop.train_and_evaluate(config, workdir, defaults=defaults)
  return {split: {k: report["splits"][split]["model"]["overall"][k] for k in KEYS}
          for split in ("valid", "test")}


def sweep(make_config, out_dir: str, *, levers, seeds, combine=None) -> dict:
  """{lever: {"overrides", "runs": [{seed, valid, test}]}}; `combine` adds one combined lever."""
  chosen = {name: LEVERS[name] for name in levers}
  if combine:
    chosen["+".join(combine)] = tuple(o for name in combine for o in LEVERS[name])
  out = {}
  for name, overrides in chosen.items():
    runs = []
    for seed in seeds:
      config = make_config()
      config.seed = seed
      study_common.apply_overrides(config, overrides)
      runs.append({"seed": seed, **run_lever(config, pathlib.Path(out_dir) / f"{name}_s{seed}")})
    out[name] = {"overrides": list(overrides), "runs": runs}
  return out


def _stats(runs, split, key):
  xs = np.array([r[split][key] for r in runs], np.float64)
  return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0


def markdown(result: dict, title: str = "") -> str:
  seeds = len(next(iter(result.values()))["runs"])
  lines = [title or f"Augmentation levers, {seeds} seed(s) each", "",
           "| lever | valid NDCG@10 | valid HR@10 | test NDCG@10 | test HR@10 | valid gain |"
           " beats seed spread |", "|---|---:|---:|---:|---:|---:|---|"]
  base = result.get("baseline")
  b_mean, b_std = _stats(base["runs"], "valid", "NDCG@10") if base else (None, 0.0)
  for name, rec in result.items():
    cells = []
    for split in ("valid", "test"):
      for key in KEYS:
        m, s = _stats(rec["runs"], split, key)
        cells.append(f"{m:.4f}" + (f" +- {s:.4f}" if seeds > 1 else ""))
    m, _ = _stats(rec["runs"], "valid", "NDCG@10")
    gain = "-" if b_mean is None or name == "baseline" else f"{m - b_mean:+.4f}"
    beats = ("-" if b_mean is None or name == "baseline" or seeds < 2 else
             "yes" if m - b_mean > 2 * b_std else "no")
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {gain} | {beats} |")
  lines += ["", "Levers: " + "; ".join(f"{n}: {', '.join(r['overrides']) or 'the recipe'}"
                                       for n, r in result.items())]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/beauty.py")
  ap.add_argument("--set", action="append", default=[], help="group.key=value (every run)")
  ap.add_argument("--out_dir", required=True)
  ap.add_argument("--results", default="benchmarks/results/augment")
  ap.add_argument("--levers", default=",".join(LEVERS))
  ap.add_argument("--combine", default="", help="levers to combine into one more row")
  ap.add_argument("--seeds", default="0")
  ap.add_argument("--tiny", action="store_true", help="the seconds-long synthetic config")
  args = ap.parse_args(argv)

  def make_config():
    if args.tiny:
      c = study_common.tiny_config(os.path.join(args.out_dir, "cache"))
      study_common.apply_overrides(c, args.set)
      return c
    return study_common.load_config(args.config, args.set)

  result = sweep(make_config, args.out_dir, levers=[x for x in args.levers.split(",") if x],
                 seeds=[int(s) for s in args.seeds.split(",")],
                 combine=[x for x in args.combine.split(",") if x])
  text = markdown(result, f"Augmentation levers on {'tiny synthetic' if args.tiny else args.config}"
                          f", seeds {args.seeds}")
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  pathlib.Path(args.results + ".md").write_text(text)
  pathlib.Path(args.results + ".json").write_text(json.dumps(result, indent=2))
  print(text)
  print(f"wrote {args.results}.md and .json")
  return result


if __name__ == "__main__":
  main()
