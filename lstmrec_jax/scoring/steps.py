"""The scoring steps evaluation and serving share: user vectors, the popularity fallback, ranks
and top-k over the catalog, jitted over the `data` axis of a mesh.

Shape legend: B users per batch, L history length, E embedding size, V catalog size, S seen
items per user, K top-k, F = E + 2 (the fallback table's width).

A user with no known event has a zero encoder state (every item would tie): such a user is ranked
by training popularity (`fallback_table` / `fallback_user`), the same path for `eval.py` and the
Recommender. An optional `extra_bias_V` (-inf outside a candidate set) restricts a ranking to a
subset of the catalog (the cold items of a cold-start report, one domain of a catalogue).

Domains (a multi-domain catalogue): a batch that carries `domains_B` (each row's target domain)
is scored for that domain (a cross-domain encoder reads it) and, given `item_domains_V`, ranked
among that domain's items only (`ranks.target_ranks`). The sampled protocol (`sampled_step`)
ranks each target among the candidates the batch carries (`candidates_BxM`).

`head` picks the item scores: "softmax" (the output item table, what every model has) or "q"
(the Q heads of a model trained with an offline RL loss, `SeqRecModel.head_tables`). The user
vector, the fallback and the ranking are the same path for both. A model with the transition
prior (`model.transition_weight`) adds it to the softmax head's scores of every row with a
history (`transition_pairs`, from the row's last item).
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax.scoring import ranks


def last_state(user_BxLxE: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """The output at each row's last real position (rows are right-padded); zeros for empty rows."""
  last_B = jnp.maximum(mask_BxL.sum(axis=1) - 1, 0)
  return jnp.take_along_axis(user_BxLxE, last_B[:, None, None], axis=1)[:, 0]


HEADS = ("softmax", "q")


def target_domains(batch: dict[str, jax.Array]) -> jax.Array | None:
  """The target domain of every position of a batch row (its `domains_B`), or None."""
  domains_B = batch.get("domains_B")
  if domains_B is None:
    return None
  return jnp.broadcast_to(domains_B.astype(jnp.int32)[:, None], batch["inputs_BxL"].shape)


def user_vectors(params: Any, consts: Any, batch: dict[str, jax.Array], graphdef: nnx.GraphDef,
                 head: str = "softmax"):
  """(user_BxE, item table VxE, item bias V or None) of `head` for a batch of histories.

  A cross-domain encoder scores each row for its target domain (`domains_B`).
  """
  model = nnx.merge(graphdef, params, consts)
  input_VxE, output_VxE, bias_V = model.item_tables()
  if head != "softmax":
    output_VxE, bias_V = model.head_tables(head)
  user_BxLxE = model(batch["inputs_BxL"], batch["mask_BxL"], item_table_VxE=input_VxE,
                     target_domains_BxL=target_domains(batch))
  return last_state(user_BxLxE, batch["mask_BxL"]), output_VxE, bias_V


def last_items(inputs_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """Each row's last real item id (rows are right-padded); 0 for empty rows."""
  last_B = last_state(inputs_BxL[:, :, None], mask_BxL)[:, 0]
  return jnp.where(mask_BxL.any(axis=1), last_B, 0)


def transition_pairs(params: Any, consts: Any, batch: dict[str, jax.Array],
                     graphdef: nnx.GraphDef, head: str = "softmax"):
  """The (ids_BxP, values_BxP) the model's transition prior adds to each row's scores (from the
  row's last item; `model.transition_weight`), or None: no prior, or a head other than the
  softmax (the Q heads are on the reward scale)."""
  model = nnx.merge(graphdef, params, consts)
  if head != "softmax" or not model.has_transitions:
    return None
  return model.transition_pairs(last_items(batch["inputs_BxL"], batch["mask_BxL"]))


def fallback_table(table_VxE: jax.Array, bias_V: jax.Array | None,
                   popularity_V: jax.Array) -> jax.Array:
  """The item table with two extra columns, the item bias and log(1 + training count).

  With `fallback_user`, a user with history scores `u . t + bias` and a user without (empty, or
  only unknown items: the encoder's state is zero and every item would tie) scores by popularity
  alone. Serving builds this table once; `eval_step` per batch: one path for both.
  Example: table [[a, b]], bias None, counts [5] -> [[a, b, 0, log 6]].
  """
  bias_V1 = (jnp.zeros((table_VxE.shape[0], 1), jnp.float32) if bias_V is None
             else bias_V.astype(jnp.float32)[:, None])
  pop_V1 = jnp.log1p(jnp.maximum(jnp.asarray(popularity_V, jnp.float32), 0.0))[:, None]
  return jnp.concatenate([table_VxE.astype(jnp.float32), bias_V1, pop_V1], axis=1)


def fallback_user(user_BxE: jax.Array, has_history_B: jax.Array) -> jax.Array:
  """User vectors against `fallback_table`: [u, 1, 0] with history, [0, 0, 1] without.

  Example: user [[2, 3], [0, 0]], has_history [True, False] -> [[2, 3, 1, 0], [0, 0, 0, 1]].
  """
  has_B1 = has_history_B.astype(bool)[:, None]
  user = jnp.where(has_B1, user_BxE.astype(jnp.float32), 0.0)
  return jnp.concatenate([user, has_B1.astype(jnp.float32), (~has_B1).astype(jnp.float32)],
                         axis=1)


def _scoring(user_BxE, table_VxE, bias_V, mask_BxL, popularity_V, extra_bias_V):
  """(user, table, bias) to rank with: the popularity fallback when counts are given, plus an
  extra per-item bias (-inf outside a candidate set) when one is given."""
  if popularity_V is not None:
    has_history_B = mask_BxL.astype(bool).any(axis=1)
    user_BxE, table_VxE, bias_V = (fallback_user(user_BxE, has_history_B),
                                   fallback_table(table_VxE, bias_V, popularity_V), None)
  if extra_bias_V is not None:
    extra_V = extra_bias_V.astype(jnp.float32)
    bias_V = extra_V if bias_V is None else bias_V.astype(jnp.float32) + extra_V
  return user_BxE, table_VxE, bias_V


def _domain_args(batch: dict[str, jax.Array], item_domains_V: jax.Array | None
                 ) -> dict[str, Any]:
  """`ranks`' domain restriction for a batch: its rows' domains, given the items' domains."""
  if item_domains_V is None or batch.get("domains_B") is None:
    return {}
  return {"item_domains_V": item_domains_V, "domains_B": batch["domains_B"]}


def eval_step(params: Any, consts: Any, batch: dict[str, jax.Array],
              popularity_V: jax.Array | None = None, extra_bias_V: jax.Array | None = None,
              item_domains_V: jax.Array | None = None, *,
              graphdef: nnx.GraphDef, exclude_seen: bool, chunk_size: int,
              head: str = "softmax") -> jax.Array:
  """0-based full-catalog rank of each row's target (see `ranks.target_ranks`) under `head`.

  With `popularity_V` (training counts), a row without history is ranked by popularity
  (`fallback_table`), as the Recommender serves it; without, such a row ties every item.
  `extra_bias_V` is added to every item's score (-inf: never ranked, never ahead of a target).
  With `item_domains_V` and the batch's `domains_B`, each row is ranked in its own domain.
  """
  user_BxE, table_VxE, bias_V = user_vectors(params, consts, batch, graphdef, head)
  user, table, bias = _scoring(user_BxE, table_VxE, bias_V, batch["mask_BxL"], popularity_V,
                               extra_bias_V)
  return ranks.target_ranks(user, table, bias, batch["targets_B"], batch.get("seen_BxS"),
                            exclude_seen=exclude_seen, chunk_size=chunk_size,
                            pairs=transition_pairs(params, consts, batch, graphdef, head),
                            **_domain_args(batch, item_domains_V))


def topk_step(params: Any, consts: Any, batch: dict[str, jax.Array],
              popularity_V: jax.Array | None = None, extra_bias_V: jax.Array | None = None,
              item_domains_V: jax.Array | None = None, *,
              graphdef: nnx.GraphDef, k: int, exclude_seen: bool,
              chunk_size: int, head: str = "softmax") -> tuple[jax.Array, jax.Array]:
  """Each row's top-k next items and scores under `head`, seen items excluded unless asked
  otherwise (with `item_domains_V` and `domains_B`: from the row's domain)."""
  user_BxE, table_VxE, bias_V = user_vectors(params, consts, batch, graphdef, head)
  user, table, bias = _scoring(user_BxE, table_VxE, bias_V, batch["mask_BxL"], popularity_V,
                               extra_bias_V)
  return ranks.top_k_items(user, table, bias, k, batch.get("seen_BxS"),
                           exclude_seen=exclude_seen, chunk_size=chunk_size,
                           pairs=transition_pairs(params, consts, batch, graphdef, head),
                           **_domain_args(batch, item_domains_V))


def rank_topk_step(params: Any, consts: Any, batch: dict[str, jax.Array],
                   popularity_V: jax.Array | None = None, extra_bias_V: jax.Array | None = None,
                   item_domains_V: jax.Array | None = None,
                   *, graphdef: nnx.GraphDef, k: int, exclude_seen: bool, chunk_size: int,
                   head: str = "softmax"):
  """`eval_step` and `topk_step` over one user computation: (ranks_B, ids_BxK, scores_BxK).

  The top-K lists feed the beyond-accuracy metrics (`evaluation/beyond.py`); both are chunked
  over items.
  """
  user_BxE, table_VxE, bias_V = user_vectors(params, consts, batch, graphdef, head)
  user, table, bias = _scoring(user_BxE, table_VxE, bias_V, batch["mask_BxL"], popularity_V,
                               extra_bias_V)
  seen = batch.get("seen_BxS")
  domain_args = _domain_args(batch, item_domains_V)
  pairs = transition_pairs(params, consts, batch, graphdef, head)
  ranks_B = ranks.target_ranks(user, table, bias, batch["targets_B"], seen,
                               exclude_seen=exclude_seen, chunk_size=chunk_size, pairs=pairs,
                               **domain_args)
  ids_BxK, scores_BxK = ranks.top_k_items(user, table, bias, k, seen, exclude_seen=exclude_seen,
                                          chunk_size=chunk_size, pairs=pairs, **domain_args)
  return ranks_B, ids_BxK, scores_BxK


def sampled_step(params: Any, consts: Any, batch: dict[str, jax.Array],
                 popularity_V: jax.Array | None = None, extra_bias_V: jax.Array | None = None,
                 item_domains_V: jax.Array | None = None, *,
                 graphdef: nnx.GraphDef) -> tuple[jax.Array, jax.Array]:
  """The sampled protocol: (ranks_B, ties_B) of each target among the batch's `candidates_BxM`
  (column 0 the target; `ranks.candidate_ranks`), scored as `eval_step` scores (the user vector
  for the row's domain, the popularity fallback for an empty history)."""
  del item_domains_V  # the candidates are already drawn from the row's domain
  user_BxE, table_VxE, bias_V = user_vectors(params, consts, batch, graphdef)
  user, table, bias = _scoring(user_BxE, table_VxE, bias_V, batch["mask_BxL"], popularity_V,
                               extra_bias_V)
  return ranks.candidate_ranks(user, table, bias, batch["candidates_BxM"],
                               pairs=transition_pairs(params, consts, batch, graphdef))


def jit_over_batch(fn, mesh: Mesh, popularity_V=None, extra_bias_V=None,
                   item_domains_V=None) -> Callable:
  """`fn(params, consts, batch, popularity_V, extra_bias_V, item_domains_V)` jitted with the
  batch sharded over `data`, as `f(params, consts, batch)` with the (optional) item vectors bound
  (a `BatchFn`, which can compile its programs ahead).

  The parameters are taken as they are placed: replicated, or with the item tables split over
  the mesh's `model` axis (`model.vocab_shards`).
  """
  repl = mesh_lib.replicated(mesh)
  jitted = jax.jit(fn, in_shardings=(None, repl, mesh_lib.batch_sharding(mesh), repl, repl, repl),
                   out_shardings=repl)
  bound = [None if v is None else mesh_lib.replicate(jnp.asarray(v, dtype), mesh)
           for v, dtype in ((popularity_V, jnp.float32), (extra_bias_V, jnp.float32),
                            (item_domains_V, jnp.int32))]
  return BatchFn(jitted, bound, mesh)


def _batch_signature(batch) -> tuple:
  return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))


class BatchFn:
  """`f(params, consts, batch)`: a jitted scoring step with its item vectors bound.

  `compile_ahead` compiles its programs for given batch shapes on a background thread, e.g. the
  validation's while the first epoch trains (on CPU a small training step gains little from a
  second core, and the first validation then waits for no compile). A call with a batch of one
  of those shapes runs the program compiled ahead; any other runs through `jax.jit`.
  """

  def __init__(self, jitted, bound, mesh: Mesh):
    self._jitted, self._bound, self._mesh = jitted, bound, mesh
    self._ahead: dict[tuple, concurrent.futures.Future] = {}

  def __call__(self, params, consts, batch):
    future = self._ahead.get(_batch_signature(batch))
    if future is not None:
      return future.result()(params, consts, batch, *self._bound)
    return self._jitted(params, consts, batch, *self._bound)

  def compile_ahead(self, params, consts, batches) -> list[concurrent.futures.Future]:
    """Starts compiling, one after another on a background thread, the programs of `batches`'
    shapes (host batches, one per shape, placed as `mesh.to_global` places them) for parameters
    shaped and placed as `params`; returns their futures. A compile error surfaces at the call."""
    batch_sh = mesh_lib.batch_sharding(self._mesh)
    spec = lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
    placed = lambda x: spec(x, getattr(x, "sharding", None))  # numpy leaves: placed by the call
    params_spec, consts_spec = jax.tree.map(placed, params), jax.tree.map(placed, consts)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                 thread_name_prefix="compile_ahead")
    futures = []
    for batch in batches:
      signature = _batch_signature(batch)
      if signature in self._ahead:
        continue
      batch_spec = {k: spec(v, batch_sh) for k, v in batch.items()}
      self._ahead[signature] = pool.submit(
          lambda b=batch_spec: self._jitted.lower(params_spec, consts_spec, b,
                                                  *self._bound).compile())
      futures.append(self._ahead[signature])
    pool.shutdown(wait=False)
    return futures


def compile_rank_fn(graphdef, mesh: Mesh, *, exclude_seen: bool, chunk_size: int,
                    popularity_V=None, extra_bias_V=None, item_domains_V=None,
                    head: str = "softmax") -> Callable:
  """The jitted eval step: batch sharded over `data`, ranks returned replicated.

  popularity_V: training counts for the popularity fallback of empty histories (`eval_step`);
  extra_bias_V: an added per-item score (-inf outside a candidate set); item_domains_V: each
  item's domain, so that a batch with `domains_B` is ranked per row in the row's domain;
  head: "softmax" | "q".
  """
  return jit_over_batch(functools.partial(eval_step, graphdef=graphdef,
                                          exclude_seen=exclude_seen, chunk_size=chunk_size,
                                          head=head),
                        mesh, popularity_V, extra_bias_V, item_domains_V)


def compile_sampled_fn(graphdef, mesh: Mesh, *, popularity_V=None) -> Callable:
  """The jitted sampled-protocol step (`sampled_step`): (ranks_B, ties_B), replicated."""
  return jit_over_batch(functools.partial(sampled_step, graphdef=graphdef), mesh, popularity_V)
