"""Log set-up of the entry points: our INFO lines, only warnings from the libraries."""

from __future__ import annotations

import logging
from collections.abc import Callable

from absl import logging as absl_logging

_OURS = ("lstmrec_jax", "train.py", "eval.py", "tune.py")


class _OnlyOursBelowWarning(logging.Filter):
  """Orbax and JAX log every checkpoint step at INFO; keep their warnings, drop the chatter."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or any(s in record.pathname for s in _OURS)


def setup() -> None:
  """INFO for lstmrec_jax and the entry points, WARNING and above for everything else."""
  absl_logging.set_verbosity(absl_logging.INFO)
  handler = absl_logging.get_absl_handler()
  handler.addFilter(_OnlyOursBelowWarning())


USER_ERRORS = (FileNotFoundError,)


def run_main(body: Callable[[], None], user_errors: tuple[type[BaseException], ...] = ()) -> None:
  """Runs an entry point under absl with `setup()` logging.

  Bad input is the user's to fix: a DataError, a missing file or one of `user_errors` ends the
  program with one line naming the file, line or key and the problem, not a traceback.
  """
  from absl import app
  from lstmrec_jax.data.errors import DataError

  def main(argv):
    del argv
    try:
      body()
    except (DataError, *USER_ERRORS, *user_errors) as e:
      raise SystemExit(f"error: {e}") from None

  setup()
  app.run(main)
