"""The recipes shipped with the package (`lstmrec_jax.configs`, the repository's configs/), found
by name or path: what `--config beauty` and `--space lstm` resolve to."""

from __future__ import annotations

import os
import pathlib
import re


def configs_dir() -> pathlib.Path:
  """The recipes shipped with the package: `lstmrec_jax.configs` (the repository's configs/).

  Never ./configs of the working directory: an entry point runs no code from where it is started.
  """
  return pathlib.Path(__file__).resolve().parents[1] / "configs"


def default_config_path(name: str = "default.py") -> str:
  """The path of a bundled config file, for a flag's default."""
  return str(configs_dir() / name)


def recipes(folder: str = "") -> dict[str, pathlib.Path]:
  """The bundled recipes by name ("beauty" -> .../configs/beauty.py); `folder`: e.g. "spaces".

  A config module without `get_config` (a part the recipes share, e.g. xd_recipe.py) is not a
  recipe; a folder's files (spaces: get_space) are all listed.
  """
  root = configs_dir() / folder
  return {p.stem: p for p in sorted(root.glob("*.py"))
          if p.stem not in ("__init__", "base")
          and (folder or "def get_config(" in p.read_text())}


def takes_argument(path: pathlib.Path) -> bool:
  """Whether a recipe's get_config takes an argument (NAME:ARG), e.g. beauty_content:cold,
  food_kitchen:merged."""
  return re.search(r"def get_config\(\s*\w", path.read_text()) is not None


def resolve_config_file(value: str, flag: str = "--config", folder: str = "") -> str:
  """A --config value as config_flags loads it: a recipe's name becomes its bundled file.

  "beauty" -> ".../lstmrec_jax/configs/beauty.py"; "ml100k_content:cold" -> ".../ml100k_content.py
  :cold"; an existing file (with its ":arg") is returned unchanged. Ends the program in one line
  when `value` is neither.
  """
  path, sep, arg = value.partition(":")
  if os.path.isfile(path) or os.path.isfile(value):
    return value
  known = recipes(folder)
  name = path[:-3] if path.endswith(".py") and os.sep not in path else path
  if name in known:
    return str(known[name]) + sep + arg
  stem = pathlib.Path(path).stem
  if stem in known:  # e.g. configs/beauty.py run outside the repository
    raise SystemExit(f"error: {flag} {value}: no such file in {os.getcwd()}; the recipe "
                     f"shipped with the package is {flag} {stem}{sep}{arg}")
  raise SystemExit(f"error: {flag} {value}: no such file in {os.getcwd()} and no recipe of "
                   f"that name; recipes: {', '.join(known)}")


def resolve_config_argv(argv: list[str], name: str = "config") -> list[str]:
  """`argv` with the value of --<name> (either form: --config=X, --config X) resolved."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg in (f"--{name}", f"-{name}") and i + 1 < len(out):
      out[i + 1] = resolve_config_file(out[i + 1], f"--{name}")
    elif arg.startswith((f"--{name}=", f"-{name}=")):
      flag, value = arg.split("=", 1)
      out[i] = f"{flag}={resolve_config_file(value, flag)}"
  return out
