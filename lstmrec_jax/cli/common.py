"""What every entry point shares: where the config files are, base defaults, one-line errors."""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

from lstmrec_jax.cli import recipes

# Before TensorFlow is imported anywhere: quiet C++ logs. The pipeline hides accelerators from TF.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def define_distributed_flags() -> None:
  """--distributed and where to find the other processes (flags, else environment variables)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool("distributed", False, "Several processes (hosts): call "
                    "jax.distributed.initialize() before anything touches a device.")
  flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of process 0 "
                      "(else $JAX_COORDINATOR_ADDRESS, else the cluster's own detection: TPU "
                      "pods, Slurm, Open MPI).")
  flags.DEFINE_integer("num_processes", None, "--distributed: how many processes (else "
                       "$JAX_NUM_PROCESSES, else detected).")
  flags.DEFINE_integer("process_id", None, "--distributed: this process, 0..num_processes-1 "
                       "(else $JAX_PROCESS_ID, else detected).")


def initialize_distributed() -> None:
  """jax.distributed.initialize() from the flags of `define_distributed_flags`, when --distributed.

  With none of the three given (no flag, no environment variable), JAX detects the cluster (TPU
  VMs of a pod, Slurm, Open MPI). On CPU the processes exchange gradients over gloo (JAX's
  default CPU collectives).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not f.distributed:
    return
  import jax  # pylint: disable=g-import-not-at-top

  def pick(value, env):
    return value if value is not None else (int(os.environ[env]) if env in os.environ else None)

  address = f.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  kwargs = {"coordinator_address": address,
            "num_processes": pick(f.num_processes, "JAX_NUM_PROCESSES"),
            "process_id": pick(f.process_id, "JAX_PROCESS_ID")}
  jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})


CONFIG_HELP = ("A recipe by name (beauty, games, auto, ...: listed below) or a config file; "
               "NAME:ARG / FILE:ARG passes an argument (beauty_content:cold).")


def define_config_flag(name: str, default: str, help_text: str) -> None:
  """config_flags.DEFINE_config_file(lock_config=True): a recipe by name, errors as one line.

  `--config beauty` (or `beauty_content:cold`) names a recipe shipped with the package; a path
  (`--config my_config.py`, `--config configs/beauty.py`) is still a file. The value is resolved
  in sys.argv before config_flags reads it; a path that is no file and no recipe's name ends the
  program in one line. config_flags applies `--config.a.b=v` overrides while the flag is
  defined (at import), so an unknown key raises three chained ml_collections tracebacks there;
  this names the flag instead.
  """
  import sys  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.cli import logs  # pylint: disable=g-import-not-at-top
  sys.argv[:] = recipes.resolve_config_argv(sys.argv, name)
  try:
    config_flags.DEFINE_config_file(name, default, help_text, lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise SystemExit(logs.config_override_error(sys.argv, e)) from None
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(logs.config_file_error(sys.argv, e)) from None


def pin_explicit_overrides(name: str = "config") -> list[str]:
  """Explicit values win over the config's `auto` rules: their keys leave its `auto` list.

  Explicit: a --config.group.key flag, or a value the config file sets that differs from
  configs/base.py's default (a file that keeps a key in `auto` but sets it means that value; a
  value equal to the default cannot be told apart and stays the data's). Logs which auto keys
  were overridden and the values that run; returns them.
  """
  import json  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS[name].value
  overrides = config_flags.get_override_values(flags.FLAGS[name])
  flat = run_lib.flatten(json.loads(config.to_json_best_effort()))
  defaults = base_defaults()
  in_file = {k: flat[k] for k in config.auto
             if k not in overrides and k in defaults and flat.get(k) != defaults[k]}
  pinned = run_lib.pin_explicit(config, {**overrides, **in_file})
  if pinned:
    said = [f"{k}={overrides[k]!r}" for k in pinned if k in overrides]
    said += [f"{k}={in_file[k]!r} (set in the config file)" for k in pinned if k in in_file]
    logging.info("explicit values win over the auto rules (lstmrec_jax/auto.py): %s; %s",
                 ", ".join(said), f"the data sets the other {len(config.auto)}" if config.auto
                 else "nothing is left to the data")
  return pinned


@functools.cache
def base_defaults() -> dict[str, Any]:
  """configs/base.py's values flattened ("group.key" -> value), for resuming older workdirs."""
  import json  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  path = recipes.configs_dir() / "base.py"
  if not path.is_file():
    return {}
  spec = importlib.util.spec_from_file_location("_lstmrec_base_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return run_lib.flatten(json.loads(module.get_base_config().to_json_best_effort()))


def user_folder(env: str, fallback: str) -> str:
  """$env, else ~/fallback (the XDG base directories: XDG_CACHE_HOME -> ~/.cache, ...)."""
  return os.environ.get(env) or os.path.join(os.path.expanduser("~"), fallback)


def define_compilation_cache_flag(why: str) -> None:
  """--compilation_cache: JAX's persistent compilation cache folder (`why`: what it saves)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("compilation_cache", None, "JAX's persistent compilation cache folder: "
                      f"{why}. Default: $JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME "
                      "(~/.cache)/lstmrec_jax/jax; '' turns it off.")


def use_compilation_cache() -> str | None:
  """Points JAX at --compilation_cache (call before the first compile); returns the folder.

  Every compile is kept: a cached program loads in milliseconds, and a program's cache key holds
  its shapes, the jax/jaxlib versions and the backend, so a changed config or install compiles
  afresh instead of reading a stale entry.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  value = flags.FLAGS.compilation_cache
  if value is None:
    value = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        user_folder("XDG_CACHE_HOME", ".cache"), "lstmrec_jax", "jax")
  cache = value
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return cache or None


def define_host_malloc_flag() -> None:
  """--host_malloc: how the C library's allocator treats the buffers XLA frees (`hostmem`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import hostmem  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("host_malloc", "reuse", hostmem.MODES, "reuse: freed host buffers stay with "
                    "the process for the next step (glibc mallopt; fewer page faults, a faster "
                    "CPU step); one_arena: reuse, and every thread allocates from one heap "
                    "(faster when a step's temporaries pass 64 MiB, e.g. the exact-softmax "
                    "recipes on CPU; slower for small steps); system: the C library's defaults. "
                    "Environment MALLOC_* settings win (lstmrec_jax/hostmem.py).")


def use_host_malloc() -> str:
  """Applies --host_malloc (call first in main, before jax starts its threads); logs one line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import hostmem  # pylint: disable=g-import-not-at-top
  line = hostmem.configure(flags.FLAGS.host_malloc)
  logging.info("%s", line)
  return line


def define_plugin_flag() -> None:
  """--plugins: modules or .py files that register encoders, items or losses (docs/extending.md)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list("plugins", [], "Modules (my_pkg.encoders) or .py files imported before the "
                    "config is validated, so model.encoder / item_mode / loss.kind can name what "
                    "they register; train.py records them in the workdir (plugins.json).")
  flags.DEFINE_bool("trust_plugins", False, "Import the plug-ins a workdir's plugins.json names "
                    "(they run code): only for a workdir you trust. Without it they must be "
                    "named with --plugins.")


def load_plugins(workdir: str | None = None, *, record: bool = False) -> None:
  """Imports --plugins, then the plug-ins recorded in `workdir` when trusted (or named);
  `record` adds --plugins there."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import plugins  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import paths  # pylint: disable=g-import-not-at-top
  loaded = plugins.load(flags.FLAGS.plugins)
  if workdir is not None:
    # A workdir saved before some config keys existed is read with their defaults (base.py).
    from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
    run_lib.set_older_workdir_defaults(base_defaults())
    plugins.load_recorded(paths.workdir_path(workdir), trust=flags.FLAGS.trust_plugins)
  if record and workdir is not None:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      plugins.record(paths.workdir_path(workdir), loaded)


def workdir_spec(workdir: str, data_path: str | None = None):
  """A workdir's saved config as a RunSpec; keys it predates take base.py's defaults."""
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  flat = {**base_defaults(), **run_lib.flatten(run_lib.read_workdir_config(workdir))}
  if data_path:
    flat["data.path"] = data_path
  return run_lib.spec_from_config(run_lib.unflatten(flat))

