"""The optimizer (`OptimConfig`: AdamW, warm-up, cosine or constant) and the state it updates.

`TrainState` is a plain pytree (the model's parameters as `model.create_model` splits them, the
optimizer state, the step and the RNG): the train step is a pure function over it, and it is what
Orbax saves.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lstmrec_jax import config_keys

SCHEDULES = ("cosine", "constant")


class TrainState(NamedTuple):
  """Everything a resumed run needs besides the data position (derived from `step`)."""

  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # pure dict of the model's nnx.Param values
  opt_state: Any
  rng: jax.Array  # uint32[2] raw key; dropout keys are fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warm-up, then cosine or constant, and global-norm clipping."""

  learning_rate: float  # peak learning rate, finite and > 0
  warmup_epochs: float  # linear warm-up, in epochs of the run's data, finite and >= 0
  warmup_steps: int | None  # override of warmup_epochs, in steps, >= 0 (None = use epochs)
  schedule: str = config_keys.key(choices=SCHEDULES)  # after warm-up
  final_lr_fraction: float  # cosine end value / peak, in [0, 1]
  weight_decay: float  # decoupled, on matrices only, >= 0
  clip_norm: float  # global gradient norm clip, >= 0 (0 = off)
  b1: float  # Adam first-moment decay, in [0, 1)
  b2: float  # Adam second-moment decay, in [0, 1)

  def __post_init__(self):
    problems = []
    if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
      problems.append(f"optim.learning_rate={self.learning_rate} must be finite and > 0")
    if not math.isfinite(self.warmup_epochs) or self.warmup_epochs < 0:
      problems.append(f"optim.warmup_epochs={self.warmup_epochs} must be finite and >= 0")
    if self.warmup_steps is not None and self.warmup_steps < 0:
      problems.append(f"optim.warmup_steps={self.warmup_steps} must be >= 0 (or None)")
    if not 0.0 <= self.final_lr_fraction <= 1.0:
      problems.append(f"optim.final_lr_fraction={self.final_lr_fraction} must be in [0, 1]")
    for name in ("weight_decay", "clip_norm"):
      value = getattr(self, name)
      if not math.isfinite(value) or value < 0:
        problems.append(f"optim.{name}={value} must be finite and >= 0")
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        problems.append(f"optim.{name}={getattr(self, name)} must be in [0, 1)")
    if problems:
      raise ValueError("; ".join(problems))


def warmup_steps(cfg: OptimConfig, steps_per_epoch: int | None) -> int:
  """The warm-up in steps: `warmup_steps` when set, else `warmup_epochs` x steps per epoch.

  Example: warmup_epochs 1.25, warmup_steps None, 80 steps an epoch -> 100.
  """
  if cfg.warmup_steps is not None:
    return cfg.warmup_steps
  if steps_per_epoch is None:
    raise ValueError("optim.warmup_epochs needs the steps per epoch (or set optim.warmup_steps)")
  return int(round(cfg.warmup_epochs * steps_per_epoch))


def make_optimizer(cfg: OptimConfig, total_steps: int, steps_per_epoch: int | None = None
                   ) -> optax.GradientTransformation:
  """optax AdamW with warm-up + decay; decay only on matrices (not biases or norms).

  The cosine decay spans `total_steps` (the run's epochs x steps per epoch): both the warm-up
  (`warmup_epochs`) and the decay are in epochs of the data, unless `warmup_steps` overrides.
  """
  warmup = max(min(warmup_steps(cfg, steps_per_epoch), total_steps - 1), 1)
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
    raise ValueError(f"optim.schedule={cfg.schedule!r} must be one of {', '.join(SCHEDULES)}")
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                      mask=decay_mask)
  if cfg.clip_norm:
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
  return adamw


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """Fresh state at step 0."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(seed + 1)))
