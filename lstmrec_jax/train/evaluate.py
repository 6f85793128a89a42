"""Full-ranking evaluation of parameters and of checkpoints, and the popularity baseline.

Shape legend: B users per batch, L history length, E embedding size, V catalog size, U users in a
split, K top-k.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lstmrec_jax import metrics
from lstmrec_jax.train import mesh as mesh_lib
from lstmrec_jax.train import steps

PROTOCOL = ("leave-one-out next-item; ranking over all items (padding excluded); the user's "
            "history items removed from the ranking except the target itself; ties count "
            "against the target")


def _gather(x: np.ndarray) -> np.ndarray:
  """Concatenates a per-process host array over processes (identity with one process)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def compile_rank_fn(graphdef, mesh: Mesh, *, exclude_seen: bool, chunk_size: int) -> Callable:
  """The jitted eval step: batch sharded over `data`, ranks returned replicated."""
  return jax.jit(
      functools.partial(steps.eval_step, graphdef=graphdef, exclude_seen=exclude_seen,
                        chunk_size=chunk_size),
      in_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh),
                    mesh_lib.batch_sharding(mesh)),
      out_shardings=mesh_lib.replicated(mesh))


def _model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: batch[k] for k in ("inputs_BxL", "mask_BxL", "targets_B", "seen_BxS")}


def rank_split(rank_fn: Callable, params: Any, consts: Any, split, *, batch_size: int,
               max_len: int, mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
  """Ranks of every user's target in a split; returns (users_U, ranks_U), each user once."""
  from lstmrec_jax.data import pipeline  # TensorFlow only where batches are built.
  users, ranks = [], []
  for batch in pipeline.eval_batches(split, batch_size=batch_size, max_len=max_len,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    ranks_B = np.asarray(rank_fn(params, consts, mesh_lib.to_global(_model_inputs(batch), mesh)))
    valid_B = _gather(batch["valid_B"])
    users.append(_gather(batch["users_B"])[valid_B])
    ranks.append(ranks_B[valid_B])
  users_U, ranks_U = np.concatenate(users), np.concatenate(ranks)
  if len(np.unique(users_U)) != len(users_U):
    raise AssertionError("a user was evaluated twice; the evaluation batches are wrong")
  return users_U, ranks_U


def popularity_ranks(item_counts_V: np.ndarray, split, *, exclude_seen: bool,
                     chunk_size: int = 8192, batch_size: int = 1024) -> np.ndarray:
  """Ranks under the popularity baseline (training counts), users in the split's order."""
  counts = jnp.asarray(item_counts_V, jnp.float32)
  table = jnp.zeros((counts.shape[0], 1), jnp.float32)
  fn = jax.jit(functools.partial(metrics.target_ranks, exclude_seen=exclude_seen,
                                 chunk_size=chunk_size))
  offsets, items = split.history.offsets_U1, split.history.items_N
  out = []
  for lo in range(0, len(split.targets_U), batch_size):
    hi = min(lo + batch_size, len(split.targets_U))
    lengths = offsets[lo + 1:hi + 1] - offsets[lo:hi]
    seen = np.zeros((batch_size, max(int(lengths.max(initial=1)), 1)), np.int32)
    for r in range(hi - lo):
      seen[r, :lengths[r]] = items[offsets[lo + r]:offsets[lo + r + 1]]
    targets = np.zeros((batch_size,), np.int32)
    targets[:hi - lo] = split.targets_U[lo:hi]
    ranks = fn(jnp.zeros((batch_size, 1)), table, counts, targets, seen)
    out.append(np.asarray(ranks)[:hi - lo])
  return np.concatenate(out) if out else np.zeros((0,), np.int32)


def history_lengths(split) -> np.ndarray:
  """Events before each user's target, in the split's order."""
  return np.diff(split.history.offsets_U1)


def split_report(ranks_U: np.ndarray, users_U: np.ndarray, split, *,
                 ks: Sequence[int] = metrics.DEFAULT_KS) -> dict[str, Any]:
  """Overall metrics and the history-length breakdown for one split."""
  position = {int(u): i for i, u in enumerate(split.users_U)}
  lengths = history_lengths(split)[[position[int(u)] for u in users_U]]
  return {"overall": metrics.metrics_from_ranks(ranks_U, ks),
          "by_history_length": metrics.metrics_by_history_length(ranks_U, lengths)}


def _cell(value: float | None, width: int) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def format_table(report: dict[str, Any], keys: Sequence[str] = (
    "HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")) -> str:
  """A plain-text table of model vs popularity per split, then the history-length breakdown."""
  lines = [f"{'split':<8}{'scorer':<12}" + "".join(f"{k:>9}" for k in keys)]
  for split_name, split_rep in report["splits"].items():
    for scorer in ("model", "popularity"):
      row = split_rep[scorer]["overall"]
      lines.append(f"{split_name:<8}{scorer:<12}" + "".join(f"{row[k]:>9.4f}" for k in keys))
  for split_name, split_rep in report["splits"].items():
    lines.append(f"\n{split_name}: by history length (events before the target)")
    lines.append(f"  {'bucket':<8}{'users':>7}{'HR@10':>9}{'NDCG@10':>9}"
                 f"{'pop HR@10':>11}{'pop NDCG@10':>13}")
    for bucket, row in split_rep["model"]["by_history_length"].items():
      pop = split_rep["popularity"]["by_history_length"][bucket]
      cells = [_cell(row["HR@10"], 9), _cell(row["NDCG@10"], 9), _cell(pop["HR@10"], 11),
               _cell(pop["NDCG@10"], 13)]
      lines.append(f"  {bucket:<8}{row['users']:>7}" + "".join(cells))
  return "\n".join(lines)


SUMMARY_KEYS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")


def summarize_reports(reports: Sequence[dict[str, Any]], split: str = "test",
                      keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
  """Mean and sample standard deviation (ddof 1; 0 for one run) of each metric over runs.

  `reports` are the JSON reports `evaluate_checkpoint` writes (e.g. the same config, seeds 0-2).
  Returns {"runs": n, "model": {key: (mean, std)}, "popularity": {...}, "per_run": [...]}.
  """
  if not reports:
    raise ValueError("no reports to summarize")
  out: dict[str, Any] = {"runs": len(reports), "split": split, "per_run": []}
  for scorer in ("model", "popularity"):
    values = {}
    for k in keys:
      try:
        xs = np.array([r["splits"][split][scorer]["overall"][k] for r in reports], np.float64)
      except KeyError as e:
        raise ValueError(f"a report has no {split}/{scorer}/{k}: {e}") from e
      values[k] = (float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0)
    out[scorer] = values
  for r in reports:
    out["per_run"].append({"workdir": r.get("workdir"), "step": r.get("step"),
                           **{k: r["splits"][split]["model"]["overall"][k] for k in keys}})
  return out


def format_summary(summary: dict[str, Any]) -> str:
  """A Markdown table: one row per run, then mean +- std, then the popularity baseline."""
  keys = [k for k in SUMMARY_KEYS if k in summary["model"]]
  lines = [f"{summary['split']}, {summary['runs']} runs", "",
           "| run | step | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
  for r in summary["per_run"]:
    lines.append(f"| {r['workdir']} | {r['step']} | "
                 + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")
  lines.append("| **mean +- std** | | " + " | ".join(
      f"**{m:.4f}** +- {sd:.4f}" for m, sd in (summary["model"][k] for k in keys)) + " |")
  lines.append("| popularity | | " + " | ".join(
      f"{summary['popularity'][k][0]:.4f}" for k in keys) + " |")
  return "\n".join(lines)


def evaluate_params(graphdef, params, consts, dataset, *, splits: Sequence[str], mesh: Mesh,
                    batch_size: int, max_len: int, exclude_seen: bool = True,
                    chunk_size: int = 8192) -> dict[str, Any]:
  """Model and popularity metrics for each named split ('valid', 'test')."""
  rank_fn = compile_rank_fn(graphdef, mesh, exclude_seen=exclude_seen, chunk_size=chunk_size)
  report: dict[str, Any] = {"protocol": PROTOCOL, "exclude_seen": exclude_seen,
                            "num_items": int(dataset.num_items) - 1, "splits": {}}
  for name in splits:
    split = getattr(dataset, name)
    users_U, ranks_U = rank_split(rank_fn, params, consts, split, batch_size=batch_size,
                                  max_len=max_len, mesh=mesh)
    pop_U = popularity_ranks(dataset.item_counts_V, split, exclude_seen=exclude_seen,
                             chunk_size=chunk_size)
    report["splits"][name] = {
        "model": split_report(ranks_U, users_U, split),
        "popularity": split_report(pop_U, np.asarray(split.users_U), split)}
  return report


def write_topk(path: str | pathlib.Path, graphdef, params, consts, dataset, split, *, k: int, mesh: Mesh,
               batch_size: int, max_len: int, exclude_seen: bool, chunk_size: int) -> int:
  """Writes each user's top-k next items (raw ids) as TSV `user<TAB>item1,item2,...`."""
  from lstmrec_jax.data import pipeline
  fn = jax.jit(functools.partial(steps.topk_step, graphdef=graphdef, k=k,
                                 exclude_seen=exclude_seen, chunk_size=chunk_size),
               in_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh),
                             mesh_lib.batch_sharding(mesh)),
               out_shardings=mesh_lib.replicated(mesh))
  written = 0
  lines = []
  for batch in pipeline.eval_batches(split, batch_size=batch_size, max_len=max_len,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    ids_BxK, _ = fn(params, consts, mesh_lib.to_global(_model_inputs(batch), mesh))
    ids_BxK = np.asarray(ids_BxK)
    valid_B, users_B = _gather(batch["valid_B"]), _gather(batch["users_B"])
    for user, ids in zip(users_B[valid_B], ids_BxK[valid_B]):
      items = ",".join(str(dataset.item_keys[i]) for i in ids)
      lines.append(f"{dataset.user_keys[user]}\t{items}\n")
      written += 1
  if jax.process_index() == 0:
    pathlib.Path(path).write_text("".join(lines))
  return written


def write_report(path: str | pathlib.Path, report: dict[str, Any]) -> None:
  """JSON report, written by process 0 only."""
  if jax.process_index() == 0:
    pathlib.Path(path).write_text(json.dumps(report, indent=2, sort_keys=True))
    logging.info("wrote %s", path)


@dataclasses.dataclass(frozen=True)
class RestoredRun:
  """A train.py workdir's config, data, model and restored parameters, ready to evaluate."""

  config: Any
  dataset: Any
  model_cfg: Any
  graphdef: Any
  params: Any
  consts: Any  # replicated over `mesh`
  meta: dict[str, Any]
  step: int
  mesh: Mesh


def load_workdir_config(workdir: pathlib.Path):
  """The ConfigDict a train.py run saved in its workdir."""
  import ml_collections
  config_path = workdir / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: is {workdir} a train.py workdir?")
  return ml_collections.ConfigDict(json.loads(config_path.read_text()))


def restore_workdir(workdir: str | pathlib.Path, *, which: str = "best",
                    data_path: str | None = None, num_devices: int = 0,
                    config=None) -> RestoredRun:
  """Rebuilds a run's data and model from its workdir and restores a checkpoint's parameters."""
  from lstmrec_jax.train import checkpoint as ckpt_lib
  from lstmrec_jax.train import loop, state as state_lib
  workdir = pathlib.Path(workdir)
  config = config if config is not None else load_workdir_config(workdir)
  if data_path:
    config.data.path = data_path
  dataset = loop.load_data(config)
  model_cfg = loop.model_config(config, dataset)
  graphdef, params_like, consts = state_lib.create_model(
      model_cfg, config.seed, **loop.model_kwargs(dataset, model_cfg))
  mesh = mesh_lib.make_mesh(num_devices)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  params, meta, step = checkpointer.restore_params(params_like, which, mesh)
  checkpointer.close()
  return RestoredRun(config, dataset, model_cfg, graphdef, params,
                     mesh_lib.replicate(consts, mesh), meta, step, mesh)


def evaluate_checkpoint(workdir: str | pathlib.Path, *, which: str = "best",
                        splits: Sequence[str] = ("valid", "test"), exclude_seen: bool = True,
                        topk_out: str | None = None, topk: int = 10, data_path: str | None = None,
                        num_devices: int = 0) -> dict[str, Any]:
  """Evaluates a checkpoint of a training workdir.

  Args:
    workdir: a workdir written by `train.py` (config.json + checkpoints).
    which: "best" (by validation NDCG@10), "latest", or a step number.
    splits: which splits to report.
    exclude_seen: remove the user's history items from the ranking (the standard protocol).
    topk_out: if set, write each test user's top-`topk` next items (raw ids) there as TSV.
    topk: K for `topk_out`.
    data_path: overrides the run's `data.path` (data moved since training).
    num_devices: devices of the evaluation mesh (0 = all).

  Returns:
    The report (also written to workdir/eval_<which>.json).
  """
  workdir = pathlib.Path(workdir)
  run = restore_workdir(workdir, which=which, data_path=data_path, num_devices=num_devices)
  config, dataset, graphdef, params, consts, mesh = (
      run.config, run.dataset, run.graphdef, run.params, run.consts, run.mesh)
  meta, step, inp = run.meta, run.step, config.input
  report = evaluate_params(graphdef, params, consts, dataset, splits=splits, mesh=mesh,
                           batch_size=inp.eval_batch_size, max_len=inp.max_len,
                           exclude_seen=exclude_seen, chunk_size=config.eval.chunk_size)
  report.update(checkpoint=str(which), step=step, workdir=str(workdir.absolute()),
                dataset=config.data.format, epochs_trained=meta.get("epoch"))
  if topk_out:
    n = write_topk(topk_out, graphdef, params, consts, dataset, dataset.test, k=topk, mesh=mesh,
                   batch_size=inp.eval_batch_size, max_len=inp.max_len,
                   exclude_seen=exclude_seen, chunk_size=config.eval.chunk_size)
    report["topk_out"] = {"path": str(topk_out), "users": n, "k": topk}
  write_report(workdir / f"eval_{which}.json", report)
  return report
