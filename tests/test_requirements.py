"""The requirement sets agree: CI's requirements.txt is the CPU set; one JAX version everywhere."""

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


def test_ci_requirements_are_the_cpu_set():
  assert pins(REPO / "requirements.txt") == pins(REPO / "requirements" / "cpu.txt")


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


def test_the_tpu_set_runs_without_tensorflow():
  assert "tensorflow-cpu" not in pins(REPO / "requirements" / "tpu.txt")
