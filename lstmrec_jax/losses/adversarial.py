"""Adversarial training: worst-case perturbations of the input item embeddings (and the user state).

Shape legend: B batch, L history length, E item embedding size.

The loss the step minimizes becomes

  loss(theta) + weight * loss(theta; x + delta_x, u + delta_u)

where delta maximizes the loss inside an L2 ball of radius eps * s per position (each input item
embedding x_t, and each user state u_t when `user_state`), s = `embedding_scale(table)`, the mean
norm of the real items' input embeddings (a constant): eps is relative, so a model cannot shrink the
attack by growing its embeddings, and one eps means the same at any E. FGSM takes one step of size
eps along the normalized gradient; PGD takes `steps` steps of size 2.5 eps / steps, projecting back
onto the ball after each (Madry et al.). The perturbation is a constant for the parameter gradient
(stop_gradient), as in adversarial personalized ranking (He et al. 2018). It is added after the item
table lookup, so it works with every item representation (`model.item_mode`) and encoder.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from lstmrec_jax import config_keys

KINDS = ("off", "fgsm", "pgd")


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
  """The `adversarial` group of configs/base.py (each key's meaning is there)."""

  kind: str = config_keys.key(choices=KINDS)
  eps: float  # L2 radius per position, relative to the mean item embedding norm; > 0 when on
  weight: float  # weight of the adversarial loss term, >= 0
  steps: int  # pgd: ascent steps, >= 1
  user_state: bool  # also perturb the user state (the encoder output) by eps

  def __post_init__(self):
    problems = []
    if self.kind != "off" and not self.eps > 0:
      problems.append(f"adversarial.eps={self.eps} must be > 0 when adversarial.kind is on")
    if self.weight < 0:
      problems.append(f"adversarial.weight={self.weight} must be >= 0")
    if self.steps < 1:
      problems.append(f"adversarial.steps={self.steps} must be >= 1")
    if problems:
      raise ValueError("; ".join(problems))

  @property
  def on(self) -> bool:
    return self.kind != "off" and self.weight > 0


def embedding_scale(table_VxE: jax.Array) -> jax.Array:
  """Mean L2 norm of the real items' rows (row 0 is padding), without gradient.

  Example: rows [pad, [3, 4], [0, 1]] -> 3.0.
  """
  norms = jnp.linalg.norm(table_VxE[1:].astype(jnp.float32), axis=-1)
  return jax.lax.stop_gradient(jnp.mean(norms))


def l2_normalize(g: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """g / ||g|| over the last axis (zero where g is zero or `mask` is False).

  Example: [[3, 4]] -> [[0.6, 0.8]].
  """
  norm = jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True))
  out = g / jnp.maximum(norm, 1e-12)
  return out if mask is None else jnp.where(mask[..., None], out, 0.0)


def project(delta: jax.Array, eps: float) -> jax.Array:
  """delta scaled into the L2 ball of radius eps per position. E.g. eps 1, [3, 4] -> [.6, .8]."""
  norm = jnp.sqrt(jnp.sum(delta * delta, axis=-1, keepdims=True))
  return delta * jnp.minimum(1.0, eps / jnp.maximum(norm, 1e-12))


def worst_case(loss_at: Callable, shapes: tuple, mask_BxL: jax.Array, *, kind: str, eps: float,
               steps: int = 1) -> tuple[jax.Array, ...]:
  """The loss-maximizing perturbations (one per shape) in the eps ball, as constants.

  Args:
    loss_at: f(*deltas) -> scalar loss, the deltas added where the model reads them.
    shapes: each delta's shape (e.g. (B, L, E) for the inputs, and for the user state).
    mask_BxL: real positions; padding gets no perturbation.
    kind: "fgsm" or "pgd".
    eps: L2 radius per position.
    steps: pgd ascent steps.

  Returns:
    The deltas, each with stop_gradient.
  """
  deltas = tuple(jnp.zeros(s, jnp.float32) for s in shapes)
  grad_fn = jax.grad(lambda ds: loss_at(*ds))
  if kind == "fgsm":
    grads = grad_fn(deltas)
    deltas = tuple(eps * l2_normalize(g, mask_BxL) for g in grads)
  elif kind == "pgd":
    alpha = 2.5 * eps / steps

    def body(_, ds):
      grads = grad_fn(ds)
      return tuple(project(d + alpha * l2_normalize(g, mask_BxL), eps)
                   for d, g in zip(ds, grads))

    deltas = jax.lax.fori_loop(0, steps, body, deltas)
  else:
    raise ValueError(f"unknown adversarial kind {kind!r}")
  return tuple(jax.lax.stop_gradient(d) for d in deltas)
