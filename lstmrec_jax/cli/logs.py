"""Log set-up of the entry points: our INFO lines, only warnings from the libraries."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from absl import logging as absl_logging

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


# Errors that are the user's to fix: a config that cannot run (unknown, missing or bad keys; a
# changed config on resume), bad data, a missing file. Each ends the program in one line.
def _user_errors() -> tuple[type[BaseException], ...]:
  from lstmrec_jax.data.errors import DataError  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.run import ConfigError  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.plugins import PluginError  # pylint: disable=g-import-not-at-top
  errors = [DataError, ConfigError, FileNotFoundError, PluginError]
  # Checkpoint and divergence errors once those modules are loaded (importing them costs jax).
  import sys  # pylint: disable=g-import-not-at-top
  for module, name in (("lstmrec_jax.train.checkpoint", "CheckpointError"),
                       ("lstmrec_jax.train.loop", "DivergenceError")):
    if module in sys.modules:
      errors.append(getattr(sys.modules[module], name))
  return tuple(errors)


# OS errors a user fixes (a full disk, a read-only or forbidden folder): one line, not a traceback.
_USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _os_error_line(e: OSError) -> str:
  where = f" ({e.filename})" if e.filename else ""
  return f"error: {e.strerror or e}{where}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad --config.* override as one line instead of a traceback.

  config_flags parses `--config.train.nosuch=3` into chained ml_collections tracebacks; the
  message names the flag and the key the config lacks.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f"error: {e}") from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise SystemExit(config_override_error(argv, e)) from None


def config_override_error(argv: list[str], e: BaseException) -> str:
  """One line for a --config.* override that config_flags could not apply (names the flag)."""
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  bad = [a for a in overrides if _override_key(a) in str(e)] or overrides
  if not bad:
    return f"error: --config: {_first_line(e)}"
  flag = bad[0].split("=")[0]
  kind = ("unknown config key " + flag[len("--config."):]
          if isinstance(e, (AttributeError, KeyError)) else _first_line(e))
  return f"error: {flag}: {kind} (configs/base.py lists every key)"


def run_main(body: Callable[[], None], user_errors: tuple[type[BaseException], ...] = ()) -> None:
  """Runs an entry point under absl with `setup()` logging.

  Bad input is the user's to fix: a DataError, a missing file or one of `user_errors` ends the
  program with one line naming the file, line or key and the problem, not a traceback.
  """
  from absl import app

  def main(argv):
    del argv
    try:
      body()
    except (*_user_errors(), *user_errors) as e:
      raise SystemExit(f"error: {e}") from None
    except OSError as e:
      if e.errno in _USER_ERRNOS:
        raise SystemExit(_os_error_line(e)) from None
      raise

  setup()
  app.run(main, flags_parser=parse_flags)


def _override_key(arg: str) -> str:
  """The last key of a --config.a.b=v override: 'b'."""
  return arg.split("=")[0].rsplit(".", 1)[-1]


def _first_line(e: BaseException) -> str:
  text = str(e).strip().strip('"').strip("'") or type(e).__name__
  return text.splitlines()[0]
