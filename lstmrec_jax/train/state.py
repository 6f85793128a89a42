"""Train state, model construction from the config, and the optimizer.

The model is split once with `nnx.split`: the graph definition stays on the host and every step is a
pure function over a plain pytree (`TrainState`), which is also what Orbax saves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lstmrec_jax.model import modules


class TrainState(NamedTuple):
  """Everything a resumed run needs besides the data position (derived from `step`)."""

  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # pure dict of the model's nnx.Param values
  opt_state: Any
  rng: jax.Array  # uint32[2] raw key; dropout keys are fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warm-up, then cosine or constant, and global-norm clipping."""

  learning_rate: float = 1e-3
  warmup_steps: int = 100
  schedule: str = "cosine"  # "cosine" | "constant"
  final_lr_fraction: float = 0.0
  weight_decay: float = 0.0
  clip_norm: float = 1.0  # 0 disables clipping
  b1: float = 0.9
  b2: float = 0.999


def dataclass_from_mapping(cls, values: Mapping[str, Any]):
  """Builds a frozen config dataclass; unknown keys are an error, not silently ignored."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"unknown {cls.__name__} keys: {unknown}; known: {sorted(names)}")
  return cls(**dict(values))


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  """optax AdamW with warm-up + decay; decay only on matrices (not biases or norms)."""
  warmup = max(min(cfg.warmup_steps, total_steps - 1), 1)
  # The first step already moves the parameters: warm-up starts at peak / warmup, not at 0.
  first_lr = cfg.learning_rate / warmup
  if cfg.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        first_lr, cfg.learning_rate, warmup, max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.final_lr_fraction)
  elif cfg.schedule == "constant":
    schedule = optax.join_schedules(
        [optax.linear_schedule(first_lr, cfg.learning_rate, warmup),
         optax.constant_schedule(cfg.learning_rate)], [warmup])
  else:
    raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                      mask=decay_mask)
  if cfg.clip_norm:
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
  return adamw


def create_model(model_cfg: modules.ModelConfig, seed: int, **model_kwargs):
  """Builds the model; returns (graphdef, params, consts), the last two as pure dicts.

  `consts` is the model's non-parameter state (e.g. item content arrays built from the data): it is
  passed to every step unchanged, never trained and never checkpointed (rebuilt from the data).
  """
  model = modules.SeqRecModel(model_cfg, rngs=nnx.Rngs(params=seed), **model_kwargs)
  graphdef, params, consts = nnx.split(model, nnx.Param, ...)
  return graphdef, params.to_pure_dict(), consts.to_pure_dict()


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """Fresh state at step 0."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(seed + 1)))
