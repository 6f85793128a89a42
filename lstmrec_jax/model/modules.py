"""Flax NNX modules of the recommender: item representation, LSTM user encoder, scorer.

Shape legend: B batch, L history length, E item embedding size, H LSTM hidden size, G = 4H gates,
V catalog size (including the padding item 0), N flattened positions, F feed-forward width.

The model is called with an explicit dropout key instead of consuming `nnx.Rngs` at call time, so
a train step over `nnx.split(model)` state stays a pure function:

  graphdef, state = nnx.split(model)
  user_BxLxE = nnx.merge(graphdef, state)(inputs_BxL, mask_BxL, resets_BxL,
                                          dropout_key=jax.random.fold_in(key, step))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lstmrec_jax.model import content as content_lib
from lstmrec_jax.model import lstm

_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of SeqRecModel; defaults follow configs/base.py's `model` group."""

  num_items: int  # V, including the padding item 0; filled in from the data.
  embed_dim: int = 64  # E, item embedding and user state size.
  hidden_size: int = 64  # H, LSTM hidden size; projected back to E when H != E.
  num_layers: int = 1  # stacked LSTM layers, >= 1.
  embed_dropout: float = 0.3  # on the input item embeddings, in [0, 1).
  layer_dropout: float = 0.0  # between LSTM layers, in [0, 1).
  output_dropout: float = 0.3  # on the user state before scoring, in [0, 1).
  residual: bool = False  # residual around each LSTM layer whose input and output sizes match.
  layer_norm: bool = False  # LayerNorm on the user state.
  ffn: bool = False  # position-wise feed-forward block (E -> F -> E, GELU) with a residual.
  ffn_dim: int = 0  # F, feed-forward width; 0 means 4 * embed_dim.
  item_bias: bool = False  # a learned per-item score bias.
  tied_output: bool = True  # score against the input item table; False: a separate V x E table.
  compute_dtype: str = "float32"  # matmul operand dtype: "float32" | "bfloat16".
  param_dtype: str = "float32"  # parameter storage dtype: "float32" | "bfloat16".
  hoist_input_projection: bool = True  # one input matmul for all steps (False: inside the scan).
  lstm_impl: str = "xla"  # "xla", "auto" or a name known to kernels.dispatch ("pallas", ...).
  # Item representation (model/content.py); "id" keeps the plain ItemEmbedding.
  item_mode: str = "id"  # "id" | "content" | "sum" (id + content) | "gate" (learned mix).
  cold_id: str = "drop"  # items without training events: "drop" the id part, or "keep" it.
  cold_content_grad: bool = True  # items without training events (negatives only) train content.
  # DropoutNet-style: each training step this share of the items lose their id part (input and
  # output table alike), so the user state also learns to score items by content alone, as cold
  # items are scored. "sum" and "gate" only; needs the step to pass `id_keep_mask(key)` along.
  id_dropout: float = 0.0
  content_attributes: bool = True  # attribute / tag / genre sets, when the data has them.
  content_titles: bool = True  # title text through an LSTM, when the data has titles.
  max_attributes: int = 0  # A, attributes kept per item; 0 means the longest set.
  title_max_tokens: int = 16  # T cap, tokens kept per title.
  title_min_count: int = 2  # vocabulary: a word needs this many training items' titles (>= 1).
  title_embed_dim: int = 64  # D, title token embedding size.
  title_hidden_size: int = 64  # title LSTM hidden size.

  def __post_init__(self):
    problems = []
    if self.num_items < 2:
      problems.append(f"num_items={self.num_items} must be >= 2 (padding + one item)")
    for name in ("embed_dim", "hidden_size", "num_layers"):
      if getattr(self, name) < 1:
        problems.append(f"{name}={getattr(self, name)} must be >= 1")
    if self.ffn_dim < 0:
      problems.append(f"ffn_dim={self.ffn_dim} must be >= 0")
    for name in ("embed_dropout", "layer_dropout", "output_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        problems.append(f"{name}={getattr(self, name)} must be in [0, 1)")
    for name in ("compute_dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        problems.append(f"{name}={getattr(self, name)!r} must be one of {_DTYPES}")
    if not isinstance(self.lstm_impl, str) or not self.lstm_impl:
      problems.append(f"lstm_impl={self.lstm_impl!r} must be a non-empty string")
    if self.item_mode not in content_lib.ITEM_MODES:
      problems.append(f"item_mode={self.item_mode!r} must be one of {content_lib.ITEM_MODES}")
    if self.cold_id not in content_lib.COLD_ID_MODES:
      problems.append(f"cold_id={self.cold_id!r} must be one of {content_lib.COLD_ID_MODES}")
    for name in ("title_max_tokens", "title_min_count", "title_embed_dim", "title_hidden_size"):
      if getattr(self, name) < 1:
        problems.append(f"{name}={getattr(self, name)} must be >= 1")
    if self.max_attributes < 0:
      problems.append(f"max_attributes={self.max_attributes} must be >= 0")
    if not 0.0 <= self.id_dropout < 1.0:
      problems.append(f"id_dropout={self.id_dropout} must be in [0, 1)")
    elif self.id_dropout and self.item_mode not in ("sum", "gate"):
      problems.append(f"id_dropout={self.id_dropout} needs item_mode 'sum' or 'gate' (an item "
                      f"with content and an id), not {self.item_mode!r}")
    if not self.hoist_input_projection and self.lstm_impl not in ("xla", "auto"):
      problems.append(f"hoist_input_projection=False needs lstm_impl='xla', not "
                      f"{self.lstm_impl!r}")
    if problems:
      raise ValueError("invalid ModelConfig: " + "; ".join(problems))


_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def model_config_from_dict(d: Mapping[str, Any], num_items: int) -> ModelConfig:
  """ModelConfig from a plain mapping (e.g. `cfg.model.to_dict()`) and the catalog size.

  Args:
    d: the model config group; every key must be a ModelConfig field. A `num_items` key, if
      present and not None, must equal `num_items`.
    num_items: V from the data, including the padding item 0.

  Returns:
    The validated ModelConfig.

  Raises:
    ValueError: on unknown keys (all named), a conflicting num_items or invalid values.
  """
  unknown = sorted(set(d) - set(_FIELDS))
  if unknown:
    raise ValueError(f"unknown model config keys {unknown}; known keys: {list(_FIELDS)}")
  kwargs = dict(d)
  given = kwargs.pop("num_items", None)
  if given is not None and int(given) != int(num_items):
    raise ValueError(f"model config says num_items={given} but the data has {num_items}")
  return ModelConfig(num_items=int(num_items), **kwargs)


def model_config_from_config(cfg_model: Any, num_items: int) -> ModelConfig:
  """Like `model_config_from_dict` for anything with `.to_dict()` (a ConfigDict) or a mapping."""
  d = cfg_model.to_dict() if hasattr(cfg_model, "to_dict") else cfg_model
  return model_config_from_dict(d, num_items)


class ItemEmbedding(nnx.Module):
  """Item representation from ids alone: one V x E table; row 0 (padding) is never used.

  This is the extension point for item content: a replacement needs `table() -> VxE` and
  `lookup(ids) -> ...xE` (zeros for id 0), and SeqRecModel uses nothing else.
  """

  def __init__(self, num_items: int, embed_dim: int, *, param_dtype, rngs: nnx.Rngs):
    # std 1/sqrt(E) gives unit-norm embeddings: O(1) LSTM inputs and dot-product scores.
    init = jax.nn.initializers.normal(stddev=embed_dim ** -0.5)
    self.embedding = nnx.Param(init(rngs.params(), (num_items, embed_dim), param_dtype))

  # id_keep_V: HybridItemRepr's id-dropout mask; an id-only item has nothing to fall back to,
  # so ModelConfig refuses id_dropout here and the mask is always None.
  def table(self, id_keep_V: jax.Array | None = None) -> jax.Array:
    """The V x E item table."""
    del id_keep_V
    return self.embedding[...]

  def lookup(self, ids: jax.Array, id_keep_V: jax.Array | None = None) -> jax.Array:
    """Embeddings of `ids` (any shape) with zeros for the padding id 0."""
    del id_keep_V
    emb = jnp.take(self.embedding[...], ids, axis=0)
    return jnp.where((ids > 0)[..., None], emb, 0).astype(emb.dtype)


class LSTMLayerParams(nnx.Module):
  """One LSTM layer's parameters, consumed by `lstm.lstm_stack`."""

  def __init__(self, input_size: int, hidden_size: int, *, param_dtype, rngs: nnx.Rngs):
    params = lstm.init_lstm_params(rngs.params(), input_size, hidden_size, param_dtype)
    self.w_ih = nnx.Param(params["w_ih"])
    self.w_hh = nnx.Param(params["w_hh"])
    self.b = nnx.Param(params["b"])

  def as_dict(self) -> dict[str, jax.Array]:
    """{"w_ih", "w_hh", "b"} arrays as `lstm.lstm_layer` takes them."""
    return {"w_ih": self.w_ih[...], "w_hh": self.w_hh[...], "b": self.b[...]}


class SeqRecModel(nnx.Module):
  """Item embeddings -> LSTM user encoder -> user states scored against an item table."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs,
               item_content: content_lib.ContentInputs | None = None):
    self.cfg = cfg
    param_dtype = jnp.dtype(cfg.param_dtype)
    compute_dtype = jnp.dtype(cfg.compute_dtype)
    e, h = cfg.embed_dim, cfg.hidden_size
    if cfg.item_mode == "id":
      self.item_repr = ItemEmbedding(cfg.num_items, e, param_dtype=param_dtype, rngs=rngs)
    else:
      if item_content is None:
        raise ValueError(f"item_mode={cfg.item_mode!r} needs item content arrays: build the model "
                         "with train.loop.model_kwargs(dataset, cfg), or pass item_content=")
      self.item_repr = content_lib.HybridItemRepr(
          cfg.num_items, e, item_content, mode=cfg.item_mode, cold_id=cfg.cold_id,
          cold_content_grad=cfg.cold_content_grad,
          use_attributes=cfg.content_attributes, use_titles=cfg.content_titles,
          title_embed_dim=cfg.title_embed_dim, title_hidden_size=cfg.title_hidden_size,
          param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    self.lstm_layers = nnx.List([
        LSTMLayerParams(e if i == 0 else h, h, param_dtype=param_dtype, rngs=rngs)
        for i in range(cfg.num_layers)])
    self.proj = (nnx.Linear(h, e, dtype=compute_dtype, param_dtype=param_dtype, rngs=rngs)
                 if h != e else None)
    if cfg.ffn:
      f = cfg.ffn_dim or 4 * e
      self.ffn_in = nnx.Linear(e, f, dtype=compute_dtype, param_dtype=param_dtype, rngs=rngs)
      self.ffn_out = nnx.Linear(f, e, dtype=compute_dtype, param_dtype=param_dtype, rngs=rngs)
    else:
      self.ffn_in = self.ffn_out = None
    # LayerNorm statistics in f32 whatever the compute dtype.
    self.norm = (nnx.LayerNorm(e, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)
                 if cfg.layer_norm else None)
    if cfg.tied_output:
      self.output_embedding = None
    else:
      init = jax.nn.initializers.normal(stddev=e ** -0.5)
      self.output_embedding = nnx.Param(init(rngs.params(), (cfg.num_items, e), param_dtype))
    self.bias = (nnx.Param(jnp.zeros((cfg.num_items,), param_dtype)) if cfg.item_bias else None)

  def id_keep_mask(self, dropout_key: jax.Array | None) -> jax.Array | None:
    """bool (V,): items that keep their id part this step; None without id dropout or key."""
    if dropout_key is None or not self.cfg.id_dropout:
      return None
    key = jax.random.fold_in(dropout_key, 0x1D)  # a stream apart from the activation dropouts
    return jax.random.bernoulli(key, 1.0 - self.cfg.id_dropout, (self.cfg.num_items,))

  def __call__(self, inputs_BxL: jax.Array, mask_BxL: jax.Array,
               resets_BxL: jax.Array | None = None, *,
               dropout_key: jax.Array | None = None,
               id_keep_V: jax.Array | None = None) -> jax.Array:
    """Encodes histories into one user state per position.

    Args:
      inputs_BxL: item ids, 0 at padding.
      mask_BxL: True at real positions.
      resets_BxL: True where a new user's history starts inside a packed row; None for none.
      dropout_key: PRNG key enabling dropout (e.g. `jax.random.fold_in(key, step)`); None for
        evaluation.
      id_keep_V: `id_keep_mask(dropout_key)` for id dropout (pass the same mask to
        `item_table`); None for none.

    Returns:
      user_BxLxE in f32: the state after each position's item, zeros at padded positions.
    """
    cfg = self.cfg
    mask_BxL = mask_BxL.astype(bool)
    k_embed = k_layers = k_out = None
    if dropout_key is not None:
      k_embed, k_layers, k_out = jax.random.split(dropout_key, 3)
    x_BxLxE = self.item_repr.lookup(inputs_BxL, id_keep_V)
    x_BxLxE = jnp.where(mask_BxL[..., None], x_BxLxE, 0).astype(x_BxLxE.dtype)
    x_BxLxE = lstm.dropout(k_embed, x_BxLxE, cfg.embed_dropout)
    h_BxLxH, _ = lstm.lstm_stack(
        [layer.as_dict() for layer in self.lstm_layers], x_BxLxE, mask_BxL, resets_BxL,
        dropout_rate=cfg.layer_dropout, dropout_key=k_layers, residual=cfg.residual,
        hoist=cfg.hoist_input_projection, compute_dtype=jnp.dtype(cfg.compute_dtype),
        impl=cfg.lstm_impl)
    u_BxLxE = self.proj(h_BxLxH) if self.proj is not None else h_BxLxH
    u_BxLxE = u_BxLxE.astype(jnp.float32)
    if self.ffn_in is not None:
      u_BxLxE = u_BxLxE + self.ffn_out(jax.nn.gelu(self.ffn_in(u_BxLxE))).astype(jnp.float32)
    if self.norm is not None:
      u_BxLxE = self.norm(u_BxLxE).astype(jnp.float32)
    u_BxLxE = lstm.dropout(k_out, u_BxLxE, cfg.output_dropout)
    # Projection, FFN and norm biases would otherwise make padded positions nonzero.
    return jnp.where(mask_BxL[..., None], u_BxLxE, 0.0)

  def item_table(self, id_keep_V: jax.Array | None = None) -> jax.Array:
    """The V x E output item table: the input table when tied, else the separate one.

    id_keep_V: the step's id-dropout mask (`id_keep_mask`), None for none.
    """
    if self.output_embedding is None:
      return self.item_repr.table(id_keep_V)
    return self.output_embedding[...]

  def item_bias(self) -> jax.Array | None:
    """The per-item score bias (V,), or None without one."""
    return None if self.bias is None else self.bias[...]

  def score(self, user_NxE: jax.Array) -> jax.Array:
    """Logits of every item for each user state (any leading shape), f32; padding item 0 is -inf."""
    logits_NxV = jnp.einsum("...e,ve->...v", user_NxE.astype(jnp.float32),
                            self.item_table().astype(jnp.float32))
    bias_V = self.item_bias()
    if bias_V is not None:
      logits_NxV = logits_NxV + bias_V.astype(jnp.float32)
    return logits_NxV.at[..., 0].set(-jnp.inf)
