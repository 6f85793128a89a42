"""Sequence augmentation as seeded batch transforms: crop, mask, reorder, insert, substitute.

Shape legend: B batch rows, L history length, R rows of one epoch, V catalog size (row 0 =
padding), K similar items kept per item, m items of one example's sequence.

An example is one user's training sequence s = (s_0 .. s_{m-1}) laid out in a row as inputs
s[:-1], targets s[1:] (`pipeline.TrainBatches`; several per row when packed). Each transform
rewrites s (in place in its slot of the row; a shorter s leaves padding behind it), each applied
with its probability, in this order:

  crop        keep a random contiguous window of max(2, floor(ratio m)) items
  reorder     shuffle a random contiguous window of max(2, floor(ratio m)) items
  substitute  replace max(1, floor(ratio m)) random items by one of their K most similar items
  insert      after max(1, floor(ratio m)) random items insert one of its K most similar items,
              then drop the oldest items so the length stays m
  mask        hide max(1, floor(ratio (m - 1))) random inputs (at most m - 2): the model skips
              the event (input 0, mask False) and predicts nothing there; it stays the target of
              the position before

Item similarity (`similar_items`) is the cosine of the items' training-user sets, from the
training split only. Every random draw of an example comes from a generator keyed by
(seed, epoch, row, example within the row, view): independent of the batch it lands in and of
`skip_batches`, so a resumed run sees exactly the augmented batches of an unbroken one.

With `contrastive_weight > 0` each batch also carries two augmented views of the same rows
(`view1_*`, `view2_*`, views 1 and 2) for the InfoNCE term of the step
(`losses/contrastive.py`); `views_only` trains the next-item loss on the clean rows (CL4SRec).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from lstmrec_jax.data import pipeline
from lstmrec_jax.data.preprocess import Sequences

TRANSFORMS = ("crop", "reorder", "substitute", "insert", "mask")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The `augment` group of configs/base.py (each key's meaning and constraint is there)."""

  crop_prob: float
  crop_ratio: float
  reorder_prob: float
  reorder_ratio: float
  substitute_prob: float
  substitute_ratio: float
  insert_prob: float
  insert_ratio: float
  mask_prob: float
  mask_ratio: float
  similar_items: int
  contrastive_weight: float
  temperature: float
  views_only: bool

  def __post_init__(self):
    problems = []
    for name in TRANSFORMS:
      p, r = getattr(self, f"{name}_prob"), getattr(self, f"{name}_ratio")
      if not 0.0 <= p <= 1.0:
        problems.append(f"augment.{name}_prob={p} must be in [0, 1]")
      if not 0.0 < r <= 1.0:
        problems.append(f"augment.{name}_ratio={r} must be in (0, 1]")
    if self.similar_items < 1:
      problems.append(f"augment.similar_items={self.similar_items} must be >= 1")
    if self.contrastive_weight < 0:
      problems.append(f"augment.contrastive_weight={self.contrastive_weight} must be >= 0")
    if not self.temperature > 0:
      problems.append(f"augment.temperature={self.temperature} must be > 0")
    if self.contrastive_weight > 0 and not self.any_transform:
      problems.append("augment.contrastive_weight > 0 needs at least one transform with a "
                      "probability > 0 (two views of a history would be identical)")
    if self.views_only and not self.contrastive_weight > 0:
      problems.append("augment.views_only needs augment.contrastive_weight > 0")
    if problems:
      raise ValueError("; ".join(problems))

  @property
  def any_transform(self) -> bool:
    return any(getattr(self, f"{name}_prob") > 0 for name in TRANSFORMS)

  @property
  def on(self) -> bool:
    return self.any_transform or self.contrastive_weight > 0

  @property
  def needs_similarity(self) -> bool:
    return self.substitute_prob > 0 or self.insert_prob > 0


def similar_items(train: Sequences, num_items: int, k: int) -> np.ndarray:
  """int32 [V, K]: each item's K most similar items by cosine of their training-user sets.

  Ties go to the smaller id; an item with fewer than K neighbours repeats its best one, and one
  with none (or the padding item 0) lists itself.
  Example: users (1, 2), (1, 2), (1, 3) -> item 1's best neighbour is 2 (cos 2/sqrt(3*2)).
  """
  import scipy.sparse  # pylint: disable=g-import-not-at-top  (a dependency of jax)
  users_N = np.repeat(np.arange(len(train)), train.lengths_U)
  x = scipy.sparse.csr_matrix((np.ones(len(users_N), np.float32), (users_N, train.items_N)),
                              shape=(len(train), num_items))
  x.data[:] = 1.0  # sets, not counts: a repeat in one history counts once
  x.sum_duplicates()
  x.data[:] = 1.0
  co = (x.T @ x).tocsr()
  degree = np.asarray(co.diagonal(), np.float64)
  co.setdiag(0)
  co.eliminate_zeros()
  out = np.tile(np.arange(num_items, dtype=np.int32)[:, None], (1, k))
  for i in range(1, num_items):
    lo, hi = co.indptr[i], co.indptr[i + 1]
    if lo == hi:
      continue
    cols = co.indices[lo:hi]
    sims = co.data[lo:hi] / np.sqrt(degree[i] * degree[cols])
    order = np.lexsort((cols, -sims))[:k]
    best = cols[order]
    out[i, :len(best)] = best
    out[i, len(best):] = best[0]
  return out


def _window(m: int, ratio: float) -> int:
  return min(m, max(2, int(np.floor(ratio * m))))


def crop(seq: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
  """A random contiguous window of max(2, floor(ratio m)) items. Example: ratio 0.5, m 6 -> 3."""
  w = _window(len(seq), ratio)
  start = int(rng.integers(0, len(seq) - w + 1))
  return seq[start:start + w]


def reorder(seq: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
  """The same items with a random contiguous window of max(2, floor(ratio m)) shuffled."""
  w = _window(len(seq), ratio)
  start = int(rng.integers(0, len(seq) - w + 1))
  out = seq.copy()
  out[start:start + w] = rng.permutation(out[start:start + w])
  return out


def _count(m: int, ratio: float) -> int:
  return min(m, max(1, int(np.floor(ratio * m))))


def substitute(seq: np.ndarray, ratio: float, rng: np.random.Generator,
               similar_VxK: np.ndarray) -> np.ndarray:
  """max(1, floor(ratio m)) random items replaced by one of their K most similar items."""
  out = seq.copy()
  pos = rng.choice(len(seq), size=_count(len(seq), ratio), replace=False)
  pick = rng.integers(0, similar_VxK.shape[1], size=len(pos))
  out[pos] = similar_VxK[seq[pos], pick]
  return out


def insert(seq: np.ndarray, ratio: float, rng: np.random.Generator,
           similar_VxK: np.ndarray) -> np.ndarray:
  """After max(1, floor(ratio m)) random items, one of its similar items; the oldest dropped."""
  m = len(seq)
  pos = np.sort(rng.choice(m, size=_count(m, ratio), replace=False))
  pick = rng.integers(0, similar_VxK.shape[1], size=len(pos))
  out = np.insert(seq, pos + 1, similar_VxK[seq[pos], pick])
  return out[len(out) - m:]


def mask_positions(m: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
  """Bool [m - 1]: inputs hidden, max(1, floor(ratio (m - 1))) of them, at most m - 2."""
  hidden = np.zeros(m - 1, bool)
  n = min(max(1, int(np.floor(ratio * (m - 1)))), m - 2)
  if n > 0:
    hidden[rng.choice(m - 1, size=n, replace=False)] = True
  return hidden


def augment_sequence(seq: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator,
                     similar_VxK: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
  """(new sequence, hidden inputs [len - 1]) after the transforms of `cfg`, each by its prob."""
  # One draw per transform whether or not it fires, so each transform's coin is the same
  # whatever the others' probabilities are.
  coins = rng.random(len(TRANSFORMS))
  if coins[0] < cfg.crop_prob:
    seq = crop(seq, cfg.crop_ratio, rng)
  if coins[1] < cfg.reorder_prob:
    seq = reorder(seq, cfg.reorder_ratio, rng)
  if coins[2] < cfg.substitute_prob:
    seq = substitute(seq, cfg.substitute_ratio, rng, similar_VxK)
  if coins[3] < cfg.insert_prob:
    seq = insert(seq, cfg.insert_ratio, rng, similar_VxK)
  hidden = (mask_positions(len(seq), cfg.mask_ratio, rng) if coins[4] < cfg.mask_prob
            else np.zeros(len(seq) - 1, bool))
  return seq, hidden


def segments(inputs_L: np.ndarray, resets_L: np.ndarray) -> list[tuple[int, int]]:
  """(start, end) column ranges of the examples in one row: each starts at column 0 or at a
  reset and ends after its last real input (an augmented row may have gaps between examples).

  Example: inputs [4, 5, 6, 7, 0], resets [F, F, T, F, F] -> [(0, 2), (2, 4)].
  """
  length = len(inputs_L)
  starts = [0] + [int(c) for c in np.flatnonzero(resets_L) if c > 0]
  out = []
  for s, nxt in zip(starts, starts[1:] + [length]):
    real = np.flatnonzero(inputs_L[s:nxt])
    if len(real):
      out.append((s, s + int(real[-1]) + 1))
  return out


def augment_rows(batch: dict[str, np.ndarray], rows_B: np.ndarray, *, cfg: AugmentConfig,
                 seed: int, epoch: int, view: int, similar_VxK: np.ndarray | None
                 ) -> dict[str, np.ndarray]:
  """The augmented copy of a training batch; `rows_B` are its rows' indices in the epoch table.

  Also returns `last_B`: the column of each row's first example's last visible input (the user
  state the contrastive term reads; -1 for an empty row).
  """
  inputs, targets = batch["inputs_BxL"], batch["targets_BxL"]
  b, length = inputs.shape
  out_in = np.zeros_like(inputs)
  out_tg = np.zeros_like(targets)
  out_rs = np.zeros_like(batch["resets_BxL"])
  last_B = np.full((b,), -1, np.int32)
  for r in range(b):
    for j, (s, e) in enumerate(segments(inputs[r], batch["resets_BxL"][r])):
      rng = np.random.default_rng([seed, epoch, int(rows_B[r]), j, view])
      seq = np.append(inputs[r, s:e], targets[r, e - 1])
      seq, hidden = augment_sequence(seq, cfg, rng, similar_VxK)
      n = len(seq) - 1
      out_in[r, s:s + n] = np.where(hidden, 0, seq[:-1])
      out_tg[r, s:s + n] = np.where(hidden, 0, seq[1:])
      if s > 0:
        out_rs[r, s] = True
      if j == 0:
        visible = np.flatnonzero(~hidden)
        last_B[r] = s + int(visible[-1]) if len(visible) else -1
  del length
  return {"inputs_BxL": out_in, "targets_BxL": out_tg, "resets_BxL": out_rs,
          "mask_BxL": out_in > 0, "last_B": last_B}


class AugmentedTrainBatches(pipeline.TrainBatches):
  """`TrainBatches` whose batches are augmented (numpy prefetch; see the module docstring)."""

  def __init__(self, train: Sequences, *, augment: AugmentConfig, num_items: int, **kwargs):
    kwargs["backend"] = "numpy"  # the transforms are numpy: no tf.data graph to run them in
    super().__init__(train, **kwargs)
    self.augment = augment
    self.similar_VxK = (similar_items(train, num_items, augment.similar_items)
                        if augment.needs_similarity else None)

  def augmented(self, batch: dict[str, np.ndarray], rows_B: np.ndarray,
                epoch: int) -> dict[str, np.ndarray]:
    """One batch with the configured augmentation (and the contrastive views)."""
    cfg = self.augment
    common = dict(cfg=cfg, seed=self.seed, epoch=epoch, similar_VxK=self.similar_VxK)
    out = dict(batch)
    if cfg.any_transform and not cfg.views_only:
      main = augment_rows(batch, rows_B, view=0, **common)
      main.pop("last_B")
      out.update(main)
      # The transforms move and replace targets: the logged rewards no longer match them.
      out.pop("rewards_BxL", None)
    if cfg.contrastive_weight > 0:
      for view in (1, 2):
        v = augment_rows(batch, rows_B, view=view, **common)
        out.update({f"view{view}_{k}": x for k, x in v.items()})
    return out

  def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    if not 0 <= skip_batches <= self.steps_per_epoch:
      raise ValueError(f"skip_batches must be in 0..{self.steps_per_epoch}, got {skip_batches}")
    step_rows = self.epoch_rows(epoch)[skip_batches:]
    yield from pipeline.prefetch(
        (self.augmented(self._gather_numpy(idx_B), idx_B, epoch) for idx_B in step_rows),
        self.prefetch)


def train_batches(train: Sequences, *, augment: AugmentConfig | None, num_items: int,
                  **kwargs) -> pipeline.TrainBatches:
  """`TrainBatches`, or `AugmentedTrainBatches` when `augment` turns anything on."""
  if augment is None or not augment.on:
    return pipeline.TrainBatches(train, **kwargs)
  return AugmentedTrainBatches(train, augment=augment, num_items=num_items, **kwargs)
