"""Random search over a config space; each trial is an ordinary training run in its own workdir.

A space (see `configs/spaces/lstm.py`) maps config key paths to distributions:

  {"model.embed_dropout": ("uniform", 0.1, 0.6),        # float in [lo, hi]
   "optim.learning_rate": ("loguniform", 3e-4, 3e-3),   # float, log-uniform in [lo, hi], lo > 0
   "optim.warmup_steps": ("randint", 0, 500),           # int in [lo, hi], both included
   "model.hidden_size": ("choice", [64, 128, 256]),     # one of the options, equally likely
   "loss": ("choice", [{"kind": "chunked"},             # a dict option sets several keys of the
                       {"kind": "sampled",              # group at once; its values may be specs
                        "num_negatives": ("choice", [256, 1024])}])}

Sampled floats are rounded to 4 significant digits so that a trial can be retyped as
`--config.*` flags. Every value of trial k is drawn from its own generator seeded by
(search seed, k, key path): trial k's parameters depend only on the seed, k and the space, so
adding trials later, or a key, never changes the trials already run.

Selection reads validation metrics only. Each trial's `report.json` (written by the training
loop) also holds test metrics; this module never reads them, and the results table has none:
the winner's test numbers come from `eval.py --workdir <tune_dir>/trial_<k>`, once, after tuning.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import math
import os
import pathlib
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from lstmrec_jax import paths
from lstmrec_jax import run as run_lib
from lstmrec_jax.errors import ConfigError
from lstmrec_jax.errors import DivergenceError
from lstmrec_jax.train import loop

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
METRIC = "NDCG@10"  # the selection metric, on the validation split (as early stopping uses)
_SIGNIFICANT_DIGITS = 4


def load_space(path: str | os.PathLike) -> dict[str, Any]:
  """Calls `get_space()` of the Python file at `path` (as config files are loaded)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no search space file {path}")
  spec = importlib.util.spec_from_file_location(f"_tune_space_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_space"):
    raise ConfigError(f"{path} defines no get_space()")
  space = module.get_space()
  if not isinstance(space, Mapping) or not space:
    raise ConfigError(f"{path}: get_space() must return a non-empty dict of key path -> spec")
  return dict(space)


def _is_spec(x: Any) -> bool:
  return isinstance(x, tuple) and bool(x) and isinstance(x[0], str) and x[0] in DISTRIBUTIONS


def _check_spec(path: str, spec: Any) -> None:
  """Raises ConfigError naming `path` when `spec` is not a well-formed distribution."""
  if not _is_spec(spec):
    raise ConfigError(f"space key {path!r}: expected a tuple (kind, ...) with kind one of "
                    f"{DISTRIBUTIONS}, got {spec!r}")
  kind, args = spec[0], spec[1:]
  if kind == "choice":
    if len(args) != 1 or not isinstance(args[0], (list, tuple)) or not args[0]:
      raise ConfigError(f"space key {path!r}: ('choice', [options]) needs a non-empty list")
    return
  if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                               for a in args):
    raise ConfigError(f"space key {path!r}: ({kind!r}, lo, hi) needs two numbers, got {args!r}")
  lo, hi = args
  if not lo <= hi:
    raise ConfigError(f"space key {path!r}: lo={lo} > hi={hi}")
  if kind == "loguniform" and lo <= 0:
    raise ConfigError(f"space key {path!r}: loguniform needs lo > 0, got {lo}")
  if kind == "randint" and not (isinstance(lo, int) and isinstance(hi, int)):
    raise ConfigError(f"space key {path!r}: randint needs integer bounds, got {args!r}")


def _values(path: str, spec: Any) -> Iterator[tuple[str, Any]]:
  """Every (leaf key path, representative value) that `spec` at `path` may set.

  For ("uniform", 0.1, 0.5) at "model.embed_dropout": ("model.embed_dropout", 0.1) and
  ("model.embed_dropout", 0.5); a dict option of a choice yields its keys under `path`.
  """
  _check_spec(path, spec)
  kind, args = spec[0], spec[1:]
  if kind != "choice":
    cast = int if kind == "randint" else float  # the type the draws will have
    yield from ((path, cast(a)) for a in args)
    return
  for option in args[0]:
    if not isinstance(option, Mapping):
      yield path, option
      continue
    for sub, value in option.items():
      sub_path = f"{path}.{sub}"
      if _is_spec(value):
        yield from _values(sub_path, value)
      else:
        yield sub_path, value


def _parent(config: ml_collections.ConfigDict, path: str) -> tuple[ml_collections.ConfigDict, str]:
  """The group holding the leaf `path` ('a.b.c' -> (config.a.b, 'c')); ConfigError if unknown."""
  parts = path.split(".")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"space key {path!r}: the config has no key {'.'.join(parts[:i + 1])!r}")
    if i < len(parts) - 1:
      node = node[part]
  if isinstance(node[parts[-1]], ml_collections.ConfigDict):
    raise ConfigError(f"space key {path!r} names a config group; name its keys (e.g. "
                    f"{path}.{next(iter(node[parts[-1]].keys()), 'key')}) or give a choice "
                    "of dicts")
  return node, parts[-1]


def _set(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  parent, name = _parent(config, path)
  try:
    setattr(parent, name, value)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"space key {path!r}: cannot set {value!r}: {e}") from None


def validate_space(space: Mapping[str, Any], base_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the key for malformed specs, unknown keys and mistyped values.

  Every option of every choice is checked, not only those a given number of trials samples, so
  a typo in a rarely drawn branch fails at start-up rather than hours into a search.
  """
  scratch = copy.deepcopy(base_config)
  owner = {}  # leaf key path -> the space key that sets it
  for key, spec in space.items():
    for leaf, value in _values(key, spec):
      if owner.setdefault(leaf, key) != key:
        raise ConfigError(f"space keys {owner[leaf]!r} and {key!r} both set {leaf!r}")
      _set(scratch, leaf, value)


def _round(x: float) -> float:
  """4 significant digits: 0.000123456 -> 0.0001235, 0.3456789 -> 0.3457."""
  return float(f"{x:.{_SIGNIFICANT_DIGITS}g}")


def _draw(out: dict[str, Any], path: str, spec: tuple, search_seed: int, trial: int) -> None:
  """Samples `spec` at `path` into `out` (leaf path -> value), recursing into dict options."""
  # One generator per (seed, trial, key): a key's value never depends on the other keys.
  rng = np.random.default_rng([search_seed, trial, zlib.crc32(path.encode())])
  kind, args = spec[0], spec[1:]
  if kind == "uniform":
    lo, hi = args
    out[path] = min(max(_round(rng.uniform(lo, hi)), lo), hi)  # rounding may not leave [lo, hi]
  elif kind == "loguniform":
    lo, hi = args
    out[path] = min(max(_round(math.exp(rng.uniform(math.log(lo), math.log(hi)))), lo), hi)
  elif kind == "randint":
    out[path] = int(rng.integers(args[0], args[1] + 1))
  else:
    option = args[0][int(rng.integers(len(args[0])))]
    if not isinstance(option, Mapping):
      out[path] = option
      return
    for sub, value in option.items():
      if _is_spec(value):
        _draw(out, f"{path}.{sub}", value, search_seed, trial)
      else:
        out[f"{path}.{sub}"] = value


def sample_params(space: Mapping[str, Any], search_seed: int, trial: int) -> dict[str, Any]:
  """Trial `trial`'s values: leaf config key path -> value, in the space's order.

  Args:
    space: key path -> spec, as returned by `load_space` (validate it with `validate_space`).
    search_seed: the search's seed, >= 0.
    trial: the trial index, >= 0.

  Returns:
    A dict of plain Python values; the same (space, search_seed, trial) always gives the same.
  """
  if search_seed < 0 or trial < 0:
    raise ConfigError(f"search_seed ({search_seed}) and trial ({trial}) must be >= 0")
  out = {}
  for key, spec in space.items():
    _check_spec(key, spec)
    _draw(out, key, spec, search_seed, trial)
  return out


def trial_config(base_config: ml_collections.ConfigDict,
                 params: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `base_config` with `params` (leaf key path -> value) set.

  A sampled key the config leaves to the data (its `auto` list) is taken out of that list: the
  trial runs the sampled value, which config.json and the results table show.
  """
  config = copy.deepcopy(base_config)
  for path, value in params.items():
    _set(config, path, value)
  run_lib.pin_explicit(config, params)
  return config


def _check_trial_config(config: ml_collections.ConfigDict, trial: int) -> None:
  """Validates the whole trial config (the run spec) so bad values fail before any training."""
  try:
    run_lib.spec_from_config(config)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"trial {trial}: {e}") from None


def _check_same_trial(workdir: epath.Path, config: ml_collections.ConfigDict, trial: int) -> None:
  """Refuses a tune_dir whose trial_<k> was trained with another config (search mixed up)."""
  path = workdir / "config.json"
  if not path.exists():
    return
  saved = run_lib.flatten(json.loads(path.read_text()))
  current = run_lib.flatten(json.loads(config.to_json_best_effort()))
  changed = sorted(k for k in saved.keys() | current.keys()
                   if saved.get(k) != current.get(k) and k not in run_lib.RESUMABLE_KEYS)
  if changed:
    raise ConfigError(f"{workdir} holds trial {trial} of another search (it differs in "
                    f"{', '.join(changed)}); rerun with the same --config, --space and "
                    "--search_seed, or use another --tune_dir")


def _valid_summary(report: Mapping[str, Any]) -> dict[str, Any]:
  """The validation numbers of a trial's report; the only part of a report that tuning reads."""
  valid = report["splits"]["valid"]["model"]["overall"]
  return {"valid_NDCG@10": float(valid["NDCG@10"]), "valid_HR@10": float(valid["HR@10"]),
          "best_step": report.get("step"), "epochs": report.get("epochs_trained")}


def _read_json(path: epath.Path) -> dict[str, Any] | None:
  return json.loads(path.read_text()) if path.exists() else None


def _write_text(path: epath.Path, text: str) -> None:
  # Replace, not overwrite: a kill mid-write must not leave a half table or a half trial.json.
  if jax.process_index() == 0:
    paths.replace_text(path, text)


def _write_json(path: epath.Path, obj: Any) -> None:
  _write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def trial_dir(tune_dir: str | os.PathLike, trial: int) -> epath.Path:
  """trial_<k> of a tune dir, e.g. trial_dir("gs://b/t", 3) -> gs://b/t/trial_3 (scheme kept)."""
  return epath.Path(tune_dir) / f"trial_{trial}"


def collect_results(tune_dir: str | os.PathLike,
                    trials: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per started trial, best validation NDCG@10 first; unfinished trials last.

  Args:
    tune_dir: the search's directory.
    trials: trial index -> its sampled params.

  Returns:
    Rows with trial, status (done | started | interrupted | diverged), params, wall_s and, for
    finished trials, valid_NDCG@10, valid_HR@10, best_step and epochs. No test metrics.
  """
  rows = []
  for k, params in trials.items():
    workdir = trial_dir(tune_dir, k)
    info = _read_json(workdir / "trial.json")
    report = _read_json(workdir / "report.json")
    if info is None and report is None:
      continue  # not started yet
    info = info or {}
    row = {"trial": k, "status": info.get("status", "started"), "params": dict(params),
           "wall_s": info.get("wall_s"), "workdir": str(workdir)}
    if report is not None and "splits" in report:
      row.update(_valid_summary(report), status="done")
    elif "error" in info:
      row["error"] = info["error"]
    rows.append(row)
  rows.sort(key=lambda r: (r["status"] != "done", -r.get("valid_NDCG@10", 0.0),
                           -r.get("valid_HR@10", 0.0), r["trial"]))
  return rows


def _fmt(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def _fmt_metric(value: float | None) -> str:
  return "" if value is None else f"{value:.4f}"


def _fmt_wall(seconds: float | None) -> str:
  if seconds is None:
    return ""
  return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _override_flags(params: Mapping[str, Any]) -> str:
  """--config.* flags that reproduce a trial on top of the same base config and overrides."""
  return " ".join(f"--config.{k}={json.dumps(v) if isinstance(v, str) else v}"
                  for k, v in params.items())


def format_results(rows: list[dict[str, Any]], *, tune_dir: str | os.PathLike, num_trials: int,
                   search_seed: int) -> str:
  """The Markdown results table of `collect_results` rows, with the winner and how to test it."""
  done = [r for r in rows if r["status"] == "done"]
  counts = {}
  for r in rows:
    counts[r["status"]] = counts.get(r["status"], 0) + 1
  lines = [f"# Tuning results: {tune_dir}", "",
           f"Random search, search seed {search_seed}, {num_trials} trials: " +
           (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none started") +
           f". Sorted by validation {METRIC} of each trial's best checkpoint (the metric early "
           "stopping uses). Test metrics are deliberately absent: they played no part in the "
           "choice, and should be read once, for the winner only.", ""]
  if done:
    best = done[0]
    lines += [f"Best: trial {best['trial']} (valid {METRIC} {best['valid_NDCG@10']:.4f}, "
              f"HR@10 {best['valid_HR@10']:.4f}).", "",
              f"- its test metrics: `python eval.py --workdir {best['workdir']}`",
              f"- retrain it: `train.py` with the same --config and overrides plus "
              f"`{_override_flags(best['params'])}`",
              ""]
  keys = []
  for r in rows:
    keys += [k for k in r["params"] if k not in keys]
  header = ["rank", "trial", "status", f"valid {METRIC}", "valid HR@10", "best step", "epochs",
            "wall"] + keys
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for rank, r in enumerate(rows, 1):
    cells = [str(rank) if r["status"] == "done" else "", str(r["trial"]), r["status"],
             _fmt_metric(r.get("valid_NDCG@10")), _fmt_metric(r.get("valid_HR@10")),
             _fmt(r.get("best_step")),
             _fmt(r.get("epochs")), _fmt_wall(r.get("wall_s"))]
    cells += [_fmt(r["params"].get(k)) for k in keys]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_results(tune_dir: str | os.PathLike, rows: list[dict[str, Any]], *, num_trials: int,
                  search_seed: int) -> None:
  """`results.jsonl` (one row per trial, sorted) and `results.md` in `tune_dir`."""
  tune_dir = epath.Path(tune_dir)  # gs://bucket/tune stays a bucket path
  _write_text(tune_dir / "results.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n"
                                                   for r in rows))
  _write_text(tune_dir / "results.md", format_results(rows, tune_dir=tune_dir,
                                                       num_trials=num_trials,
                                                       search_seed=search_seed))


def tune(base_config: ml_collections.ConfigDict, space: Mapping[str, Any],
         tune_dir: str | os.PathLike, *, num_trials: int, search_seed: int = 0,
         defaults: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
  """Runs (or resumes) a random search; returns the results rows, best validation NDCG@10 first.

  Trial k trains `base_config` with `sample_params(space, search_seed, k)` set, by
  `loop.train_and_evaluate` in `tune_dir/trial_<k>` (so each trial early-stops on validation
  NDCG@10 within `train.num_epochs`). Rerunning the same call skips finished trials (those with a
  report.json) and resumes an interrupted one from its checkpoint; a larger `num_trials` adds
  trials without changing the earlier ones. A trial whose loss diverges is recorded as diverged
  and not retried (delete its directory to retry it). `results.md` and `results.jsonl` are
  rewritten after every trial.

  Args:
    base_config: the config every trial starts from (with any command-line overrides).
    space: config key path -> distribution spec (see the module docstring).
    tune_dir: where the trials and the results go.
    num_trials: trials 0 .. num_trials - 1.
    search_seed: seeds the sampling (not training: `config.seed` stays the base config's).
    defaults: flattened base defaults, for resuming trials saved before a key existed.

  Returns:
    `collect_results` rows (validation metrics only).

  Raises:
    ConfigError: a malformed space, a key the config does not have, a value of the wrong type, or a
      tune_dir that holds trials of a different search.
  """
  tune_dir = epath.Path(tune_dir)  # gs://bucket/tune stays a bucket path
  if num_trials < 1:
    raise ConfigError(f"num_trials={num_trials} must be >= 1")
  validate_space(space, base_config)
  trials = {k: sample_params(space, search_seed, k) for k in range(num_trials)}
  configs = {k: trial_config(base_config, p) for k, p in trials.items()}
  won = sorted(set(base_config.get("auto", ())) & {key for p in trials.values() for key in p})
  if won:
    logging.info("sampled values win over the auto rules for %s: each trial runs (and its "
                 "config.json shows) the values it sampled", ", ".join(won))
  for k, config in configs.items():
    _check_trial_config(config, k)
    _check_same_trial(trial_dir(tune_dir, k), config, k)
  _write_json(tune_dir / "tune.json", {"search_seed": search_seed, "num_trials": num_trials,
                                       "space": repr(dict(space))})

  def publish() -> list[dict[str, Any]]:
    # Only process 0 writes trial.json and report.json: with several processes, every one waits
    # here until those are written, so none reads the table before its files exist.
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("tune publish")
    rows = collect_results(tune_dir, trials)
    write_results(tune_dir, rows, num_trials=num_trials, search_seed=search_seed)
    return rows

  for k, params in trials.items():
    workdir = trial_dir(tune_dir, k)
    info = _read_json(workdir / "trial.json") or {}
    if (workdir / "report.json").exists():
      logging.info("trial_%d (%d of %d): finished earlier, skipped", k, k + 1, num_trials)
      continue
    if info.get("status") == "diverged":
      logging.info("trial_%d (%d of %d): diverged earlier, skipped (delete %s to retry)", k,
                   k + 1, num_trials, workdir)
      continue
    resumed = (workdir / "checkpoints").is_dir()
    logging.info("trial_%d (%d of %d) in %s: %s%s", k, k + 1, num_trials, workdir,
                 _override_flags(params), " (resuming)" if resumed else "")
    info = {"trial": k, "search_seed": search_seed, "params": params, "status": "started"}
    _write_json(workdir / "trial.json", info)
    start = time.perf_counter()
    try:
      report = loop.train_and_evaluate(configs[k], workdir, defaults=defaults)
    except DivergenceError as e:
      # A diverging learning rate is an outcome of the search, not a reason to stop it.
      logging.warning("trial_%d diverged: %s", k, e)
      info.update(status="diverged", error=str(e), wall_s=time.perf_counter() - start)
      _write_json(workdir / "trial.json", info)
      publish()
      continue
    # Only the time of the run that finished the trial: a killed run's time is not recorded.
    info.update(wall_s=time.perf_counter() - start, resumed=resumed)
    if "splits" not in report:  # train.stop_after_steps: stopped as if killed; so do we
      info["status"] = "interrupted"
      _write_json(workdir / "trial.json", info)
      rows = publish()
      logging.info("trial_%d stopped at step %s (train.stop_after_steps); rerun to resume",
                   k, report.get("stopped_at_step"))
      return rows
    info["status"] = "done"
    _write_json(workdir / "trial.json", info)
    rows = publish()
    row = next(r for r in rows if r["trial"] == k)
    logging.info("trial_%d: valid %s %.4f; best so far: trial_%d (%.4f)", k, METRIC,
                 row["valid_NDCG@10"], rows[0]["trial"], rows[0]["valid_NDCG@10"])
  return publish()
