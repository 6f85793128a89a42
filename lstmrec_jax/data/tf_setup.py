"""TensorFlow for the input pipeline only: imported through `import_tensorflow`, it never sees
an accelerator (JAX owns them)."""

from __future__ import annotations


def import_tensorflow():
  """The `tensorflow` module with GPUs and TPUs hidden from it (safe to call repeatedly)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # RuntimeError: TF already initialised its devices; ValueError: no such device type.
      pass
  return tf
