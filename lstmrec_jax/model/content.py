"""Item content towers and the hybrid item representation (id embedding and/or content).

Shape legend: V catalog size (including the padding item 0), A attributes per item, T title
tokens per item, E item embedding size, D title token embedding size, H title LSTM hidden size.

`HybridItemRepr` is a drop-in for `modules.ItemEmbedding` (same `table(id_keep_V)`), built
from padded content arrays that it keeps as `ContentConst` variables: they are not `nnx.Param`,
so `nnx.split(model, nnx.Param, ...)` puts them in the constants that every step receives
unchanged, and they are never trained or checkpointed (they are rebuilt from the data).

  content_VxE = mean over the item's attributes of an attribute embedding   (embedding bag)
              + Linear(final state of an LSTM over the title's token embeddings)
  mode "content": item = content
  mode "sum":     item = id + content
  mode "gate":    item = g * id + (1 - g) * content, g = sigmoid(Linear([id, content])) per dim

The whole catalog's table is computed once per step (`SeqRecModel.item_tables`) and passed
explicitly to the model call, which gathers the positions' rows from it: the content towers
never run per position, and nothing is cached between calls.

Cold items. An item with no training interaction never gets a positive gradient on its id
embedding, only the push-down it receives as a softmax negative, so in "sum" / "gate" its id part
is noise at best. With `cold_id="drop"` (the default) the id part of every item with no training
interaction is zeroed, in training and in scoring alike, so such an item is represented (and
ranked) by its content alone; `cold_id="keep"` leaves the id embedding in. Such an item is still
a negative of the training softmax: it is in the catalog, and the model cannot tell a training
step from an evaluation (the item table has no dropout key). With `cold_content_grad=True` (the
default) that negative trains the content towers like any other; `False` makes its content row a
stop-gradient, so the towers cannot learn to single out and bury the items without interactions
(a title LSTM can: titles are nearly unique), but then nothing keeps those rows from taking
softmax mass the model cannot push back, and training degrades. Both are measured in
docs/results.md; excluding such items from the training softmax needs a training flag here.

Parameter compatibility between modes: the id table is `embedding`, exactly as in
`ItemEmbedding`, so an id-only model's `item_repr.embedding` loads into the id part of a "sum" or
"gate" model, "sum" parameters load into a "gate" model (the gate then starts fresh), and a
"content" model's towers load into "sum" / "gate"; see `load_matching`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstmrec_jax import core
from lstmrec_jax.model.config import COLD_ID_MODES
from lstmrec_jax.model.registry import register_item_repr
from lstmrec_jax.mesh import pad_rows
from lstmrec_jax.model.tables import table_param

CONTENT_MODES = ("content", "sum", "gate")


class ContentConst(nnx.Variable):
  """An item content array built from the data: a step constant, not trained, not checkpointed."""


@dataclasses.dataclass(frozen=True, eq=False)
class ContentInputs:
  """The data-derived arrays a hybrid item representation is built from (numpy or jax)."""

  known_V: Any  # bool [V]: the item has a training interaction
  attrs_VxA: Any = None  # int [V, A] attribute ids from 1, 0 pad; None: no attributes
  num_attrs: int = 1  # attribute table size including the padding id 0
  tokens_VxT: Any = None  # int [V, T] title token ids, right-padded with 0; None: no titles
  vocab_size: int = 2  # token table size including padding (0) and unknown (1)
  # int [V, K] co-occurring item ids from 1, 0 pad (model.item_neighbors); None: no propagation
  neighbors_VxK: Any = None
  # The transition prior (model.transition_weight; `cooccurrence.transition_lists`): int [V, K]
  # the items that came next, 0 pad, and f32 [V, K] their log-shares; None: no prior.
  transition_ids_VxK: Any = None
  transition_logp_VxK: Any = None

  def __post_init__(self):
    num_items = np.shape(self.known_V)[0]
    if (self.attrs_VxA is None and self.tokens_VxT is None and self.neighbors_VxK is None
        and self.transition_ids_VxK is None):
      raise ValueError("ContentInputs has neither attributes, title tokens, neighbours nor "
                       "transitions")
    if (self.transition_ids_VxK is None) != (self.transition_logp_VxK is None) or (
        self.transition_ids_VxK is not None
        and np.shape(self.transition_ids_VxK) != np.shape(self.transition_logp_VxK)):
      raise ValueError("transition_ids_VxK and transition_logp_VxK go together, of one shape")
    for name, arr, size in (("attrs_VxA", self.attrs_VxA, self.num_attrs),
                            ("tokens_VxT", self.tokens_VxT, self.vocab_size),
                            ("neighbors_VxK", self.neighbors_VxK, num_items),
                            ("transition_ids_VxK", self.transition_ids_VxK, num_items)):
      if arr is None:
        continue
      if np.ndim(arr) != 2 or np.shape(arr)[0] != num_items:
        raise ValueError(f"{name} has shape {np.shape(arr)}; expected ({num_items}, ...)")
      hi = int(np.max(arr)) if np.size(arr) else 0
      if int(np.min(arr, initial=0)) < 0 or hi >= size:
        raise ValueError(f"{name} ids must be in [0, {size}), got max {hi}")


def _normal(stddev: float):
  return jax.nn.initializers.normal(stddev=stddev)


class AttributeBag(nnx.Module):
  """Mean of the attribute embeddings of each item over its real (non-zero) attribute ids."""

  def __init__(self, attrs_VxA, num_attrs: int, embed_dim: int, *, param_dtype,
               rngs: nnx.Rngs):
    self.attrs_VxA = ContentConst(jnp.asarray(attrs_VxA, jnp.int32))
    # std 1/sqrt(E) like the id table: a one-attribute item starts with a unit-norm vector.
    self.embedding = nnx.Param(
        _normal(embed_dim ** -0.5)(rngs.params(), (num_attrs, embed_dim), param_dtype))

  def __call__(self, ids_R: jax.Array | None = None) -> jax.Array:
    """content_VxE in f32 (or the rows of the items `ids_R` only); zeros without attributes."""
    ids_VxA = self.attrs_VxA[...] if ids_R is None else jnp.take(self.attrs_VxA[...], ids_R, 0)
    return attribute_mean(self.embedding[...], ids_VxA)


def attribute_mean(table_NxE: jax.Array, ids_VxA: jax.Array) -> jax.Array:
  """Mean of `table_NxE`'s rows at each row's non-zero ids in f32 (zeros where there are none).

  One gather per attribute slot, summed slot by slot: XLA fuses each one-index gather from the
  (small) attribute table into the sum, so the V x A x E array of a gather of every (item, slot)
  is never written out.
  """
  real_VxA = ids_VxA > 0
  sum_VxE = jnp.zeros((ids_VxA.shape[0], table_NxE.shape[1]), jnp.float32)
  for a in range(ids_VxA.shape[1]):
    rows_VxE = jnp.take(table_NxE, ids_VxA[:, a], axis=0).astype(jnp.float32)
    # where, not a multiply: a non-finite padding row must not leak through 0 * inf.
    sum_VxE = sum_VxE + jnp.where(real_VxA[:, a, None], rows_VxE, 0.0)
  count_V = real_VxA.sum(axis=1, dtype=jnp.float32)
  return sum_VxE / jnp.maximum(count_V, 1.0)[:, None]


# Width of the reverse neighbour lists the propagation's backward gathers through (items listed
# by more items than this take the rest through a small scatter-add).
REVERSE_WIDTH = 16


def reverse_neighbors(neighbors_VxK: np.ndarray, width: int = REVERSE_WIDTH
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The transpose of the neighbour lists, for the propagation's backward as gathers.

  Returns (reverse_VxD: for each item n, up to `width` items v whose lists hold n, 0 pad, in
  order of v; overflow_src_O, overflow_dst_O: the remaining (v, n) pairs), int32.
  Example: lists [[0, 0], [2, 3], [1, 0], [1, 2]], width 1 -> reverse [[0], [2], [1], [1]],
  overflow (src [3], dst [1]) and (src [3], dst [2]).
  """
  nb = np.asarray(neighbors_VxK, np.int64)
  v, k = np.nonzero(nb > 0)
  n = nb[v, k]
  order = np.lexsort((v, n))
  v, n = v[order], n[order]
  rank = np.arange(len(n)) - np.searchsorted(n, n)  # place of v among n's listers
  reverse = np.zeros((nb.shape[0], width), np.int32)
  fit = rank < width
  reverse[n[fit], rank[fit]] = v[fit]
  return reverse, v[~fit].astype(np.int32), n[~fit].astype(np.int32)


@jax.custom_vjp
def _propagate(table_VxE, weight_V, neighbors_VxK, reverse_VxD, overflow_src_O, overflow_dst_O):
  """table + weight_V x (mean of the neighbours' rows); the backward gathers through the reverse
  lists instead of scatter-adding into the table (on a CPU, where XLA's scatter-add is a serial
  loop, the backward alone ran 10x faster at 12,101 x 256; the step 5-7%, docs/results.md)."""
  del reverse_VxD, overflow_src_O, overflow_dst_O
  return table_VxE + weight_V[:, None] * attribute_mean(table_VxE, neighbors_VxK)


def _propagate_fwd(table_VxE, weight_V, neighbors_VxK, reverse_VxD, overflow_src_O,
                   overflow_dst_O):
  out = _propagate(table_VxE, weight_V, neighbors_VxK, reverse_VxD, overflow_src_O,
                   overflow_dst_O)
  return out, (weight_V, neighbors_VxK, reverse_VxD, overflow_src_O, overflow_dst_O)


def _propagate_bwd(residuals, g_VxE):
  weight_V, neighbors_VxK, reverse_VxD, overflow_src_O, overflow_dst_O = residuals
  count_V = (neighbors_VxK > 0).sum(axis=1, dtype=jnp.float32)
  # Row v's share for each of its neighbours; zero for rows without neighbours (the pad id 0).
  h_VxE = jnp.where((count_V > 0)[:, None],
                    g_VxE * (weight_V / jnp.maximum(count_V, 1.0))[:, None], 0.0)
  d_VxE = g_VxE
  for j in range(reverse_VxD.shape[1]):
    d_VxE = d_VxE + jnp.take(h_VxE, reverse_VxD[:, j], axis=0)  # id 0 has no neighbours: h 0
  d_VxE = d_VxE.at[overflow_dst_O].add(jnp.take(h_VxE, overflow_src_O, axis=0))
  return d_VxE, None, None, None, None, None


_propagate.defvjp(_propagate_fwd, _propagate_bwd)


class NeighborGraph(nnx.Module):
  """One propagation step over the item co-occurrence graph (`model.item_neighbors`):
  `graph(table_VxE)` = row v + weight x the mean of the rows of v's neighbours (as they are before
  this step), in f32; a row without neighbours is kept as it is. gradient=False: the neighbours'
  mean is a constant of the step (no gradient reaches their rows through it)."""

  def __init__(self, neighbors_VxK, rows: int, weight: float, gradient: bool = True):
    nb = np.asarray(neighbors_VxK, np.int32)
    nb = np.pad(nb, ((0, rows - nb.shape[0]), (0, 0)))  # zero rows: no neighbours
    self.neighbors_VxK = ContentConst(jnp.asarray(nb))
    self.weight, self.gradient = float(weight), bool(gradient)
    # The reverse lists serve the backward only: a constant mean (gradient=False) has none.
    if self.gradient:
      reverse, src, dst = reverse_neighbors(nb)
      self.reverse_VxD = ContentConst(jnp.asarray(reverse))
      self.overflow_src_O = ContentConst(jnp.asarray(src))
      self.overflow_dst_O = ContentConst(jnp.asarray(dst))
    else:
      self.reverse_VxD = self.overflow_src_O = self.overflow_dst_O = None

  def __call__(self, table_VxE: jax.Array) -> jax.Array:
    table_VxE = table_VxE.astype(jnp.float32)
    if not self.gradient:
      mean_VxE = attribute_mean(table_VxE, self.neighbors_VxK[...])
      return table_VxE + self.weight * jax.lax.stop_gradient(mean_VxE)
    weight_V = jnp.full((table_VxE.shape[0],), self.weight, jnp.float32)
    return _propagate(table_VxE, weight_V, self.neighbors_VxK[...], self.reverse_VxD[...],
                      self.overflow_src_O[...], self.overflow_dst_O[...])


def pairs_of(ids_VxK: jax.Array, values_VxK: jax.Array, last_B: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
  """(ids_BxK, values_BxK): the rows of each user's last item (0 or out of range: no pairs), the
  lookup of `TransitionPrior` and of the serving tables (`scoring/streaming.py`)."""
  last_B = jnp.asarray(last_B, jnp.int32)
  ok_B = (last_B > 0) & (last_B < ids_VxK.shape[0])
  row_B = jnp.where(ok_B, last_B, 0)
  ids_BxK = jnp.where(ok_B[:, None], jnp.take(ids_VxK, row_B, axis=0), 0)
  return ids_BxK, jnp.where(ids_BxK > 0, jnp.take(values_VxK, row_B, axis=0), 0.0)


class TransitionPrior(nnx.Module):
  """The first-order transition prior of `model.transition_weight`: for a user whose last item is
  a, the items that most often came next after a in the training sequences and what each adds to
  its score, weight x log(1 + 100 x share) (`cooccurrence.transition_lists`). Scoring only: the
  ranking routes add these (id, value) pairs to the model's scores (`scoring/ranks.py`, `pairs`).
  """

  def __init__(self, ids_VxK, logp_VxK, weight: float):
    self.ids_VxK = ContentConst(jnp.asarray(ids_VxK, jnp.int32))
    self.logp_VxK = ContentConst(jnp.asarray(logp_VxK, jnp.float32))
    self.weight = weight

  def __call__(self, last_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(ids_BxK, values_BxK) of each row's last item (0 or out of range: no pairs)."""
    return pairs_of(self.ids_VxK[...], self.values_VxK(), last_B)

  def values_VxK(self) -> jax.Array:
    """What each kept next item adds to its score: weight x log-share."""
    return self.weight * self.logp_VxK[...]


class TitleEncoder(nnx.Module):
  """An LSTM over each title's token embeddings (the functional core), final state -> E."""

  def __init__(self, tokens_VxT, vocab_size: int, token_dim: int, hidden_size: int,
               embed_dim: int, *, param_dtype, compute_dtype, rngs: nnx.Rngs):
    self.tokens_VxT = ContentConst(jnp.asarray(tokens_VxT, jnp.int32))
    self.embedding = nnx.Param(
        _normal(token_dim ** -0.5)(rngs.params(), (vocab_size, token_dim), param_dtype))
    params = core.init_lstm_params(rngs.params(), token_dim, hidden_size, param_dtype)
    self.w_ih = nnx.Param(params["w_ih"])
    self.w_hh = nnx.Param(params["w_hh"])
    self.b = nnx.Param(params["b"])
    self.proj = nnx.Linear(hidden_size, embed_dim, dtype=compute_dtype, param_dtype=param_dtype,
                           rngs=rngs)
    self.compute_dtype = compute_dtype

  def __call__(self, ids_R: jax.Array | None = None) -> jax.Array:
    """content_VxE in f32 (or the rows of the items `ids_R` only); zeros without title tokens."""
    tokens_VxT = (self.tokens_VxT[...] if ids_R is None
                  else jnp.take(self.tokens_VxT[...], ids_R, axis=0))
    mask_VxT = tokens_VxT > 0
    x_VxTxD = jnp.take(self.embedding[...], tokens_VxT, axis=0)
    x_VxTxD = jnp.where(mask_VxT[..., None], x_VxTxD, 0).astype(x_VxTxD.dtype)
    # Always the XLA recurrence: V is the batch here, of any size, which the Pallas kernels'
    # tiles do not promise to take; this scan runs once per step over T ~ 10 tokens.
    _, (h_VxH, _) = core.lstm_layer(
        {"w_ih": self.w_ih[...], "w_hh": self.w_hh[...], "b": self.b[...]}, x_VxTxD, mask_VxT,
        compute_dtype=self.compute_dtype)
    # The masked recurrence carries the state through padding, so h is the state after the last
    # real token; rows with no token would get the projection's bias, hence the where.
    out_VxE = self.proj(h_VxH).astype(jnp.float32)
    return jnp.where(mask_VxT.any(axis=1)[:, None], out_VxE, 0.0)


class HybridItemRepr(nnx.Module):
  """Item vectors from id embeddings and content: `table(id_keep_V) -> VxE`."""

  def __init__(self, num_items: int, embed_dim: int, content: ContentInputs, *, mode: str,
               cold_id: str = "drop", cold_content_grad: bool = True,
               use_attributes: bool = True, use_titles: bool = True,
               title_embed_dim: int = 64, title_hidden_size: int = 64, param_dtype=jnp.float32,
               compute_dtype=jnp.float32, rngs: nnx.Rngs, rows: int | None = None,
               neighbor_weight: float = 1.0, neighbor_gradient: bool = True):
    if mode not in CONTENT_MODES:
      raise ValueError(f"HybridItemRepr mode must be one of {CONTENT_MODES}, got {mode!r}")
    if cold_id not in COLD_ID_MODES:
      raise ValueError(f"cold_id must be one of {COLD_ID_MODES}, got {cold_id!r}")
    if np.shape(content.known_V) != (num_items,):
      raise ValueError(f"content arrays cover {np.shape(content.known_V)[0]} items, the model "
                       f"{num_items}")
    use_attributes = use_attributes and content.attrs_VxA is not None
    use_titles = use_titles and content.tokens_VxT is not None
    if not (use_attributes or use_titles):
      raise ValueError(f"item_mode={mode!r} needs item content, but no attributes or titles are "
                       "available (or both are switched off)")
    self.mode, self.cold_id, self.cold_content_grad = mode, cold_id, cold_content_grad
    self.param_dtype = jnp.dtype(param_dtype)
    self.num_items, self.rows = num_items, rows or num_items
    if mode != "content":
      # Same name, shape and init as ItemEmbedding.embedding: id-only parameters load here.
      self.embedding = nnx.Param(table_param(rngs.params(), num_items, self.rows, embed_dim,
                                             param_dtype))
    else:
      self.embedding = None
    self.known_V = ContentConst(jnp.asarray(content.known_V, bool))
    self.neighbors = (None if content.neighbors_VxK is None
                      else NeighborGraph(content.neighbors_VxK, self.rows, neighbor_weight,
                                         neighbor_gradient))
    self.attributes = (AttributeBag(content.attrs_VxA, content.num_attrs, embed_dim,
                                    param_dtype=param_dtype, rngs=rngs)
                       if use_attributes else None)
    self.title = (TitleEncoder(content.tokens_VxT, content.vocab_size, title_embed_dim,
                               title_hidden_size, embed_dim, param_dtype=param_dtype,
                               compute_dtype=compute_dtype, rngs=rngs)
                  if use_titles else None)
    if mode == "gate":
      # Zero kernel, zero bias: g = 0.5, an even mix at the start, learned per dimension after.
      self.gate = nnx.Linear(2 * embed_dim, embed_dim, kernel_init=jax.nn.initializers.zeros,
                             param_dtype=param_dtype, rngs=rngs)
    else:
      self.gate = None

  # `table(rows=...)` computes the content towers at the given items only (see `content`).
  computes_rows = True

  def content(self, rows_R: jax.Array | None = None) -> jax.Array:
    """content_VxE in f32: the sum of the enabled towers; zero rows for items without content.

    rows_R: item ids (repeats and padding 0 allowed): only their rows are computed, the others
    are zero. A step whose loss reads the table at a few rows only (inputs, targets, sampled
    negatives) pays for those rather than for the whole catalog; the rows it reads are exactly
    the full table's, and so are their gradients (each distinct item is computed once).
    """
    if rows_R is None:
      parts = [tower() for tower in (self.attributes, self.title) if tower is not None]
      return parts[0] if len(parts) == 1 else sum(parts[1:], parts[0])
    # Distinct ids (static size, padded with 0): a repeated item must not be counted twice.
    ids_U = jnp.unique(rows_R.reshape(-1), size=rows_R.size, fill_value=0)
    parts = [tower(ids_U) for tower in (self.attributes, self.title) if tower is not None]
    rows_UxE = parts[0] if len(parts) == 1 else sum(parts[1:], parts[0])
    rows_UxE = jnp.where((ids_U > 0)[:, None], rows_UxE, 0.0)
    return jnp.zeros((self.num_items, rows_UxE.shape[1]), jnp.float32).at[ids_U].set(rows_UxE)

  def table(self, id_keep_V: jax.Array | None = None, *, rows: jax.Array | None = None
            ) -> jax.Array:
    """The V x E item table; compute it once per step and pass it on (`SeqRecModel.item_tables`).

    id_keep_V: bool (V,), items keeping their id part this step (id dropout); None: all.
    rows: compute the content part at these item ids only (`content`); None: every item.
    """
    return self.padded_table(id_keep_V, rows=rows)[:self.num_items]

  def padded_table(self, id_keep_V: jax.Array | None = None, *,
                   rows: jax.Array | None = None) -> jax.Array:
    """`table` with the zero rows up to the id table's rows (ModelConfig.table_rows)."""
    if rows is not None and self.neighbors is not None:
      # The propagation below reads each row's neighbours: compute their content too.
      rows = rows.reshape(-1)
      rows = jnp.concatenate(
          [rows, jnp.take(self.neighbors.neighbors_VxK[...], rows, axis=0).reshape(-1)])
    content_VxE = pad_rows(self.content(rows), self.rows)
    known_V1 = pad_rows(self.known_V[...], self.rows, False)[:, None]
    if id_keep_V is not None:
      id_keep_V = pad_rows(id_keep_V, self.rows, False)
    if not self.cold_content_grad:
      # An item with no training event only ever appears as a softmax negative: its row must not
      # teach the towers to recognise (and bury) exactly the items that are new.
      content_VxE = jnp.where(known_V1, content_VxE, jax.lax.stop_gradient(content_VxE))
    if self.embedding is None:
      table_VxE = content_VxE
    else:
      id_VxE = self.embedding[...].astype(jnp.float32)
      if self.cold_id == "drop":
        id_VxE = jnp.where(known_V1, id_VxE, 0.0)
      if id_keep_V is not None:  # id dropout: these items are scored like cold ones this step
        id_VxE = jnp.where(id_keep_V[:, None], id_VxE, 0.0)
      if self.gate is None:
        table_VxE = id_VxE + content_VxE
      else:
        g_VxE = jax.nn.sigmoid(self.gate(jnp.concatenate([id_VxE, content_VxE], axis=-1))
                               .astype(jnp.float32))
        if self.cold_id == "drop":
          g_VxE = jnp.where(known_V1, g_VxE, 0.0)  # content alone when cold
        if id_keep_V is not None:
          g_VxE = jnp.where(id_keep_V[:, None], g_VxE, 0.0)
        table_VxE = g_VxE * id_VxE + (1.0 - g_VxE) * content_VxE
    if self.neighbors is not None:
      table_VxE = self.neighbors(table_VxE)
    # Row 0 is padding: zero, like the inputs' padding positions.
    return table_VxE.at[0].set(0.0).astype(self.param_dtype)



def _content_builder(mode: str):
  """The registered builder of item mode `mode` (a HybridItemRepr)."""

  def build(cfg, *, rngs: nnx.Rngs, item_content: ContentInputs | None = None):
    if item_content is None:
      raise ValueError(f"model.item_mode={cfg.item_mode!r} needs item content arrays: build the "
                       "model with the data's item content (item_content=)")
    return HybridItemRepr(
        cfg.num_items, cfg.embed_dim, item_content, mode=mode, cold_id=cfg.cold_id,
        cold_content_grad=cfg.cold_content_grad, use_attributes=cfg.content_attributes,
        use_titles=cfg.content_titles, title_embed_dim=cfg.title_embed_dim,
        title_hidden_size=cfg.title_hidden_size, param_dtype=jnp.dtype(cfg.param_dtype),
        compute_dtype=jnp.dtype(cfg.compute_dtype), rngs=rngs, rows=cfg.table_rows,
        neighbor_weight=cfg.neighbor_weight, neighbor_gradient=cfg.neighbor_gradient)

  build.__name__ = f"build_{mode}_items"
  return build


for _mode in CONTENT_MODES:
  register_item_repr(_mode)(_content_builder(_mode))


def load_matching(target: Mapping[str, Any], source: Mapping[str, Any],
                  prefix: str = "") -> tuple[dict[str, Any], list[str], list[str]]:
  """Copies `source` leaves into `target` wherever the path and shape match (warm start).

  For moving parameters between item modes, e.g. an id-only run's `params` into a fresh "sum"
  model's params. Paths are "/"-joined keys.

  Returns:
    (new target dict, paths copied, target paths left as they were).
  """
  out, copied, kept = {}, [], []
  for key, value in target.items():
    path = f"{prefix}{key}"
    src = source.get(key) if isinstance(source, Mapping) else None
    if isinstance(value, Mapping):
      sub, c, k = load_matching(value, src if isinstance(src, Mapping) else {}, path + "/")
      out[key] = sub
      copied += c
      kept += k
    elif src is not None and not isinstance(src, Mapping) and np.shape(src) == np.shape(value):
      out[key] = jnp.asarray(src, dtype=jnp.asarray(value).dtype)
      copied.append(path)
    else:
      out[key] = value
      kept.append(path)
  return out, copied, kept
