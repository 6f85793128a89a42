"""TensorFlow for the input pipeline only: imported through `import_tensorflow`, it never sees
an accelerator (JAX owns them)."""

from __future__ import annotations

import os

from lstmrec_jax.errors import ConfigError


class TensorFlowMissing(ConfigError, ImportError):
  """TensorFlow (optional) is not installed: one line for the user, an ImportError for `auto`."""


def import_tensorflow():
  """The `tensorflow` module with GPUs and TPUs hidden from it (safe to call repeatedly).

  Quiet: TensorFlow's C++ INFO lines off, and its oneDNN custom operations off, whose banner
  ("oneDNN custom operations are on ...") TF_CPP_MIN_LOG_LEVEL no longer hides. tf.data only
  moves the batches numpy computed, so no number depends on oneDNN. A value the user set wins.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise TensorFlowMissing(
        f"TensorFlow is not installed ({e}); it is optional, needed only for input.backend=tf "
        "and data.format=tfds: pip install -r requirements/tf.txt (or "
        "pip install 'lstmrec-jax[tf]'), or use input.backend=numpy") from None

  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # RuntimeError: TF already initialised its devices; ValueError: no such device type.
      pass
  return tf
