"""The format registry: a user format loads through load_dataset; the import graph stays clean."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lstmrec_jax import data
from lstmrec_jax.data import formats
from lstmrec_jax.data import preprocess
from helpers import data_config


def test_builtin_formats_are_registered():
  assert formats.format_names() == ("synthetic", "movielens", "seqfile", "pairs", "csv", "tsv",
                                    "parquet", "tfds", "crossdomain")
  with pytest.raises(data.DataError, match="unknown format 'txt'"):
    formats.get_format("txt")
  with pytest.raises(ValueError, match="already registered"):
    formats.register_format(formats.get_format("pairs"))


@pytest.fixture
def jsonl_format():
  """A user format, 'jsonl': one `{"u": user, "i": item}` per line, cacheable by its bytes."""
  import json

  reads = []

  def read(path: pathlib.Path, cfg) -> data.InteractionLog:
    del cfg
    reads.append(path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return data.InteractionLog(
        users=np.asarray([r["u"] for r in rows], np.int64),
        items=np.asarray([r["i"] for r in rows], np.int64), timestamps=None,
        item_side=data.ItemSide(), source=str(path), fingerprint=fingerprint(path, None))

  def fingerprint(path: pathlib.Path, cfg) -> str:
    del cfg
    return "jsonl:" + path.read_text()

  fmt = formats.register_format(formats.Format(
      "jsonl", read=read, expected="a JSON-lines file", fingerprint=fingerprint))
  yield fmt, reads
  del formats._REGISTRY["jsonl"]  # pylint: disable=protected-access


def test_a_registered_format_loads_and_caches(tmp_path, jsonl_format, monkeypatch):
  _, reads = jsonl_format
  path = tmp_path / "log.jsonl"
  path.write_text("".join(f'{{"u": {u}, "i": {i}}}\n' for u, i in
                          [(1, 5), (1, 6), (1, 7), (2, 6), (2, 7), (2, 5)]))
  cfg = data_config(format="jsonl", path=str(path), cache_dir=str(tmp_path / "cache"))
  first = data.load_dataset(cfg)
  assert first.test.targets_U.tolist() == [3, 1] and len(reads) == 1
  monkeypatch.setattr(preprocess, "_build", lambda *a: pytest.fail("rebuilt a cached dataset"))
  second = data.load_dataset(cfg)
  assert len(reads) == 1, "read the source although its cache entry exists"
  np.testing.assert_array_equal(first.test.targets_U, second.test.targets_U)
  with pytest.raises(data.DataError, match="nothere.jsonl: file not found; format 'jsonl' reads"
                     " a JSON-lines file"):
    data.load_dataset(data_config(format="jsonl", path=str(tmp_path / "nothere.jsonl")))


def test_readers_start_no_tensorflow_and_no_import_cycle():
  # Each data module imports alone (no circle), and only pipeline / tfds reading start TF.
  code = """
import importlib, sys
for name in ["log", "config", "formats", "formats.movielens", "formats.seqfile",
             "formats.pairs", "formats.table", "formats.tfds", "formats.synthetic",
             "preprocess", "synthetic", "content", "download"]:
  for m in [m for m in sys.modules if m.startswith("lstmrec_jax")]:
    del sys.modules[m]
  importlib.import_module("lstmrec_jax.data." + name)
  assert "tensorflow" not in sys.modules, name
"""
  subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parents[1])
