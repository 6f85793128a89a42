"""The training loop over a built run (`run.build_run`): steps, validation, checkpoints, report."""

from __future__ import annotations

import collections
from collections.abc import Mapping
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from etils import epath
import tqdm

from lstmrec_jax import config_keys
from lstmrec_jax import checkpoint as ckpt_lib
from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax import optim
from lstmrec_jax import paths
from lstmrec_jax import run as run_lib
from lstmrec_jax import workdir as workdir_lib
from lstmrec_jax.data import augment
from lstmrec_jax.errors import ConfigError
from lstmrec_jax.errors import DivergenceError
from lstmrec_jax.evaluation import cross_domain
from lstmrec_jax.evaluation import metrics
from lstmrec_jax.evaluation import ranking
from lstmrec_jax.evaluation import reports
from lstmrec_jax.model import cooccurrence
from lstmrec_jax.scoring import steps as scoring
from lstmrec_jax.train import intents
from lstmrec_jax.train import steps


def check_saved_config(workdir: epath.Path, config: Mapping[str, Any],
                       defaults: Mapping[str, Any] | None = None) -> None:
  """Writes config.json on a fresh run; on resume, refuses a config that changed the run.

  A workdir whose earlier run stopped before its first checkpoint (a config or data error) has
  nothing to resume: its config.json (and data.json) are replaced, so the corrected command runs.

  `defaults` (flattened "group.key" -> value, from configs/base.py via the entry point) lets a
  workdir saved before a key existed resume while the key holds its default.
  """
  path = workdir / "config.json"
  current = json.loads(json.dumps(config_keys.plain(config)))  # tuples as JSON lists, as saved
  changed = []
  if path.exists():
    a, b = run_lib.flatten(run_lib.read_workdir_config(workdir)), run_lib.flatten(current)
    defaults = defaults or {}
    changed = sorted(k for k in set(a) | set(b)
                     if a.get(k) != b.get(k) and k not in run_lib.RESUMABLE_KEYS
                     and not (k not in a and k in defaults and b[k] == defaults[k]))
    if changed and _trained(workdir):
      raise ConfigError(
          f"{workdir} holds a run with a different config ({', '.join(changed)}); use another "
          "--workdir or the same config to resume")
    if changed:  # a run that stopped before its first checkpoint (e.g. a config error): retry
      logging.info("%s: nothing trained yet, its config is replaced (%s changed)", workdir,
                   ", ".join(changed))
  if (not path.exists() or changed) and jax.process_index() == 0:
    (workdir / "data.json").unlink(missing_ok=True)  # of the earlier attempt's data, if any
    paths.replace_text(path, json.dumps(current, indent=2, sort_keys=True))


def _trained(workdir: epath.Path) -> bool:
  """Whether any checkpoint (a step folder of checkpoints/ or best/) was written in `workdir`."""
  for name in ("checkpoints", "best"):
    folder = workdir / name
    if folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir()):
      return True
  return False


class _Logger:
  """Scalars to TensorBoard and to metrics.jsonl in the workdir (process 0 only)."""

  def __init__(self, workdir: epath.Path, step: int = 0):
    self.active = jax.process_index() == 0
    if self.active:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(workdir / "tb"))
      path = workdir / "metrics.jsonl"
      repair_jsonl(path, through_step=step)
      self.jsonl = path.open("a")

  def write(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
    if not self.active:
      return
    for k, v in scalars.items():
      self.tb.add_scalar((prefix + k).replace("@", "_at_"), v, step)  # TB tags: no '@'

    # "time" (unix seconds) dates every row, e.g. how long a run took to reach its best checkpoint.
    self.jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3),
                                 **{prefix + k: v for k, v in scalars.items()}}) + "\n")
    self.jsonl.flush()

  def close(self) -> None:
    if self.active:
      self.tb.close()
      self.jsonl.close()


def repair_jsonl(path: epath.Path, through_step: int | None = None) -> bool:
  """Cuts a torn last line (a kill in the middle of a write) so appends start on a fresh line,
  and, resuming at `through_step`, the rows of later steps (the resumed run writes them again).

  Example: b'{"step": 1}\\n{"ste' -> b'{"step": 1}\\n'. Returns whether the file was cut.
  """
  if paths.is_uri(path) or not path.exists():
    return False
  with open(path, "rb+") as f:
    data = f.read()
    keep = data if not data or data.endswith(b"\n") else data[:data.rfind(b"\n") + 1]
    if keep != data:
      logging.warning("%s: cut a torn last line (%d bytes)", path, len(data) - len(keep))
    if through_step is not None:
      lines = keep.splitlines(keepends=True)
      kept = [line for line in lines if _row_step(line) <= through_step]
      if len(kept) != len(lines):
        logging.warning("%s: dropped %d rows after step %d (written before the kill; the "
                        "resumed run writes them again)", path, len(lines) - len(kept),
                        through_step)
        keep = b"".join(kept)
    if keep == data:
      return False
    f.seek(0)
    f.write(keep)
    f.truncate(len(keep))
  return True


def _row_step(line: bytes) -> int:
  """The step of a metrics.jsonl row (-1 when unreadable: kept)."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return -1


class _LossGuard:
  """Checks every step's loss, fetched in batches (no per-step host sync), before any save.

  A non-finite loss, or one above `factor` x max(running median of the recent losses, 1), stops
  the run (DivergenceError naming the step); the floor of 1 keeps a small loss (BPR near 0)
  from tripping on noise. With `skip_nonfinite` the jitted step has already dropped a
  non-finite update, and it is only counted.
  """

  def __init__(self, factor: float, skip_nonfinite: bool, window: int = 200, warmup: int = 1):
    self.factor, self.skip_nonfinite, self.warmup = factor, skip_nonfinite, warmup
    self.recent = collections.deque(maxlen=window)
    self.pending: list[tuple[int, jax.Array, jax.Array | None]] = []
    self.skipped = 0

  def add(self, step: int, out: dict[str, jax.Array]) -> None:
    self.pending.append((step, out["loss"], out.get("skipped")))

  def check(self) -> None:
    """Reads the pending losses (one transfer) and raises DivergenceError at the first bad one."""
    if not self.pending:
      return
    steps_, losses_, skipped_ = zip(*self.pending)
    losses_h = np.asarray(jax.device_get(list(losses_)), np.float64)
    skipped_h = (np.asarray(jax.device_get(list(skipped_)), bool) if skipped_[0] is not None
                 else np.zeros(len(losses_h), bool))
    self.pending = []
    for step, loss, skipped in zip(steps_, losses_h, skipped_h):
      if skipped:
        self.skipped += 1
        continue
      if not np.isfinite(loss):
        raise DivergenceError(f"loss is {loss} at step {step}: training diverged; lower "
                              "optim.learning_rate (or set train.skip_nonfinite_steps=True); "
                              "no checkpoint of a later step was written")
      if self.factor and len(self.recent) >= self.warmup:
        median = float(np.median(self.recent))
        if loss > self.factor * max(median, 1.0):
          raise DivergenceError(
              f"loss {loss:.4g} at step {step} is over {self.factor:g}x the running median "
              f"{median:.4g} (train.divergence_factor): training diverged; lower "
              "optim.learning_rate; no checkpoint of a later step was written")
      self.recent.append(loss)


class _Preemption:
  """SIGTERM / SIGINT ask for a save at the next step boundary; a second SIGINT exits at once."""

  def __init__(self):
    self.signum = None
    self.previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self.previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      os._exit(130)  # a second Ctrl-C: the user does not want to wait for the save
    self.signum = signum
    logging.warning("received %s: saving at the next step boundary (Ctrl-C again to exit now)",
                    signal.Signals(signum).name)

  def restore(self) -> None:
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)
    self.previous = {}


def _pretrained(init_from: str, params):
  """`params` with every parameter of `init_from`'s best checkpoint whose path and shape match
  (`train.init_from`: pre-training, then this run fine-tunes); the counts are logged."""
  source = workdir_lib.restore_run(init_from, which="best", num_devices=1)
  new, copied, kept = ckpt_lib.transfer_params(jax.device_get(params),
                                               jax.device_get(source.params))
  if not copied:
    raise ConfigError(f"train.init_from={init_from}: no parameter of its best checkpoint matches"
                      " this model's (paths and shapes); nothing to start from")
  logging.info("train.init_from=%s: %d parameters from its best checkpoint (step %d), %d as "
               "initialized%s", init_from, len(copied), source.step, len(kept),
               f" ({', '.join(kept)})" if kept else "")
  return new


def _stderr_is_terminal() -> bool:
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):  # replaced or closed stderr
    return False


def eval_period(tr: run_lib.TrainConfig, steps_per_epoch: int) -> int:
  """Steps between validations: `eval_every_steps` when set, else `eval_every_epochs` of the data.

  Example: eval_every_epochs 2.0, eval_every_steps 0, 113 steps an epoch -> 226.
  """
  return tr.eval_every_steps or max(1, int(round(tr.eval_every_epochs * steps_per_epoch)))


def train_and_evaluate(config, workdir: str | os.PathLike, *,
                       defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`, then evaluates its best checkpoint.

  Args:
    config: a whole config (ConfigDict or nested dict, every key of configs/base.py).
    workdir: where checkpoints, config.json, metrics.jsonl, tb/ and report.json live. A workdir
      with checkpoints is resumed: parameters, optimizer, step, RNG and data position.
    defaults: flattened base defaults, for resuming a workdir saved before a key existed.

  Returns:
    The evaluation report of the best checkpoint (also written to workdir/report.json).
  """
  spec = run_lib.spec_from_config(config)
  workdir = paths.workdir_path(workdir)  # gs://bucket/run stays a bucket path
  lock = None
  if jax.process_index() == 0:
    ckpt_lib.check_writable(workdir)  # before any work: a read-only workdir fails in one line
    lock = ckpt_lib.lock_workdir(workdir)  # a second train.py on this workdir refuses
  try:
    return _train(spec, workdir, defaults)
  finally:
    if lock is not None:
      lock.close()


def _train(spec, workdir, defaults) -> dict[str, Any]:
  """`train_and_evaluate` once the workdir is known writable and locked."""
  check_saved_config(workdir, spec.config, defaults)
  run = run_lib.build_run(spec)
  spec = run.spec  # with the `auto` keys set from the data
  if spec.auto:
    logging.info("set from the data (auto): %s", ", ".join(
        f"{k}={v}" for k, v in run_lib.auto_resolved(spec).items()))
  dataset, mesh, inp, tr = run.dataset, run.mesh, spec.input, spec.train
  signature_path = workdir / "data.json"
  if signature_path.exists():
    # A resumed run on other data (items swapped, one more item) would train on it silently.
    run_lib.check_data_signature(workdir, dataset, fix="resume on the run's own data, or train "
                                                       "on this data in another --workdir")
  elif jax.process_index() == 0:
    paths.replace_text(signature_path, json.dumps(run_lib.data_signature(dataset), indent=2))

  # Plain TrainBatches unless the `augment` group turns a transform on (data/augment.py).
  batches = augment.train_batches(dataset.train, augment=spec.augment,
                                  num_items=int(dataset.num_items), batch_size=inp.batch_size,
                                  max_len=inp.max_len, seed=spec.seed, pack=inp.pack,
                                  backend=inp.backend, process_index=jax.process_index(),
                                  process_count=jax.process_count(),
                                  rewards_N=dataset.train_rewards())
  steps_per_epoch = batches.steps_per_epoch
  if steps_per_epoch < 1:
    raise ConfigError(f"fewer training examples ({batches.num_examples}) than one batch "
                      f"({inp.batch_size}); lower input.batch_size")
  total_steps = tr.num_epochs * steps_per_epoch
  eval_every = eval_period(tr, steps_per_epoch)
  tx = run.optimizer(total_steps, steps_per_epoch)
  split_tables = mesh_lib.MODEL_AXIS in mesh.axis_names
  if run.model_cfg.vocab_shards > 1 and not split_tables:
    raise ValueError(f"model.vocab_shards={run.model_cfg.vocab_shards} needs a multiple of "
                     f"{run.model_cfg.vocab_shards} devices; {mesh.devices.size} in use")
  # Replicated, but for the item tables and their moments with model.vocab_shards > 1.
  train_fn, state_sh = steps.compile_train_step(run, tx,
                                                skip_nonfinite=tr.skip_nonfinite_steps)
  state = jax.device_put(optim.init_state(run.params, tx, spec.seed), state_sh)
  if split_tables:
    logging.info("item tables (%d rows) split over %d devices (mesh %s); softmax %s",
                 run.model_cfg.table_rows, mesh.shape[mesh_lib.MODEL_AXIS],
                 dict(mesh.shape), "vocabulary-parallel" if steps.uses_vocab_parallel(
                     mesh, spec.loss) else f"{spec.loss.kind!r} through XLA's partitioner")
  num_params = sum(x.size for x in jax.tree.leaves(run.params))
  logging.info("%s: %d users, %d items, %d training examples, %d steps/epoch, %d params, "
               "%d devices", spec.data.format, dataset.num_users, dataset.num_items - 1,
               batches.num_examples, steps_per_epoch, num_params, mesh.devices.size)

  checkpointer = ckpt_lib.Checkpointer(workdir, keep=tr.keep_checkpoints)
  meta = {"best": None, "best_step": None, "evals_since_best": 0, "stopped_early": False}
  restored = None
  if checkpointer.latest_step() is not None:
    restored = checkpointer.restore_train_state(state, mesh)
    if restored is None:
      logging.warning("no intact checkpoint in %s: starting from step 0", workdir)
    else:
      state, meta = restored
      logging.info("resumed from %s at step %d", workdir, int(state.step))
  if tr.item_init == "cooccurrence" and restored is None:  # a resumed run keeps its own table
    params = cooccurrence.init_item_table(run.params, dataset.train.offsets_U1,
                                          dataset.train.items_N, dataset.num_items,
                                          window=tr.item_init_window, seed=spec.seed)
    state = jax.device_put(optim.init_state(params, tx, spec.seed), state_sh)
  if tr.init_from and restored is None:  # a resumed run keeps its own parameters
    state = state._replace(params=jax.device_put(_pretrained(tr.init_from, state.params),
                                                 state_sh.params))

  aux = run.step_aux(steps_per_epoch)
  prototypes = None
  if spec.loss.intent_weight > 0:
    prototypes = intents.Prototypes(run, batches, workdir, clusters=spec.loss.intent_clusters,
                                    start_epoch=spec.loss.intent_start_epoch, seed=spec.seed)
    aux.update(prototypes.initial_aux())
  if "item_mask_V" in aux:
    trained = int(np.asarray(dataset.item_counts_V)[1:].astype(bool).sum())
    logging.info("training softmax over the %d items with training events (%d left out)",
                 trained, int(dataset.num_items) - 1 - trained)
  # A multi-domain split is ranked per user in the target's domain.
  rank_fn = scoring.compile_rank_fn(run.graphdef, mesh, exclude_seen=spec.eval.exclude_seen,
                                    chunk_size=spec.eval.chunk_size,
                                    item_domains_V=dataset.item_domains_V)

  seen_targets = reports.effective_seen_targets(spec.eval.exclude_seen, spec.eval.seen_targets)
  valid_split = dataset.valid
  if 0 < tr.valid_users < len(dataset.valid):
    valid_split = dataset.valid.sample(tr.valid_users, spec.seed)
    logging.info("validation during training: %d of the %d validation users (train.valid_users;"
                 " the final report ranks all)", len(valid_split), len(dataset.valid))

  if spec.optim.ema_decay:
    logging.info("validation and the best checkpoint use the moving average of the parameters "
                 "(optim.ema_decay=%g)", spec.optim.ema_decay)

  def validate(params) -> dict[str, float]:
    users_U, ranks_U = ranking.rank_split(rank_fn, params, run.consts, valid_split,
                                          batch_size=inp.eval_batch_size, max_len=inp.max_len,
                                          mesh=mesh)
    if cross_domain.is_multi_domain(dataset):
      # Per domain, never pooled: the checkpoint is chosen on the mean over domains.
      return cross_domain.validation_metrics(ranks_U, users_U, valid_split,
                                             dataset.domain_names, seen_targets)
    # The checkpoint is chosen under the protocol the report states (eval.seen_targets).
    return metrics.metrics_from_ranks(
        reports.protocol_ranks(ranks_U, users_U, valid_split, seen_targets))

  guard = _LossGuard(tr.divergence_factor, tr.skip_nonfinite_steps)

  def check_before_save() -> None:
    """Every loss since the last check, then the parameters: no non-finite state is saved."""
    guard.check()
    if not ckpt_lib.params_finite(state.params):
      raise DivergenceError(f"non-finite parameters at step {step}: training diverged; lower "
                            "optim.learning_rate; no checkpoint of this step was written")

  step = int(state.step)
  logger = _Logger(workdir, step)
  stop_after = tr.stop_after_steps
  # No bar into a file or pipe: its carriage returns would fill a redirected log (validation
  # lines are still written, and metrics.jsonl has every loss).
  bar = tqdm.tqdm(total=total_steps, initial=step, disable=not tr.progress_bar
                  or jax.process_index() != 0 or not _stderr_is_terminal(), mininterval=1.0,
                  unit="step", dynamic_ncols=True)
  window_loss, window_positions, window_start = [], 0, time.perf_counter()
  stopped = meta["stopped_early"] or step >= total_steps
  start_epoch = step // steps_per_epoch
  preemption = _Preemption()
  eval_compiled_ahead = False

  def stop_here(why: str) -> dict[str, Any]:
    """Saves the current step for resuming and ends the run cleanly (rc 0)."""
    check_before_save()
    checkpointer.save_latest(state, meta)
    checkpointer.close()
    bar.close()
    logger.close()
    logging.info("stopping at step %d (%s); rerun the same command to resume", step, why)
    return {"stopped_at_step": step, "reason": why}

  try:
    for epoch in range(start_epoch, tr.num_epochs):
      if stopped:
        break
      skip = step - epoch * steps_per_epoch if epoch == start_epoch else 0
      if prototypes is not None:
        update = prototypes.for_epoch(epoch, state.params, mid_epoch=skip > 0)
        if update is not None:
          aux.update(update)
      for batch in batches.epoch(epoch, skip_batches=skip):
        state, out = train_fn(state, mesh_lib.to_global(batch, mesh), aux)
        step += 1
        if not eval_compiled_ahead:  # the train step is compiled: the validation's programs next
          rank_fn.compile_ahead(state.params, run.consts, ranking.batch_shapes(
              valid_split, batch_size=inp.eval_batch_size, max_len=inp.max_len))
          eval_compiled_ahead = True
        guard.add(step, out)  # device scalars: read at the next log or save, not now
        window_loss.append(out["loss"])
        window_positions += int(batch["mask_BxL"].sum())  # host-side: no device sync
        if step % tr.log_every_steps == 0 or step == total_steps:
          guard.check()
          losses_w = np.asarray(jax.device_get(window_loss))
          elapsed = time.perf_counter() - window_start
          events_per_s = window_positions * jax.process_count() / max(elapsed, 1e-9)
          loss = float(np.nanmean(np.where(np.isfinite(losses_w), losses_w, np.nan))
                       if np.isfinite(losses_w).any() else np.nan)
          scalars = {"loss": loss, "events_per_s": events_per_s,
                     "grad_norm": float(jax.device_get(out["grad_norm"])),
                     "epoch": step / steps_per_epoch}
          if tr.skip_nonfinite_steps:
            scalars["skipped_steps"] = guard.skipped
          # An RL loss's scalars (mean Q of the logged actions, ...) and added terms' values
          # (terms/intent_nce): the last step's.
          scalars.update({k: float(v) for k, v in jax.device_get(
              {k: v for k, v in out.items() if k.startswith(("rl/", "terms/"))}).items()})
          logger.write(step, scalars)
          bar.set_postfix(loss=f"{loss:.4f}", ev_s=f"{events_per_s:,.0f}", epoch=epoch + 1)
          bar.update(step - bar.n)
          window_loss, window_positions, window_start = [], 0, time.perf_counter()
        if step % eval_every == 0 or step == total_steps:
          t0 = time.perf_counter()
          check_before_save()  # a NaN model is never validated, kept as best, or saved
          evaluated = optim.evaluated_params(state, spec.optim)
          val = validate(evaluated)
          logger.write(step, {k: v for k, v in val.items() if k != "users"}, prefix="valid/")
          improved = meta["best"] is None or val["NDCG@10"] > meta["best"]
          if improved:
            meta.update(best=val["NDCG@10"], best_step=step, evals_since_best=0)
          else:
            meta["evals_since_best"] += 1
          meta["epoch"] = step / steps_per_epoch
          meta["valid"] = val
          meta["stopped_early"] = bool(tr.patience and meta["evals_since_best"] >= tr.patience)
          if improved:
            checkpointer.save_best(state._replace(params=evaluated), meta, val)
          checkpointer.save_latest(state, meta)
          bar.write(f"step {step} epoch {step / steps_per_epoch:.2f}: valid NDCG@10 "
                    f"{val['NDCG@10']:.4f} HR@10 {val['HR@10']:.4f} (best {meta['best']:.4f} at "
                    f"step {meta['best_step']}; {time.perf_counter() - t0:.1f}s)")
          window_start += time.perf_counter() - t0  # evaluation time is not training throughput
          if meta["stopped_early"]:
            bar.write(f"early stop: no improvement in {tr.patience} evaluations")
            stopped = True
            break
        if preemption.signum is not None:
          return stop_here(signal.Signals(preemption.signum).name)
        if stop_after and step >= stop_after:
          return stop_here("train.stop_after_steps")
    guard.check()
  except Exception:
    checkpointer.close()  # the saves already made are finished and sealed before the error line
    bar.close()
    logger.close()
    raise
  finally:
    preemption.restore()
    if guard.skipped:
      logging.warning("skipped %d steps with a non-finite loss (train.skip_nonfinite_steps)",
                      guard.skipped)
  bar.close()
  logger.close()
  checkpointer.wait()

  params, _, best_step = checkpointer.restore_params(state.params, "best", mesh)
  report = cross_domain.evaluate_params(run.graphdef, params, run.consts, dataset,
                                        splits=("valid", "test"), mesh=mesh,
                                        batch_size=inp.eval_batch_size, max_len=inp.max_len,
                                        exclude_seen=spec.eval.exclude_seen,
                                        chunk_size=spec.eval.chunk_size,
                                        seen_targets=spec.eval.seen_targets,
                                        sampled_negatives=spec.eval.sampled_negatives,
                                        sampled_seed=spec.eval.sampled_seed,
                                        high_reward_min=spec.reward.high_min,
                                        q_head=run.model_cfg.q_head)
  report.update(checkpoint="best", step=best_step, workdir=str(workdir),
                epochs_trained=step / steps_per_epoch, dataset=spec.data.format)
  if spec.auto:
    report["auto"] = run_lib.auto_resolved(spec)
  reports.write_report(workdir / "report.json", report)
  checkpointer.close()
  return report
