"""The input backends: bit-identical batches, the numpy prefetcher, train.py without TensorFlow."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

from lstmrec_jax.data import pipeline
from lstmrec_jax.data.preprocess import Sequences

REPO = pathlib.Path(__file__).resolve().parent.parent


def random_sequences(num_users: int, seed: int = 0) -> Sequences:
  rng = np.random.default_rng(seed)
  lengths = 1 + rng.geometric(1 / 6, num_users)
  return Sequences.from_lists([rng.integers(1, 500, n).tolist() for n in lengths])


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("process_index", [0, 1])
def test_numpy_batches_equal_tf_over_two_epochs_and_a_resume(pack, process_index):
  train = random_sequences(300)
  rewards_N = np.random.default_rng(1).random(len(train.items_N)).astype(np.float32)
  kwargs = dict(batch_size=8, max_len=12, seed=5, pack=pack, process_index=process_index,
                process_count=2, rewards_N=rewards_N)
  tf_b = pipeline.TrainBatches(train, backend="tf", **kwargs)
  np_b = pipeline.TrainBatches(train, backend="numpy", **kwargs)
  assert (tf_b.backend, np_b.backend) == ("tf", "numpy")
  skip = tf_b.steps_per_epoch // 2
  for epoch, skip_batches in ((0, 0), (1, 0), (1, skip)):
    got = list(np_b.epoch(epoch, skip_batches=skip_batches))
    want = list(tf_b.epoch(epoch, skip_batches=skip_batches))
    assert len(got) == len(want) == tf_b.steps_per_epoch - skip_batches
    for g, w in zip(got, want):
      assert list(g) == list(w)  # same keys in the same order
      assert "rewards_BxL" in w
      for name in w:
        assert g[name].dtype == w[name].dtype and g[name].shape == w[name].shape, name
        np.testing.assert_array_equal(g[name], w[name], err_msg=name)


def test_auto_is_tf_where_tensorflow_imports():
  assert pipeline.resolve_backend("auto") == "tf"
  with pytest.raises(ValueError, match="not one of"):
    pipeline.resolve_backend("grain")


def test_prefetch_keeps_order_and_stays_bounded():
  produced = []

  def items():
    for i in range(50):
      produced.append(i)
      yield i

  it = pipeline.prefetch(items(), 3)
  assert next(it) == 0
  for _ in range(100):  # let the worker run ahead as far as the queue allows
    if len(produced) >= 5:
      break
    threading.Event().wait(0.01)
  assert len(produced) <= 1 + 3 + 1  # consumed + queued + one blocked in put
  assert list(it) == list(range(1, 50))


def test_prefetch_raises_the_workers_exception_in_order():
  def items():
    yield 1
    yield 2
    raise KeyError("bad row")

  it = pipeline.prefetch(items(), 4)
  assert [next(it), next(it)] == [1, 2]
  with pytest.raises(KeyError, match="bad row"):
    next(it)


def test_prefetch_closed_early_stops_its_thread():
  before = {t.ident for t in threading.enumerate() if t.name == "lstmrec-prefetch"}
  it = pipeline.prefetch(iter(range(10_000)), 2)
  assert next(it) == 0
  it.close()  # what abandoning an epoch (early stop, stop_after_steps) does
  alive = [t for t in threading.enumerate()
           if t.name == "lstmrec-prefetch" and t.ident not in before]
  assert not alive


def test_numpy_epoch_abandoned_mid_way_leaves_no_thread():
  batches = pipeline.TrainBatches(random_sequences(200), batch_size=4, max_len=8, seed=0,
                                  backend="numpy")
  it = batches.epoch(0)
  next(it)
  it.close()
  assert not [t for t in threading.enumerate() if t.name == "lstmrec-prefetch"]


_NO_TF_SCRIPT = """
import sys
import numpy as np
from lstmrec_jax.cli import train as cli_train  # the cli modules define clashing flags
from lstmrec_jax.data import pipeline
from lstmrec_jax.data.preprocess import Sequences
from lstmrec_jax.evaluation import ranking
from lstmrec_jax import checkpoint
from lstmrec_jax.train import loop
from lstmrec_jax.tuning import search
seqs = Sequences.from_lists([[1, 2, 3, 4], [5, 6, 7], [2, 3]] * 4)
batches = pipeline.TrainBatches(seqs, batch_size=4, max_len=4, seed=0, backend="numpy")
assert sum(1 for _ in batches.epoch(0)) == batches.steps_per_epoch
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets")))
"""


def test_numpy_backend_path_leaves_tensorflow_unimported():
  """With TensorFlow installed, the train / eval / tune modules and numpy batches never load it."""
  out = subprocess.run([sys.executable, "-c", _NO_TF_SCRIPT], cwd=REPO, capture_output=True,
                       text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"


# A `tensorflow` package that fails to import and leaves a mark when anything tries.
_BLOCKER = '''
import os
open(os.environ["TF_IMPORT_MARK"], "a").write("imported\\n")
raise ImportError("tensorflow is blocked in this test")
'''


@pytest.mark.slow
def test_train_and_eval_run_where_tensorflow_cannot_import(tmp_path):
  """Must-show: train.py to the end, then eval.py, with input.backend=numpy and no TensorFlow."""
  shim = tmp_path / "shim"
  for name in ("tensorflow", "tensorflow_datasets"):
    (shim / name).mkdir(parents=True)
    (shim / name / "__init__.py").write_text(_BLOCKER)
  mark = tmp_path / "tf_import_attempts.txt"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)]),
         "TF_IMPORT_MARK": str(mark), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  workdir = tmp_path / "run"
  train = subprocess.run(
      [sys.executable, "train.py", "--config", "configs/default.py", "--workdir", str(workdir),
       "--config.input.backend=numpy", "--config.data.cache_dir=",
       "--config.data.synthetic.num_users=160", "--config.data.synthetic.num_items=60",
       "--config.input.max_len=12", "--config.input.batch_size=16",
       "--config.input.eval_batch_size=32", "--config.model.embed_dim=8",
       "--config.model.hidden_size=8", "--config.train.num_epochs=2",
       "--config.train.progress_bar=false"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-4000:]
  report = json.loads((workdir / "report.json").read_text())
  assert report["splits"]["test"]["model"]["overall"]["users"] == 160
  evaluate = subprocess.run(
      [sys.executable, "eval.py", "--workdir", str(workdir), "--splits", "test"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert evaluate.returncode == 0, evaluate.stderr[-4000:]
  assert "NDCG@10" in evaluate.stdout
  # Not even a caught attempt: nothing on the train or eval path reaches for TensorFlow.
  assert not mark.exists(), "something imported tensorflow with input.backend=numpy"
