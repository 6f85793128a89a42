"""Could the transition prior live in the user and item vectors? (issue 27, analysis)

`model.transition_weight` adds a sparse per-user term (the last item's next items) to the scores,
which every route has to carry (`scoring/ranks.py`'s pairs, the last item in the serving state).
A rank-R factorisation P ~ A B^T of the V x V prior would instead fit the `u . t` form of every
route for R more columns. This script measures what such a factorisation keeps: validation
NDCG@10 of a trained workdir's best checkpoint with the exact prior and with its rank-R truncated
SVD (scipy's ARPACK `svds`), at the given weights, ranked as `cooccurrence_prior.py` ranks.

  python benchmarks/transition_prior_lowrank.py --workdir runs/beauty_s0 --ranks 64,256,512
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app
from absl import flags
import numpy as np
import scipy.sparse.linalg

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import cooccurrence_prior  # pylint: disable=g-import-not-at-top,wrong-import-position

from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from lstmrec_jax import workdir as workdir_lib  # pylint: disable=wrong-import-position
from lstmrec_jax.cli import common  # pylint: disable=wrong-import-position

_RANKS = flags.DEFINE_list("ranks", ["64", "128", "256", "512"], "SVD ranks to try")
_WEIGHTS = flags.DEFINE_list("weights", ["0.2", "0.3"], "prior weights")
_JSON = flags.DEFINE_string("json_out", None, "JSON file for the table (optional)")


class LowRankRows:
  """`prior[last].toarray()` of a rank-R factorisation A B^T (what `split_metrics` reads)."""

  def __init__(self, a_VxR: np.ndarray, b_VxR: np.ndarray):
    self.a, self.b = a_VxR, b_VxR

  def __getitem__(self, last_B):
    rows = (self.a[last_B] @ self.b.T).astype(np.float32)
    return type("Rows", (), {"toarray": lambda _: rows})()


def main(argv):
  del argv
  run_lib.set_older_workdir_defaults(common.base_defaults())
  restored = workdir_lib.restore_run(cooccurrence_prior._WORKDIR.value)  # pylint: disable=protected-access
  dataset = restored.run.dataset
  window = cooccurrence_prior._WINDOW.value  # pylint: disable=protected-access
  prior = cooccurrence_prior.prior_matrix(dataset, window, "next")
  weights = [float(w) for w in _WEIGHTS.value]
  batch = cooccurrence_prior._BATCH.value  # pylint: disable=protected-access
  rows = [{"rank": "exact", **_row(cooccurrence_prior.split_metrics(
      restored, dataset.valid, prior, weights, batch))}]
  for r in (int(x) for x in _RANKS.value):
    start = time.perf_counter()
    u, s, vt = scipy.sparse.linalg.svds(prior.astype(np.float64), k=r)
    res = cooccurrence_prior.split_metrics(restored, dataset.valid,
                                           LowRankRows(u * s[None, :], vt.T), weights, batch)
    rows.append({"rank": r, "seconds": round(time.perf_counter() - start, 1), **_row(res)})
  print(f"valid NDCG@10 ({cooccurrence_prior._WORKDIR.value}, step {restored.step}, "  # pylint: disable=protected-access
        f"next items within {window}; 'alone': the prior without the model)")
  print("| rank | " + " | ".join(f"weight {w:g}" for w in weights) + " | alone |")
  print("|---" * (len(weights) + 2) + "|")
  for row in rows:
    print(f"| {row['rank']} | " + " | ".join(f"{row[str(w)]:.4f}" for w in weights)
          + f" | {row['alone']:.4f} |")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"workdir": cooccurrence_prior._WORKDIR.value, "step": restored.step,  # pylint: disable=protected-access
                 "command": " ".join(sys.argv), "rows": rows}, f, indent=1)


def _row(results) -> dict[str, float]:
  return {("alone" if r["alpha"] is None else str(r["alpha"])): r["ndcg@10"] for r in results}


if __name__ == "__main__":
  app.run(main)
