"""Test-wide setup: 8 virtual CPU devices (data-parallel tests) and the shared data path."""

import os

# Must be set before jax is imported anywhere: the device count is fixed at backend start-up.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent compilation cache for the whole suite, its workers and the entry points it
# runs: many tests build the same tiny models, and a compile read from the cache takes
# milliseconds (JAX reads these variables when it is imported; a cache key holds the program,
# the devices and the jax version, so a stale entry is never used).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"lstmrec_jax_tests_jax_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib

import pytest

SHARED_DATA_ENV = "LSTMREC_SHARED_DATA"


@pytest.fixture
def shared_data() -> pathlib.Path:
  """Path of ../shared/data from $LSTMREC_SHARED_DATA; skips the test where it is absent."""
  path = os.environ.get(SHARED_DATA_ENV)
  if not path or not pathlib.Path(path).is_dir():
    pytest.skip(f"${SHARED_DATA_ENV} is not set or not a directory")
  return pathlib.Path(path)
