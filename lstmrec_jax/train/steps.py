"""The pure train step; compiled once where it is used (see `loop.py`). The evaluation step is
`scoring.steps.eval_step`.

Shape legend: B batch, L history length, E item embedding size, V catalog size, N = B*L positions.

Each step merges the model once, computes the item tables once (`SeqRecModel.item_tables`: the
content towers, if any, run once per step) and passes them explicitly to the model and the loss.

With `model.vocab_shards` > 1 the step runs on a data x model mesh: the item tables (with their
zero padding rows, `ModelConfig.table_rows`) and their optimizer moments are split row-wise over
`model` (`mesh.state_shardings`), and a loss with a split implementation ("full", "chunked":
`losses/vocab_parallel.py`) runs it, through the same registry, with the same value and
gradients. The sampled losses gather their few rows from the split table through XLA's
partitioner.

An offline RL loss (`losses.needs_transitions`: sqn, sac, sa2c) also gets the logged transitions
of the batch (`losses/rl.py`): the model's two Q heads, the targets' rewards (`rewards_BxL`), the
terminal flags from the mask and resets, which Q head is the main one this step (a coin of
`fold_in(dropout key, 2)`) and whether the step is past the warm-up (`aux["rl_start_step"]`);
its log scalars join the step's metrics.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lstmrec_jax import losses
from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax import optim
from lstmrec_jax.losses import LossConfig
from lstmrec_jax.losses import adversarial
from lstmrec_jax.losses import contrastive
from lstmrec_jax.losses import rl as rl_lib
from lstmrec_jax.optim import TrainState


def uses_vocab_parallel(mesh, loss_cfg: LossConfig) -> bool:
  """Whether the step on `mesh` runs `loss_cfg`'s split-table implementation (`model` axis > 1)."""
  return (mesh is not None and mesh_lib.MODEL_AXIS in mesh.axis_names
          and mesh.shape[mesh_lib.MODEL_AXIS] > 1 and losses.has_vocab_parallel(loss_cfg.kind))


def _rows_read(model, batch, loss_cfg: LossConfig, neg_key, log_q_V, adv_cfg, aug_cfg,
               further_NxK=None):
  """The item ids whose table rows this step reads, or None for the whole table.

  A loss that reads the targets and a few rows more (sampled negatives: `losses.rows_read`) and
  an item side that computes content per row (`model.computes_rows`) let the step compute item
  content at the inputs, targets and those rows only; the values and gradients it reads are the
  whole table's. Terms that read other rows (the adversarial scale is a mean over every item;
  the contrastive views look up their own inputs; the domain softmax slices the table per
  domain) keep the whole table.
  """
  extra = losses.rows_read(loss_cfg.kind)
  if (extra is None or neg_key is None or not model.computes_rows or loss_cfg.domain_softmax
      or (adv_cfg is not None and adv_cfg.on)
      or (aug_cfg is not None and aug_cfg.contrastive_weight > 0)):
    return None
  parts = [batch["inputs_BxL"].reshape(-1), batch["targets_BxL"].reshape(-1),
           extra(loss_cfg, neg_key, log_q_V)]
  if further_NxK is not None:  # the teacher's targets
    parts.append(further_NxK.reshape(-1))
  return jnp.concatenate(parts).astype(jnp.int32)


def sequence_loss(model, batch: dict[str, jax.Array], dropout_key: jax.Array | None,
                  loss_cfg: LossConfig, log_q_V: jax.Array | None,
                  item_mask_V: jax.Array | None = None, **kwargs) -> jax.Array:
  """The `loss_cfg.kind` loss at every real position of the batch (a scalar); the keyword
  arguments are `sequence_loss_and_logs`'s."""
  return sequence_loss_and_logs(model, batch, dropout_key, loss_cfg, log_q_V, item_mask_V,
                                **kwargs)[0]


def _transitions(model, batch, dropout_key, step, rl_start_step) -> rl_lib.Transitions:
  """The logged transitions of a batch for an RL loss (see the module docstring)."""
  if "rewards_BxL" not in batch:
    raise ValueError("an offline RL loss needs batches with rewards_BxL (TrainBatches with "
                     "rewards_N; the augment transforms drop them)")
  q_2xVxE, q_bias_2xV = model.q_tables()
  main = (jnp.zeros((), jnp.int32) if dropout_key is None
          else rl_lib.head_draw(jax.random.fold_in(dropout_key, 2)))
  weighted = jnp.asarray(True) if step is None else step >= rl_start_step
  return rl_lib.Transitions(
      q_2xVxE, q_bias_2xV, batch["rewards_BxL"].reshape(-1),
      rl_lib.done_mask(batch["mask_BxL"], batch.get("resets_BxL")).reshape(-1), main, weighted)


def sequence_loss_and_logs(model, batch: dict[str, jax.Array], dropout_key: jax.Array | None,
                           loss_cfg: LossConfig, log_q_V: jax.Array | None,
                           item_mask_V: jax.Array | None = None, *,
                           adv_cfg: adversarial.AdversarialConfig | None = None,
                           aug_cfg: Any = None, mesh=None, rl_cfg: rl_lib.RLConfig | None = None,
                           step: jax.Array | None = None, rl_start_step: Any = 0,
                           intents_KxE: jax.Array | None = None,
                           intent_scale: jax.Array | float = 1.0,
                           teacher_VxK: tuple[jax.Array, jax.Array, Any] | None = None
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(the `loss_cfg.kind` loss at every real position of the batch, scalars to log).

  item_mask_V (bool, V) restricts the softmax losses to the items where it is True (the targets
  must be among them); None scores every item. Sampled negatives use fold_in(dropout_key, 1).
  With `adv_cfg` on, adds the adversarial term (`losses/adversarial.py`); with
  `aug_cfg.contrastive_weight > 0` and the batch's `view1_*` / `view2_*` keys (from
  `data.augment`), the InfoNCE term between the two views (`losses/contrastive.py`). `mesh`:
  the step's mesh; one with a `model` axis makes the softmax vocabulary-parallel.
  An RL loss (`losses.needs_transitions`) reads `rl_cfg` (the `rl` group), the batch's
  `rewards_BxL` and `step` (None: past the warm-up) against `rl_start_step`; its scalars (mean
  Q of the logged actions, ...) are the second value. Other losses log nothing here.
  With `loss_cfg.intent_weight` > 0 and `intents_KxE` (the epoch's prototypes,
  `train/intents.py`), adds intent_weight x intent_scale x the prototype term
  (`contrastive.intent_nce`); its value joins the logs as "terms/intent_nce".
  With `loss_cfg.teacher_weight` > 0, `teacher_VxK` = (partner ids, probabilities of every item,
  `run.Run.teacher_lists`; the step where the weight reaches 0, or 0 for a constant weight):
  each position's further targets (`losses.teacher_targets`), weighted as of `step`.
  """
  id_keep_V = model.id_keep_mask(dropout_key)  # None unless model.id_dropout > 0
  split = uses_vocab_parallel(mesh, loss_cfg)
  targets_N = batch["targets_BxL"].reshape(-1)
  weights_N = (targets_N > 0).astype(jnp.float32)
  if loss_cfg.user_weight_power or loss_cfg.recency_weight:
    weights_N = weights_N * losses.position_weights(
        batch["mask_BxL"], batch.get("resets_BxL"), user_weight_power=loss_cfg.user_weight_power,
        recency_weight=loss_cfg.recency_weight).reshape(-1)
  neg_key = None if dropout_key is None else jax.random.fold_in(dropout_key, 1)
  teacher = None
  if loss_cfg.teacher_weight:
    if teacher_VxK is None:
      raise ValueError("loss.teacher_weight > 0 needs the teacher's lists (aux "
                       "teacher_ids_VxK / teacher_probs_VxK, `run.step_aux`)")
    ids_VxK, probs_VxK, until_step = teacher_VxK
    weight = loss_cfg.teacher_weight * losses.teacher_scale(0 if step is None else step,
                                                            until_step)
    teacher = losses.teacher_targets(batch["inputs_BxL"], ids_VxK, probs_VxK, weight)
  rows = _rows_read(model, batch, loss_cfg, neg_key, log_q_V, adv_cfg, aug_cfg,
                    None if teacher is None else teacher[0])
  # Split: the tables as the parameters hold them (padding rows included, sharded by row).
  input_VxE, output_VxE, bias_V = model.item_tables(id_keep_V, padded=split, rows=rows)
  loss_fn = losses.get_loss(loss_cfg.kind, vocab_parallel=split)
  # The loss's keywords beyond the registry signature, each only when its setting is on.
  loss_args = {"mesh": mesh, "num_items": model.cfg.num_items} if split else {}
  if split and (loss_cfg.exclude_seen or loss_cfg.further_targets
                or loss_cfg.teacher_weight):  # run.build_run refuses it
    raise ValueError("loss.exclude_seen / further_targets / teacher_weight do not run with the "
                     "item tables split over devices (model.vocab_shards > 1)")
  if loss_cfg.exclude_seen:
    loss_args["exclude_NxS"] = losses.seen_exclusions(
        batch["inputs_BxL"], batch["targets_BxL"], batch.get("resets_BxL"))
  if loss_cfg.further_targets:
    loss_args["further_NxK"] = losses.further_targets(
        batch["targets_BxL"], batch.get("resets_BxL"), loss_cfg.further_targets)
  if teacher is not None:
    loss_args["further_NxK"], loss_args["further_weight_NxK"] = teacher
  mask_BxL = batch["mask_BxL"]
  logs: dict[str, jax.Array] = {}
  if losses.needs_transitions(loss_cfg.kind):
    if rl_cfg is None:
      raise ValueError(f"loss.kind={loss_cfg.kind!r} needs rl_cfg (the `rl` group)")
    loss_args = {**loss_args, "rl_cfg": rl_cfg, "transitions": _transitions(
        model, batch, dropout_key, step, rl_start_step)}

  # A cross-domain encoder reads each position's target domain (the next item's).
  target_domains_BxL = (model.item_domains(batch["targets_BxL"]) if model.cross_domain
                        else None)
  if loss_cfg.domain_softmax:
    if split:
      raise ValueError("loss.domain_softmax does not run with the item tables split over "
                       "devices (model.vocab_shards > 1)")
    loss_fn = functools.partial(losses.domain_softmax_loss, loss_fn,
                                domain_starts=model.cfg.domain_starts)

  def loss_at(input_delta=None, user_delta=None):
    user_BxLxE = model(batch["inputs_BxL"], mask_BxL, batch.get("resets_BxL"),
                       item_table_VxE=input_VxE, dropout_key=dropout_key,
                       input_delta_BxLxE=input_delta, target_domains_BxL=target_domains_BxL)
    if user_delta is not None:
      user_BxLxE = user_BxLxE + jnp.where(mask_BxL[..., None], user_delta, 0.0)
    user_NxE = user_BxLxE.reshape(-1, user_BxLxE.shape[-1])
    out = loss_fn(user_NxE, output_VxE, bias_V, targets_N, weights_N, cfg=loss_cfg, key=neg_key,
                  log_q_V=log_q_V, item_mask_V=item_mask_V, **loss_args)
    if "transitions" in loss_args:
      out, scalars = out
      if not logs:  # the clean pass's: a perturbed pass (adversarial) runs in an inner trace
        logs.update(scalars)
    if loss_cfg.target_contrastive_weight > 0 and input_delta is None and user_delta is None:
      out = out + loss_cfg.target_contrastive_weight * contrastive.same_target_nce(
          user_NxE, targets_N, loss_cfg.target_contrastive_temperature)
    if (loss_cfg.intent_weight > 0 and intents_KxE is not None and input_delta is None
        and user_delta is None):
      term = contrastive.intent_nce(user_NxE, weights_N, intents_KxE,
                                    loss_cfg.intent_temperature)
      term = intent_scale * term  # 0 before the first prototypes
      logs["terms/intent_nce"] = term
      out = out + loss_cfg.intent_weight * term
    return out

  loss = loss_at()
  if adv_cfg is not None and adv_cfg.on:
    b, l = batch["inputs_BxL"].shape
    shape = (b, l, input_VxE.shape[-1])
    shapes = (shape, shape) if adv_cfg.user_state else (shape,)
    # relative to the embeddings (the real rows: padding rows would shrink the mean norm)
    eps = adv_cfg.eps * adversarial.embedding_scale(input_VxE[:model.cfg.num_items])
    deltas = adversarial.worst_case(loss_at, shapes, mask_BxL, kind=adv_cfg.kind, eps=eps,
                                    steps=adv_cfg.steps)
    loss = loss + adv_cfg.weight * loss_at(*deltas)
  if aug_cfg is not None and aug_cfg.contrastive_weight > 0 and "view1_inputs_BxL" in batch:
    views = []
    for v in (1, 2):
      key = None if dropout_key is None else jax.random.fold_in(dropout_key, 10 + v)
      user_BxLxE = model(batch[f"view{v}_inputs_BxL"], batch[f"view{v}_mask_BxL"],
                         batch[f"view{v}_resets_BxL"], item_table_VxE=input_VxE,
                         dropout_key=key)
      last_B = batch[f"view{v}_last_B"]
      views.append((jnp.take_along_axis(user_BxLxE, jnp.maximum(last_B, 0)[:, None, None],
                                        axis=1)[:, 0], last_B >= 0))
    valid_B = views[0][1] & views[1][1]
    loss = loss + aug_cfg.contrastive_weight * contrastive.info_nce(
        views[0][0], views[1][0], valid_B, aug_cfg.temperature)
  return loss, logs


def train_step(state: TrainState, batch: dict[str, jax.Array], aux: dict[str, Any], *,
               graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               loss_cfg: LossConfig, adv_cfg: adversarial.AdversarialConfig | None = None,
               aug_cfg: Any = None, mesh=None, rl_cfg: rl_lib.RLConfig | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a (global) batch; returns the new state and scalar metrics.

  `aux` holds what the step reads but never changes: `consts` (the model's non-parameter state),
  `log_q_V` (sampling log-probabilities, for losses with `losses.needs_log_q(kind)`; else None)
  and optionally `item_mask_V` (the candidates of the training softmax,
  `LossConfig.train_items_only`). `adv_cfg` (the `adversarial` group) and `aug_cfg` (the
  `augment` group: its contrastive term) add their loss terms when on (`sequence_loss`).
  `mesh`: the step's mesh (a `model` axis makes the softmax vocabulary-parallel). `rl_cfg`: the
  `rl` group, for an offline RL loss (which also reads `aux["rl_start_step"]`, default 0).
  With `loss.intent_weight` > 0, `aux["intents_KxE"]` and `aux["intent_scale"]` are the epoch's
  intent prototypes and 1.0 (0.0 before the first prototypes; `train/intents.py`). With
  `loss.teacher_weight` > 0, `aux["teacher_ids_VxK"]` and `aux["teacher_probs_VxK"]` are the
  co-occurrence teacher's lists and `aux["teacher_until_step"]` the step where its weight
  reaches 0 (0: constant).
  """
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, aux["consts"])
    return sequence_loss_and_logs(
        model, batch, dropout_key, loss_cfg, aux.get("log_q_V"), aux.get("item_mask_V"),
        adv_cfg=adv_cfg, aug_cfg=aug_cfg, mesh=mesh, rl_cfg=rl_cfg, step=state.step,
        rl_start_step=aux.get("rl_start_step", 0), intents_KxE=aux.get("intents_KxE"),
        intent_scale=aux.get("intent_scale", 1.0),
        teacher_VxK=(None if "teacher_ids_VxK" not in aux
                     else (aux["teacher_ids_VxK"], aux["teacher_probs_VxK"],
                           aux.get("teacher_until_step", 0))))

  (loss, logs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  out = {"loss": loss, "grad_norm": optax.global_norm(grads), **logs}
  return state._replace(step=state.step + 1, params=params, opt_state=opt_state), out


def _guarded_step(state, batch, aux, *, step_fn):
  """`step_fn`, but a step with a non-finite loss or gradient keeps the old params and optimizer.

  The step counter still advances, so the data position (and exact resume) is unchanged.
  """
  new, out = step_fn(state, batch, aux)
  ok = jnp.isfinite(out["loss"]) & jnp.isfinite(out["grad_norm"])
  keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)
  new = new._replace(params=keep(new.params, state.params),
                     opt_state=keep(new.opt_state, state.opt_state))
  return new, {**out, "skipped": ~ok}


def compile_train_step(run, tx: optax.GradientTransformation, *, skip_nonfinite: bool = False):
  """The jitted train step of a built run (`run.build_run`), exactly as train.py runs it.

  Returns (train_fn, state_shardings): `train_fn(state, global_batch, aux) -> (state, metrics)`,
  jitted once with the state donated, the batch split over the mesh's `data` axis, and the state
  laid out by `mesh.state_shardings` (replicated, but for item tables split over `model`).
  `aux` is `run.step_aux()`. skip_nonfinite: a step with a non-finite loss or gradient keeps
  the old parameters (`train.skip_nonfinite_steps`). Benchmarks time this function.
  """
  mesh, spec = run.mesh, run.spec
  split_tables = mesh_lib.MODEL_AXIS in mesh.axis_names
  like = jax.eval_shape(lambda p: optim.init_state(p, tx, spec.seed), run.params)
  state_sh = mesh_lib.state_shardings(like, mesh, run.model_cfg.table_rows)
  step_fn = functools.partial(train_step, graphdef=run.graphdef, tx=tx, loss_cfg=spec.loss,
                              adv_cfg=spec.adversarial, aug_cfg=spec.augment,
                              mesh=mesh if split_tables else None, rl_cfg=spec.rl)
  if skip_nonfinite:
    step_fn = functools.partial(_guarded_step, step_fn=step_fn)
  repl = mesh_lib.replicated(mesh)
  train_fn = jax.jit(step_fn, in_shardings=(state_sh, mesh_lib.batch_sharding(mesh), repl),
                     out_shardings=(state_sh, repl), donate_argnums=0)
  return train_fn, state_sh
