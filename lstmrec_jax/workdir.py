"""A train.py workdir: its run rebuilt with a checkpoint restored, and the evaluations of it.

The checkpoint drivers: one floor above `run.py` (which builds a run from a spec) and below the
entry points, serving and tuning. `restore_run` reads the workdir's config.json, rebuilds the
data and the model (`run.build_run`), checks the data against the workdir's data.json and restores
the best, latest or a given step's parameters; `evaluate_checkpoint` and `evaluate_cold_start`
write their reports beside the checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from lstmrec_jax import checkpoint as ckpt_lib
from lstmrec_jax import model as model_lib
from lstmrec_jax import paths
from lstmrec_jax import plugins
from lstmrec_jax import run as run_lib
from lstmrec_jax.errors import ConfigError
from lstmrec_jax.evaluation import cold_start
from lstmrec_jax.evaluation import cross_domain
from lstmrec_jax.evaluation import ranking
from lstmrec_jax.evaluation import reports


@dataclasses.dataclass
class RestoredRun:
  """A workdir's run with a checkpoint's parameters restored (replicated over the mesh)."""

  run: run_lib.Run
  params: Any
  meta: dict[str, Any]
  step: int


def restore_run(workdir: str | os.PathLike, *, which: str = "best",
                spec: run_lib.RunSpec | None = None, num_devices: int = 0,
                allow_other_data: bool = False, trust_plugins: bool = False) -> RestoredRun:
  """Rebuilds a workdir's data and model and restores the 'best', 'latest' or a step's params.

  Args:
    workdir: a train.py workdir.
    which: "best" (by validation NDCG@10), "latest" or a step number.
    spec: the run spec; None reads the workdir's config.json.
    num_devices: devices of the mesh (0 = all).
    allow_other_data: evaluate data other than the run's own (checked against its data.json).
    trust_plugins: import the plug-ins the workdir's plugins.json names (they run code); without
      it they must be imported already (e.g. `--plugins`), else a PluginError names them.
  """
  workdir = paths.workdir_path(workdir)
  # The encoders / losses the run was trained with, by name: only when trusted (plugins.py).
  plugins.load_recorded(workdir, trust=trust_plugins)
  spec = spec if spec is not None else run_lib.spec_from_config(
      run_lib.read_workdir_config(workdir))
  run = run_lib.build_run(spec, num_devices=num_devices)
  if not allow_other_data:
    run_lib.check_data_signature(workdir, run.dataset)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    params, meta, step = checkpointer.restore_params(run.params, which, run.mesh)
  finally:
    checkpointer.close()
  return RestoredRun(run, params, meta, step)


def evaluate_run_params(run: run_lib.Run, params: Any, *,
                        splits: Sequence[str] = ("valid", "test"), exclude_seen: bool = True,
                        seen_targets: str | None = None) -> dict[str, Any]:
  """The evaluation report of `params` (e.g. a checkpoint, or an average of several) under the
  run's own protocol: what `evaluate_checkpoint` and eval.py report for them.

  seen_targets: "miss" | "rankable"; None = the run's `eval.seen_targets`.
  """
  inp, ev = run.spec.input, run.spec.eval
  return cross_domain.evaluate_params(
      run.graphdef, params, run.consts, run.dataset, splits=splits,
      sampled_negatives=ev.sampled_negatives, sampled_seed=ev.sampled_seed, mesh=run.mesh,
      batch_size=inp.eval_batch_size, max_len=inp.max_len, exclude_seen=exclude_seen,
      chunk_size=ev.chunk_size,
      seen_targets=ev.seen_targets if seen_targets is None else seen_targets,
      high_reward_min=run.spec.reward.high_min, q_head=run.model_cfg.q_head)


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
      the whole history with all seen items removed (`ranking.write_topk`; not the evaluation's
      input).
    topk: K for `topk_out`.
    spec: the run spec (e.g. with data.path moved); None reads the workdir's config.json.
    num_devices: devices of the evaluation mesh (0 = all).
    allow_other_data: evaluate data other than the run's own (else refused: see `restore_run`).
    seen_targets: "miss" | "rankable" (see `ranking.evaluate_params`); None = the run's
      `eval.seen_targets`.

  Returns:
    The report (also written to workdir/eval_<which>.json).
  """
  workdir = paths.workdir_path(workdir)
  restored = restore_run(workdir, which=which, spec=spec, num_devices=num_devices,
                         allow_other_data=allow_other_data)
  run, params = restored.run, restored.params
  inp, ev = run.spec.input, run.spec.eval
  report = evaluate_run_params(run, params, splits=splits, exclude_seen=exclude_seen,
                               seen_targets=seen_targets)
  report.update(checkpoint=str(which), step=restored.step, workdir=str(workdir),
                dataset=run.spec.data.format, epochs_trained=restored.meta.get("epoch"))
  if topk_out:
    # A streaming encoder (its class's `streams`, plug-ins included) reads the whole history.
    streams = model_lib.ENCODERS.get(run.model_cfg.encoder).streams
    n = ranking.write_topk(topk_out, run.graphdef, params, run.consts, run.dataset, k=topk,
                           mesh=run.mesh, batch_size=inp.eval_batch_size, max_len=inp.max_len,
                           chunk_size=ev.chunk_size, streams=streams)
    report["topk_out"] = {"path": str(topk_out), "users": n, "k": topk}
  reports.write_report(workdir / f"eval_{which}.json", report)
  return report


def evaluate_cold_start(workdir: str | os.PathLike, *, which: str = "best",
                        splits: Sequence[str] = ("valid", "test"), exclude_seen: bool = True,
                        spec=None, num_devices: int = 0) -> dict[str, Any]:
  """`cold_start.evaluate_cold_start` of a checkpoint of a workdir trained on a cold split.

  Args:
    workdir: a train.py workdir whose config has `cold_start.item_fraction > 0`.
    which: "best", "latest" or a step number.
    splits: splits to report.
    exclude_seen: remove the user's history items from the ranking.
    spec: the run spec (e.g. with data.path moved); None reads the workdir's config.json.
    num_devices: devices of the evaluation mesh (0 = all).

  Returns:
    The report, with the run's item mode and training length added (also written to
    workdir/cold_start_<which>.json).
  """
  workdir = paths.workdir_path(workdir)
  spec = spec if spec is not None else run_lib.spec_from_config(
      run_lib.read_workdir_config(workdir))
  if not spec.cold_start.item_fraction:
    raise ConfigError(f"{workdir} was not trained on a cold-item split (cold_start.item_fraction "
                      "is 0): its 'cold' items were trained on, so a cold-start report would lie; "
                      "retrain with --config.cold_start.item_fraction=0.1 (or a config's :cold)")
  restored = restore_run(workdir, which=which, spec=spec, num_devices=num_devices)
  run = restored.run
  report = cold_start.evaluate_cold_start(
      run.graphdef, restored.params, run.consts, run.dataset, mesh=run.mesh,
      batch_size=spec.input.eval_batch_size, max_len=spec.input.max_len, splits=splits,
      exclude_seen=exclude_seen, chunk_size=spec.eval.chunk_size)
  report.update(workdir=str(workdir.absolute()), checkpoint=str(which), step=restored.step,
                epochs_trained=restored.meta.get("epoch"), item_mode=run.model_cfg.item_mode,
                cold_id=run.model_cfg.cold_id, dataset=run.dataset.source)
  reports.write_report(workdir / f"cold_start_{which}.json", report)
  return report


def evaluate_domain_cold_start(workdir: str | os.PathLike, *, which: str = "best", spec=None,
                               num_devices: int = 0) -> dict[str, Any]:
  """Test metrics of a multi-domain run by target-domain events before the test item.

  `cross_domain.domain_cold_start`: per domain and protocol, buckets 0-2, 3-5 and 6+, the test
  histories cut to their last m events of the target domain (m = 0..5) besides the users' own.

  Returns:
    The report (also written to workdir/domain_cold_start_<which>.json).
  """
  workdir = paths.workdir_path(workdir)
  restored = restore_run(workdir, which=which, spec=spec, num_devices=num_devices)
  run = restored.run
  if not cross_domain.is_multi_domain(run.dataset):
    raise ConfigError(f"{workdir}: its data has one catalogue; the target-domain cold-start "
                      "report needs a multi-domain dataset (data.format crossdomain)")
  inp, ev = run.spec.input, run.spec.eval
  report = cross_domain.domain_cold_start(
      run.graphdef, restored.params, run.consts, run.dataset, mesh=run.mesh,
      batch_size=inp.eval_batch_size, max_len=inp.max_len, exclude_seen=ev.exclude_seen,
      chunk_size=ev.chunk_size, sampled_negatives=ev.sampled_negatives,
      sampled_seed=ev.sampled_seed, seen_targets=ev.seen_targets)
  report.update(workdir=str(workdir), checkpoint=str(which), step=restored.step,
                encoder=run.model_cfg.encoder, kept_domain=run.dataset.kept_domain)
  reports.write_report(workdir / f"domain_cold_start_{which}.json", report)
  return report
