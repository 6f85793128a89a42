"""Orbax checkpoints of a training run.

Two managers under the workdir: `checkpoints/` keeps the latest `keep` states (for resuming) and
`best/` keeps the one with the best validation NDCG@10 (for evaluation). Each checkpoint holds three
items: `params` (alone, so evaluation restores only what it needs), `train` (optimizer state, step,
RNG) and `meta` (JSON: epoch, early-stopping state, validation metrics). Saves are asynchronous;
`wait()` before reading them back or exiting.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from lstmrec_jax.train import mesh as mesh_lib
from lstmrec_jax.train.state import TrainState

BEST_METRIC = "NDCG@10"


def _abstract(tree, mesh: Mesh | None):
  """ShapeDtypeStructs for a restore target, replicated over `mesh` (any device count)."""
  sharding = mesh_lib.replicated(mesh) if mesh is not None else None
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpointer:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    workdir = pathlib.Path(workdir).absolute()
    common = dict(enable_async_checkpointing=async_save, read_only=read_only,
                  create=not read_only)
    self.latest = ocp.CheckpointManager(
        workdir / "checkpoints", item_names=("params", "train", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, **common))
    self.best = ocp.CheckpointManager(
        workdir / "best", item_names=("params", "train", "meta"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m[BEST_METRIC], best_mode="max", **common))

  @staticmethod
  def _args(state: TrainState, meta: dict[str, Any]):
    train = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
    return ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                              train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta))

  def save_latest(self, state: TrainState, meta: dict[str, Any]) -> None:
    """Saves the state for resuming (asynchronously)."""
    step = int(jax.device_get(state.step))
    self.latest.save(step, args=self._args(state, meta), force=True)

  def save_best(self, state: TrainState, meta: dict[str, Any], val_metrics: dict[str, float]):
    """Offers the state as a best checkpoint; the manager keeps it only if NDCG@10 improved."""
    step = int(jax.device_get(state.step))
    self.best.save(step, args=self._args(state, meta),
                   metrics={BEST_METRIC: float(val_metrics[BEST_METRIC])}, force=True)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.best_step()

  def restore_train_state(self, like: TrainState, mesh: Mesh | None) -> tuple[TrainState, dict]:
    """Restores the latest checkpoint into the structure of `like`, replicated over `mesh`."""
    step = self.latest.latest_step()
    if step is None:
      raise FileNotFoundError("no checkpoint to resume from")
    train_like = {"step": like.step, "opt_state": like.opt_state, "rng": like.rng}
    out = self.latest.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(like.params, mesh)),
        train=ocp.args.StandardRestore(_abstract(train_like, mesh)),
        meta=ocp.args.JsonRestore()))
    train = out["train"]
    state = TrainState(step=train["step"], params=out["params"], opt_state=train["opt_state"],
                       rng=train["rng"])
    return state, dict(out["meta"])

  def restore_params(self, params_like, which: str | int, mesh: Mesh | None):
    """Restores only the parameters of the 'best', 'latest' or a given step; returns (params, meta, step)."""
    if which == "best":
      manager, step = self.best, self.best.best_step()
    elif which == "latest":
      manager, step = self.latest, self.latest.latest_step()
    else:
      step = int(which)
      manager = self.latest if step in self.latest.all_steps() else self.best
      if step not in manager.all_steps():
        raise FileNotFoundError(
            f"no checkpoint at step {step}; have {sorted(set(self.latest.all_steps()) | set(self.best.all_steps()))}")
    if step is None:
      raise FileNotFoundError(f"no {which!r} checkpoint in this workdir")
    out = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params_like, mesh)),
        meta=ocp.args.JsonRestore()))
    return out["params"], dict(out["meta"]), step

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()
