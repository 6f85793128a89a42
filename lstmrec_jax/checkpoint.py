"""Orbax checkpoints of a training run.

Two managers under the workdir: `checkpoints/` keeps the latest `keep` states (for resuming) and
`best/` keeps the one with the best validation NDCG@10 (for evaluation). Each checkpoint holds three
items: `params` (alone, so evaluation restores only what it needs), `train` (optimizer state, step,
RNG) and `meta` (JSON: epoch, early-stopping state, validation metrics). Saves are asynchronous;
`wait()` before reading them back or exiting.

Reliability (docs/reliability.md): a finished step is sealed with the sha256 of every file
(`lstmrec_checksums.json` in the step folder); a restore verifies it and falls back to the newest
intact step, moving a broken one aside to `<workdir>/broken/` (never deleting it). Only damage is
"broken" (unreadable bytes, a failed checksum, a missing file): a step whose parameters have
other shapes than the model (the data gained an item, the model config changed) is intact, and
restoring it is one CheckpointError that moves nothing. Saving a step that is already on disk (a
run killed between the `best/` and `checkpoints/` saves, resumed to the same step) keeps the
saved one when it verifies (under exact resume it is the same state); a broken one is set aside
and saved again. `best/` keeps the two
latest improvements, so a broken best still leaves the one before it. `lock_workdir` keeps a
second process out of a workdir.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging as std_logging
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding

from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax import paths
from lstmrec_jax.errors import CheckpointError
from lstmrec_jax.model import compat
from lstmrec_jax.optim import TrainState

BEST_METRIC = "NDCG@10"
CHECKSUMS = "lstmrec_checksums.json"
BEST_KEEP = 2  # a broken best still leaves the improvement before it


def _step_dir(manager: ocp.CheckpointManager, step: int):
  return manager.directory / str(step)


def _plain_path(path) -> str:
  """A pytree path with every key as text: {"layers": {0: x}} and {"layers": {"0": x}} match."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _digests(step_dir) -> dict[str, str]:
  """sha256 of every file under a step folder but the checksum file, by relative path."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel.startswith(CHECKSUMS):  # the checksum file and its temporary
        continue
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # pylint: disable=cell-var-from-loop
          h.update(block)
      out[rel] = h.hexdigest()
  return out


def verify_step(step_dir) -> str | None:
  """None when a sealed step's files match their checksums, else what is wrong (unsealed: None)."""
  sums_path = os.path.join(step_dir, CHECKSUMS)
  if paths.is_uri(step_dir) or not os.path.exists(sums_path):
    return None  # saved before checksums existed, or killed before sealing: the restore decides
  try:
    expected = json.loads(open(sums_path).read())
  except (OSError, ValueError):
    return "unreadable checksum file"
  actual = _digests(step_dir)
  for rel, digest in expected.items():
    if rel not in actual:
      return f"missing file {rel}"
    if actual[rel] != digest:
      return f"checksum mismatch in {rel}"
  return None


def _finite(tree) -> bool:
  """Whether every floating leaf of `tree` is finite.

  Leaves in host memory (numpy, or CPU arrays of this process) are read in place in blocks;
  others take one device reduction and one host read. On CPU the jitted check would cost a
  compile (~0.2-0.3 s) at every run's first save for a pass of milliseconds.
  """
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return True
  if all(_in_host_memory(x) for x in leaves):
    return all(_host_finite(np.asarray(x)) for x in leaves)
  return bool(jax.device_get(_all_finite(leaves)))


def _in_host_memory(x) -> bool:
  if isinstance(x, np.ndarray):
    return True
  return (isinstance(x, jax.Array) and x.is_fully_addressable
          and all(d.platform == "cpu" for d in x.devices()))


def _host_finite(x: np.ndarray, block: int = 1 << 20) -> bool:
  """np.isfinite over `x` a block at a time (no temporary of x's size)."""
  flat = x.reshape(-1)
  return all(bool(np.isfinite(flat[i:i + block]).all()) for i in range(0, flat.size, block))


@jax.jit
def _all_finite(leaves) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def transfer_params(target: Any, source: Any) -> tuple[Any, list[str], list[str]]:
  """`target` with every leaf whose path and shape `source` shares taken from `source`.

  Returns (params, copied paths, kept paths): the pre-training -> fine-tuning step, where the
  models may differ in parts (a new head, another encoder's extra streams). Example: target
  {"a": zeros(2), "b": zeros(3)}, source {"a": ones(2), "b": ones(4)} -> a copied, b kept.
  """
  source_leaves = {jax.tree_util.keystr(path): leaf
                   for path, leaf in jax.tree_util.tree_leaves_with_path(source)}
  copied, kept = [], []

  def pick(path, leaf):
    key = jax.tree_util.keystr(path)
    other = source_leaves.get(key)
    if other is not None and tuple(other.shape) == tuple(leaf.shape):
      copied.append(key)
      return jnp.asarray(other, leaf.dtype)
    kept.append(key)
    return leaf

  return jax.tree_util.tree_map_with_path(pick, target), copied, kept


def params_finite(params) -> bool:
  """Whether every parameter is finite: checked before any save and after any restore."""
  return _finite(params)


def lock_workdir(workdir) -> Any:
  """Holds an exclusive lock on a local workdir for this process's lifetime; returns the handle.

  A second process gets a CheckpointError naming the holder's pid. The OS drops the lock when
  the holder dies (kill -9 included), so a stale lock file never blocks a rerun. Bucket paths
  (gs://) are not locked.
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  if paths.is_uri(workdir):
    return None
  path = os.path.join(str(workdir), "lock")
  f = open(path, "a+")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "?"
    f.close()
    raise CheckpointError(f"{workdir} is in use by process {holder} (another train.py on the "
                          "same --workdir); wait for it to finish or use another --workdir"
                          ) from None
  f.seek(0)
  f.truncate()
  f.write(str(os.getpid()))
  f.flush()
  return f


def check_writable(directory) -> None:
  """Raises a CheckpointError when `directory` cannot be created or written (before any work)."""
  if paths.is_uri(directory):
    return
  probe = os.path.join(str(directory), f".write_probe_{os.getpid()}")
  try:
    os.makedirs(str(directory), exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise CheckpointError(f"cannot write to {directory} ({e.strerror or e}); use a writable "
                          "--workdir") from None


def _layout(tree, legacy: bool):
  """The restore target in the step's own layout (see model/compat.py)."""
  return compat.to_legacy(tree) if legacy else tree


def _abstract(tree, mesh: Mesh | None):
  """ShapeDtypeStructs for a restore target on `mesh` (any device count).

  A leaf already placed on `mesh` keeps its sharding (the vocabulary-parallel item tables
  restore split over `model`); anything else is replicated.
  """
  repl = mesh_lib.replicated(mesh) if mesh is not None else None

  def one(x):
    sharding = getattr(x, "sharding", None)
    if not (mesh is not None and isinstance(sharding, NamedSharding) and sharding.mesh == mesh):
      sharding = repl
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(one, tree)


def _is_legacy(step_dir) -> bool:
  """Whether a step was saved with the parameter paths from before the encoder registry."""
  path = os.path.join(str(step_dir), "params", "_METADATA")
  try:
    with open(path) as f:
      return compat.MARKER in f.read()
  except OSError:
    return False


class _DropReadOnlyNotice(std_logging.Filter):
  """Orbax warns "Given directory is read only=..." for every read-only manager it builds: that
  is what evaluation, export and loading ask for, not a problem to report."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


@contextlib.contextmanager
def _quiet_read_only_notice():
  absl_logger = std_logging.getLogger("absl")  # Orbax logs through absl.logging
  notice = _DropReadOnlyNotice()
  absl_logger.addFilter(notice)
  try:
    yield
  finally:
    absl_logger.removeFilter(notice)


class Checkpointer:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 2, async_save: bool = True,
               read_only: bool = False):
    workdir = paths.workdir_path(workdir)  # gs://bucket/run reaches Orbax as a bucket path
    common = dict(enable_async_checkpointing=async_save, read_only=read_only,
                  create=not read_only)
    if read_only:  # what Orbax would force (with a warning each) on a read-only manager
      common.update(save_interval_steps=0)
    keep_at_most = lambda n: None if read_only else n
    # Both managers save the same step; with several processes Orbax's barriers are named by
    # step, so each manager needs its own prefix or the two saves collide and hang.
    prefixed = lambda name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
    with _quiet_read_only_notice():
      self.latest = ocp.CheckpointManager(
          workdir / "checkpoints", item_names=("params", "train", "meta"),
          options=ocp.CheckpointManagerOptions(max_to_keep=keep_at_most(keep), **common,
                                               multiprocessing_options=prefixed("latest")))
      self.best = ocp.CheckpointManager(
          workdir / "best", item_names=("params", "train", "meta"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=keep_at_most(BEST_KEEP), best_fn=lambda m: m[BEST_METRIC],
              best_mode="max", **common, multiprocessing_options=prefixed("best")))
    self.workdir, self.read_only = workdir, read_only
    self._saved: dict[str, set[int]] = {"latest": set(), "best": set()}
    self._broken: set[tuple[str, int]] = set()

  @staticmethod
  def _args(state: TrainState, meta: dict[str, Any]):
    train = {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
    return ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                              train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta))

  def _seal(self) -> None:
    """Waits for pending saves, then writes the checksums of every finished, unsealed step.

    Steps found unsealed when this process started are left alone (a previous process may have
    died while writing them): only steps this process saved are sealed.
    """
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    if jax.process_index() != 0 or paths.is_uri(self.workdir):
      return  # bucket workdirs (gs://) are not sealed: os.walk cannot read them
    for manager, steps in ((self.latest, self._saved["latest"]), (self.best, self._saved["best"])):
      for step in sorted(steps):
        step_dir = _step_dir(manager, step)
        if step not in manager.all_steps() or os.path.exists(os.path.join(step_dir, CHECKSUMS)):
          continue
        digests = json.dumps(_digests(step_dir), sort_keys=True)
        tmp = os.path.join(step_dir, CHECKSUMS + ".tmp")
        with open(tmp, "w") as f:
          f.write(digests)
        os.replace(tmp, os.path.join(step_dir, CHECKSUMS))  # atomic: sealed or not, never torn
      steps.clear()

  def _save(self, kind: str, state: TrainState, meta: dict[str, Any], **kwargs) -> None:
    manager = self.latest if kind == "latest" else self.best
    self._seal()
    step = int(jax.device_get(state.step))
    if step in manager.all_steps():
      # Saved before: by this run (an eval step that is also the stop step) or by a run killed
      # between the two saves of this step and resumed exactly to it. Same state: keep it, unless
      # it is damaged (then the resumed run would train past a best/ it can never restore).
      problem = verify_step(str(_step_dir(manager, step)))
      if problem is None:
        return
      self._set_aside(manager, step, problem)
    manager.save(step, args=self._args(state, meta), force=True, **kwargs)
    self._saved[kind].add(step)
    self._broken.discard(("best" if kind == "best" else "checkpoints", step))

  def save_latest(self, state: TrainState, meta: dict[str, Any]) -> None:
    """Saves the state for resuming (asynchronously)."""
    self._save("latest", state, meta)

  def save_best(self, state: TrainState, meta: dict[str, Any], val_metrics: dict[str, float]):
    """Saves an improved state as the best checkpoint (the two latest improvements are kept)."""
    self._save("best", state, meta, metrics={BEST_METRIC: float(val_metrics[BEST_METRIC])})

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def _set_aside(self, manager: ocp.CheckpointManager, step: int, problem: str) -> None:
    """Moves a broken step to <workdir>/broken/ (never deletes it) with one warning line."""
    name = "best" if manager is self.best else "checkpoints"
    src = str(_step_dir(manager, step))
    dst = os.path.join(str(self.workdir), "broken", f"{name}_{step}_{int(time.time())}")
    moved = ""
    if jax.process_index() == 0:
      try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.rename(src, dst)
        moved = f"; moved to {dst}"
      except OSError as e:
        moved = f"; left in place ({e.strerror})"
    logging.warning("checkpoint %s/%d is broken (%s)%s; falling back to the newest intact step",
                    name, step, problem, moved)
    self._broken.add((name, step))
    manager.reload()

  def _candidates(self, manager: ocp.CheckpointManager) -> list[int]:
    name = "best" if manager is self.best else "checkpoints"
    steps = [s for s in manager.all_steps() if (name, s) not in self._broken]
    if manager is self.best and manager.best_step() in steps:
      first = manager.best_step()
      return [first] + sorted((s for s in steps if s != first), reverse=True)
    return sorted(steps, reverse=True)

  def _restore_intact(self, manager: ocp.CheckpointManager, steps, make_args, check,
                      params_like=None):
    """The first of `steps` that verifies, restores and passes `check`; broken ones set aside.

    A step whose saved parameter shapes differ from `params_like` is not broken: a
    CheckpointError says so and nothing moves (every other step would differ the same way).
    """
    for step in steps:
      step_dir = _step_dir(manager, step)
      problem = verify_step(str(step_dir))
      if problem is None:
        legacy = _is_legacy(step_dir)
        if params_like is not None:
          self._check_shapes(manager, step, _layout(params_like, legacy))
        try:
          out = manager.restore(step, args=make_args(legacy))
          if legacy:  # read under the old names: rename back (same arrays)
            out = {k: compat.from_legacy(v) if k in ("params", "train") else v
                   for k, v in out.items()}
        except Exception as e:  # pylint: disable=broad-except
          # Truncated or garbled files surface as TensorStore / JSON / zarr errors of any type.
          problem = f"unreadable: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
      if problem is None:
        problem = check(out)
      if problem is None:
        return step, out
      self._set_aside(manager, step, problem)
    return None, None

  def _check_shapes(self, manager: ocp.CheckpointManager, step: int, params_like) -> None:
    """Raises a CheckpointError when the step's saved parameter shapes are not the model's.

    Reads the step's own metadata (shapes, no arrays); metadata that cannot be read is left to
    the restore, which sets a damaged step aside.
    """
    try:
      saved = ocp.StandardCheckpointHandler().metadata(_step_dir(manager, step) / "params")
      saved = {_plain_path(p): tuple(leaf.shape)
               for p, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
    except Exception:  # pylint: disable=broad-except
      return
    wanted = {_plain_path(p): tuple(x.shape)
              for p, x in jax.tree_util.tree_flatten_with_path(params_like)[0]}
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if not differ:
      return
    name = "best" if manager is self.best else "checkpoints"
    first = differ[0]
    raise CheckpointError(
        f"checkpoint {name}/{step} of {self.workdir} holds parameters of other shapes than this "
        f"model ({len(differ)} differ, e.g. {first}: saved {saved.get(first)}, model "
        f"{wanted.get(first)}): the data (e.g. its item count) or the model config changed since "
        "it was trained; nothing was moved. Use the run's own data and config, or another "
        "--workdir")

  def restore_train_state(self, like: TrainState, mesh: Mesh | None
                          ) -> tuple[TrainState, dict] | None:
    """Restores the newest intact checkpoint into the structure of `like` (None when none is)."""
    if self.latest.latest_step() is None:
      raise FileNotFoundError("no checkpoint to resume from")
    train_like = {"step": like.step, "opt_state": like.opt_state, "rng": like.rng}
    args = lambda legacy: ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(_layout(like.params, legacy), mesh)),
        train=ocp.args.StandardRestore(_abstract(_layout(train_like, legacy), mesh)),
        meta=ocp.args.JsonRestore())
    check = lambda out: None if params_finite(out["params"]) else "non-finite parameters"
    step, out = self._restore_intact(self.latest, self._candidates(self.latest), args, check,
                                     params_like=like.params)
    if out is None:
      return None
    train = out["train"]
    state = TrainState(step=train["step"], params=out["params"], opt_state=train["opt_state"],
                       rng=train["rng"])
    return state, dict(out["meta"])

  def restore_params(self, params_like, which: str | int, mesh: Mesh | None):
    """Restores only the parameters of the 'best', 'latest' or a given step; returns (params, meta, step).

    'best' and 'latest' fall back to the newest intact step when theirs is broken; a given step
    does not. Non-finite parameters are refused (a CheckpointError), never evaluated.
    """
    if which == "best":
      manager, steps = self.best, self._candidates(self.best)
    elif which == "latest":
      manager, steps = self.latest, self._candidates(self.latest)
    else:
      step = int(which)
      manager = self.latest if step in self.latest.all_steps() else self.best
      if step not in manager.all_steps():
        raise FileNotFoundError(
            f"no checkpoint at step {step}; have {sorted(set(self.latest.all_steps()) | set(self.best.all_steps()))}")
      steps = [step]
    if not steps:
      raise FileNotFoundError(f"no {which!r} checkpoint in {self.workdir}")
    args = lambda legacy: ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(_layout(params_like, legacy), mesh)),
        meta=ocp.args.JsonRestore())
    step, out = self._restore_intact(manager, steps, args, lambda out: None,
                                     params_like=params_like)
    if out is None:
      raise CheckpointError(f"every {which!r} checkpoint of {self.workdir} is broken (moved to "
                            f"{os.path.join(str(self.workdir), 'broken')}); try --checkpoint "
                            f"{'latest' if which == 'best' else 'best'}")
    if not params_finite(out["params"]):
      raise CheckpointError(f"checkpoint {which} (step {step}) of {self.workdir} has non-finite "
                            "parameters (NaN or inf): the run diverged; retrain with a lower "
                            "optim.learning_rate")
    return out["params"], dict(out["meta"]), step

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk, and seals them with checksums."""
    self._seal()

  def close(self) -> None:
    self._seal()
    self.latest.close()
    self.best.close()
