"""Does a last-item co-occurrence prior add to a trained model's scores? (issue 27, analysis)

For every validation and test user of a workdir's best checkpoint, ranks the whole catalog by

    score_j = model score_j + alpha x log(1 + 100 x C[last, j] / C[last, :].sum())

where C counts item pairs within `--window` positions inside the training sequences only (never a
validation or test target; `model/cooccurrence.py`) and `last` is the last item of the user's
history. alpha = 0 is the model as eval.py ranks it (seen items removed, ties counted against the
target; under eval.seen_targets="miss" a target already in the history is a miss), so the first
row repeats eval.py's numbers (tests/test_cooccurrence_prior.py). The prior alone (alpha = 1 on zero
model scores) is the item-to-item baseline. Choose alpha on validation; read test.

  python benchmarks/cooccurrence_prior.py --workdir runs/beauty_s0 --alphas 0,0.1,0.2,0.3,0.5
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
import jax
import numpy as np

from lstmrec_jax import run as run_lib
from lstmrec_jax import workdir as workdir_lib
from lstmrec_jax.cli import common
from lstmrec_jax.data import pipeline
from lstmrec_jax.model import cooccurrence
from lstmrec_jax.scoring import steps

_WORKDIR = flags.DEFINE_string("workdir", None, "a train.py workdir", required=True)
_ALPHAS = flags.DEFINE_list("alphas", ["0", "0.1", "0.2", "0.3", "0.5"], "prior weights")
_WINDOW = flags.DEFINE_integer("window", 1, "positions apart that count as co-occurring")
_DIRECTION = flags.DEFINE_enum("direction", "both", list(cooccurrence.DIRECTIONS),
                                "both: partners before or after `last`; next: only the items that "
                                "came after it")
_BATCH = flags.DEFINE_integer("batch", 256, "users per scoring batch")
_OUT = flags.DEFINE_string("out", None, "JSON file for the table (optional)")


def prior_matrix(dataset, window: int, direction: str = "both"):
  """The V x V sparse prior log(1 + 100 x C[i, j] / C[i, :].sum()) from the training sequences."""
  counts = cooccurrence.cooccurrence_counts(dataset.train.offsets_U1, dataset.train.items_N,
                                            dataset.num_items, window, direction).tocsr()
  rows = np.asarray(counts.sum(axis=1)).ravel()
  prior = counts.multiply(1.0 / np.maximum(rows, 1.0)[:, None]).tocsr().astype(np.float32)
  prior.data = np.log1p(cooccurrence.TRANSITION_SCALE * prior.data)  # the model's scale
  return prior


def split_metrics(restored, split, prior, alphas, batch_size: int) -> list[dict[str, float]]:
  """NDCG@10 and HR@10 of `split` for each alpha (and the prior alone, last).

  Every user of the split must have a history (true of leave-one-out splits); a user with none
  would be ranked by the model's output for an empty history, not by popularity as eval.py's
  fallback does, so the function refuses such a split.
  """
  run = restored.run
  fn = jax.jit(lambda p, b: steps.user_vectors(p, run.consts, b, run.graphdef))
  weights = list(alphas) + [None]  # None: the prior alone
  ndcg = np.zeros(len(weights))
  hits = np.zeros(len(weights))
  users = 0
  for batch in pipeline.eval_batches(split, batch_size=batch_size,
                                     max_len=run.spec.input.max_len):
    user, table, bias = fn(restored.params, {k: batch[k] for k in ("inputs_BxL", "mask_BxL")})
    model_BxV = np.asarray(user @ table.T, np.float32)
    if bias is not None:
      model_BxV = model_BxV + np.asarray(bias, np.float32)[None]
    valid = batch["valid_B"]
    length = batch["mask_BxL"].sum(axis=1)
    if (valid & (length == 0)).any():
      raise ValueError(f"{int((valid & (length == 0)).sum())} users of the split have no history: "
                       "this analysis ranks with the model only (eval.py ranks them by popularity)")
    last = batch["inputs_BxL"][np.arange(len(length)), np.maximum(length - 1, 0)]
    prior_BxV = prior[last].toarray()
    targets = batch["targets_B"]
    rows = np.arange(len(targets))
    seen = batch["seen_BxS"]
    # eval.seen_targets="miss" (the default protocol): a target already in the history is a miss.
    repeated = (seen == targets[:, None]).any(axis=1) & (run.spec.eval.seen_targets == "miss")
    for i, alpha in enumerate(weights):
      s = prior_BxV.copy() if alpha is None else model_BxV + alpha * prior_BxV
      target_score = s[rows, targets].copy()
      s[:, 0] = -np.inf
      r, c = np.nonzero(seen > 0)
      s[r, seen[r, c]] = -np.inf  # seen items removed (the target is put back below)
      s[rows, targets] = -np.inf
      rank = (s >= target_score[:, None]).sum(axis=1)  # ties count against the target
      # A broken model (NaN or +inf scores) is a miss for the user, as ranks.NONFINITE_RANK makes
      # it in eval.py: a NaN compares false with everything and would otherwise rank first.
      broken = ~np.isfinite(target_score) | np.isnan(s).any(axis=1) | (s == np.inf).any(axis=1)
      rank = np.where(repeated | broken, s.shape[1], rank)
      ndcg[i] += np.where(valid & (rank < 10), 1.0 / np.log2(rank + 2.0), 0.0).sum()
      hits[i] += (valid & (rank < 10)).sum()
    users += int(valid.sum())
  return [{"alpha": a, "ndcg@10": n / users, "hr@10": h / users}
          for a, n, h in zip(weights, ndcg, hits)]


def main(argv):
  del argv
  run_lib.set_older_workdir_defaults(common.base_defaults())
  restored = workdir_lib.restore_run(_WORKDIR.value)
  dataset = restored.run.dataset
  prior = prior_matrix(dataset, _WINDOW.value, _DIRECTION.value)
  alphas = [float(a) for a in _ALPHAS.value]
  table = {name: split_metrics(restored, getattr(dataset, name), prior, alphas, _BATCH.value)
           for name in ("valid", "test")}
  print(f"| alpha | valid NDCG@10 | valid HR@10 | test NDCG@10 | test HR@10 |  ({_WORKDIR.value}, "
        f"step {restored.step}, window {_WINDOW.value}, direction {_DIRECTION.value})")
  print("|---:|---:|---:|---:|---:|")
  for v, t in zip(table["valid"], table["test"]):
    name = "prior alone" if v["alpha"] is None else f"{v['alpha']:g}"
    print(f"| {name} | {v['ndcg@10']:.4f} | {v['hr@10']:.4f} | {t['ndcg@10']:.4f} | "
          f"{t['hr@10']:.4f} |")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"workdir": _WORKDIR.value, "step": restored.step, "window": _WINDOW.value,
                 "direction": _DIRECTION.value,
                 "command": " ".join(sys.argv), **table}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
