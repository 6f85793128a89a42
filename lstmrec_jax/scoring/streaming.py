"""The streaming scoring functions serving is made of: observe one event, encode a history, rank.

Shape legend: B users, L history length, E item embedding size, V catalog size (row 0 padding),
S flat serving-state size, X excluded items per user, A allowed items per user, K top-k,
F = E + 2 (the fallback table's width: `steps.fallback_table`).

A user's serving state is ONE flat f32 vector `state_S` = [encoder state, user_E, count]:
  - a streaming encoder (LSTM: h and c of every layer; GRU: h of every layer) carries its
    recurrent state, so `observe` is one cell step per layer: O(1) in the history length;
  - the transformer has no O(1) step: its "encoder state" is the window of its last `max_len`
    item ids (as f32, exact below 2^24), and `observe` re-encodes that window (O(max_len));
  - user_E is the user vector after the last known event (what `top_k` scores with), count the
    number of known events seen (0: popularity fallback, the same path as `steps.eval_step`);
    a cross-domain encoder keeps one user vector per domain (N x E, `user_slots`), since the
    next item's domain is chosen only when recommending (`user_of(..., domains_B)`);
  - a model with the transition prior (`model.transition_weight`) also keeps the last known
    item's id after user_E (as f32, exact below 2^24): `user_of` hands it out as the user
    vector's last column, and `rank` / `score_items` add the prior of that item
    (`steps.transition_pairs` in evaluation).
One flat vector per user is what the state stores keep (bytes in Redis, a row in memory) and what
the `jax.export`ed functions take, so nothing outside this module knows the encoder's pytree.

`rank` and `score_items` score with a `head`: "softmax" (every model) or "q" (the Q heads of a
model trained with an offline RL loss; `steps.user_vectors` ranks the same way in evaluation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstmrec_jax.model import content as content_lib
from lstmrec_jax.scoring import ranks
from lstmrec_jax.scoring import steps

CHUNK = 32768  # items per ranking chunk: V = 10^6 never holds a B x V matrix


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """Where the parts of the flat serving state lie."""

  encoder_shapes: tuple[tuple[int, ...], ...]  # per leaf, without the batch axis
  encoder_treedef: Any  # None for the transformer's id window
  embed_dim: int  # E
  window: int  # ids kept by a non-streaming encoder (its max_len); 0 when streaming
  user_slots: int = 1  # user vectors kept: one per domain for a cross-domain encoder, else one
  last_item: bool = False  # the last known item's id kept after the user vector (a prior needs it)

  @property
  def encoder_size(self) -> int:
    return sum(math.prod(s) for s in self.encoder_shapes) if self.window == 0 else self.window

  @property
  def user_width(self) -> int:
    """The width of what `user_of` hands out: E, plus the last item's id with the prior."""
    return self.embed_dim + int(self.last_item)

  @property
  def users_size(self) -> int:
    """What the state keeps after the encoder's part: user_slots x E (+ 1 for the last item)."""
    return self.user_slots * self.embed_dim + int(self.last_item)

  @property
  def size(self) -> int:
    """S = encoder state + users_size + 1 (the count)."""
    return self.encoder_size + self.users_size + 1


def layout_of(model) -> StateLayout:
  """The flat state layout of an NNX SeqRecModel."""
  e = model.cfg.embed_dim
  if not model.streams:
    return StateLayout((), None, e, model.cfg.max_len, last_item=model.has_transitions)
  leaves, treedef = jax.tree.flatten(jax.eval_shape(lambda: model.initial_state(1)))
  return StateLayout(tuple(tuple(x.shape[1:]) for x in leaves), treedef, e, 0,
                     getattr(model, "user_slots", 1), model.has_transitions)


def _unpack(layout: StateLayout, state_BxS: jax.Array):
  """(encoder state pytree or id window, user vectors B x (user_slots * E) with the last item's
  id after them when the layout keeps it, count_B)."""
  b = state_BxS.shape[0]
  n = layout.encoder_size
  width = layout.users_size
  enc, user_BxE, count_B = state_BxS[:, :n], state_BxS[:, n:n + width], state_BxS[:, -1]
  if layout.window:
    return enc.astype(jnp.int32), user_BxE, count_B
  leaves, at = [], 0
  for shape in layout.encoder_shapes:
    size = math.prod(shape)
    leaves.append(enc[:, at:at + size].reshape((b, *shape)))
    at += size
  return jax.tree.unflatten(layout.encoder_treedef, leaves), user_BxE, count_B


def _pack(layout: StateLayout, enc, user_BxE, count_B) -> jax.Array:
  b = user_BxE.shape[0]
  if layout.window:
    parts = [enc.astype(jnp.float32)]
  else:
    parts = [x.reshape(b, -1).astype(jnp.float32) for x in jax.tree.leaves(enc)]
  return jnp.concatenate([*parts, user_BxE.astype(jnp.float32),
                          count_B.astype(jnp.float32)[:, None]], axis=1)


@dataclasses.dataclass(frozen=True)
class Tables:
  """What every call reads and never changes, computed once at load (a pytree of arrays)."""

  params: Any
  consts: Any
  input_VxE: jax.Array  # the encoder's lookup table (hybrid items: content part included)
  fallback_VxF: jax.Array  # output table + bias + log popularity (`steps.fallback_table`)
  # The Q head's table + bias + log popularity; None for a model without Q heads.
  q_fallback_VxF: jax.Array | None = None
  # The transition prior (`model.transition_weight`): each item's next items and what each adds
  # to their scores (weight x log-share); None without the prior.
  transition_ids_VxP: jax.Array | None = None
  transition_values_VxP: jax.Array | None = None

  def head_table(self, head: str) -> jax.Array:
    """The fallback table `head` ("softmax" | "q") ranks with."""
    if head == "softmax":
      return self.fallback_VxF
    if head == "q" and self.q_fallback_VxF is not None:
      return self.q_fallback_VxF
    raise ValueError(f"head={head!r}: this model has the heads {', '.join(self.heads)}"
                     + ("" if head != "q" else " (a Q head needs model.q_head and an RL loss)"))

  @property
  def heads(self) -> tuple[str, ...]:
    return ("softmax",) if self.q_fallback_VxF is None else ("softmax", "q")

  def pairs(self, user_BxU: jax.Array, head: str):
    """(user_BxE, the transition pairs of each row or None): a user vector from `user_of` ends
    with the last item's id when the model has the prior; the prior scores the softmax head."""
    if self.transition_ids_VxP is None:
      return user_BxU, None
    user_BxE, last_B = user_BxU[:, :-1], jnp.round(user_BxU[:, -1]).astype(jnp.int32)
    if head != "softmax":
      return user_BxE, None
    return user_BxE, content_lib.pairs_of(self.transition_ids_VxP, self.transition_values_VxP,
                                          last_B)


jax.tree_util.register_dataclass(Tables, data_fields=["params", "consts", "input_VxE",
                                                      "fallback_VxF", "q_fallback_VxF",
                                                      "transition_ids_VxP",
                                                      "transition_values_VxP"],
                                 meta_fields=[])


def make_tables(graphdef, params, consts, popularity_V) -> Tables:
  """Tables from a model's parameters and the training counts."""

  @jax.jit
  def build(params, consts, popularity_V):
    model = nnx.merge(graphdef, params, consts)
    input_VxE, output_VxE, bias_V = model.item_tables()
    q_fallback_VxF = (steps.fallback_table(*model.head_tables("q"), popularity_V)
                      if model.has_q_head else None)
    transitions = (None, None)
    if model.has_transitions:
      transitions = (model.transitions.ids_VxK[...], model.transitions.values_VxK())
    return (input_VxE, steps.fallback_table(output_VxE, bias_V, popularity_V), q_fallback_VxF,
            *transitions)

  return Tables(params, consts, *build(params, consts, jnp.asarray(popularity_V, jnp.float32)))


def initial_state(layout: StateLayout, batch: int) -> np.ndarray:
  """Flat states of `batch` users with no history (zeros: empty window, zero state, count 0)."""
  return np.zeros((batch, layout.size), np.float32)


def observe(graphdef, layout: StateLayout, tables: Tables, state_BxS: jax.Array,
            item_ids_B: jax.Array) -> jax.Array:
  """One event per user (id 0: none, the row is unchanged): the new flat states."""
  model = nnx.merge(graphdef, tables.params, tables.consts)
  enc, user_BxE, count_B = _unpack(layout, state_BxS)
  known_B = item_ids_B > 0
  if layout.window:
    # No O(1) step: shift the id into the window and re-encode it (right-aligned, newest last).
    shifted = jnp.concatenate([enc[:, 1:], item_ids_B[:, None]], axis=1)
    enc = jnp.where(known_B[:, None], shifted, enc)
    new_user_BxE = _encode_window(model, tables, enc)
  else:
    enc, new_user = model.step(enc, item_ids_B, item_table_VxE=tables.input_VxE)
    new_user_BxE = new_user.reshape(new_user.shape[0], -1)  # cross-domain: N x E per user
  if layout.last_item:
    new_user_BxE = jnp.concatenate([new_user_BxE, item_ids_B.astype(jnp.float32)[:, None]],
                                   axis=1)
  # A row without an event keeps its user vector (the model outputs zeros at masked steps).
  user_BxE = jnp.where(known_B[:, None], new_user_BxE, user_BxE)
  return _pack(layout, enc, user_BxE, count_B + known_B)


def _encode_window(model, tables: Tables, window_BxW: jax.Array) -> jax.Array:
  """The transformer's user vector from a right-aligned id window (0 = empty slot)."""
  # Left-align so positions count from the first real event, as in training.
  mask_BxW = window_BxW > 0
  order = jnp.argsort(~mask_BxW, axis=1, stable=True)
  items = jnp.take_along_axis(window_BxW, order, axis=1)
  mask = items > 0
  user_BxWxE = model(items, mask, item_table_VxE=tables.input_VxE)
  return steps.last_state(user_BxWxE, mask)


def observe_sequence(graphdef, layout: StateLayout, tables: Tables, state_BxS: jax.Array,
                     items_BxL: jax.Array) -> jax.Array:
  """`observe` for each column of items_BxL in turn (0 skips): the streaming path over a history."""
  step = functools.partial(observe, graphdef, layout, tables)
  state_BxS, _ = jax.lax.scan(lambda s, ids_B: (step(s, ids_B), None), state_BxS, items_BxL.T)
  return state_BxS


def encode(graphdef, layout: StateLayout, tables: Tables, items_BxL: jax.Array,
           domains_B: jax.Array | None = None):
  """(user_BxE, count_B) of left-aligned histories (0-padded) by one full pass of the model.

  The training / evaluation path (`model.__call__`), not the streaming one: tests hold the two
  equal. Unknown ids must already be removed (0 only as right padding). `domains_B`: the domain
  each row is asked about (what a cross-domain encoder reads, as `steps.user_vectors`).
  """
  model = nnx.merge(graphdef, tables.params, tables.consts)
  mask_BxL = items_BxL > 0
  target_domains = steps.target_domains({"inputs_BxL": items_BxL, "domains_B": domains_B})
  user_BxLxE = model(items_BxL, mask_BxL, item_table_VxE=tables.input_VxE,
                     target_domains_BxL=target_domains)
  user_BxE = steps.last_state(user_BxLxE, mask_BxL)
  if layout.last_item:  # as `user_of` hands it out: the last item's id after the vector
    last_B = steps.last_items(items_BxL, mask_BxL).astype(jnp.float32)
    user_BxE = jnp.concatenate([user_BxE, last_B[:, None]], axis=1)
  return user_BxE, mask_BxL.sum(axis=1)


def user_of(layout: StateLayout, state_BxS: jax.Array, domains_B: jax.Array | None = None):
  """(user_BxE, count_B) of flat states; with one user vector per domain, the `domains_B` one.
  With the transition prior the vector ends with the last item's id (`layout.user_width`)."""
  n = layout.encoder_size
  users = state_BxS[:, n:n + layout.users_size]
  if layout.user_slots > 1:
    if domains_B is None:
      raise ValueError("a cross-domain state holds one user vector per domain: name the domain")
    users = users.reshape(users.shape[0], layout.user_slots, layout.embed_dim)
    d_B = jnp.clip(jnp.asarray(domains_B, jnp.int32), 0, layout.user_slots - 1)
    users = jnp.take_along_axis(users, d_B[:, None, None], axis=1)[:, 0]
  return users, state_BxS[:, -1]


def rank(tables: Tables, user_BxE: jax.Array, count_B: jax.Array, exclude_BxX: jax.Array, *,
         k: int, head: str = "softmax", item_domains_V: jax.Array | None = None,
         domains_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Top-k (ids_BxK, scores_BxK) of `head` over the catalog without the excluded ids (0 = none);
  with `item_domains_V` and `domains_B` (-1: any), over each row's domain only.

  Users with count 0 get the popularity fallback (`steps.fallback_user`, as `eval_step`); with
  the transition prior, the others also its pairs of their last item (`Tables.pairs`).
  """
  user_BxE, pairs = tables.pairs(user_BxE, head)
  user_BxF = steps.fallback_user(user_BxE, count_B > 0)
  return ranks.top_k_items(user_BxF, tables.head_table(head), None, k, exclude_BxX,
                           exclude_seen=True, chunk_size=CHUNK, item_domains_V=item_domains_V,
                           domains_B=domains_B, pairs=pairs)


def score_items(tables: Tables, user_BxE: jax.Array, count_B: jax.Array,
                items_BxA: jax.Array, head: str = "softmax") -> jax.Array:
  """Scores of given items only (an allow list), f32; -inf at padding id 0."""
  user_BxE, pairs = tables.pairs(user_BxE, head)
  user_BxF = steps.fallback_user(user_BxE, count_B > 0)
  rows_BxAxF = jnp.take(tables.head_table(head), items_BxA, axis=0)
  scores_BxA = jnp.einsum("bf,baf->ba", user_BxF, rows_BxAxF)
  if pairs is not None:
    scores_BxA = scores_BxA + ranks.pair_scores(pairs, items_BxA)
  return jnp.where(items_BxA > 0, scores_BxA, -jnp.inf)
