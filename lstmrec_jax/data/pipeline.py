"""Training and evaluation batches with static shapes (tf.data or a numpy thread prefetches).

Shape legend: `B` batch (per process), `L` history length (`max_len`), `S` seen-items width
(per split), `R` rows of one epoch (users, or packed rows), `N` flattened events, `X` training
examples (users with >= 2 training events), `P` real (non-padding) training positions; `_RL` is
an `R x L` table kept flat.

Training (`TrainBatches`): one example is one user's training sequence `s` (length n >= 2):
inputs `s[:-1]`, targets `s[1:]`, keeping the most recent `max_len` positions. With
`pack=False` a row holds one user, right-padded; with `pack=True` a row holds several users'
segments back to back (first-fit decreasing, computed once, deterministically), and
`resets_BxL` marks where a new user's segment starts inside a row, so the LSTM zeroes its state
there. Rows are shuffled per epoch with a permutation that depends only on `(seed, epoch)`;
every process draws the same permutation and takes its own slice of each global batch. Given
the training events' rewards (`SequenceDataset.train_rewards()`), a batch also carries
`rewards_BxL`, the reward of each position's target (0 where there is none).

Evaluation (`eval_batches`): one row per user of an `EvalSplit`, the history's last `max_len`
items right-padded, the target, and `seen_BxS`, the full history to remove from the ranking.
The last batch is padded and carries `valid_B`. With `by_length=True` the users come shortest
history first and a batch whose histories all fit a short length (`eval_lengths`) is cut to it:
an encoder reads no padding after a row's last item, so the scores do not change, and most
histories of a sparse log are far shorter than `max_len` (Beauty: 94% of the validation users
hold at most 16 of its 50).

Every batch is computed in numpy; the `backend` only decides what prefetches training batches:
"tf" (tf.data, TensorFlow from `tf_setup.import_tensorflow`, so it never sees an accelerator),
"numpy" (a background thread, `prefetch`; TensorFlow is never imported) or "auto" (tf when
TensorFlow imports, else numpy). Both feed bit-identical batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import queue
import threading
from typing import TypeVar

from absl import logging
import numpy as np

from lstmrec_jax.errors import ConfigError
from lstmrec_jax.data.preprocess import EvalSplit
from lstmrec_jax.data.preprocess import Sequences

BACKENDS = ("tf", "numpy", "auto")
T = TypeVar("T")


def resolve_backend(backend: str) -> str:
  """The backend that will prefetch: "auto" becomes "tf" when TensorFlow imports, else "numpy"."""
  if backend not in BACKENDS:
    raise ValueError(f"input backend {backend!r} is not one of {BACKENDS}")
  if backend != "auto":
    return backend
  try:
    from lstmrec_jax.data import tf_setup  # pylint: disable=g-import-not-at-top
    tf_setup.import_tensorflow()
  except ImportError:
    return "numpy"
  return "tf"


def prefetch(items: Iterator[T], size: int) -> Iterator[T]:
  """Yields `items` in order while a background thread computes up to `size` ahead.

  The worker's exceptions are raised here, at the item where they happened; closing the
  generator (or abandoning it mid-epoch) stops and joins the worker.

  Example: `list(prefetch(iter(range(3)), 2))` -> [0, 1, 2].
  """
  q: queue.Queue = queue.Queue(maxsize=max(int(size), 1))
  stop = threading.Event()

  def put(entry) -> bool:
    # A bounded put that gives up once the consumer has gone, so the thread never hangs.
    while not stop.is_set():
      try:
        q.put(entry, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  def work() -> None:
    try:
      for item in items:
        if not put(("item", item)):
          return
      put(("end", None))
    except BaseException as e:  # pylint: disable=broad-except
      put(("error", e))

  thread = threading.Thread(target=work, name="lstmrec-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      kind, value = q.get()
      if kind == "end":
        return
      if kind == "error":
        raise value
      yield value
  finally:
    stop.set()
    thread.join()


def _check_processes(batch_size: int, process_index: int, process_count: int) -> int:
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                     f"{process_count}")
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by process_count "
                     f"{process_count}")
  return batch_size // process_count


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
  """Packs segments into rows of `capacity` slots, first-fit in order of decreasing length.

  Ties are broken by index, so the packing is a pure function of `lengths`. A segment tree over
  row capacities finds the first row with room in O(log R); rows not opened yet have full
  capacity, so "first fit" opens a new row exactly when no open row has room.

  Example: lengths [3, 2, 2, 1], capacity 4 -> rows [0, 1, 1, 0], columns [0, 0, 2, 3].

  Args:
    lengths: segment lengths, each in 1..capacity.
    capacity: slots per row.

  Returns:
    (row_of, col_of): each segment's row and first column.
  """
  lengths = np.asarray(lengths, np.int64)
  if lengths.size and (lengths.min() < 1 or lengths.max() > capacity):
    raise ValueError(f"segment lengths must be in 1..{capacity}")
  n = len(lengths)
  size = 1
  while size < max(n, 1):
    size *= 2
  tree = [capacity] * (2 * size)  # tree[1] is the root; leaves size..2*size-1 are rows
  row_of = np.zeros(n, np.int64)
  col_of = np.zeros(n, np.int64)
  for seg in np.argsort(-lengths, kind="stable").tolist():
    m = int(lengths[seg])
    node = 1
    while node < size:  # descend to the leftmost leaf with room for m
      node = 2 * node if tree[2 * node] >= m else 2 * node + 1
    row = node - size
    row_of[seg] = row
    col_of[seg] = capacity - tree[node]
    tree[node] -= m
    node //= 2
    while node:
      tree[node] = max(tree[2 * node], tree[2 * node + 1])
      node //= 2
  return row_of, col_of


class TrainBatches:
  """Per-epoch training batches of one process; see the module docstring for the layout."""

  def __init__(self, train: Sequences, *, batch_size: int, max_len: int, seed: int,
               pack: bool = False, process_index: int = 0, process_count: int = 1,
               prefetch: int = 2, backend: str = "auto", rewards_N: np.ndarray | None = None):
    """Lays out every training row once; epochs only permute rows.

    Args:
      train: each user's training sequence (`SequenceDataset.train`).
      batch_size: global batch size (all processes together).
      max_len: L, the positions per row.
      seed: shuffling seed; epoch e's order depends only on (seed, e).
      pack: several users per row (with resets) instead of one right-padded user per row.
      process_index: this process.
      process_count: processes; each gets `batch_size // process_count` rows of every batch.
      prefetch: batches prepared ahead.
      backend: what prefetches: "tf" (tf.data), "numpy" (a thread, no TensorFlow) or "auto"
        (tf when TensorFlow imports, else numpy); the batches are identical.
      rewards_N: float reward of each training event, aligned with `train.items_N`; given,
        batches carry `rewards_BxL` (the reward of each position's target); None: they do not.
    """
    self.backend = resolve_backend(backend)
    if rewards_N is not None and len(rewards_N) != len(train.items_N):
      raise ValueError(f"rewards_N has {len(rewards_N)} entries for {len(train.items_N)} "
                       "training events")
    self.batch_size = batch_size
    self.per_process_batch = _check_processes(batch_size, process_index, process_count)
    if max_len < 1:
      raise ValueError(f"max_len must be positive, got {max_len}")
    self.max_len = max_len
    self.seed = seed
    self.pack = pack
    self.process_index = process_index
    self.process_count = process_count
    self.prefetch = prefetch

    lengths_U = train.lengths_U
    users_X = np.flatnonzero(lengths_U >= 2)
    self.num_skipped_users = int(len(lengths_U) - len(users_X))
    self.num_examples = int(len(users_X))
    if self.num_skipped_users:
      logging.info("TrainBatches: %d users with fewer than 2 training events have no example",
                   self.num_skipped_users)
    seg_len_X = np.minimum(lengths_U[users_X] - 1, max_len)
    # Inputs of user u are items_N[end-m-1 : end-1], targets items_N[end-m : end].
    in_start_X = train.offsets_U1[users_X + 1] - seg_len_X - 1
    if pack:
      row_X, col_X = first_fit_decreasing(seg_len_X, max_len)
    else:
      row_X, col_X = np.arange(len(users_X)), np.zeros(len(users_X), np.int64)
    self.num_rows = int(row_X.max()) + 1 if len(users_X) else 0
    # One entry per real position: its example, its offset in the segment, its slot in the table.
    total = int(seg_len_X.sum())
    example_P = np.repeat(np.arange(len(users_X)), seg_len_X)
    within_P = np.arange(total) - np.repeat(np.cumsum(seg_len_X) - seg_len_X, seg_len_X)
    slot_P = row_X[example_P] * max_len + col_X[example_P] + within_P
    src_P = in_start_X[example_P] + within_P
    inputs_RL = np.zeros(self.num_rows * max_len, np.int32)
    targets_RL = np.zeros(self.num_rows * max_len, np.int32)
    resets_RL = np.zeros(self.num_rows * max_len, bool)
    inputs_RL[slot_P] = train.items_N[src_P]
    targets_RL[slot_P] = train.items_N[src_P + 1]
    if pack:
      # A reset at column 0 would be a no-op (the state starts at zero): mark only the starts
      # inside a row, the same rows pack=False gives.
      inside_X = col_X > 0
      resets_RL[row_X[inside_X] * max_len + col_X[inside_X]] = True
    self.real_positions = total
    self.padding_fraction = (1.0 - total / (self.num_rows * max_len)) if self.num_rows else 0.0
    self.steps_per_epoch = self.num_rows // batch_size
    if self.steps_per_epoch == 0:
      # The user's to fix (a small dataset): one line from the entry points, not a traceback.
      raise ConfigError(f"input.batch_size {batch_size} is larger than the {self.num_rows} "
                        f"training rows ({self.num_examples} examples, pack={pack}): a dataset "
                        f"this small needs --config.input.batch_size={max(self.num_rows, 1)} "
                        "or less")
    # Rows beyond the last full batch are left out each epoch (a different few every epoch).
    self.real_positions_per_epoch = int(round(
        total * self.steps_per_epoch * batch_size / self.num_rows))
    shape = (self.num_rows, max_len)
    self._tables = {"inputs_BxL": inputs_RL.reshape(shape),
                    "targets_BxL": targets_RL.reshape(shape),
                    "resets_BxL": resets_RL.reshape(shape)}
    if rewards_N is not None:
      rewards_RL = np.zeros(self.num_rows * max_len, np.float32)
      rewards_RL[slot_P] = np.asarray(rewards_N, np.float32)[src_P + 1]  # the target's reward
      self._tables["rewards_BxL"] = rewards_RL.reshape(shape)
    if self.backend == "tf":
      from lstmrec_jax.data import tf_setup  # pylint: disable=g-import-not-at-top
      tf = tf_setup.import_tensorflow()
      self._tf_tables = {k: tf.constant(v) for k, v in self._tables.items()}
    logging.info("TrainBatches: %d examples in %d rows of %d (pack=%s, padding %.1f%%),"
                 " %d steps per epoch of %d, %s prefetch", self.num_examples, self.num_rows,
                 max_len, pack, 100 * self.padding_fraction, self.steps_per_epoch, batch_size,
                 self.backend)

  def epoch_rows(self, epoch: int) -> np.ndarray:
    """[steps_per_epoch, per_process_batch] row indices this process reads in `epoch`."""
    # Every process draws the same permutation; drop_remainder cuts the tail rows.
    rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
    perm_R = rng.permutation(self.num_rows)[:self.steps_per_epoch * self.batch_size]
    b = self.per_process_batch
    lo = self.process_index * b
    return perm_R.reshape(self.steps_per_epoch, self.batch_size)[:, lo:lo + b]

  def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yields the batches of `epoch` after the first `skip_batches` (resume replay).

    Args:
      epoch: epoch index; with the seed it fixes the order.
      skip_batches: batches of this epoch already consumed (e.g. before a restart).

    Yields:
      Dicts of numpy arrays: `inputs_BxL` int32, `targets_BxL` int32 (0 = no target),
      `mask_BxL` bool (real input positions), `resets_BxL` bool, and with rewards
      `rewards_BxL` float32 (the target's reward, 0 = no target).
    """
    if not 0 <= skip_batches <= self.steps_per_epoch:
      raise ValueError(f"skip_batches must be in 0..{self.steps_per_epoch}, got {skip_batches}")
    step_rows = self.epoch_rows(epoch)[skip_batches:]  # [steps left, B]
    if self.backend == "numpy":
      yield from prefetch((self._gather_numpy(idx_B) for idx_B in step_rows), self.prefetch)
      return
    from lstmrec_jax.data import tf_setup  # pylint: disable=g-import-not-at-top
    tf = tf_setup.import_tensorflow()
    tables = self._tf_tables

    # Plain tf ops, no Python control flow: nothing for AutoGraph to convert (it would try,
    # fail on the enclosing generator and log a warning into every run's log).
    @tf.autograph.experimental.do_not_convert
    def gather(idx_B):
      batch = {name: tf.gather(table, idx_B) for name, table in tables.items()}
      batch["mask_BxL"] = batch["inputs_BxL"] > 0
      return batch

    ds = tf.data.Dataset.from_tensor_slices(step_rows.astype(np.int64))
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(self.prefetch)
    yield from ds.as_numpy_iterator()

  def _gather_numpy(self, idx_B: np.ndarray) -> dict[str, np.ndarray]:
    """One batch's rows, in the tf path's keys, dtypes and order."""
    batch = {name: np.take(table, idx_B, axis=0) for name, table in self._tables.items()}
    batch["mask_BxL"] = batch["inputs_BxL"] > 0
    return batch


def seen_width(split: EvalSplit) -> int:
  """S: the longest history of the split rounded up to a multiple of 8 (at least 8)."""
  longest = int(split.history.lengths_U.max()) if len(split) else 0
  return max(8, -(-longest // 8) * 8)


def num_eval_batches(split: EvalSplit, *, batch_size: int, process_count: int = 1) -> int:
  """Batches every process runs over `split` (the same number on all processes)."""
  _check_processes(batch_size, 0, process_count)
  return -(-len(split) // batch_size)


def _right_aligned_rows(seqs: Sequences, rows_B: np.ndarray, width: int,
                        last: bool) -> np.ndarray:
  """[B, width] int32: each row's items (its last `width` if `last`), right-padded with 0."""
  lengths_B = seqs.lengths_U[rows_B]
  take_B = np.minimum(lengths_B, width)
  start_B = seqs.offsets_U1[rows_B] + (lengths_B - take_B if last else 0)
  out_BxW = np.zeros((len(rows_B), width), np.int32)
  col_W = np.arange(width)
  real_BxW = col_W[None, :] < take_B[:, None]
  out_BxW[real_BxW] = seqs.items_N[(start_B[:, None] + col_W[None, :])[real_BxW]]
  return out_BxW


def eval_lengths(max_len: int) -> tuple[int, ...]:
  """The history lengths `eval_batches(by_length=True)` cuts batches to: a short one (a quarter of
  `max_len` rounded up to a multiple of 8) and `max_len`; two compiled shapes at most.

  Example: 50 -> (16, 50); 200 -> (56, 200); 16 -> (8, 16); 8 -> (8,).
  """
  short = -(-max(1, max_len // 4) // 8) * 8
  return (short, max_len) if short < max_len else (max_len,)


def eval_batches(split: EvalSplit, *, batch_size: int, max_len: int, process_index: int = 0,
                 process_count: int = 1, candidates_UxM: np.ndarray | None = None,
                 by_length: bool = False, only: Sequence[int] | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's evaluation batches of `split`, every user exactly once overall.

  Global batch k holds users `k*batch_size ...` (in the split's order, or by history length);
  process p takes its slice of it. No shuffling and cheap numpy gathers, so no tf.data (and no
  TensorFlow) here, whatever the backend.

  With `by_length`, users are taken shortest history first (a stable sort, the same on every
  process), and a global batch whose longest history fits the short length of
  `eval_lengths(max_len)` gets L and S of that length instead of `max_len` and the split's
  width: the same rows with less padding after them. The short batches come first, so the
  first and the last batch hold every shape of the pass. Callers match outputs to users by
  `users_B`, never by position.

  Args:
    split: `SequenceDataset.valid` or `.test`.
    batch_size: global batch size (all processes together).
    max_len: L, positions of `inputs_BxL`.
    process_index: this process.
    process_count: processes.
    candidates_UxM: the sampled protocol's candidates of each user of the split, in its order
      (column 0 the target), passed on as `candidates_BxM`; None: none.
    by_length: group users by history length and cut short batches (above).
    only: the global batch indices to yield (e.g. the first and the last); None: all.

  Yields:
    Dicts of numpy arrays: `inputs_BxL` int32 (the history's last L items, right-padded; L is
      `max_len`, or the short length of `eval_lengths` for a short batch with `by_length`),
    `mask_BxL` bool, `targets_B` int32, `users_B` int32 (dense user index, -1 on padding rows),
    `valid_B` bool (False on padding rows), `seen_BxS` int32 (the full history, 0-padded; S from
    `seen_width(split)`); on a multi-domain split `domains_B` int32 (the target's domain, 0 on
    padding rows); with candidates, `candidates_BxM` int32 (0 on padding rows).
  """
  b = _check_processes(batch_size, process_index, process_count)
  if max_len < 1:
    raise ValueError(f"max_len must be positive, got {max_len}")
  width = seen_width(split)
  n = len(split)
  lengths_U = split.history.lengths_U
  order_U = np.argsort(lengths_U, kind="stable") if by_length else np.arange(n)
  short = eval_lengths(max_len)[0] if by_length else max_len
  num = num_eval_batches(split, batch_size=batch_size, process_count=process_count)
  for k in range(num) if only is None or not num else sorted({k % num for k in only}):
    pos_B = k * batch_size + process_index * b + np.arange(b)
    valid_B = pos_B < n
    rows_B = order_U[np.where(valid_B, pos_B, 0)]
    global_U = order_U[k * batch_size:(k + 1) * batch_size]  # the same on every process
    if short < max_len and int(lengths_U[global_U].max()) <= short:
      length, seen = short, short  # every history of the batch whole in `short` positions
    else:
      length, seen = max_len, width
    inputs_BxL = _right_aligned_rows(split.history, rows_B, length, last=True)
    seen_BxS = _right_aligned_rows(split.history, rows_B, seen, last=False)
    inputs_BxL[~valid_B] = 0
    seen_BxS[~valid_B] = 0
    batch = {"inputs_BxL": inputs_BxL, "mask_BxL": inputs_BxL > 0,
             "targets_B": np.where(valid_B, split.targets_U[rows_B], 0).astype(np.int32),
             "users_B": np.where(valid_B, split.users_U[rows_B], -1).astype(np.int32),
             "valid_B": valid_B, "seen_BxS": seen_BxS}
    if split.domains_U is not None:
      batch["domains_B"] = np.where(valid_B, split.domains_U[rows_B], 0).astype(np.int32)
    if candidates_UxM is not None:
      batch["candidates_BxM"] = np.where(valid_B[:, None], candidates_UxM[rows_B],
                                         0).astype(np.int32)
    yield batch
