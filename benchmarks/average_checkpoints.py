"""SWA after the fact: evaluate the average of several checkpoints of one training workdir.

Stochastic weight averaging (Izmailov et al. 2018) averages the weights of the last epochs. A
run that kept its checkpoints (`--config.train.keep_checkpoints=1000`, as
`benchmarks/time_to_quality.py` runs keep them) can be averaged later without training again:
each group of steps is restored, averaged leaf by leaf and ranked with the evaluation of
`eval.py` (full ranking, seen items removed, the run's own protocol).

  python benchmarks/average_checkpoints.py --workdir W --steps 1120 --steps 960,1120,1280

prints, per group, valid and test NDCG@10 / HR@10, and writes them to --out (JSON) when given.
A group of one step is that checkpoint alone (the baseline to compare with).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from lstmrec_jax import checkpoint as ckpt_lib  # noqa: E402
from lstmrec_jax import workdir as workdir_lib  # noqa: E402


def average_params(trees: Sequence[Any]) -> Any:
  """The leaf-by-leaf mean of parameter trees of one structure."""
  if not trees:
    raise ValueError("no checkpoints to average")
  return jax.tree_util.tree_map(lambda *leaves: sum(leaves) / len(leaves), *trees)


def evaluate_averages(workdir: str | pathlib.Path, groups: Sequence[Sequence[int]],
                      splits: Sequence[str] = ("valid", "test")) -> list[dict[str, Any]]:
  """For each group of steps: the splits' NDCG@10 and HR@10 of the averaged parameters."""
  if not groups or not all(groups):
    raise ValueError("no checkpoints to average: every group needs at least one step")
  first = groups[0][0]
  restored = workdir_lib.restore_run(workdir, which=str(first))  # the run, and one checkpoint
  run = restored.run
  params_at: dict[int, Any] = {first: restored.params}
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  rows = []
  try:
    for steps in groups:
      for step in steps:
        if step not in params_at:
          params_at[step] = checkpointer.restore_params(run.params, str(step), run.mesh)[0]
      report = workdir_lib.evaluate_run_params(
          run, average_params([params_at[s] for s in steps]), splits=splits)
      rows.append({"steps": list(steps), **{
          split: {m: report["splits"][split]["model"]["overall"][m] for m in ("NDCG@10", "HR@10")}
          for split in splits}})
  finally:
    checkpointer.close()
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a train.py workdir that kept its checkpoints")
  p.add_argument("--steps", action="append", required=True,
                 help="comma-separated steps to average (repeat the flag for more groups)")
  p.add_argument("--out", default=None, help="write the rows here as JSON")
  args = p.parse_args()
  try:
    groups = [[int(s) for s in g.split(",") if s] for g in args.steps]
  except ValueError:
    raise SystemExit(f"--steps: expected comma-separated integers, got {args.steps}") from None
  if not all(groups):
    raise SystemExit(f"--steps: an empty group in {args.steps}")
  rows = evaluate_averages(args.workdir, groups)
  for r in rows:
    print(f"steps {','.join(map(str, r['steps']))}: " + "; ".join(
        f"{split} NDCG@10 {r[split]['NDCG@10']:.4f} HR@10 {r[split]['HR@10']:.4f}"
        for split in ("valid", "test")))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(
        {"workdir": str(args.workdir), "command": " ".join(["python", *sys.argv]), "rows": rows},
        indent=1) + "\n")


if __name__ == "__main__":
  main()
