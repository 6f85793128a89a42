"""Attacks on a trained recommender, each a function anyone can rerun on a workdir or a dataset.

Shape legend: B users per batch, L history length, E embedding size, V catalog size, U users,
K list length.

(a) `perturbed_ranks`: test-time, white-box. Each user's input item embeddings are moved inside
    an L2 ball of radius eps x (the mean item embedding norm) per position, in the direction that
    most raises the loss of the held-out target (FGSM, or PGD with `steps`); then the target is
    ranked as usual.
(b) `noisy_split`: a share of every history's events replaced by uniformly random items; the
    split is then evaluated as usual (`ranking.evaluate_params`).
(c) data poisoning: `pick_target` chooses a cold-ish item (few training events), `fake_users`
    writes sequences that pair it with popular items, `export_seqfile` writes the whole data (and
    the fake users) as a seqfile to train on, and `target_exposure` measures the target's HR@K
    among the real users (its share of real users' top-K lists) and their accuracy.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstmrec_jax import losses
from lstmrec_jax.data import pipeline
from lstmrec_jax.data import preprocess
from lstmrec_jax.evaluation import metrics
from lstmrec_jax.evaluation import ranking
from lstmrec_jax.losses import adversarial
from lstmrec_jax.scoring import ranks as ranks_lib
from lstmrec_jax.scoring import steps as scoring


# ------------------------------------------------------------------ (a) embedding perturbations


def attacked_ranks_step(params: Any, consts: Any, batch: dict[str, jax.Array],
                        popularity_V: jax.Array, eps: jax.Array, *, graphdef: nnx.GraphDef,
                        loss_cfg: losses.LossConfig, kind: str, steps: int, exclude_seen: bool,
                        chunk_size: int) -> jax.Array:
  """Target ranks after the worst-case input-embedding perturbation of L2 radius `eps`.

  eps = 0 gives exactly `scoring.eval_step` (with the popularity fallback of empty histories).
  """
  model = nnx.merge(graphdef, params, consts)
  input_VxE, output_VxE, bias_V = model.item_tables()
  inputs, mask_BxL, targets_B = batch["inputs_BxL"], batch["mask_BxL"], batch["targets_B"]
  has_history_B = mask_BxL.astype(bool).any(axis=1)

  def user_at(delta):
    user_BxLxE = model(inputs, mask_BxL, item_table_VxE=input_VxE, input_delta_BxLxE=delta)
    return scoring.last_state(user_BxLxE, mask_BxL)

  def loss_at(delta):
    weights_B = (has_history_B & (targets_B > 0)).astype(jnp.float32)
    return losses.get_loss(loss_cfg.kind)(user_at(delta), output_VxE, bias_V, targets_B,
                                          weights_B, cfg=loss_cfg, key=None, log_q_V=None,
                                          item_mask_V=None)

  shape = (*inputs.shape, input_VxE.shape[-1])
  # Unit-radius directions scaled by eps: eps stays a traced argument (one compile per sweep).
  (delta,) = adversarial.worst_case(loss_at, (shape,), mask_BxL, kind=kind, eps=1.0,
                                    steps=steps)
  # eps is relative to the mean item embedding norm, as in adversarial training.
  user_BxE = user_at(eps * adversarial.embedding_scale(input_VxE) * delta)
  user = scoring.fallback_user(user_BxE, has_history_B)
  table = scoring.fallback_table(output_VxE, bias_V, popularity_V)
  # The transition prior (`model.transition_weight`) reads item ids, which the attack leaves.
  return ranks_lib.target_ranks(user, table, None, targets_B, batch.get("seen_BxS"),
                              exclude_seen=exclude_seen, chunk_size=chunk_size,
                              pairs=scoring.transition_pairs(params, consts, batch, graphdef))


def perturbed_ranks(graphdef, params, consts, dataset, split, *, eps_list: Sequence[float],
                    loss_cfg: losses.LossConfig, kind: str = "fgsm", steps: int = 1,
                    batch_size: int, max_len: int, exclude_seen: bool = True,
                    chunk_size: int = 8192) -> dict[float, np.ndarray]:
  """{eps: ranks_U} of attack (a) over one split (users in the split's order).

  `loss_cfg` is the loss the attacker ascends; a sampled loss is replaced by the exact
  chunked softmax (the attacker knows the whole catalog).
  """
  if losses.needs_log_q(loss_cfg) or loss_cfg.kind not in ("full", "chunked"):
    loss_cfg = dataclasses.replace(loss_cfg, kind="chunked")
  loss_cfg = dataclasses.replace(loss_cfg, label_smoothing=0.0, train_items_only=False)
  fn = jax.jit(functools.partial(attacked_ranks_step, graphdef=graphdef, loss_cfg=loss_cfg,
                                 kind=kind, steps=steps, exclude_seen=exclude_seen,
                                 chunk_size=chunk_size))
  pop_V = jnp.asarray(dataset.item_counts_V, jnp.float32)
  out = {float(e): [] for e in eps_list}
  for batch in pipeline.eval_batches(split, batch_size=batch_size, max_len=max_len):
    inputs = {k: batch[k] for k in ("inputs_BxL", "mask_BxL", "targets_B", "seen_BxS")}
    for e in out:
      ranks_B = np.asarray(fn(params, consts, inputs, pop_V, jnp.float32(e)))
      out[e].append(ranks_B[batch["valid_B"]])
  return {e: np.concatenate(r) if r else np.zeros((0,), np.int32) for e, r in out.items()}


# ------------------------------------------------------------------------ (b) random noise


def noisy_split(split, *, fraction: float, num_items: int, seed: int):
  """The split with round(fraction x events) of each history replaced by random real items.

  Deterministic in (seed, user). Example: fraction 0.2 and a history of 10 events -> 2 replaced.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"noise fraction {fraction} must be in [0, 1]")
  rows = []
  for k, user in enumerate(split.users_U):
    h = np.array(split.history[k], copy=True)
    n = int(round(fraction * len(h)))
    if n:
      rng = np.random.default_rng([seed, int(user)])
      pos = rng.choice(len(h), size=n, replace=False)
      h[pos] = rng.integers(1, num_items, size=n)
    rows.append(h)
  return preprocess.EvalSplit(np.asarray(split.users_U), preprocess.Sequences.from_lists(rows),
                              np.asarray(split.targets_U))


# ---------------------------------------------------------------------- (c) data poisoning


def pick_target(item_counts_V: np.ndarray, seed: int, quantiles=(0.1, 0.3)) -> int:
  """A cold-ish item: drawn among items whose training count lies in the given quantile band.

  Example: counts 1..100 and the band (0.1, 0.3) -> an item with 11..30 events.
  """
  counts = np.asarray(item_counts_V)
  ids = np.flatnonzero(counts > 0)
  ids = ids[ids > 0]
  lo, hi = np.quantile(counts[ids], quantiles)
  band = ids[(counts[ids] >= lo) & (counts[ids] <= hi)]
  return int(np.random.default_rng(seed).choice(band))


def fake_users(item_counts_V: np.ndarray, target: int, *, num_users: int, length: int,
               seed: int, popular: int = 50) -> list[np.ndarray]:
  """Sequences (dense ids) that put `target` right after popular items: p1 t p2 t p3 t ...

  The popular items are drawn from the `popular` most frequent ones, so the target follows
  what real users often do. Example: length 4 -> [p1, t, p2, t].
  """
  counts = np.asarray(item_counts_V).astype(np.float64)
  counts[0] = 0
  counts[target] = 0
  top = np.argsort(-counts, kind="stable")[:popular]
  top = top[counts[top] > 0]
  rng = np.random.default_rng([seed, target])
  rows = []
  for _ in range(num_users):
    row = np.empty(length, np.int64)
    row[0::2] = rng.choice(top, size=len(row[0::2]))
    row[1::2] = target
    rows.append(row)
  return rows


def export_seqfile(dataset, path: str | os.PathLike, *, extra_rows: Sequence[np.ndarray] = (),
                   attributes_path: str | os.PathLike | None = None) -> dict[str, Any]:
  """Writes every user's whole sequence (raw ids, time order) as `user item ...` lines, then
  `extra_rows` (dense ids) as new users; and the item attributes as item2attributes JSON.

  Loaded with data.format=seqfile and leave-one-out, the real users get the same splits back.
  Returns {"path", "attributes_path" (or ""), "real_users", "fake_user_keys"}.
  """
  whole = ranking.whole_histories(dataset)
  keys = dataset.item_keys
  user_keys = [int(k) for k in dataset.user_keys]
  next_key = max(user_keys, default=0) + 1
  lines = [f"{user_keys[u]} " + " ".join(str(keys[i]) for i in whole.history[k]) + "\n"
           for k, u in enumerate(whole.users_U)]
  fake = []
  for j, row in enumerate(extra_rows):
    fake.append(next_key + j)
    lines.append(f"{next_key + j} " + " ".join(str(keys[i]) for i in row) + "\n")
  with open(path, "w") as f:
    f.write("".join(lines))
  attrs_out = ""
  if attributes_path is None and getattr(dataset, "num_attrs", 0) > 1:
    attributes_path = str(path) + ".item2attributes.json"
    attrs = dataset.item_attrs
    table = {str(keys[i]): [int(a) for a in attrs[i]] for i in range(1, dataset.num_items)
             if len(attrs[i])}
    with open(attributes_path, "w") as f:
      json.dump(table, f)
  if attributes_path:
    attrs_out = str(attributes_path)
  return {"path": str(path), "attributes_path": attrs_out, "real_users": len(user_keys),
          "fake_user_keys": fake}


def real_users_split(dataset, split, fake_user_keys: Sequence[int]):
  """The split without the fake users (by raw user key)."""
  fake = {int(k) for k in fake_user_keys}
  keep = np.array([int(dataset.user_keys[u]) not in fake for u in split.users_U], bool)
  rows = [split.history[k] for k in np.flatnonzero(keep)]
  return preprocess.EvalSplit(np.asarray(split.users_U)[keep],
                              preprocess.Sequences.from_lists(rows),
                              np.asarray(split.targets_U)[keep])


def target_exposure(graphdef, params, consts, dataset, split, target: int, *, k: int = 10,
                    batch_size: int, max_len: int, exclude_seen: bool = True,
                    chunk_size: int = 8192) -> dict[str, Any]:
  """The target's HR@K among the split's users who never saw it, and everyone's accuracy.

  Returns {"target_HR@K": share of eligible users with the target in their top K,
  "eligible_users", "NDCG@10", "HR@10", "users"}.
  """
  fn = jax.jit(functools.partial(scoring.rank_topk_step, graphdef=graphdef, k=k,
                                 exclude_seen=exclude_seen, chunk_size=chunk_size))
  pop_V = jnp.asarray(dataset.item_counts_V, jnp.float32)
  hits = eligible = 0
  ranks = []
  for batch in pipeline.eval_batches(split, batch_size=batch_size, max_len=max_len):
    inputs = {k_: batch[k_] for k_ in ("inputs_BxL", "mask_BxL", "targets_B", "seen_BxS")}
    ranks_B, ids_BxK, _ = fn(params, consts, inputs, pop_V)
    valid = batch["valid_B"]
    saw = (batch["seen_BxS"] == target).any(axis=1) | (batch["targets_B"] == target)
    ok = valid & ~saw
    eligible += int(ok.sum())
    hits += int((np.asarray(ids_BxK)[ok] == target).any(axis=1).sum())
    ranks.append(np.asarray(ranks_B)[valid])
  acc = metrics.metrics_from_ranks(np.concatenate(ranks) if ranks else np.zeros(0), (10,))
  return {f"target_HR@{k}": hits / eligible if eligible else None, "eligible_users": eligible,
          "HR@10": acc["HR@10"], "NDCG@10": acc["NDCG@10"], "users": acc["users"]}
