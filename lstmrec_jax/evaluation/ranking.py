"""Full-ranking evaluation of parameters and of checkpoints: the eval step, ranks per split, top-k.

Shape legend: B users per batch, L history length, E embedding size, V catalog size, S seen
items per user, U users in a split, K top-k.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax import paths
from lstmrec_jax.evaluation import baselines
from lstmrec_jax.evaluation import metrics
from lstmrec_jax.evaluation import reports

_MODEL_KEYS = ("inputs_BxL", "mask_BxL", "targets_B", "seen_BxS")


def last_state(user_BxLxE: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """The output at each row's last real position (rows are right-padded); zeros for empty rows."""
  last_B = jnp.maximum(mask_BxL.sum(axis=1) - 1, 0)
  return jnp.take_along_axis(user_BxLxE, last_B[:, None, None], axis=1)[:, 0]


def user_vectors(params: Any, consts: Any, batch: dict[str, jax.Array], graphdef: nnx.GraphDef):
  """(user_BxE, output item table VxE, item bias V or None) for a batch of histories."""
  model = nnx.merge(graphdef, params, consts)
  input_VxE, output_VxE, bias_V = model.item_tables()
  user_BxLxE = model(batch["inputs_BxL"], batch["mask_BxL"], item_table_VxE=input_VxE)
  return last_state(user_BxLxE, batch["mask_BxL"]), output_VxE, bias_V


def fallback_table(table_VxE: jax.Array, bias_V: jax.Array | None,
                   popularity_V: jax.Array) -> jax.Array:
  """The item table with two extra columns, the item bias and log(1 + training count).

  With `fallback_user`, a user with history scores `u . t + bias` and a user without (empty, or
  only unknown items: the encoder's state is zero and every item would tie) scores by popularity
  alone. Serving builds this table once; `eval_step` per batch: one path for both.
  Example: table [[a, b]], bias None, counts [5] -> [[a, b, 0, log 6]].
  """
  bias_V1 = (jnp.zeros((table_VxE.shape[0], 1), jnp.float32) if bias_V is None
             else bias_V.astype(jnp.float32)[:, None])
  pop_V1 = jnp.log1p(jnp.maximum(jnp.asarray(popularity_V, jnp.float32), 0.0))[:, None]
  return jnp.concatenate([table_VxE.astype(jnp.float32), bias_V1, pop_V1], axis=1)


def fallback_user(user_BxE: jax.Array, has_history_B: jax.Array) -> jax.Array:
  """User vectors against `fallback_table`: [u, 1, 0] with history, [0, 0, 1] without.

  Example: user [[2, 3], [0, 0]], has_history [True, False] -> [[2, 3, 1, 0], [0, 0, 0, 1]].
  """
  has_B1 = has_history_B.astype(bool)[:, None]
  user = jnp.where(has_B1, user_BxE.astype(jnp.float32), 0.0)
  return jnp.concatenate([user, has_B1.astype(jnp.float32), (~has_B1).astype(jnp.float32)],
                         axis=1)


def _scoring(user_BxE, table_VxE, bias_V, mask_BxL, popularity_V):
  """(user, table, bias) to rank with: the popularity fallback when counts are given."""
  if popularity_V is None:
    return user_BxE, table_VxE, bias_V
  has_history_B = mask_BxL.astype(bool).any(axis=1)
  return (fallback_user(user_BxE, has_history_B),
          fallback_table(table_VxE, bias_V, popularity_V), None)


def eval_step(params: Any, consts: Any, batch: dict[str, jax.Array],
              popularity_V: jax.Array | None = None, *, graphdef: nnx.GraphDef,
              exclude_seen: bool, chunk_size: int) -> jax.Array:
  """0-based full-catalog rank of each row's target (see `metrics.target_ranks`).

  With `popularity_V` (training counts), a row without history is ranked by popularity
  (`fallback_table`), as the Recommender serves it; without, such a row ties every item.
  """
  user_BxE, table_VxE, bias_V = user_vectors(params, consts, batch, graphdef)
  user, table, bias = _scoring(user_BxE, table_VxE, bias_V, batch["mask_BxL"], popularity_V)
  return metrics.target_ranks(user, table, bias, batch["targets_B"], batch.get("seen_BxS"),
                              exclude_seen=exclude_seen, chunk_size=chunk_size)


def topk_step(params: Any, consts: Any, batch: dict[str, jax.Array],
              popularity_V: jax.Array | None = None, *, graphdef: nnx.GraphDef, k: int,
              exclude_seen: bool, chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """Each row's top-k next items and scores, seen items excluded unless asked otherwise."""
  user_BxE, table_VxE, bias_V = user_vectors(params, consts, batch, graphdef)
  user, table, bias = _scoring(user_BxE, table_VxE, bias_V, batch["mask_BxL"], popularity_V)
  return metrics.top_k_items(user, table, bias, k, batch.get("seen_BxS"),
                             exclude_seen=exclude_seen, chunk_size=chunk_size)


def rank_topk_step(params: Any, consts: Any, batch: dict[str, jax.Array],
                   popularity_V: jax.Array | None = None, *, graphdef: nnx.GraphDef, k: int,
                   exclude_seen: bool, chunk_size: int):
  """`eval_step` and `topk_step` over one user computation: (ranks_B, ids_BxK, scores_BxK).

  The top-K lists feed the beyond-accuracy metrics (`beyond.py`); both are chunked over items.
  """
  user_BxE, table_VxE, bias_V = user_vectors(params, consts, batch, graphdef)
  user, table, bias = _scoring(user_BxE, table_VxE, bias_V, batch["mask_BxL"], popularity_V)
  seen = batch.get("seen_BxS")
  ranks_B = metrics.target_ranks(user, table, bias, batch["targets_B"], seen,
                                 exclude_seen=exclude_seen, chunk_size=chunk_size)
  ids_BxK, scores_BxK = metrics.top_k_items(user, table, bias, k, seen,
                                            exclude_seen=exclude_seen, chunk_size=chunk_size)
  return ranks_B, ids_BxK, scores_BxK


def _gather(x: np.ndarray) -> np.ndarray:
  """Concatenates a per-process host array over processes (identity with one process)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _jit_over_batch(fn, mesh: Mesh, popularity_V=None) -> Callable:
  """`fn(params, consts, batch[, popularity_V])` jitted with the batch sharded over `data`.

  The parameters are taken as they are placed: replicated, or with the item tables split over
  the mesh's `model` axis (`model.vocab_shards`, train/vocab_parallel.py).
  """
  repl = mesh_lib.replicated(mesh)
  if popularity_V is None:
    return jax.jit(fn, in_shardings=(None, repl, mesh_lib.batch_sharding(mesh)),
                   out_shardings=repl)
  jitted = jax.jit(fn, in_shardings=(None, repl, mesh_lib.batch_sharding(mesh), repl),
                   out_shardings=repl)
  pop_V = mesh_lib.replicate(jnp.asarray(popularity_V, jnp.float32), mesh)
  return lambda params, consts, batch: jitted(params, consts, batch, pop_V)


def compile_rank_fn(graphdef, mesh: Mesh, *, exclude_seen: bool, chunk_size: int,
                    popularity_V=None) -> Callable:
  """The jitted eval step: batch sharded over `data`, ranks returned replicated.

  popularity_V: training counts for the popularity fallback of empty histories (`eval_step`).
  """
  return _jit_over_batch(functools.partial(eval_step, graphdef=graphdef,
                                           exclude_seen=exclude_seen, chunk_size=chunk_size),
                         mesh, popularity_V)


def _eval_batches(split, *, batch_size: int, max_len: int):
  from lstmrec_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.eval_batches(split, batch_size=batch_size, max_len=max_len,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())


def rank_split(rank_fn: Callable, params: Any, consts: Any, split, *, batch_size: int,
               max_len: int, mesh: Mesh, on_lists: Callable | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Ranks of every user's target in a split; returns (users_U, ranks_U), each user once.

  With a `rank_topk_step` rank_fn, `on_lists(ids_BxK, scores_BxK)` gets each batch's real users'
  top-K lists (the beyond-accuracy metrics), from the same pass.
  """
  users, ranks = [], []
  for batch in _eval_batches(split, batch_size=batch_size, max_len=max_len):
    inputs = {k: batch[k] for k in _MODEL_KEYS}
    out = rank_fn(params, consts, mesh_lib.to_global(inputs, mesh))
    ranks_B = np.asarray(out[0] if isinstance(out, tuple) else out)
    valid_B = _gather(batch["valid_B"])
    if on_lists is not None:
      on_lists(np.asarray(out[1])[valid_B], np.asarray(out[2])[valid_B])
    users.append(_gather(batch["users_B"])[valid_B])
    ranks.append(ranks_B[valid_B])
  users_U, ranks_U = np.concatenate(users), np.concatenate(ranks)
  if len(np.unique(users_U)) != len(users_U):
    raise AssertionError("a user was evaluated twice; the evaluation batches are wrong")
  return users_U, ranks_U


def evaluate_params(graphdef, params, consts, dataset, *, splits: Sequence[str], mesh: Mesh,
                    batch_size: int, max_len: int, exclude_seen: bool,
                    chunk_size: int, seen_targets: str = "miss",
                    beyond_k: int = 10) -> dict[str, Any]:
  """Model and popularity metrics for each named split ('valid', 'test').

  seen_targets: `eval.seen_targets`, "miss" (a target already in the history counts as a miss:
  the published protocol) or "rankable"; with exclude_seen False every target is rankable. Where a
  split has repeated targets its report holds both (`reports.split_report`).

  beyond_k: K of the beyond-accuracy metrics (coverage, Gini, ARP, novelty, ILD, ...) of the
  top-K lists, computed in the ranking pass (`beyond.py`); 0 = accuracy only.
  """
  from lstmrec_jax.evaluation import beyond  # pylint: disable=g-import-not-at-top
  if beyond_k:
    rank_fn = _jit_over_batch(functools.partial(
        rank_topk_step, graphdef=graphdef, k=beyond_k, exclude_seen=exclude_seen,
        chunk_size=chunk_size), mesh, dataset.item_counts_V)
    extra = dict(k=beyond_k, vectors_VxE=beyond.item_vectors(graphdef, params, consts),
                 attrs_VxA=beyond.dataset_attributes(dataset))
  else:
    rank_fn = compile_rank_fn(graphdef, mesh, exclude_seen=exclude_seen, chunk_size=chunk_size,
                              popularity_V=dataset.item_counts_V)
  seen_targets = reports.effective_seen_targets(exclude_seen, seen_targets)
  report: dict[str, Any] = {"protocol": reports.protocol(exclude_seen, seen_targets),
                            "exclude_seen": exclude_seen, "seen_targets": seen_targets,
                            "num_items": int(dataset.num_items) - 1, "splits": {}}
  if beyond_k:
    report["beyond_k"] = beyond_k
  for name in splits:
    split = getattr(dataset, name)
    acc = beyond.BeyondAccumulator(dataset.item_counts_V, **extra) if beyond_k else None
    users_U, ranks_U = rank_split(rank_fn, params, consts, split, batch_size=batch_size,
                                  max_len=max_len, mesh=mesh, on_lists=acc and acc.add)
    pop_U = baselines.popularity_ranks(dataset.item_counts_V, split, exclude_seen=exclude_seen,
                                       chunk_size=chunk_size)
    report["splits"][name] = {
        "model": reports.split_report(ranks_U, users_U, split, seen_targets=seen_targets),
        "popularity": reports.split_report(pop_U, np.asarray(split.users_U), split,
                                           seen_targets=seen_targets)}
    if beyond_k:
      pop_acc = beyond.BeyondAccumulator(dataset.item_counts_V, **extra)
      for ids_BxK, scores_BxK in beyond.popularity_lists(
          dataset.item_counts_V, split, k=beyond_k, exclude_seen=exclude_seen,
          chunk_size=chunk_size):
        pop_acc.add(ids_BxK, scores_BxK)
      report["splits"][name]["model"]["beyond"] = acc.result()
      report["splits"][name]["popularity"]["beyond"] = pop_acc.result()
  return report


def whole_histories(dataset):
  """An EvalSplit of every user's whole history (train + valid + test, time order), no target.

  A user in the test split has its test history plus the test target; otherwise its valid
  history plus the valid target; otherwise its training row.
  """
  from lstmrec_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  rows = [np.asarray(dataset.train[u]) for u in range(dataset.num_users)]
  for split in (dataset.valid, dataset.test):  # test last: its history already holds valid
    for k, user in enumerate(split.users_U):
      rows[user] = np.append(split.history[k], split.targets_U[k])
  users_U = np.arange(dataset.num_users, dtype=np.int32)
  return preprocess.EvalSplit(users_U, preprocess.Sequences.from_lists(rows),
                              np.zeros(dataset.num_users, np.int32))


def write_topk(path: str | os.PathLike, graphdef, params, consts, dataset, *, k: int,
               mesh: Mesh, batch_size: int, max_len: int, chunk_size: int,
               streams: bool) -> int:
  """Writes each user's top-k next items (raw ids) as TSV `user<TAB>item1,item2,...`.

  Unlike the evaluation (which ranks a held-out target from the events before it), this is what
  to recommend now: the input is each user's whole history (train + valid + test), every item
  the user has seen is removed, and users without history get the popularity fallback. A
  streaming encoder (LSTM, GRU) reads the whole history, as `serving.Recommender` and serve.py
  do; the transformer reads its last `max_len` events, as it was trained.
  """
  from lstmrec_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  whole = whole_histories(dataset)
  window = pipeline.seen_width(whole) if streams else max_len
  fn = _jit_over_batch(functools.partial(topk_step, graphdef=graphdef, k=k, exclude_seen=True,
                                         chunk_size=chunk_size), mesh, dataset.item_counts_V)
  lines = []
  for batch in _eval_batches(whole, batch_size=batch_size, max_len=window):
    inputs = {k_: batch[k_] for k_ in _MODEL_KEYS}
    ids_BxK, _ = fn(params, consts, mesh_lib.to_global(inputs, mesh))
    ids_BxK = np.asarray(ids_BxK)
    valid_B, users_B = _gather(batch["valid_B"]), _gather(batch["users_B"])
    for user, ids in zip(users_B[valid_B], ids_BxK[valid_B]):
      items = ",".join(str(dataset.item_keys[i]) for i in ids)
      lines.append(f"{dataset.user_keys[user]}\t{items}\n")
  if jax.process_index() == 0:
    paths.workdir_path(path).write_text("".join(lines))
  return len(lines)


def evaluate_checkpoint(workdir: str | os.PathLike, *, which: str = "best",
                        splits: Sequence[str] = ("valid", "test"), exclude_seen: bool = True,
                        topk_out: str | None = None, topk: int = 10, spec=None,
                        num_devices: int = 0, allow_other_data: bool = False,
                        seen_targets: str | None = None) -> dict[str, Any]:
  """Evaluates a checkpoint of a training workdir.

  Args:
    workdir: a workdir written by `train.py` (config.json + checkpoints).
    which: "best" (by validation NDCG@10), "latest", or a step number.
    splits: which splits to report.
    exclude_seen: remove the user's history items from the ranking (the standard protocol).
    topk_out: if set, write every user's top-`topk` next items (raw ids) there as TSV, from
      the whole history with all seen items removed (`write_topk`; not the evaluation's input).
    topk: K for `topk_out`.
    spec: the run spec (e.g. with data.path moved); None reads the workdir's config.json.
    num_devices: devices of the evaluation mesh (0 = all).
    allow_other_data: evaluate data other than the run's own (else refused: see run.restore_run).
    seen_targets: "miss" | "rankable" (see `evaluate_params`); None = the run's
      `eval.seen_targets`.

  Returns:
    The report (also written to workdir/eval_<which>.json).
  """
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  workdir = paths.workdir_path(workdir)
  restored = run_lib.restore_run(workdir, which=which, spec=spec, num_devices=num_devices,
                                 allow_other_data=allow_other_data)
  run, params = restored.run, restored.params
  inp, ev = run.spec.input, run.spec.eval
  common = dict(mesh=run.mesh, batch_size=inp.eval_batch_size, max_len=inp.max_len,
                exclude_seen=exclude_seen, chunk_size=ev.chunk_size,
                seen_targets=ev.seen_targets if seen_targets is None else seen_targets)
  report = evaluate_params(run.graphdef, params, run.consts, run.dataset, splits=splits,
                           **common)
  report.update(checkpoint=str(which), step=restored.step, workdir=str(workdir),
                dataset=run.spec.data.format, epochs_trained=restored.meta.get("epoch"))
  if topk_out:
    n = write_topk(topk_out, run.graphdef, params, run.consts, run.dataset, k=topk,
                   mesh=run.mesh, batch_size=inp.eval_batch_size, max_len=inp.max_len,
                   chunk_size=ev.chunk_size, streams=run.model_cfg.encoder in ("lstm", "gru"))
    report["topk_out"] = {"path": str(topk_out), "users": n, "k": topk}
  reports.write_report(workdir / f"eval_{which}.json", report)
  return report
