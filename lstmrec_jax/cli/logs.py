"""Log set-up of the entry points: our INFO lines, only warnings from the libraries."""

from __future__ import annotations

import errno
import logging
import pathlib
import re
import sys
from collections.abc import Callable

from absl import logging as absl_logging

from lstmrec_jax.cli import recipes
from lstmrec_jax.errors import LstmrecError

_OURS = ("lstmrec_jax", "train.py", "eval.py", "tune.py", "cold_start.py", "serve.py",
         "export.py")


class _OnlyOursBelowWarning(logging.Filter):
  """Orbax and JAX log every checkpoint step at INFO; keep their warnings, drop the chatter."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or any(s in record.pathname for s in _OURS)


def setup() -> None:
  """INFO for lstmrec_jax and the entry points, WARNING and above for everything else."""
  absl_logging.set_verbosity(absl_logging.INFO)
  handler = absl_logging.get_absl_handler()
  handler.addFilter(_OnlyOursBelowWarning())


# Errors that are the user's to fix (`errors.LstmrecError`: a config that cannot run, bad data,
# an unusable checkpoint or bundle, a diverged run, a plug-in that does not import) and a missing
# file. Each ends the program in one line.
_USER_ERRORS = (LstmrecError, FileNotFoundError)


# OS errors a user fixes (a full disk, a read-only or forbidden folder): one line, not a traceback.
_USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _os_error_line(e: OSError) -> str:
  where = f" ({e.filename})" if e.filename else ""
  return f"error: {e.strerror or e}{where}"


def _storage_full_line(e: ValueError) -> str | None:
  """One line for a checkpoint write that ran out of space, else None.

  Orbax's tensorstore writes report a full disk or quota as a ValueError, not an OSError:
  'RESOURCE_EXHAUSTED: Error writing "<array>" in OCDBT database at local file "<path>": Failed
  writing: ...'. The saves already finished are intact (a save is sealed only when complete).
  """
  text = _message(e)
  if "RESOURCE_EXHAUSTED" not in text or "writing" not in text.lower():
    return None
  where = re.search(r'at local file "([^"]+)"', text)
  path = where.group(1) if where else "the workdir"
  return (f"error: out of disk space (or quota) writing a checkpoint to {path}; free space and "
          "rerun the same command (train.py resumes from its last complete checkpoint)")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad --config or --config.* override as one line.

  config_flags parses `--config.train.nosuch=3` into chained ml_collections tracebacks, and a
  config file that fails to load into its traceback; the message names the flag and the key the
  config lacks, or the file and the problem.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = _message(e)
    if "Traceback (most recent call last)" in text:  # config_flags: the config file raised
      last = [line for line in text.splitlines() if line.strip()][-1].strip()
      raise SystemExit(_config_file_line(argv, last)) from None
    raise SystemExit(f"error: {_first_line(e)}") from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise SystemExit(config_override_error(argv, e)) from None
  except (ImportError, SyntaxError, NameError) as e:  # the config file's own code
    raise SystemExit(config_file_error(argv, e)) from None


_OVERRIDE = re.compile(r"^-{1,2}(?:no)?config\.")


def config_override_error(argv: list[str], e: BaseException) -> str:
  """One line for a --config.* override that config_flags could not apply (names the flag).

  An unknown key is named by ml_collections with the first path part the config lacks (e.g.
  'colums' of --config.data.colums.user=x): the flag is the override whose path has that part.
  """
  overrides = [a for a in argv[1:] if _OVERRIDE.match(a)]
  if not overrides:
    return config_file_error(argv, e)
  unknown = _unknown_key(e) if isinstance(e, (AttributeError, KeyError)) else None
  if unknown is not None:
    for arg in reversed(overrides):  # config_flags applies them in order; the last one names it
      parts = _override_path(arg).split(".")
      if unknown in parts:
        path = ".".join(parts[:parts.index(unknown) + 1])
        hint = _suggestion(e)
        hint = f" (did you mean {'.'.join(parts[:parts.index(unknown)] + [hint])}?)" if hint else ""
        return (f"error: {arg.split('=')[0]}: unknown config key {path}{hint}; "
                "configs/base.py lists every key")
  bad = [a for a in overrides if _override_path(a) in str(e)] or overrides[-1:]
  return f"error: {bad[0].split('=')[0]}: {_first_line(e)} (configs/base.py lists every key)"


def config_file_error(argv: list[str], e: BaseException) -> str:
  """One line for a config file that did not load (a syntax error, a failed import, ...)."""
  if isinstance(e, SyntaxError):
    where = _config_arg(argv) or "the default config"
    return f"error: --config {where}: {e.filename}:{e.lineno}: {e.msg}"
  return _config_file_line(argv, f"{type(e).__name__}: {_first_line(e)}")


def _config_file_line(argv: list[str], problem: str) -> str:
  """'error: --config <file>: <problem>', with what to do for the two usual mistakes."""
  hint = ""
  if "No module named 'configs" in problem:
    hint = ("; a config file imports the recipes as `from lstmrec_jax.configs import base` "
            "(README, Configuration)")
  elif "get_config() takes 0 positional arguments" in problem:
    takes = [name for name, path in recipes.recipes().items() if recipes.takes_argument(path)]
    hint = f"; this recipe takes no ':' argument (the recipes that take one: {', '.join(takes)})"
  return f"error: --config {_config_arg(argv) or 'the default config'}: {problem}{hint}"


def _config_arg(argv: list[str]) -> str | None:
  """The value given to --config on the command line, if any."""
  for i, arg in enumerate(argv[1:], 1):
    if re.match(r"^-{1,2}config=", arg):
      return arg.split("=", 1)[1]
    if re.match(r"^-{1,2}config$", arg) and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _override_path(arg: str) -> str:
  """'data.columns.user' of --config.data.columns.user=v (and of --noconfig.a.b)."""
  return _OVERRIDE.sub("", arg.split("=")[0])


def _unknown_key(e: BaseException) -> str | None:
  """The key ml_collections could not find: the first quoted name of the message."""
  found = re.search(r"""['"]([^'"]+)['"]""", _message(e).strip().splitlines()[0])
  return found.group(1) if found else None


def _suggestion(e: BaseException) -> str | None:
  found = re.search(r'Did you mean "([^"]+)"', _message(e))
  return found.group(1) if found else None


_HELP = ("-h", "-help", "--help", "-?", "--helpshort", "-helpshort")


def wants_help(argv: list[str]) -> bool:
  """--help (or -h, --helpshort) before any `--` separator."""
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  return any(a in _HELP for a in args)


def help_text(module_name: str, borrowed: tuple[str, ...] = ()) -> str:
  """The entry point's help: its docstring, its own flags, and how the config is set.

  Own flags: those `module_name` defines, those it defines through `cli/common.py` (--config,
  --distributed, --plugins, ...), and `borrowed` ones another entry point defines (cold_start.py
  reads eval.py's --checkpoint). absl's and Orbax's flags are left to --helpfull.
  """
  import textwrap  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  by_module = flags.FLAGS.flags_by_module_dict()
  own = [*by_module.get(module_name, []), *by_module.get("lstmrec_jax.cli.common", [])]
  own += [flags.FLAGS[n] for n in borrowed if n in flags.FLAGS and flags.FLAGS[n] not in own]
  own.sort(key=lambda f: f.name != "config")  # the config first, then in definition order
  doc = (sys.modules[module_name].__doc__ or "").strip()
  lines = [doc, "", "Flags:"]
  for flag in own:
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    default = flag.default_as_str if flag.default is not None else "none"
    if flag.name == "config" and str(flag.default).startswith(str(recipes.configs_dir())):
      default = pathlib.Path(flag.default).stem  # a recipe's name, not a path
    lines.append(f"  {name} (default: {default})")
    lines += textwrap.wrap(flag.help, 92, initial_indent="      ", subsequent_indent="      ")
  if "config" in {f.name for f in own}:
    lines += ["", *config_help()]
  lines += ["", "--helpfull lists every flag, absl's and the libraries' included."]
  return "\n".join(lines)


def config_help() -> list[str]:
  """How a config is chosen and overridden, its groups, and the recipes shipped by name."""
  import ast  # pylint: disable=g-import-not-at-top
  import textwrap  # pylint: disable=g-import-not-at-top
  base = recipes.configs_dir() / "base.py"
  groups, seen = [], set()
  for node in ast.walk(ast.parse(base.read_text())):  # c.<group>... assignments, no import
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
        node.value.id == "c") and node.attr not in seen:
      seen.add(node.attr)
      groups.append(node.attr)
  out = ["Config: --config NAME[:ARG] (a recipe below) or --config FILE.py[:ARG] (your own file;",
         "it imports `from lstmrec_jax.configs import base`), then any key as",
         "--config.GROUP.KEY=VALUE (e.g. --config.train.num_epochs=4). Groups:"]
  out += textwrap.wrap(", ".join(groups), 92, initial_indent="  ", subsequent_indent="  ")
  out += [f"Every key with its default and unit: {base}", "Recipes:"]
  rows = []
  for name, path in recipes.recipes().items():
    source = path.read_text()
    summary = (ast.get_docstring(ast.parse(source)) or "").strip().splitlines()
    arg = ("" if not recipes.takes_argument(path)
           else " (:cold)" if '"cold"' in source else " (:ARG)")
    rows.append((name + arg, summary[0] if summary else ""))
  width = max([24, *(len(label) + 2 for label, _ in rows)])
  out += [f"  {label:<{width}}{summary}" for label, summary in rows]
  return out


def run_main(body: Callable[[], None], *, borrowed: tuple[str, ...] = ()) -> None:
  """Runs an entry point under absl with `setup()` logging.

  Bad input is the user's to fix: any `LstmrecError` or a missing file ends the program with one
  line naming the file, line or key and the problem, not a traceback. `--help` prints the entry
  point's own flags (`help_text`; `borrowed`: flags of another entry point it reads) and exits 0.
  """
  from absl import app

  if wants_help(sys.argv) or "--helpfull" in sys.argv[1:]:
    text = help_text(body.__module__, borrowed)
    if not wants_help(sys.argv):
      from absl import flags  # pylint: disable=g-import-not-at-top
      text += "\n\nEvery flag:\n" + flags.FLAGS.get_help()
    try:
      print(text)
      sys.stdout.flush()
    except BrokenPipeError:  # `--help | head`: the reader left, nothing to report
      sys.stdout = None
    raise SystemExit(0)

  def main(argv):
    del argv
    try:
      body()
    except _USER_ERRORS as e:
      raise SystemExit(f"error: {e}") from None
    except OSError as e:
      if e.errno in _USER_ERRNOS:
        raise SystemExit(_os_error_line(e)) from None
      raise
    except ValueError as e:
      line = _storage_full_line(e)
      if line is not None:
        raise SystemExit(line) from None
      raise

  setup()
  app.run(main, flags_parser=parse_flags)


def _message(e: BaseException) -> str:
  """The exception's text; a KeyError's own message, not its repr (which escapes newlines)."""
  if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):
    return e.args[0]
  return str(e)


def _first_line(e: BaseException) -> str:
  text = _message(e).strip() or type(e).__name__
  line = text.splitlines()[0].strip()
  return line[1:-1] if len(line) > 1 and line[0] == line[-1] and line[0] in "'\"" else line
