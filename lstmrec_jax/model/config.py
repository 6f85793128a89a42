"""ModelConfig: the model's hyper-parameters as a frozen dataclass, with no defaults.

configs/base.py's `model` group is the only source of defaults: `ModelConfig.from_mapping` takes
that group (all of it, validated by `config_keys.build_group` like every group) plus the sizes
known only from the data, V (`num_items`; None in a run spec, before the data is read) and L
(`max_len`, for positional embeddings). The model never sees the ConfigDict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lstmrec_jax import config_keys
from lstmrec_jax.model.registry import ENCODERS, ITEM_REPRS

DTYPES = ("float32", "bfloat16")
COLD_ID_MODES = ("drop", "keep")
# The encoders that read `recurrent_weight_dropout` (their layers have a W_hh).
RECURRENT_WEIGHT_ENCODERS = ("lstm", "gru")

# Fields filled in from the data, not from the config group.
DATA_FIELDS = ("num_items", "max_len", "domain_starts")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of SeqRecModel; see configs/base.py's `model` group for each key."""

  num_items: int | None  # V, including the padding item 0; from the data (None: not read yet).
  max_len: int  # L, history length of a row (positional embeddings); from input.max_len.
  # Multi-domain catalogues: the first item id of each domain (ids are contiguous per domain,
  # data/preprocess.py), e.g. (1, 11838); () for a single catalogue. From the data.
  domain_starts: tuple[int, ...]
  encoder: str = config_keys.key(choices=ENCODERS.names)  # a registered encoder
  embed_dim: int
  hidden_size: int
  num_layers: int
  embed_dropout: float
  layer_dropout: float
  output_dropout: float
  residual: bool
  layer_norm: bool
  ffn: bool
  ffn_dim: int
  num_heads: int
  attention_dropout: float
  item_bias: bool
  tied_output: bool
  # Two Q-value heads beside the softmax head (the offline RL losses, losses/rl.py); scoring
  # and serving can rank with either (`head="softmax" | "q"`).
  q_head: bool
  compute_dtype: str = config_keys.key(choices=DTYPES)
  param_dtype: str = config_keys.key(choices=DTYPES)
  hoist_input_projection: bool
  lstm_impl: str
  item_mode: str = config_keys.key(choices=ITEM_REPRS.names)  # a registered item representation
  cold_id: str = config_keys.key(choices=COLD_ID_MODES)
  cold_content_grad: bool
  # DropoutNet-style: each training step this share of the items lose their id part (input and
  # output table alike), so the user state also learns to score items by content alone.
  id_dropout: float
  # AWD-LSTM's weight drop (DropConnect) on the recurrent matrices W_hh of the lstm / gru
  # layers: one mask a training step, shared by every row and position.
  recurrent_weight_dropout: float
  # Variational ("locked") dropout: embed_dropout and output_dropout draw one mask per user
  # history (shared by its positions) instead of one per position.
  locked_dropout: bool
  content_attributes: bool
  content_titles: bool
  max_attributes: int
  title_max_tokens: int
  title_min_count: int
  title_embed_dim: int
  title_hidden_size: int
  # One step of propagation over the item co-occurrence graph (any item mode): each row adds
  # neighbor_weight x the mean of its item_neighbors neighbours' rows (model/content.py).
  item_neighbors: int
  neighbor_weight: float
  neighbor_gradient: bool
  neighbor_window: int
  neighbor_score: str
  # The first-order transition prior (scoring, not training): each item j's score adds
  # transition_weight x log(1 + 100 x c(last, j) / c(last, all)), c counting how often j came
  # within transition_window positions after the user's last item in the training sequences,
  # over the transition_items most frequent next items of each item (0 = off).
  transition_weight: float
  transition_items: int
  transition_window: int
  # Devices the item tables are split over (the `model` axis of a data x model mesh, the
  # vocabulary-parallel softmax of losses/vocab_parallel.py); the tables get zero rows up to a
  # multiple of it (`table_rows`). 1 = every table whole on every device.
  vocab_shards: int

  @property
  def table_rows(self) -> int:
    """Rows of the item parameter tables: V rounded up to a multiple of `vocab_shards`.

    Rows V..table_rows-1 are zero padding: never an input, a class or a ranked item
    (the model's `item_tables` hands out the first V rows unless asked for the padded ones).
    Example: num_items 101, vocab_shards 4 -> 104.
    """
    return -(-self.num_items // self.vocab_shards) * self.vocab_shards

  def __post_init__(self):
    problems = []

    def bad(key, why):
      problems.append(f"model.{key}={getattr(self, key)!r} {why}")

    if self.num_items is not None and self.num_items < 2:
      bad("num_items", "must be >= 2 (padding + one item)")
    for key in ("max_len", "embed_dim", "hidden_size", "num_layers", "num_heads", "vocab_shards",
                "title_max_tokens", "title_min_count", "title_embed_dim", "title_hidden_size"):
      if getattr(self, key) < 1:
        bad(key, "must be >= 1")
    if self.neighbor_window < 1:
      bad("neighbor_window", "must be >= 1")
    if self.transition_weight < 0:
      bad("transition_weight", "must be >= 0")
    for key in ("transition_items", "transition_window"):
      if getattr(self, key) < 1:
        bad(key, "must be >= 1")
    if self.neighbor_score not in ("count", "cosine"):
      bad("neighbor_score", "must be 'count' or 'cosine'")
    for key in ("ffn_dim", "max_attributes", "item_neighbors"):
      if getattr(self, key) < 0:
        bad(key, "must be >= 0")
    for key in ("embed_dropout", "layer_dropout", "output_dropout", "attention_dropout",
                "id_dropout", "recurrent_weight_dropout"):
      if not 0.0 <= getattr(self, key) < 1.0:
        bad(key, "must be in [0, 1)")
    if self.encoder == "transformer" and self.num_heads >= 1 and self.embed_dim % self.num_heads:
      bad("num_heads", f"must divide model.embed_dim={self.embed_dim} (transformer)")
    if not isinstance(self.lstm_impl, str) or not self.lstm_impl:
      bad("lstm_impl", "must be a non-empty string")
    elif not self.hoist_input_projection and self.lstm_impl not in ("xla", "auto"):
      bad("hoist_input_projection", f"False needs model.lstm_impl='xla', not {self.lstm_impl!r}")
    cross_domain = (self.encoder in ENCODERS
                    and getattr(ENCODERS.get(self.encoder), "cross_domain", False))
    if cross_domain and self.num_items is not None and len(self.domain_starts) < 2:
      bad("encoder", "is a cross-domain encoder: it needs a multi-domain dataset (format "
          "crossdomain, or synthetic with num_domains > 1)")
    if self.domain_starts and (list(self.domain_starts) != sorted(self.domain_starts)
                               or self.domain_starts[0] != 1):
      problems.append(f"model.domain_starts={self.domain_starts!r} must start at 1 and increase")
    if self.q_head and self.vocab_shards > 1:
      bad("q_head", "does not combine with model.vocab_shards > 1 (the Q tables are not split)")
    if self.id_dropout and self.item_mode not in ("sum", "gate"):
      bad("id_dropout", f"needs model.item_mode 'sum' or 'gate' (an item with content and an "
          f"id), not {self.item_mode!r}")
    if self.recurrent_weight_dropout and self.encoder not in RECURRENT_WEIGHT_ENCODERS:
      bad("recurrent_weight_dropout", f"needs model.encoder "
          f"{' or '.join(map(repr, RECURRENT_WEIGHT_ENCODERS))} (a recurrent matrix to drop "
          f"from), not {self.encoder!r}; set --config.model.recurrent_weight_dropout=0 "
          "(configs/beauty.py, games.py and auto.py set 0.5)")
    if self.transition_weight and cross_domain:
      bad("transition_weight", "does not combine with a cross-domain encoder yet (its serving "
          "state keeps one user vector per domain)")
    if problems:
      raise ValueError("invalid model config: " + "; ".join(problems))

  @property
  def num_domains(self) -> int:
    """Domains of the catalogue; 0 for a single catalogue."""
    return len(self.domain_starts)

  @classmethod
  def from_mapping(cls, d: Mapping[str, Any], *, num_items: int | None,
                   max_len: int, domain_starts: tuple[int, ...] = ()) -> ModelConfig:
    """ModelConfig from the `model` config group (e.g. `config.model.to_dict()`) and the data.

    Args:
      d: every key of configs/base.py's `model` group, and no other.
      num_items: V from the data, including the padding item 0 (None: not known yet).
      max_len: L, the history length of a row (`input.max_len`).
      domain_starts: the first item id of each domain of a multi-domain catalogue; ().

    Raises:
      ConfigError: naming every unknown and missing `model.<key>`, and every invalid value.
    """
    return config_keys.build_group(
        cls, "model", d, num_items=None if num_items is None else int(num_items),
        max_len=int(max_len), domain_starts=tuple(int(s) for s in domain_starts))
