"""Flax NNX modules of the recommender: item representation, sequence encoder, scorer.

Shape legend: B batch, L history length, E item embedding size, D encoder output size, V catalog
size (including the padding item 0), N flattened positions, F feed-forward width.

The item representation (`model.item_mode`) and the sequence encoder (`model.encoder`) come from
registries (model/registry.py). The item table is computed once per step and passed explicitly,
and dropout takes an explicit key instead of consuming `nnx.Rngs` at call time, so a train step
over `nnx.split(model)` state stays a pure function:

  model = nnx.merge(graphdef, params, consts)
  input_VxE, output_VxE, bias_V = model.item_tables()
  user_BxLxE = model(inputs_BxL, mask_BxL, resets_BxL, item_table_VxE=input_VxE,
                     dropout_key=jax.random.fold_in(key, step))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lstmrec_jax import core
from lstmrec_jax.mesh import pad_rows
from lstmrec_jax.model import content as content_lib
from lstmrec_jax.model import cross_domain  # pylint: disable=unused-import  (registers xd_*)
from lstmrec_jax.model import encoders  # pylint: disable=unused-import  (registers encoders)
from lstmrec_jax.model.config import ModelConfig
from lstmrec_jax.model.registry import ENCODERS, ITEM_REPRS, register_item_repr
from lstmrec_jax.model.tables import table_param


class ItemEmbedding(nnx.Module):
  """Item representation from ids alone (`item_mode="id"`): one V x E table; row 0 is padding.

  An item representation needs `table(id_keep_V=None) -> VxE` only; SeqRecModel gathers rows.
  It may also offer `padded_table(id_keep_V=None)`, its table with the zero rows up to
  `ModelConfig.table_rows` (what the vocabulary-parallel softmax splits over devices).
  """

  def __init__(self, num_items: int, embed_dim: int, *, param_dtype, rngs: nnx.Rngs,
               rows: int | None = None, neighbors_VxK=None, neighbor_weight: float = 1.0,
               neighbor_gradient: bool = True):
    # std 1/sqrt(E) gives unit-norm embeddings: O(1) LSTM inputs and dot-product scores.
    self.num_items = num_items
    self.embedding = nnx.Param(table_param(rngs.params(), num_items, rows or num_items,
                                           embed_dim, param_dtype))
    # `model.item_neighbors`: one propagation step over the co-occurrence graph (content.py).
    self.neighbors = (None if neighbors_VxK is None
                      else content_lib.NeighborGraph(neighbors_VxK, rows or num_items,
                                                     neighbor_weight, neighbor_gradient))

  # id_keep_V: HybridItemRepr's id-dropout mask; an id-only item has nothing to fall back to,
  # so ModelConfig refuses id_dropout here and the mask is always None.
  def padded_table(self, id_keep_V: jax.Array | None = None) -> jax.Array:
    """The item table with its zero padding rows (table_rows x E)."""
    del id_keep_V
    table_VxE = self.embedding[...]
    if self.neighbors is None:
      return table_VxE
    return self.neighbors(table_VxE).astype(table_VxE.dtype)

  def table(self, id_keep_V: jax.Array | None = None) -> jax.Array:
    """The V x E item table."""
    return self.padded_table(id_keep_V)[:self.num_items]


@register_item_repr("id")
def _id_items(cfg: ModelConfig, *, rngs: nnx.Rngs, item_content=None) -> ItemEmbedding:
  """The id-only item table (item content, if any, is not used; its neighbour lists are)."""
  neighbors_VxK = None if item_content is None else item_content.neighbors_VxK
  return ItemEmbedding(cfg.num_items, cfg.embed_dim, param_dtype=jnp.dtype(cfg.param_dtype),
                       rngs=rngs, rows=cfg.table_rows, neighbors_VxK=neighbors_VxK,
                       neighbor_weight=cfg.neighbor_weight,
                       neighbor_gradient=cfg.neighbor_gradient)


class SeqRecModel(nnx.Module):
  """Item table -> sequence encoder -> user states scored against an item table."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs,
               item_content: content_lib.ContentInputs | None = None):
    self.cfg = cfg
    param_dtype = jnp.dtype(cfg.param_dtype)
    compute_dtype = jnp.dtype(cfg.compute_dtype)
    e = cfg.embed_dim
    # Built in this order (item table, encoder, head): rngs.params() draws follow it.
    self.item_repr = ITEM_REPRS.get(cfg.item_mode)(cfg, rngs=rngs, item_content=item_content)
    self.encoder = ENCODERS.get(cfg.encoder)(cfg, e, rngs=rngs)
    d = self.encoder.output_dim
    self.proj = (nnx.Linear(d, e, dtype=compute_dtype, param_dtype=param_dtype, rngs=rngs)
                 if d != e else None)
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
      self.output_embedding = nnx.Param(
          table_param(rngs.params(), cfg.num_items, cfg.table_rows, e, param_dtype))
    self.bias = (nnx.Param(jnp.zeros((cfg.table_rows,), param_dtype)) if cfg.item_bias else None)
    if cfg.q_head:
      # The Q-value head of the offline RL losses (losses/rl.py): Q(s, a) = u . q_table[a] +
      # q_bias[a], two heads for the double-Q target (each the other's target). Untied from the
      # item tables: Q is on the reward / (1 - discount) scale, and tying would drag the input
      # embeddings toward it; N(0, 0.01) rows and zero bias as in the SQN code. Drawn last, so a
      # model with a Q head starts every other parameter where the model without one does.
      init = jax.nn.initializers.normal(stddev=0.01)
      rows = jnp.pad(init(rngs.params(), (2, cfg.num_items, e), param_dtype),
                     ((0, 0), (0, cfg.table_rows - cfg.num_items), (0, 0)))
      self.q_table = nnx.Param(rows)
      self.q_bias = nnx.Param(jnp.zeros((2, cfg.table_rows), param_dtype))
    else:
      self.q_table = self.q_bias = None
    # `model.transition_weight`: the counted next-item prior the ranking routes add to the scores
    # (`transition_pairs`); data-derived constants, no parameter.
    if cfg.transition_weight and (item_content is None
                                  or item_content.transition_ids_VxK is None):
      raise ValueError("model.transition_weight > 0 needs the transition lists "
                       "(item_content=run.model_inputs(...)['item_content'])")
    self.transitions = (content_lib.TransitionPrior(item_content.transition_ids_VxK,
                                                    item_content.transition_logp_VxK,
                                                    cfg.transition_weight)
                        if cfg.transition_weight else None)

  def id_keep_mask(self, dropout_key: jax.Array | None) -> jax.Array | None:
    """bool (V,): items that keep their id part this step; None without id dropout or key."""
    if dropout_key is None or not self.cfg.id_dropout:
      return None
    key = jax.random.fold_in(dropout_key, 0x1D)  # a stream apart from the activation dropouts
    return jax.random.bernoulli(key, 1.0 - self.cfg.id_dropout, (self.cfg.num_items,))

  @property
  def computes_rows(self) -> bool:
    """Whether `item_tables(rows=...)` saves work: the item side computes rows on demand."""
    return bool(getattr(self.item_repr, "computes_rows", False))

  def item_tables(self, id_keep_V: jax.Array | None = None, *, padded: bool = False,
                  rows: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(input_VxE, output_VxE, bias_V or None): compute once per step, pass the input table on.

    id_keep_V: the step's id-dropout mask (`id_keep_mask`), None for none; it reaches the input
    and (when tied) the output table alike.
    padded: hand out `cfg.table_rows` rows (the zero rows past V included, as the parameters
    hold them: what the vocabulary-parallel softmax splits over devices) instead of V.
    rows: item ids whose rows the caller will read (inputs, targets, sampled negatives): an
    item side that `computes_rows` computes its content there only; the other rows of the
    tables are then not the items' vectors and must not be read. None: every row.
    """
    kw = {"rows": rows} if rows is not None and self.computes_rows else {}
    if padded:
      n = self.cfg.table_rows
      padded_table = getattr(self.item_repr, "padded_table", None)
      input_VxE = (padded_table(id_keep_V, **kw) if padded_table is not None
                   else pad_rows(self.item_repr.table(id_keep_V, **kw), n))
      output_VxE = input_VxE if self.output_embedding is None else self.output_embedding[...]
      return input_VxE, output_VxE, None if self.bias is None else self.bias[...]
    input_VxE = self.item_repr.table(id_keep_V, **kw)
    output_VxE = input_VxE if self.output_embedding is None else self.item_table()
    return input_VxE, output_VxE, self.item_bias()

  def _lookup(self, item_table_VxE: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Rows of the table for `ids` (any shape), zeros at padding (id 0 or mask False)."""
    emb = jnp.take(item_table_VxE, ids, axis=0)
    emb = jnp.where((ids > 0)[..., None], emb, 0).astype(emb.dtype)
    return jnp.where(mask[..., None], emb, 0).astype(emb.dtype)

  def _dropout(self, key: jax.Array | None, x_BxLxE: jax.Array, rate: float,
               segments_BxL: jax.Array | None) -> jax.Array:
    """The input / output dropout: a mask per position, or per history (`model.locked_dropout`,
    `segments_BxL` given)."""
    if segments_BxL is None:
      return core.dropout(key, x_BxLxE, rate)
    return core.locked_dropout(key, x_BxLxE, rate, segments_BxL)

  def _head(self, h_BxLxD: jax.Array, mask: jax.Array, key: jax.Array | None,
            segments_BxL: jax.Array | None = None) -> jax.Array:
    """Encoder output -> user state: projection to E, FFN, norm, dropout; zeros at padding."""
    u = self.proj(h_BxLxD) if self.proj is not None else h_BxLxD
    u = u.astype(jnp.float32)
    if self.ffn_in is not None:
      u = u + self.ffn_out(jax.nn.gelu(self.ffn_in(u))).astype(jnp.float32)
    if self.norm is not None:
      u = self.norm(u).astype(jnp.float32)
    u = self._dropout(key, u, self.cfg.output_dropout, segments_BxL)
    # Projection, FFN and norm biases would otherwise make padded positions nonzero.
    return jnp.where(mask[..., None], u, 0.0)

  @property
  def cross_domain(self) -> bool:
    """Whether the encoder reads each position's target domain (`cross_domain = True`)."""
    return bool(getattr(self.encoder, "cross_domain", False))

  @property
  def user_slots(self) -> int:
    """User vectors a streaming step returns per user: one per domain for a cross-domain encoder
    (the next item's domain is chosen when recommending), else one."""
    return self.cfg.num_domains if self.cross_domain else 1

  def item_domains(self, ids: jax.Array) -> jax.Array:
    """The domain index of each item id (any shape); 0 at padding and for a single catalogue.

    Example: domain_starts (1, 4): ids [0, 1, 3, 4, 6] -> [0, 0, 0, 1, 1].
    """
    domains = jnp.zeros(jnp.shape(ids), jnp.int32)
    for start in self.cfg.domain_starts[1:]:
      domains = domains + (ids >= start).astype(jnp.int32)
    return domains

  def __call__(self, inputs_BxL: jax.Array, mask_BxL: jax.Array,
               resets_BxL: jax.Array | None = None, *, item_table_VxE: jax.Array,
               dropout_key: jax.Array | None = None,
               input_delta_BxLxE: jax.Array | None = None,
               target_domains_BxL: jax.Array | None = None) -> jax.Array:
    """Encodes histories into one user state per position.

    Args:
      inputs_BxL: item ids, 0 at padding.
      mask_BxL: True at real positions.
      resets_BxL: True where a new user's history starts inside a packed row; None for none.
      item_table_VxE: the input table from `item_tables()` (computed once per step).
      dropout_key: PRNG key enabling dropout (e.g. `jax.random.fold_in(key, step)`); None for
        evaluation.
      input_delta_BxLxE: added to the looked-up input item embeddings at real positions (the
        adversarial perturbation of `losses/adversarial.py`, `evaluation/attacks.py`); None: none.
      target_domains_BxL: the domain of the item each position predicts (training: the next
        item's; evaluation: the target's). Read by cross-domain encoders only, which need it;
        other encoders ignore it.

    Returns:
      user_BxLxE in f32: the state after each position's item, zeros at padded positions.
    """
    cfg = self.cfg
    mask_BxL = mask_BxL.astype(bool)
    k_embed = k_encoder = k_out = None
    if dropout_key is not None:
      k_embed, k_encoder, k_out = jax.random.split(dropout_key, 3)
    x_BxLxE = self._lookup(item_table_VxE, inputs_BxL, mask_BxL)
    if input_delta_BxLxE is not None:
      x_BxLxE = x_BxLxE + jnp.where(mask_BxL[..., None], input_delta_BxLxE, 0).astype(
          x_BxLxE.dtype)
    segments_BxL = None
    if cfg.locked_dropout and dropout_key is not None:
      segments_BxL = core.segment_ids(mask_BxL, resets_BxL)
    x_BxLxE = self._dropout(k_embed, x_BxLxE, cfg.embed_dropout, segments_BxL)
    if self.cross_domain:
      if target_domains_BxL is None:
        raise ValueError(f"model.encoder={cfg.encoder!r} is cross-domain: it needs each "
                         "position's target domain (target_domains_BxL; a batch's domains_B)")
      h_BxLxD = self.encoder(x_BxLxE, mask_BxL, resets_BxL, dropout_key=k_encoder,
                             input_domains_BxL=self.item_domains(inputs_BxL),
                             target_domains_BxL=target_domains_BxL.astype(jnp.int32))
    else:
      h_BxLxD = self.encoder(x_BxLxE, mask_BxL, resets_BxL, dropout_key=k_encoder)
    return self._head(h_BxLxD, mask_BxL, k_out, segments_BxL)

  @property
  def streams(self) -> bool:
    """Whether `initial_state` / `step` exist (the encoder updates a user in O(1) per event)."""
    return bool(getattr(self.encoder, "streams", False))

  def initial_state(self, batch: int) -> Any:
    """The encoder state of `batch` users with no history (streaming encoders only)."""
    return self.encoder.initial_state(batch)

  def step(self, state: Any, item_ids_B: jax.Array, *,
           item_table_VxE: jax.Array) -> tuple[Any, jax.Array]:
    """One new event per user (id 0: none): (new state, user_BxE), as `__call__` without dropout.

    A cross-domain encoder gives the user state for every domain, user_BxNxE (N domains): the
    state `__call__` gives at this position with that target domain.
    """
    mask_B = item_ids_B > 0
    x_BxE = self._lookup(item_table_VxE, item_ids_B, mask_B)
    if self.cross_domain:
      state, h_BxNxD = self.encoder.step(state, x_BxE, mask_B,
                                         input_domains_B=self.item_domains(item_ids_B))
      return state, self._head(h_BxNxD, jnp.broadcast_to(mask_B[:, None], h_BxNxD.shape[:2]),
                               None)
    state, h_BxD = self.encoder.step(state, x_BxE, mask_B)
    return state, self._head(h_BxD, mask_B, None)

  def item_table(self, id_keep_V: jax.Array | None = None) -> jax.Array:
    """The V x E output item table (scoring); a step needing both tables uses `item_tables`."""
    if self.output_embedding is None:
      return self.item_repr.table(id_keep_V)
    return self.output_embedding[:self.cfg.num_items]

  def item_bias(self) -> jax.Array | None:
    """The per-item score bias (V,), or None without one."""
    return None if self.bias is None else self.bias[:self.cfg.num_items]

  @property
  def has_transitions(self) -> bool:
    """Whether the ranking routes add the transition prior (`model.transition_weight`)."""
    return self.transitions is not None

  def transition_pairs(self, last_items_B: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """(ids_BxK, values_BxK) the transition prior adds to the scores of users whose last item is
    `last_items_B` (0: none), or None without the prior. Example: weight 0.5, item 1 followed
    only by item 2 in training -> last 1 gives ids [2, 0, ...], values [0.5 log 101, 0, ...]."""
    return None if self.transitions is None else self.transitions(last_items_B)

  @property
  def has_q_head(self) -> bool:
    return self.q_table is not None

  def q_tables(self) -> tuple[jax.Array, jax.Array]:
    """(q_table_2xVxE, q_bias_2xV): both Q heads (`model.q_head`), V rows each."""
    if self.q_table is None:
      raise ValueError("this model has no Q head (model.q_head=False)")
    v = self.cfg.num_items
    return self.q_table[:, :v], self.q_bias[:, :v]

  def head_tables(self, head: str = "softmax") -> tuple[jax.Array, jax.Array | None]:
    """(table_VxE, bias_V or None) a head scores items with: `u . table[i] + bias[i]`.

    "softmax": the output item table and bias (the recommender's own head); "q": the mean of
    the two Q heads (their two estimates averaged; linear, so one table).
    """
    if head == "softmax":
      return self.item_table(), self.item_bias()
    if head == "q":
      q_2xVxE, b_2xV = self.q_tables()
      return q_2xVxE.mean(axis=0), b_2xV.mean(axis=0)
    raise ValueError(f"unknown head {head!r}; expected 'softmax' or 'q'")

  def score(self, user_NxE: jax.Array) -> jax.Array:
    """Logits of every item for each user state (any leading shape), f32; padding item 0 is -inf."""
    logits_NxV = jnp.einsum("...e,ve->...v", user_NxE.astype(jnp.float32),
                            self.item_table().astype(jnp.float32))
    bias_V = self.item_bias()
    if bias_V is not None:
      logits_NxV = logits_NxV + bias_V.astype(jnp.float32)
    return logits_NxV.at[..., 0].set(-jnp.inf)


def create_model(model_cfg: ModelConfig, seed: int, **model_kwargs):
  """Builds the model; returns (graphdef, params, consts), the last two as pure dicts.

  `consts` is the model's non-parameter state (e.g. item content arrays built from the data): it is
  passed to every step unchanged, never trained and never checkpointed (rebuilt from the data).
  """
  model = SeqRecModel(model_cfg, rngs=nnx.Rngs(params=seed), **model_kwargs)
  graphdef, params, consts = nnx.split(model, nnx.Param, ...)
  return graphdef, params.to_pure_dict(), consts.to_pure_dict()
