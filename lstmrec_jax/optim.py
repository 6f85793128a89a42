"""The optimizer (`OptimConfig`: AdamW, warm-up, cosine or constant) and the state it updates.

`TrainState` is a plain pytree (the model's parameters as `model.create_model` splits them, the
optimizer state, the step and the RNG): the train step is a pure function over it, and it is what
Orbax saves.

With `ema_decay` > 0 the optimizer also keeps an exponential moving average of the parameters
(`param_ema`, the last link of the chain, so it lives in the optimizer state: saved, resumed and
laid out with it); `evaluated_params(state)` is what validation ranks and the best checkpoint
keeps: the average when there is one, else the parameters.
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
  ema_decay: float  # moving average of the parameters, in [0, 1) (0 = off)

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
    for name in ("b1", "b2", "ema_decay"):
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
  chain = ([optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []) + [adamw]
  if cfg.ema_decay:
    chain.append(param_ema(cfg.ema_decay))
  return chain[0] if len(chain) == 1 else optax.chain(*chain)


class ParamEMAState(NamedTuple):
  """`param_ema`'s state: the zero-started average of the parameters and the updates seen."""

  count: jax.Array  # int32 scalar
  ema: Any  # like the parameters


def param_ema(decay: float) -> optax.GradientTransformation:
  """Keeps the exponential moving average of the parameters after each update (Polyak / EMA).

  Leaves the updates unchanged, so it goes last in a chain. The average starts at zero and is
  debiased (`ema_params`): after t updates it is sum_s (1 - d) d^(t-s) p_s / (1 - d^t) over the
  parameters p_1..p_t after each update, the initialisation weighing nothing. Example: d = 0.5,
  parameters 2 then 4 after two updates: (0.25 * 2 + 0.5 * 4) / 0.75 = 3.333.
  """
  if not 0.0 < decay < 1.0:
    raise ValueError(f"optim.ema_decay={decay} must be in (0, 1) (0 turns it off)")

  def init(params):
    return ParamEMAState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("param_ema needs the parameters (tx.update(grads, state, params))")
    new_params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), state.ema,
                       new_params)
    return updates, ParamEMAState(state.count + 1, ema)

  return optax.GradientTransformation(init, update)


def _find_ema(opt_state) -> ParamEMAState | None:
  """The `param_ema` state inside an optimizer state (None without one)."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamEMAState))
           if isinstance(s, ParamEMAState)]
  return found[0] if found else None


def ema_params(opt_state, decay: float):
  """The debiased parameter average of an optimizer state with `param_ema(decay)`."""
  state = _find_ema(opt_state)
  if state is None:
    raise ValueError("this optimizer state has no parameter average (optim.ema_decay = 0)")
  scale = 1.0 / jnp.maximum(1.0 - jnp.power(decay, state.count.astype(jnp.float32)), 1e-12)
  return jax.tree.map(lambda e: (e * scale).astype(e.dtype), state.ema)


def evaluated_params(state: TrainState, cfg: OptimConfig):
  """What validation ranks and the best checkpoint keeps: the average when `cfg.ema_decay` > 0
  and at least one update was made, else the parameters."""
  if not cfg.ema_decay or int(jax.device_get(state.step)) == 0:
    return state.params
  return ema_params(state.opt_state, cfg.ema_decay)


def init_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """Fresh state at step 0."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(seed + 1)))
