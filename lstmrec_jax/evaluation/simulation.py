"""A learned user simulator for recommendation policies (SIMULATION, not logged-data evaluation).

Shape legend: B episodes run together, K slate size, V catalog size (ids 1..V-1, 0 = none),
T horizon.

The simulated user is two models fitted on users the policies are not evaluated on (the driver,
benchmarks/rl_simulation.py, fits them on one part of the users):
  - a choice model: a next-item model of its own (an LSTM trained with its own seed) whose
    softmax p_U(i | history) over the items the user has not consumed yet says how likely each
    item is to be taken next;
  - a rating model (`RatingModel`): the baseline predictor r = mu + b_i + b_u (item and user
    offsets, ridge-shrunk), with Gaussian noise of the fitted residual spread, rounded to 1..5.

An episode starts from a real user's history. At each of T steps the policy shows a slate of K
items the user has not consumed and (with `exclude_shown`) the policy has not shown before in
the episode (an item the user passed on is not shown again: a deterministic policy would
otherwise repeat its slate after every miss); the user takes slate item i with probability p_U(i | h) and
nothing with probability 1 - sum over the slate (a conditional logit whose outside option is the
mass off the slate, as in RecSim's choice models). A taken item is rated by the rating model,
earns the reward of that rating (the run's `reward` mapping) and joins the history of both the
policy and the user model, so a recommendation changes the future; a step without a choice
earns 0 and changes nothing. Everything here is a pure function of numpy arrays and callables:
the driver adapts the served policies (`serving.Recommender`) and the user model to them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class RatingModel:
  """r = mu + item_bias[i] + b_u (+ noise), the baseline predictor of Koren (2008)."""

  mean: float  # mu
  item_bias_V: np.ndarray  # b_i by item id (0 for items the fit never saw)
  sigma: float  # residual standard deviation of the fit
  reg: float  # ridge of the offsets (also used for new users' b_u)

  @classmethod
  def fit(cls, items_N: np.ndarray, ratings_N: np.ndarray, users_N: np.ndarray,
          num_items: int, reg: float = 10.0) -> RatingModel:
    """mu, then item offsets, then the residual spread after user offsets, all on one part of
    the users. Example: two items rated 5, 5 and 1, 1 with reg 0 -> b = +2, -2 around mu 3."""
    ratings = np.asarray(ratings_N, np.float64)
    mu = float(ratings.mean())
    sums = np.bincount(items_N, ratings - mu, minlength=num_items)
    counts = np.bincount(items_N, minlength=num_items)
    item_bias = sums / np.maximum(counts + reg, 1e-12)  # an unrated item (reg 0): 0 / eps
    resid = ratings - mu - item_bias[items_N]
    _, user_index = np.unique(users_N, return_inverse=True)
    user_bias = (np.bincount(user_index, resid) / (np.bincount(user_index) + reg))[user_index]
    sigma = float(np.sqrt(np.mean(np.square(resid - user_bias))))
    return cls(mu, item_bias, sigma, reg)

  def user_bias(self, items: np.ndarray, ratings: np.ndarray) -> float:
    """b_u of one user from the ratings of their history (shrunk toward 0 by `reg`)."""
    resid = np.asarray(ratings, np.float64) - self.mean - self.item_bias_V[np.asarray(items)]
    return float(resid.sum() / (len(resid) + self.reg))

  def expected(self, user_bias_B: np.ndarray, items_B: np.ndarray) -> np.ndarray:
    """The predicted rating, unrounded."""
    return self.mean + self.item_bias_V[items_B] + user_bias_B

  def sample(self, rng: np.random.Generator, user_bias_B: np.ndarray,
             items_B: np.ndarray) -> np.ndarray:
    """Integer ratings 1..5: the prediction plus N(0, sigma^2) noise, rounded and clipped."""
    noisy = self.expected(user_bias_B, items_B) + self.sigma * rng.standard_normal(len(items_B))
    return np.clip(np.rint(noisy), 1, 5).astype(np.int64)


class Policy(Protocol):
  """What the episode loop asks of a policy (the driver wraps a served model)."""

  def start(self, histories: Sequence[Sequence[int]]) -> Any:
    """The state of each episode's starting history."""

  def slates(self, state: Any, k: int, exclude: Sequence[set[int]]) -> np.ndarray:
    """[B, K] item ids, none in the history nor in `exclude` (0 = an empty slot)."""

  def observe(self, state: Any, items_B: np.ndarray) -> Any:
    """The state after item_B (0 = nothing consumed) joins each history."""


class ChoiceModel(Protocol):
  """The simulated user's next-item model: p_U over the catalog for each history."""

  def start(self, histories: Sequence[Sequence[int]]) -> Any:
    """The state of each episode's starting history."""

  def probabilities(self, state: Any) -> np.ndarray:
    """[B, V] softmax over the catalog (item 0 gets 0)."""

  def observe(self, state: Any, items_B: np.ndarray) -> Any:
    """The state after item_B (0 = nothing) joins each history."""


@dataclasses.dataclass
class EpisodeLog:
  """Everything an episode batch did, for the metrics (B episodes, T steps)."""

  slates_TxBxK: np.ndarray  # item ids shown
  chosen_TxB: np.ndarray  # item taken, 0 = none
  ratings_TxB: np.ndarray  # its sampled rating, 0 = none
  rewards_TxB: np.ndarray  # its reward, 0 = none


def run_episodes(policy: Policy, user: ChoiceModel, ratings: RatingModel,
                 histories: Sequence[Sequence[int]], user_bias_B: np.ndarray, *,
                 horizon: int, slate: int, reward_of: Callable[[np.ndarray], np.ndarray],
                 rng: np.random.Generator, miss_scale: float = 1.0,
                 exclude_shown: bool = True) -> EpisodeLog:
  """B episodes of `horizon` steps from `histories` (see the module docstring).

  miss_scale: the outside option's mass is scaled by it before renormalising (1 = the model's
  own; < 1 makes the user more willing to take something from the slate).
  reward_of: integer ratings -> rewards (the run's `reward` mapping).
  exclude_shown: the policy never shows an item twice in an episode.
  """
  b = len(histories)
  p_state, u_state = policy.start(histories), user.start(histories)
  seen = [set(h) for h in histories]
  shown = [set() for _ in histories]
  slates, chosen, rated, rewards = [], [], [], []
  for _ in range(horizon):
    shown_BxK = np.asarray(policy.slates(p_state, slate, shown), np.int64)
    if exclude_shown:
      for row, items in enumerate(shown_BxK):
        shown[row].update(int(i) for i in items if i)
    probs_BxV = np.asarray(user.probabilities(u_state), np.float64)
    # Consumed items cannot be taken again: the user's mass over the rest, renormalised.
    for row, items in enumerate(seen):
      probs_BxV[row, list(items)] = 0.0
    probs_BxV[:, 0] = 0.0
    probs_BxV /= np.maximum(probs_BxV.sum(axis=1, keepdims=True), 1e-30)
    on_slate_BxK = np.take_along_axis(probs_BxV, shown_BxK, axis=1) * (shown_BxK > 0)
    none_B = np.maximum(1.0 - on_slate_BxK.sum(axis=1), 0.0) * miss_scale
    weights_BxK1 = np.concatenate([on_slate_BxK, none_B[:, None]], axis=1)
    weights_BxK1 /= np.maximum(weights_BxK1.sum(axis=1, keepdims=True), 1e-30)
    cum = np.cumsum(weights_BxK1, axis=1)
    pick_B = np.minimum((cum < rng.random(b)[:, None]).sum(axis=1), slate)
    taken_B = np.where(pick_B < slate, shown_BxK[np.arange(b), np.minimum(pick_B, slate - 1)], 0)
    rating_B = np.where(taken_B > 0, ratings.sample(rng, user_bias_B, taken_B), 0)
    reward_B = np.where(taken_B > 0, reward_of(np.maximum(rating_B, 1)), 0.0)
    for row, item in enumerate(taken_B):
      if item:
        seen[row].add(int(item))
    p_state, u_state = policy.observe(p_state, taken_B), user.observe(u_state, taken_B)
    slates.append(shown_BxK)
    chosen.append(taken_B)
    rated.append(rating_B)
    rewards.append(reward_B)
  return EpisodeLog(np.stack(slates), np.stack(chosen), np.stack(rated),
                    np.stack(rewards).astype(np.float64))


def episode_metrics(log: EpisodeLog, *, discounts: Sequence[float] = (0.5, 0.9),
                    high_rating: int = 4) -> dict[str, Any]:
  """Per-episode returns, hit rates and temporal diversity: mean and a 95% interval half-width
  over the B episodes.

  return@g = sum_t g^t r_t; hit_rate = taken / T; high_hit_rate = taken with rating >=
  high_rating / T; distinct_shown = distinct items shown / (K T).
  """
  t, b, k = log.slates_TxBxK.shape
  per: dict[str, np.ndarray] = {}
  for g in discounts:
    per[f"return@{g:g}"] = (log.rewards_TxB * (g ** np.arange(t))[:, None]).sum(axis=0)
  per["total_reward"] = log.rewards_TxB.sum(axis=0)
  per["hit_rate"] = (log.chosen_TxB > 0).mean(axis=0)
  per["high_hit_rate"] = ((log.chosen_TxB > 0) & (log.ratings_TxB >= high_rating)).mean(axis=0)
  shown = np.transpose(log.slates_TxBxK, (1, 0, 2)).reshape(b, t * k)
  per["distinct_shown"] = np.asarray([len(set(row[row > 0].tolist())) for row in shown]) / (t * k)
  out = {}
  for name, values in per.items():
    out[name] = float(values.mean())
    out[f"{name}_ci95"] = float(1.96 * values.std(ddof=1) / np.sqrt(b)) if b > 1 else 0.0
  out["episodes"], out["horizon"], out["slate"] = int(b), int(t), int(k)
  return out
