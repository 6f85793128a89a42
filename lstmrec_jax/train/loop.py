"""The training loop: data, model and optimizer meet here (and in `train.py`, `eval.py`)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
import json
import logging
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from lstmrec_jax import losses, metrics
from lstmrec_jax.model import modules
from lstmrec_jax.train import checkpoint as ckpt_lib
from lstmrec_jax.train import evaluate as eval_lib
from lstmrec_jax.train import mesh as mesh_lib
from lstmrec_jax.train import state as state_lib
from lstmrec_jax.train import steps

# Keys that may differ between the saved config of a workdir and a resumed run's config.
RESUMABLE_CHANGES = ("train.stop_after_steps", "train.progress_bar", "train.num_devices")


def load_data(config):
  """The dataset named by `config.data` (cached on disk), cold-item split when configured."""
  from lstmrec_jax import data as data_lib
  dataset = data_lib.load_dataset(config.data.to_dict())
  # .get: configs and saved config.json files from before the cold_start group have none.
  cold = config.get("cold_start") or {}
  if cold.get("item_fraction", 0.0):
    from lstmrec_jax.data import content as content_data
    dataset = content_data.cold_item_split(dataset, fraction=cold["item_fraction"],
                                           seed=cold.get("seed", 0))
  return dataset


def model_config(config, dataset) -> modules.ModelConfig:
  """Model hyper-parameters from the config, with the catalog size from the data."""
  return modules.model_config_from_dict(config.model.to_dict(), int(dataset.num_items))


def model_kwargs(dataset, model_cfg: modules.ModelConfig) -> dict[str, Any]:
  """Arrays from the data that the model is built with (item content); none for id-only models."""
  if model_cfg.item_mode == "id":
    return {}
  from lstmrec_jax.data import content as content_data
  from lstmrec_jax.model import content as content_model
  c = content_data.item_content(
      dataset, attributes=model_cfg.content_attributes, titles=model_cfg.content_titles,
      max_attrs=model_cfg.max_attributes, title_min_count=model_cfg.title_min_count,
      title_max_tokens=model_cfg.title_max_tokens)
  if not c.has_content:
    raise ValueError(f"model.item_mode={model_cfg.item_mode!r} needs item content, but "
                     f"{dataset.source} has no item attributes or titles (or both are off); use "
                     "model.item_mode='id'")
  return {"item_content": content_model.ContentInputs(
      known_V=c.known_V, attrs_VxA=c.attrs_VxA, num_attrs=c.num_attrs, tokens_VxT=c.tokens_VxT,
      vocab_size=len(c.vocab) if c.vocab is not None else 2)}


def flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested mapping -> {"group.key": value}, e.g. {"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(flatten_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _base_defaults() -> dict[str, Any]:
  """configs/base.py's flattened values, or {} where that package is not importable."""
  try:
    from configs import base  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  return flatten_config(json.loads(base.get_base_config().to_json_best_effort()))


def _check_saved_config(workdir: pathlib.Path, config) -> None:
  """Writes config.json on a fresh run; on resume, refuses a config that changed the run."""
  path = workdir / "config.json"
  current = json.loads(config.to_json_best_effort())
  if path.exists():
    saved = json.loads(path.read_text())
    a, b = flatten_config(saved), flatten_config(current)
    defaults = _base_defaults()
    # A key the saved run predates counts as unchanged while it holds its default value.
    changed = sorted(k for k in set(a) | set(b)
                     if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES
                     and not (k not in a and k in defaults and b[k] == defaults[k]))
    if changed:
      raise ValueError(f"{workdir} holds a run with a different config ({', '.join(changed)}); "
                       "use another --workdir or the same config to resume")
  elif jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2, sort_keys=True))


class _Logger:
  """Scalars to TensorBoard and to metrics.jsonl in the workdir (process 0 only)."""

  def __init__(self, workdir: pathlib.Path):
    self.active = jax.process_index() == 0
    if self.active:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(workdir / "tb"))
      self.jsonl = open(workdir / "metrics.jsonl", "a")

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


def train_and_evaluate(config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`, then evaluates its best checkpoint.

  Args:
    config: an ml_collections ConfigDict as in `configs/default.py`.
    workdir: where checkpoints, config.json, metrics.jsonl, tb/ and report.json live. A workdir
      with checkpoints is resumed: parameters, optimizer, step, RNG and data position.

  Returns:
    The evaluation report of the best checkpoint (also written to workdir/report.json).
  """
  from lstmrec_jax.data import pipeline
  workdir = pathlib.Path(workdir)
  _check_saved_config(workdir, config)
  dataset = load_data(config)
  model_cfg = model_config(config, dataset)
  loss_cfg = state_lib.dataclass_from_mapping(steps.LossConfig, config.loss.to_dict())
  optim_cfg = state_lib.dataclass_from_mapping(state_lib.OptimConfig, config.optim.to_dict())
  mesh = mesh_lib.make_mesh(config.train.num_devices)
  inp = config.input
  mesh_lib.check_global_batch_size(inp.batch_size, mesh)
  mesh_lib.check_global_batch_size(inp.eval_batch_size, mesh)

  batches = pipeline.TrainBatches(dataset.train, batch_size=inp.batch_size, max_len=inp.max_len,
                                  seed=config.seed, pack=inp.pack,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  steps_per_epoch = batches.steps_per_epoch
  if steps_per_epoch < 1:
    raise ValueError(f"fewer training examples ({batches.num_examples}) than one batch "
                     f"({inp.batch_size}); lower input.batch_size")
  total_steps = config.train.num_epochs * steps_per_epoch
  eval_every = config.train.eval_every_steps or steps_per_epoch
  tx = state_lib.make_optimizer(optim_cfg, total_steps)
  graphdef, params, consts = state_lib.create_model(model_cfg, config.seed,
                                                    **model_kwargs(dataset, model_cfg))
  consts = mesh_lib.replicate(consts, mesh)
  state = mesh_lib.replicate(state_lib.init_state(params, tx, config.seed), mesh)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  logging.info("%s: %d users, %d items, %d training examples, %d steps/epoch, %d params, "
               "%d devices", config.data.format, dataset.num_users, dataset.num_items - 1,
               batches.num_examples, steps_per_epoch, num_params, mesh.devices.size)

  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  meta = {"best": None, "best_step": None, "evals_since_best": 0, "stopped_early": False}
  if checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore_train_state(state, mesh)
    logging.info("resumed from %s at step %d", workdir, int(state.step))

  aux = {"consts": consts, "log_q_V": None}
  counts_V = jnp.asarray(dataset.item_counts_V)
  trained_V = counts_V > 0
  if loss_cfg.train_items_only:
    aux["item_mask_V"] = mesh_lib.replicate(trained_V, mesh)
    logging.info("training softmax over the %d items with training events (%d left out)",
                 int(trained_V[1:].sum()), int((~trained_V[1:]).sum()))
  if loss_cfg.kind == "sampled":
    log_q_V = losses.popularity_log_q(counts_V, loss_cfg.alpha)
    if loss_cfg.train_items_only:
      log_q_V = jnp.where(trained_V, log_q_V, -jnp.inf)
      log_q_V = log_q_V - jax.nn.logsumexp(log_q_V)
    aux["log_q_V"] = mesh_lib.replicate(log_q_V, mesh)
  repl, batch_sh = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
  train_fn = jax.jit(
      functools.partial(steps.train_step, graphdef=graphdef, tx=tx, loss_cfg=loss_cfg),
      in_shardings=(repl, batch_sh, repl), out_shardings=(repl, repl), donate_argnums=0)
  rank_fn = eval_lib.compile_rank_fn(graphdef, mesh, exclude_seen=config.eval.exclude_seen,
                                     chunk_size=config.eval.chunk_size)

  def validate() -> dict[str, float]:
    _, ranks_U = eval_lib.rank_split(rank_fn, state.params, consts, dataset.valid,
                                     batch_size=inp.eval_batch_size, max_len=inp.max_len,
                                     mesh=mesh)
    return metrics.metrics_from_ranks(ranks_U)

  logger = _Logger(workdir)
  step = int(state.step)
  stop_after = config.train.stop_after_steps
  bar = tqdm.tqdm(total=total_steps, initial=step, disable=not config.train.progress_bar
                  or jax.process_index() != 0, mininterval=1.0, unit="step", dynamic_ncols=True)
  window_loss, window_positions, window_start = [], 0, time.perf_counter()
  stopped = meta["stopped_early"] or step >= total_steps
  start_epoch = step // steps_per_epoch
  for epoch in range(start_epoch, config.train.num_epochs):
    if stopped:
      break
    skip = step - epoch * steps_per_epoch if epoch == start_epoch else 0
    for batch in batches.epoch(epoch, skip_batches=skip):
      state, out = train_fn(state, mesh_lib.to_global(batch, mesh), aux)
      step += 1
      window_loss.append(out["loss"])
      window_positions += int(batch["mask_BxL"].sum())  # host-side: no device sync
      if step % config.train.log_every_steps == 0 or step == total_steps:
        losses_w = np.asarray(jax.device_get(window_loss))
        elapsed = time.perf_counter() - window_start
        events_per_s = window_positions * jax.process_count() / max(elapsed, 1e-9)
        loss = float(losses_w.mean())
        if not np.isfinite(loss):
          raise FloatingPointError(f"loss is {loss} at step {step}; lower optim.learning_rate")
        logger.write(step, {"loss": loss, "events_per_s": events_per_s,
                            "grad_norm": float(jax.device_get(out["grad_norm"])),
                            "epoch": step / steps_per_epoch})
        bar.set_postfix(loss=f"{loss:.4f}", ev_s=f"{events_per_s:,.0f}", epoch=epoch + 1)
        bar.update(step - bar.n)
        window_loss, window_positions, window_start = [], 0, time.perf_counter()
      if step % eval_every == 0 or step == total_steps:
        t0 = time.perf_counter()
        val = validate()
        logger.write(step, {k: v for k, v in val.items() if k != "users"}, prefix="valid/")
        improved = meta["best"] is None or val["NDCG@10"] > meta["best"]
        if improved:
          meta.update(best=val["NDCG@10"], best_step=step, evals_since_best=0)
        else:
          meta["evals_since_best"] += 1
        meta["epoch"] = step / steps_per_epoch
        meta["valid"] = val
        patience = config.train.patience
        meta["stopped_early"] = bool(patience and meta["evals_since_best"] >= patience)
        checkpointer.save_best(state, meta, val)
        checkpointer.save_latest(state, meta)
        bar.write(f"step {step} epoch {step / steps_per_epoch:.2f}: valid NDCG@10 "
                  f"{val['NDCG@10']:.4f} HR@10 {val['HR@10']:.4f} (best {meta['best']:.4f} at "
                  f"step {meta['best_step']}; {time.perf_counter() - t0:.1f}s)")
        window_start += time.perf_counter() - t0  # evaluation time is not training throughput
        if meta["stopped_early"]:
          bar.write(f"early stop: no improvement in {patience} evaluations")
          stopped = True
          break
      if stop_after and step >= stop_after:
        checkpointer.save_latest(state, meta)
        checkpointer.wait()
        bar.close()
        logger.close()
        logging.info("stopping at step %d (train.stop_after_steps)", step)
        return {"stopped_at_step": step}
  bar.close()
  logger.close()
  checkpointer.wait()

  params, best_meta, best_step = checkpointer.restore_params(state.params, "best", mesh)
  report = eval_lib.evaluate_params(graphdef, params, consts, dataset, splits=("valid", "test"),
                                    mesh=mesh, batch_size=inp.eval_batch_size,
                                    max_len=inp.max_len, exclude_seen=config.eval.exclude_seen,
                                    chunk_size=config.eval.chunk_size)
  report.update(checkpoint="best", step=best_step, workdir=str(workdir.absolute()),
                epochs_trained=step / steps_per_epoch, dataset=config.data.format)
  eval_lib.write_report(workdir / "report.json", report)
  checkpointer.close()
  return report
