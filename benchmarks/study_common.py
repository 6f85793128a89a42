"""What the study drivers (robustness.py, augment_sweep.py) share: loading a config file with
`group.key=value` overrides, and the seconds-long synthetic config their tests run (`--tiny`)."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


def parse_value(text: str):
  """'0.5' -> 0.5, 'true' -> True, 'fgsm' -> 'fgsm' (a Python literal when it parses)."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides) -> None:
  """Sets each 'group.key=value' (or 'seed=value') on a ConfigDict; an unknown key is an error."""
  for item in overrides or ():
    path, _, value = item.partition("=")
    node = config
    *parents, leaf = path.split(".")
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise KeyError(f"no config key {path!r}")
    node[leaf] = parse_value(value)


def load_config(path: str, overrides=()):
  """A config file's get_config() (configs/*.py), with `group.key=value` overrides."""
  spec = importlib.util.spec_from_file_location("study_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  apply_overrides(config, overrides)
  return config


def tiny_config(cache_dir: str):
  """configs/default.py shrunk to seconds (240 synthetic users, E = H = 16, 2 epochs), for the
  drivers' own end-to-end tests; the same shrink as tests/helpers.tiny_config."""
  from lstmrec_jax.configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.data.synthetic = {"num_users": 240, "num_items": 80, "seed": 3}
  c.data.cache_dir = cache_dir
  c.input.max_len = 16
  c.input.batch_size = 8
  c.input.eval_batch_size = 64
  c.input.backend = "numpy"
  c.model.embed_dim = 16
  c.model.hidden_size = 16
  c.optim.warmup_steps = 2
  c.optim.learning_rate = 1e-2
  c.train.num_epochs = 2
  c.train.log_every_steps = 5
  c.train.progress_bar = False
  c.train.num_devices = 1
  return c


def workdir_spec(workdir):
  """A workdir's saved config as a RunSpec with base.py's defaults for keys it predates."""
  from lstmrec_jax.cli import common  # pylint: disable=g-import-not-at-top
  return common.workdir_spec(workdir)
