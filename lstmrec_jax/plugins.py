"""Plug-ins: modules that register encoders, item representations or losses, loaded by name.

A research variant lives in its own module (see docs/extending.md) whose import registers it.
`train.py --plugins my_encoders` (a module on the path) or `--plugins path/to/file.py` imports it
before the config is validated, and records it in the workdir (`plugins.json`), so evaluation,
serving and resuming load it again by themselves: `workdir.restore_run` calls `load_recorded`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence

from etils import epath

from lstmrec_jax.errors import PluginError

RECORD = "plugins.json"


def _import_file(path: str) -> None:
  # One module name per file path: importing the same file twice registers it once.
  name = "lstmrec_plugin_" + hashlib.sha1(path.encode()).hexdigest()[:12]
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


def load(specs: Sequence[str]) -> list[str]:
  """Imports each plug-in (a module name or a .py file); returns them as recorded (files absolute).

  Example: load(["my_encoders", "research/mean_pool.py"]) ->
  ["my_encoders", "/abs/research/mean_pool.py"].
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
        _import_file(path)
        loaded.append(path)
      else:
        importlib.import_module(spec)
        loaded.append(spec)
    except PluginError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise PluginError(f"plug-in {spec}: {type(e).__name__}: {e}") from None
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


def load_recorded(workdir: str | os.PathLike) -> list[str]:
  """Imports the plug-ins a workdir's training recorded; none when it has no plugins.json."""
  path = epath.Path(workdir) / RECORD
  if not path.exists():
    return []
  return load(json.loads(path.read_text()))
