"""The requirement sets agree: CI's requirements.txt is the CPU set plus TensorFlow; one JAX
version everywhere; TensorFlow is optional (in no platform set, only in tf.txt and the tf extra)."""

from __future__ import annotations

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SETS = ("cpu", "cuda12", "cuda13", "tpu")


def pins(path: pathlib.Path) -> dict[str, str]:
  """{name: version} of a requirements file, following `-r` includes."""
  out: dict[str, str] = {}
  for line in path.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line.startswith("-r "):
      out.update(pins(path.parent / line[3:].strip()))
    elif line:
      name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", line).groups()
      out[name.lower()] = version
  return out


def test_ci_requirements_are_the_cpu_set_and_tensorflow():
  """CI installs TensorFlow so the tf.data backend and TFDS tests run there (they skip without)."""
  cpu, tf = pins(REPO / "requirements" / "cpu.txt"), pins(REPO / "requirements" / "tf.txt")
  assert pins(REPO / "requirements.txt") == {**cpu, **tf}
  assert "tensorflow-cpu" in tf and "tensorflow-datasets" in tf


@pytest.mark.parametrize("name", SETS)
def test_tensorflow_is_optional_in_every_platform_set(name):
  """The default install has no TensorFlow (1.3 GB, docs/install.md); tf.txt adds it."""
  got = pins(REPO / "requirements" / f"{name}.txt")
  assert not {"tensorflow", "tensorflow-cpu", "tensorflow-datasets"} & set(got), name


def test_the_pyproject_extras_match_the_pins():
  """`pip install lstmrec-jax[tf]` is tf.txt; matplotlib (eval.py --plot) is an extra too."""
  import tomllib  # pylint: disable=g-import-not-at-top
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  names = lambda reqs: {re.split(r"[<>=\[ ]", r, maxsplit=1)[0].lower() for r in reqs}
  assert names(project["optional-dependencies"]["tf"]) == set(pins(REPO / "requirements" / "tf.txt"))
  assert not {"tensorflow", "tensorflow-cpu"} & names(project["dependencies"])
  assert "matplotlib" in names(project["optional-dependencies"]["plot"])


@pytest.mark.parametrize("name", SETS)
def test_every_set_pins_one_jax_and_the_same_libraries(name):
  got = pins(REPO / "requirements" / f"{name}.txt")
  cpu = pins(REPO / "requirements" / "cpu.txt")
  assert got["jax"] == got["jaxlib"] == cpu["jax"]
  for plugin in ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt"):
    assert got.get(plugin, got["jax"]) == got["jax"], plugin
  for lib in ("flax", "optax", "orbax-checkpoint", "etils", "numpy"):
    assert got[lib] == cpu[lib], lib
  assert "driver" in (REPO / "requirements" / f"{name}.txt").read_text().lower()
