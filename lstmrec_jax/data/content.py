"""Item content as padded id arrays (attribute sets, title tokens) and the cold-item split.

Shape legend: `V` catalog size including the padding id 0, `A` attributes per item, `T` title
tokens per item, `N` flattened events, `U` users.

Content arrays are built from the *training* data only, as a real deployment would: the title
vocabulary counts words in the titles of items that have a training interaction, and attributes
that no such item carries are dropped. A cold item (no training interaction) therefore brings no
feature the model could not have learned, and an evaluation on cold items measures
generalisation, not memorised ids.

  tokenize("Shawshank Redemption, The (1994)") -> ["shawshank", "redemption", "the", "1994"]
  item_content(dataset) -> ItemContent(attrs_VxA, tokens_VxT, vocab, known_V, ...)
  cold_item_split(dataset, fraction=0.1, seed=0) -> SequenceDataset without the cold items'
    training events (they stay in the catalog and as validation / test targets)

numpy only: no tensorflow, no jax.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Sequence

from absl import logging
import numpy as np

from lstmrec_jax.errors import DataError
from lstmrec_jax.data.preprocess import EvalSplit
from lstmrec_jax.data.preprocess import SequenceDataset
from lstmrec_jax.data.preprocess import Sequences

PAD = 0  # padding id of attributes and tokens
UNK = 1  # title token id of words outside the vocabulary
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, any script


def tokenize(text: str) -> list[str]:
  """Lowercase word tokens: runs of letters and digits.

  Example: tokenize("Toy Story (1995)") -> ["toy", "story", "1995"];
  tokenize("L'Oréal Paris") -> ["l", "oréal", "paris"].
  """
  return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Title vocabulary: `tokens[i]` is the word of id i; ids 0 (padding) and 1 (unknown) reserved."""

  tokens: tuple[str, ...]

  def __post_init__(self):
    if self.tokens[:2] != ("<pad>", "<unk>"):
      raise ValueError(f"a Vocab starts with ('<pad>', '<unk>'), got {self.tokens[:2]}")
    object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)})

  def __len__(self) -> int:
    return len(self.tokens)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, UNK for unknown words, e.g. [5, 1, 9]."""
    return [self._ids.get(t, UNK) for t in tokenize(text)]


def build_vocab(texts: Iterable[str], *, min_count: int = 2, max_size: int = 0) -> Vocab:
  """Words found in at least `min_count` of `texts`, most frequent first (ties alphabetical).

  Counting documents rather than occurrences keeps one long title from inflating a word.

  Args:
    texts: the training texts (titles of items with a training interaction).
    min_count: documents a word needs to get its own id (>= 1).
    max_size: cap on the vocabulary size including the two reserved ids (0 = no cap).

  Returns:
    The Vocab.
  """
  if min_count < 1:
    raise ValueError(f"min_count must be >= 1, got {min_count}")
  if max_size and max_size < 2:
    raise ValueError(f"max_size must be 0 (no cap) or >= 2, got {max_size}")
  counts = collections.Counter()
  for text in texts:
    counts.update(set(tokenize(text)))
  words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
  if max_size:
    words = words[:max_size - 2]
  return Vocab(("<pad>", "<unk>", *words))


def padded_rows(rows: Sequence[Sequence[int]] | Sequences, width: int) -> np.ndarray:
  """Left-aligned rows cut to `width` and 0-padded, int32 [R, width].

  Example: padded_rows([[3, 4, 5], [], [7]], 2) -> [[3, 4], [0, 0], [7, 0]].
  """
  if width < 1:
    raise ValueError(f"width must be >= 1, got {width}")
  out = np.zeros((len(rows), width), np.int32)
  for r in range(len(rows)):
    row = np.asarray(rows[r], np.int32)[:width]
    out[r, :len(row)] = row
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class ItemContent:
  """Padded content arrays over dense item ids (row 0, the padding item, is all padding)."""

  attrs_VxA: np.ndarray | None  # int32 attribute ids from 1, 0 pad; None: not used / none
  num_attrs: int  # attribute table size including the padding id 0
  tokens_VxT: np.ndarray | None  # int32 title token ids (1 = unknown), right-padded; None: unused
  vocab: Vocab | None  # the title vocabulary, built from training items' titles
  known_V: np.ndarray  # bool: the item has at least one training interaction

  @property
  def has_content(self) -> bool:
    return self.attrs_VxA is not None or self.tokens_VxT is not None


def known_items(dataset: SequenceDataset) -> np.ndarray:
  """Bool [V]: items with at least one training interaction (never the padding item)."""
  known_V = np.asarray(dataset.item_counts_V) > 0
  known_V[0] = False
  return known_V


def attribute_array(dataset: SequenceDataset, *, max_attrs: int = 0,
                    known_V: np.ndarray | None = None) -> np.ndarray:
  """Padded attribute ids [V, A]; attributes carried by no known item are dropped.

  Args:
    dataset: the SequenceDataset (its `item_attrs` CSR).
    max_attrs: A, attributes kept per item in file order (0 = the longest set).
    known_V: items whose attributes form the vocabulary; default `known_items(dataset)`.

  Returns:
    int32 [V, A], A >= 1.
  """
  known_V = known_items(dataset) if known_V is None else known_V
  attrs = dataset.item_attrs
  owner_N = np.repeat(np.arange(len(attrs)), attrs.lengths_U)
  seen_A = np.zeros(max(dataset.num_attrs, 1), bool)
  seen_A[attrs.items_N[known_V[owner_N]]] = True
  seen_A[PAD] = False
  keep_N = seen_A[attrs.items_N]
  kept = Sequences.from_lengths(np.bincount(owner_N[keep_N], minlength=len(attrs)),
                                attrs.items_N[keep_N])
  dropped = int(np.unique(attrs.items_N[~keep_N]).size)
  if dropped:
    logging.info("item content: %d of %d attributes occur on no item with a training interaction;"
                 " dropped", dropped, dataset.num_attrs - 1)
  width = max_attrs or max(int(kept.lengths_U.max(initial=0)), 1)
  return padded_rows(kept, width)


def title_tokens(dataset: SequenceDataset, *, min_count: int = 2, max_tokens: int = 16,
                 max_vocab: int = 0,
                 known_V: np.ndarray | None = None) -> tuple[np.ndarray, Vocab]:
  """Title token ids [V, T] (right-padded, cut to T) and the vocabulary of known items' titles.

  Args:
    dataset: the SequenceDataset (its `item_titles`).
    min_count: titles of known items a word must occur in to get an id (else UNK).
    max_tokens: T cap; T is the longest encoded title up to this.
    max_vocab: vocabulary size cap including the reserved ids (0 = no cap).
    known_V: items whose titles build the vocabulary; default `known_items(dataset)`.

  Returns:
    (int32 [V, T] with T >= 1, Vocab).
  """
  known_V = known_items(dataset) if known_V is None else known_V
  titles = dataset.item_titles
  vocab = build_vocab((titles[i] for i in np.flatnonzero(known_V)), min_count=min_count,
                      max_size=max_vocab)
  encoded = [vocab.encode(t) if i > 0 else [] for i, t in enumerate(titles)]
  width = max(min(max(map(len, encoded), default=0), max_tokens), 1)
  return padded_rows(encoded, width), vocab


def item_content(dataset: SequenceDataset, *, attributes: bool = True, titles: bool = True,
                 max_attrs: int = 0, title_min_count: int = 2, title_max_tokens: int = 16,
                 title_max_vocab: int = 0) -> ItemContent:
  """The content arrays a hybrid model is built with; parts the data lacks are None.

  Args:
    dataset: a SequenceDataset (possibly after `cold_item_split`).
    attributes: use the item attribute sets (genres, categories, brands, list columns).
    titles: use the item titles.
    max_attrs, title_min_count, title_max_tokens, title_max_vocab: see `attribute_array` and
      `title_tokens`.

  Returns:
    The ItemContent; `attrs_VxA` is None when unused or when no item has an attribute,
    `tokens_VxT` likewise for titles.
  """
  known_V = known_items(dataset)
  attrs_VxA = tokens_VxT = vocab = None
  if attributes and len(dataset.item_attrs.items_N):
    attrs_VxA = attribute_array(dataset, max_attrs=max_attrs, known_V=known_V)
    if not attrs_VxA.any():
      attrs_VxA = None
  if titles and any(dataset.item_titles):
    tokens_VxT, vocab = title_tokens(dataset, min_count=title_min_count,
                                     max_tokens=title_max_tokens, max_vocab=title_max_vocab,
                                     known_V=known_V)
    if len(vocab) <= 2:
      tokens_VxT = vocab = None  # every word unknown: nothing to learn from
  return ItemContent(attrs_VxA=attrs_VxA, num_attrs=max(int(dataset.num_attrs), 1),
                     tokens_VxT=tokens_VxT, vocab=vocab, known_V=known_V)


# ----------------------------------------------------------------------------- cold items


def choose_cold_items(num_items: int, fraction: float, seed: int) -> np.ndarray:
  """Sorted ids of round(fraction * (V - 1)) items drawn uniformly from 1..V-1 with `seed`.

  Depends only on (num_items, fraction, seed), so every run on one dataset agrees.
  """
  if not 0.0 < fraction < 1.0:
    raise DataError(f"cold item fraction must be in (0, 1), got {fraction}")
  count = int(round(fraction * (num_items - 1)))
  if count < 1:
    raise DataError(f"cold item fraction {fraction} of {num_items - 1} items selects none")
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC01D]))
  return np.sort(rng.choice(np.arange(1, num_items), size=count, replace=False)).astype(np.int32)


def _drop_items(seqs: Sequences, drop_V: np.ndarray, prefix_U: np.ndarray | None = None):
  """Removes items with drop_V from each row, or only from its first prefix_U[r] events."""
  lengths_U = seqs.lengths_U
  row_N = np.repeat(np.arange(len(seqs)), lengths_U)
  keep_N = ~drop_V[seqs.items_N]
  if prefix_U is not None:
    pos_N = np.arange(len(seqs.items_N)) - seqs.offsets_U1[row_N]
    keep_N |= pos_N >= prefix_U[row_N]
  return (Sequences.from_lengths(np.bincount(row_N[keep_N], minlength=len(seqs)),
                                 seqs.items_N[keep_N]), int((~keep_N).sum()))


def cold_item_split(dataset: SequenceDataset, *, fraction: float = 0.1,
                    seed: int = 0) -> SequenceDataset:
  """Removes a random `fraction` of items from training entirely (cold-start evaluation).

  Every training event of a cold item is removed from the training sequences, and from the
  training part of each evaluation history (the events that were training events: each history
  starts with its user's training sequence, in both the leave-one-out and the temporal split).
  Events after the training part stay, so a cold item can be a validation or test target, and a
  validation target that is cold stays in the test history (the user did interact with it before
  the test event). `item_counts_V` is recomputed: 0 for every cold item. Users whose training
  sequence becomes empty keep their evaluation examples with an empty (validation) history: the
  new-user case.

  The cold ids are in `stats["cold_item_ids"]` (also `cold_items(dataset)`).

  Args:
    dataset: a SequenceDataset from `build_dataset` / `load_dataset`.
    fraction: share of the catalog (items 1..V-1) made cold, in (0, 1).
    seed: the draw; the split depends only on (dataset, fraction, seed).

  Returns:
    A new SequenceDataset over the same catalog and users.
  """
  cold = choose_cold_items(dataset.num_items, fraction, seed)
  cold_V = np.zeros(dataset.num_items, bool)
  cold_V[cold] = True
  train, removed = _drop_items(dataset.train, cold_V)
  # The rewards of the training events that stay (`_drop_items` keeps the rest in order).
  train_rewards_N = dataset.train_rewards()[~cold_V[dataset.train.items_N]]
  train_len_U = dataset.train.lengths_U

  def split_without(split: EvalSplit, name: str) -> EvalSplit:
    prefix_X = train_len_U[split.users_U]
    hist = split.history
    for x in range(len(split)):
      if not np.array_equal(hist[x][:prefix_X[x]], dataset.train[split.users_U[x]]):
        raise DataError(f"{dataset.source}: the {name} history of user {split.users_U[x]} does"
                        " not start with their training sequence; cannot remove cold items")
    history, _ = _drop_items(hist, cold_V, prefix_X)
    return dataclasses.replace(split, history=history)

  valid, test = split_without(dataset.valid, "valid"), split_without(dataset.test, "test")
  counts_V = np.bincount(train.items_N, minlength=dataset.num_items).astype(np.int64)
  stats = dict(dataset.stats)
  stats.update(cold_fraction=float(fraction), cold_seed=int(seed), cold_items=int(len(cold)),
               cold_removed_train_events=removed, cold_item_ids=cold.tolist(),
               cold_valid_targets=int(cold_V[valid.targets_U].sum()),
               cold_test_targets=int(cold_V[test.targets_U].sum()),
               cold_empty_train_users=int((train.lengths_U == 0).sum()))
  out = dataclasses.replace(dataset, train=train, valid=valid, test=test, item_counts_V=counts_V,
                            stats=stats, train_rewards_N=train_rewards_N)
  logging.info("cold split (fraction %g, seed %d): %d cold items, %d training events removed, "
               "%d valid / %d test targets cold, %d users left without training events",
               fraction, seed, len(cold), removed, stats["cold_valid_targets"],
               stats["cold_test_targets"], stats["cold_empty_train_users"])
  return out


def cold_items(dataset: SequenceDataset) -> np.ndarray:
  """The cold item ids of a dataset from `cold_item_split` (empty for any other dataset)."""
  return np.asarray(dataset.stats.get("cold_item_ids", []), np.int32)
