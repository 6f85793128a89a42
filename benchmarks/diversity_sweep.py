"""NDCG@10 against ILD@10 and coverage@10 under MMR / greedy-DPP re-ranking, over a lambda sweep.

For a trained workdir: each user's top-`pool` candidates (chunked top-k, seen items removed, the
popularity fallback for empty histories, as in evaluation) are re-ranked to K = 10 by MMR and by
greedy DPP at each lambda (lambda = 1: the model's own order). The target's position in the
re-ranked list gives HR@10 / NDCG@10 (a target outside the pool is a miss, as it is outside the
top 10 anyway); ILD@10 (cosine distance of the learned item vectors), coverage@10, Gini@10 and
ARP@10 come from `evaluation/beyond.py`. Writes a markdown table, the JSON and a PNG plot:

  python benchmarks/diversity_sweep.py --workdir runs/beauty --split test \
      --out benchmarks/results/beauty_diversity_sweep

CPU (Beauty, 22k test users, E = 256, pool 100): ~1 min for the pools, then ~10-30 s per
(method, lambda); 2 methods x 8 lambdas ~ 10 min on one core.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import study_common  # noqa: E402  (puts the repository root on sys.path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lstmrec_jax import workdir as workdir_lib  # noqa: E402
from lstmrec_jax.data import pipeline  # noqa: E402
from lstmrec_jax.evaluation import beyond  # noqa: E402
from lstmrec_jax.evaluation import rerank  # noqa: E402
from lstmrec_jax.scoring import steps as scoring  # noqa: E402

LAMBDAS = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1, 0.0)


def sweep(workdir, *, split: str = "test", pool: int = 100, k: int = 10,
          lambdas=LAMBDAS, methods=("mmr", "dpp"), which: str = "best",
          max_users: int = 0) -> dict:
  """The sweep's rows: one per (method, lambda), with accuracy and beyond-accuracy metrics."""
  restored = workdir_lib.restore_run(workdir, which=which, spec=study_common.workdir_spec(workdir))
  run, params = restored.run, restored.params
  ds, inp, ev = run.dataset, run.spec.input, run.spec.eval
  the_split = getattr(ds, split)
  pool = min(pool, int(ds.num_items) - 1)
  topk = jax.jit(functools.partial(scoring.rank_topk_step, graphdef=run.graphdef, k=pool,
                                   exclude_seen=ev.exclude_seen, chunk_size=ev.chunk_size))
  table = beyond.item_vectors(run.graphdef, params, run.consts)
  pop_V = jnp.asarray(ds.item_counts_V, jnp.float32)
  attrs = beyond.dataset_attributes(ds)
  rows = {(m, float(lam)): {"hits": [], "acc": beyond.BeyondAccumulator(
      ds.item_counts_V, k=k, vectors_VxE=table, attrs_VxA=attrs)}
      for m in methods for lam in lambdas}
  seen_users = 0
  t0 = time.perf_counter()
  for batch in pipeline.eval_batches(the_split, batch_size=inp.eval_batch_size,
                                     max_len=inp.max_len):
    if max_users and seen_users >= max_users:
      break
    inputs = {key: batch[key] for key in ("inputs_BxL", "mask_BxL", "targets_B", "seen_BxS")}
    _, ids_BxP, scores_BxP = topk(params, run.consts, inputs, pop_V)
    valid = batch["valid_B"]
    seen_users += int(valid.sum())
    for (method, lam), row in rows.items():
      ids_BxK = np.asarray(rerank.rerank(method, ids_BxP, scores_BxP, table, lam, k=k))
      # Empty slots (the pool ran out) keep id 0; their scores are -inf.
      hit_BxK = ids_BxK == batch["targets_B"][:, None]
      pos_B = np.where(hit_BxK.any(1), hit_BxK.argmax(1), k)
      row["hits"].append(pos_B[valid])
      # A pick whose pool score was -inf (the pool ran out) is an empty slot.
      finite_BxP = np.isfinite(np.asarray(scores_BxP))
      ok_BxK = ((ids_BxK[:, :, None] == np.asarray(ids_BxP)[:, None, :])
                & finite_BxP[:, None, :]).any(-1)
      row["acc"].add(ids_BxK[valid], np.where(ok_BxK, 0.0, -np.inf)[valid])
  out = []
  for (method, lam), row in rows.items():
    pos = np.concatenate(row["hits"])
    b = row["acc"].result()
    out.append({"method": method, "lambda": lam, "users": int(len(pos)),
                f"HR@{k}": float(np.mean(pos < k)),
                f"NDCG@{k}": float(np.mean(np.where(pos < k, 1.0 / np.log2(pos + 2.0), 0.0))),
                **{key: b.get(key) for key in (f"ILD@{k}", f"ILD_attr@{k}", f"coverage@{k}",
                                               f"gini@{k}", f"ARP@{k}", f"novelty@{k}")}})
  return {"workdir": str(workdir), "split": split, "pool": pool, "k": k, "step": restored.step,
          "seconds": round(time.perf_counter() - t0, 1), "rows": out}


def markdown(result: dict) -> str:
  k = result["k"]
  keys = [f"HR@{k}", f"NDCG@{k}", f"ILD@{k}", f"ILD_attr@{k}", f"coverage@{k}", f"gini@{k}",
          f"ARP@{k}", f"novelty@{k}"]
  keys = [key for key in keys if any(r.get(key) is not None for r in result["rows"])]
  lines = [f"Diversity re-ranking of the top-{result['pool']} pool, {result['split']} split, "
           f"{result['rows'][0]['users']} users ({result['workdir']}, step {result['step']})", "",
           "| method | lambda | " + " | ".join(keys) + " |",
           "|---|---:|" + "---:|" * len(keys)]
  for r in result["rows"]:
    cells = ["-" if r[key] is None else f"{r[key]:.1f}" if key.startswith("ARP") else
             f"{r[key]:.4f}" for key in keys]
    lines.append(f"| {r['method']} | {r['lambda']:.2f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
  """NDCG@K against ILD@K and against coverage@K, one line per method, lambda annotated."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  k = result["k"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
  for ax, xkey in zip(axes, (f"ILD@{k}", f"coverage@{k}")):
    for method in sorted({r["method"] for r in result["rows"]}):
      rows = [r for r in result["rows"] if r["method"] == method and r[xkey] is not None]
      xs, ys = [r[xkey] for r in rows], [r[f"NDCG@{k}"] for r in rows]
      ax.plot(xs, ys, marker="o", label=method.upper())
      for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"{r['lambda']:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set_xlabel(xkey)
    ax.set_ylabel(f"NDCG@{k}")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(f"Accuracy vs diversity (lambda annotated; 1 = model order), {result['split']}")
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--split", default="test", choices=("valid", "test"))
  ap.add_argument("--pool", type=int, default=100)
  ap.add_argument("--k", type=int, default=10)
  ap.add_argument("--lambdas", default=",".join(map(str, LAMBDAS)))
  ap.add_argument("--methods", default="mmr,dpp")
  ap.add_argument("--max_users", type=int, default=0, help="0 = every user of the split")
  ap.add_argument("--out", default="benchmarks/results/diversity_sweep",
                  help="path prefix: writes PREFIX.md, PREFIX.json, PREFIX.png")
  args = ap.parse_args(argv)
  result = sweep(args.workdir, split=args.split, pool=args.pool, k=args.k,
                 lambdas=[float(x) for x in args.lambdas.split(",")],
                 methods=tuple(args.methods.split(",")), max_users=args.max_users)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  text = markdown(result)
  pathlib.Path(args.out + ".md").write_text(text)
  pathlib.Path(args.out + ".json").write_text(json.dumps(result, indent=2))
  plot(result, args.out + ".png")
  print(text)
  print(f"wrote {args.out}.md, .json, .png")
  return result


if __name__ == "__main__":
  main()
