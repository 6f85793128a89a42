"""Plug-ins: modules that register encoders, item representations or losses, loaded by name.

A research variant lives in its own module (see docs/extending.md) whose import registers it.
`train.py --plugins my_encoders` (a module on the path) or `--plugins path/to/file.py` imports it
before the config is validated, and records it in the workdir (`plugins.json`).

The trust boundary: importing a plug-in runs its code, so a workdir's record is only a request.
Loading a workdir (eval.py, export.py, serve.py --workdir, `Recommender.load`) imports what its
plugins.json names only when asked (`--trust_plugins`, `trust_plugins=True`) or when the same
plug-ins were named on the command line (`--plugins`); otherwise it stops with one line naming
them. Every plug-in imported is logged. Bundles never hold code: loading one imports nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence

from etils import epath

from lstmrec_jax.errors import PluginError

RECORD = "plugins.json"


def _module_name(path: str) -> str:
  # One module name per file path: importing the same file twice registers it once.
  return "lstmrec_plugin_" + hashlib.sha1(path.encode()).hexdigest()[:12]


def _import_file(path: str) -> None:
  name = _module_name(path)
  if name in sys.modules:
    return
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except Exception:
    del sys.modules[name]
    raise


def imported(spec: str) -> bool:
  """Whether a plug-in (module name or .py file, as recorded) is imported in this process."""
  if spec.endswith(".py"):
    return _module_name(os.path.abspath(spec)) in sys.modules
  return spec in sys.modules


def load(specs: Sequence[str], *, why: str = "--plugins") -> list[str]:
  """Imports each plug-in (a module name or a .py file); returns them as recorded (files absolute).

  Example: load(["my_encoders", "research/mean_pool.py"]) ->
  ["my_encoders", "/abs/research/mean_pool.py"]. Each import is logged with `why`.
  """
  loaded = []
  for spec in specs:
    spec = spec.strip()
    if not spec:
      continue
    try:
      if spec.endswith(".py"):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
          raise PluginError(f"plug-in {spec}: file not found")
        fresh = not imported(path)
        _import_file(path)
        loaded.append(path)
      else:
        fresh = spec not in sys.modules
        importlib.import_module(spec)
        loaded.append(spec)
    except PluginError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise PluginError(f"plug-in {spec}: {type(e).__name__}: {e}") from None
    if fresh:
      logging.info("plug-in imported: %s (%s)", loaded[-1], why)
  return loaded


def record(workdir: str | os.PathLike, loaded: Sequence[str]) -> None:
  """Adds `loaded` to the workdir's plugins.json (created when missing)."""
  if not loaded:
    return
  path = epath.Path(workdir) / RECORD
  known = json.loads(path.read_text()) if path.exists() else []
  merged = known + [p for p in loaded if p not in known]
  if merged != known:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2))


def recorded(workdir: str | os.PathLike) -> list[str]:
  """The plug-ins a workdir's training recorded (plugins.json); [] without one."""
  path = epath.Path(workdir) / RECORD
  if not path.exists():
    return []
  try:
    specs = json.loads(path.read_text())
  except ValueError as e:
    raise PluginError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
    raise PluginError(f"{path}: expected a list of module names or .py files")
  return specs


def load_recorded(workdir: str | os.PathLike, *, trust: bool = False) -> list[str]:
  """Imports the plug-ins a workdir recorded, when trusted; those already imported pass.

  Raises:
    PluginError: the workdir names plug-ins not imported yet and `trust` is False (nothing runs).
  """
  specs = recorded(workdir)
  missing = [s for s in specs if not imported(s)]
  if missing and not trust:
    raise PluginError(
        f"{epath.Path(workdir) / RECORD} asks to import {', '.join(missing)}: a plug-in runs "
        "code, so a workdir's record is not loaded by itself. If you trust this workdir pass "
        "--trust_plugins (Python: trust_plugins=True), or name them yourself with --plugins")
  return load(specs, why=f"recorded in {epath.Path(workdir) / RECORD}, trusted") if specs else []
