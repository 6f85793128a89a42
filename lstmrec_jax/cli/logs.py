"""Log set-up of the entry points: our INFO lines, only warnings from the libraries."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from absl import logging as absl_logging

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


def run_main(body: Callable[[], None]) -> None:
  """Runs an entry point under absl with `setup()` logging.

  Bad input is the user's to fix: any `LstmrecError` or a missing file ends the program with one
  line naming the file, line or key and the problem, not a traceback.
  """
  from absl import app

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

  setup()
  app.run(main, flags_parser=parse_flags)


def _override_key(arg: str) -> str:
  """The last key of a --config.a.b=v override: 'b'."""
  return arg.split("=")[0].rsplit(".", 1)[-1]


def _first_line(e: BaseException) -> str:
  text = str(e).strip().strip('"').strip("'") or type(e).__name__
  return text.splitlines()[0]
