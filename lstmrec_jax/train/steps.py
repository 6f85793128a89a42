"""Pure train and evaluation steps; compiled once where they are used (see `loop.py`).

Shape legend: B batch, L history length, E item embedding size, V catalog size, N = B*L positions,
S seen items per user, K top-k.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lstmrec_jax import losses, metrics
from lstmrec_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Which loss over the catalog, and its knobs."""

  kind: str = "full"  # "full" | "chunked" (exact, no N x V logits) | "sampled"
  chunk_size: int = 8192  # items per chunk for "chunked"
  num_negatives: int = 2048  # shared negatives for "sampled"
  alpha: float = 0.5  # negatives drawn by popularity**alpha
  in_batch_negatives: bool = False  # sampled: also use the batch's targets as negatives
  label_smoothing: float = 0.0  # full and chunked
  compute_dtype: str = "float32"  # chunked: N x V matmul operands, float32 | bfloat16 (f32 accum)
  row_block: int | None = None  # chunked: positions per cache block (None: 128 on CPU, else N)
  one_pass: bool | None = None  # chunked: gradients in the forward pass (None: CPU and V <= chunk)
  # Only items with a training event are candidates of the training softmax: items that are new
  # at test time (cold) are neither negatives nor pushed down. The trainer passes the mask as
  # aux["item_mask_V"] (and restricts the sampling distribution of "sampled" to those items).
  train_items_only: bool = False


# Score of an item left out of the training softmax: exp() of it is exactly 0 in f32, and unlike
# -inf it keeps every difference and product of the loss's backward pass finite.
_EXCLUDED_SCORE = -1e9


def candidate_bias(bias_V: jax.Array | None, item_mask_V: jax.Array | None) -> jax.Array | None:
  """The item bias with `_EXCLUDED_SCORE` where item_mask_V is False (bias unchanged if no mask).

  Example: candidate_bias(None, [False, True, False]) -> [-1e9, 0, -1e9].
  """
  if item_mask_V is None:
    return bias_V
  base_V = jnp.zeros(item_mask_V.shape, jnp.float32) if bias_V is None else bias_V
  return jnp.where(item_mask_V, base_V, _EXCLUDED_SCORE)


def _sequence_loss(model, batch, dropout_key, loss_cfg: LossConfig, log_q_V, item_mask_V=None):
  """Softmax cross-entropy at every real position of the batch.

  item_mask_V (bool, V) restricts the full and chunked softmax to the items where it is True (the
  targets must be among them); None scores every item.
  """
  id_keep_V = model.id_keep_mask(dropout_key)  # None unless model.id_dropout > 0
  user_BxLxE = model(batch["inputs_BxL"], batch["mask_BxL"], batch.get("resets_BxL"),
                     dropout_key=dropout_key, id_keep_V=id_keep_V)
  user_NxE = user_BxLxE.reshape(-1, user_BxLxE.shape[-1])
  targets_N = batch["targets_BxL"].reshape(-1)
  weights_N = (targets_N > 0).astype(jnp.float32)
  table_VxE, bias_V = model.item_table(id_keep_V), model.item_bias()
  if loss_cfg.kind != "sampled":  # sampled: the sampling distribution already excludes them
    if item_mask_V is not None and loss_cfg.label_smoothing:
      raise ValueError("loss.train_items_only does not combine with loss.label_smoothing (the "
                       "smoothing term averages over every item)")
    bias_V = candidate_bias(bias_V, item_mask_V)
  if loss_cfg.kind == "full":
    return losses.softmax_cross_entropy(user_NxE, table_VxE, bias_V, targets_N, weights_N,
                                        label_smoothing=loss_cfg.label_smoothing)
  if loss_cfg.kind == "chunked":
    return losses.chunked_softmax_cross_entropy(user_NxE, table_VxE, bias_V, targets_N,
                                                weights_N, chunk_size=loss_cfg.chunk_size,
                                                label_smoothing=loss_cfg.label_smoothing,
                                                compute_dtype=loss_cfg.compute_dtype,
                                                row_block=loss_cfg.row_block,
                                                one_pass=loss_cfg.one_pass)
  if loss_cfg.kind == "sampled":
    neg_key = jax.random.fold_in(dropout_key, 1)
    negatives_S = losses.sample_negatives(neg_key, log_q_V, loss_cfg.num_negatives)
    return losses.sampled_softmax_cross_entropy(
        user_NxE, table_VxE, bias_V, targets_N, weights_N, negatives_S, log_q_V,
        in_batch_negatives=loss_cfg.in_batch_negatives)
  raise ValueError(f"loss.kind must be 'full', 'chunked' or 'sampled', got {loss_cfg.kind!r}")


def train_step(state: TrainState, batch: dict[str, jax.Array], aux: dict[str, Any], *,
               graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               loss_cfg: LossConfig) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a (global) batch; returns the new state and scalar metrics.

  `aux` holds what the step reads but never changes: `consts` (the model's non-parameter state),
  `log_q_V` (sampling log-probabilities, for the sampled loss; else None) and optionally
  `item_mask_V` (the candidates of the training softmax, `LossConfig.train_items_only`).
  """
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, aux["consts"])
    loss, _ = _sequence_loss(model, batch, dropout_key, loss_cfg, aux.get("log_q_V"),
                             aux.get("item_mask_V"))
    return loss

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  out = {"loss": loss, "grad_norm": optax.global_norm(grads),
         "positions": batch["mask_BxL"].sum(dtype=jnp.int32)}
  return state._replace(step=state.step + 1, params=params, opt_state=opt_state), out


def last_state(user_BxLxE: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """The output at each row's last real position (rows are right-padded); zeros for empty rows."""
  last_B = jnp.maximum(mask_BxL.sum(axis=1) - 1, 0)
  return jnp.take_along_axis(user_BxLxE, last_B[:, None, None], axis=1)[:, 0]


def user_vectors(params: Any, consts: Any, batch: dict[str, jax.Array], graphdef: nnx.GraphDef):
  """(user_BxE, item table, item bias) for a batch of histories."""
  model = nnx.merge(graphdef, params, consts)
  user_BxLxE = model(batch["inputs_BxL"], batch["mask_BxL"])
  return last_state(user_BxLxE, batch["mask_BxL"]), model.item_table(), model.item_bias()


def eval_step(params: Any, consts: Any, batch: dict[str, jax.Array], *,
              graphdef: nnx.GraphDef, exclude_seen: bool, chunk_size: int) -> jax.Array:
  """0-based full-catalog rank of each row's target (see `metrics.target_ranks`)."""
  user_BxE, table_VxE, bias_V = user_vectors(params, consts, batch, graphdef)
  return metrics.target_ranks(user_BxE, table_VxE, bias_V, batch["targets_B"],
                              batch.get("seen_BxS"), exclude_seen=exclude_seen,
                              chunk_size=chunk_size)


def topk_step(params: Any, consts: Any, batch: dict[str, jax.Array], *,
              graphdef: nnx.GraphDef, k: int, exclude_seen: bool,
              chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """Each row's top-k next items and scores, seen items excluded unless asked otherwise."""
  user_BxE, table_VxE, bias_V = user_vectors(params, consts, batch, graphdef)
  return metrics.top_k_items(user_BxE, table_VxE, bias_V, k, batch.get("seen_BxS"),
                             exclude_seen=exclude_seen, chunk_size=chunk_size)
