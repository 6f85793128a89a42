"""Test-wide setup: 8 virtual CPU devices (data-parallel tests) and the shared data path."""

import os

# Must be set before jax is imported anywhere: the device count is fixed at backend start-up.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
