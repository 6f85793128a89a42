"""A synthetic interaction log with structure a sequence model can learn and popularity cannot.

The generative story, per user:
  * items belong to `num_clusters` clusters (the item's attribute) and have Zipf popularity
    within their cluster; the user holds 1-3 interests (clusters, popular ones more often);
  * the first event is a popular item of one interest; then, at each step, with probability
    `p_follow` the next item is one of the current item's `num_successors` fixed successors
    (a Markov chain inside the cluster, successors drawn uniformly so they are unrelated to
    popularity), with `p_switch` the user jumps to another of their interests (popular item
    there), otherwise a popular item of the current cluster;
  * nobody consumes an item twice (the evaluation protocol removes seen items, so a repeat
    could never be hit); timestamps advance by exponential gaps over most of a year, so a
    temporal split finds most users on both sides of its cut points.

The defaults (3,000 users, 1,000 items, ~30 events per user) train an LSTM in a minute or two
on 2 CPU cores; a first-order Markov scorer built from train counts reaches far above
popularity on them (tests/test_data_preprocess.py checks it).
"""

from __future__ import annotations

import hashlib
import json

from absl import logging
import numpy as np

from lstmrec_jax.data.log import InteractionLog
from lstmrec_jax.data.log import ItemSide

# Bump when the generator changes, so caches keyed on its arguments miss.
SYNTHETIC_VERSION = 1

_YEAR = 365 * 86400  # seconds

_WORDS = ("jazz", "garden", "noir", "robot", "ocean", "castle", "desert", "circus", "comet",
          "forest", "harbor", "glacier", "carnival", "engine", "library", "volcano", "meadow",
          "canyon", "lantern", "orchard")
_ADJECTIVES = ("quiet", "bright", "lost", "golden", "wild", "hidden", "electric", "ancient",
               "little", "endless")


def synthetic_log(num_users: int = 3000, num_items: int = 1000, seed: int = 0, *,
                  num_clusters: int = 20, min_interests: int = 1, max_interests: int = 3,
                  mean_length: float = 30.0, min_length: int = 5, max_length: int = 200,
                  num_successors: int = 3, p_follow: float = 0.8, p_switch: float = 0.1,
                  zipf: float = 1.1, num_domains: int = 1) -> InteractionLog:
  """Generates a synthetic log: clustered interests, Zipf popularity and Markov sequences.

  Args:
    num_users: users (raw ids 1..num_users).
    num_items: items (raw ids 1..num_items).
    seed: the whole log is a function of the arguments.
    num_clusters: item clusters; each item's one attribute is its cluster.
    min_interests: fewest clusters a user draws from.
    max_interests: most clusters a user draws from.
    mean_length: mean events per user (geometric above `min_length`, capped at `max_length`).
    min_length: fewest events per user (before running out of unseen items of their clusters).
    max_length: most events per user.
    num_successors: successors per item in the Markov chain (chosen with weights 4:2:1:...).
    p_follow: probability that the next item is a successor of the current one.
    p_switch: probability of jumping to another interest.
    zipf: exponent of popularity within a cluster.
    num_domains: > 1 makes a multi-domain log (several catalogues): cluster c belongs to domain
      c % num_domains (`ItemSide.domains`, names "d0", "d1", ...), so a user's interests, and
      their switches between them, cross domains. The events are those of num_domains = 1.

  Returns:
    An `InteractionLog` with int64 ids, int64 timestamps (seconds), titles and cluster
    attributes.
  """
  args = dict(num_users=num_users, num_items=num_items, seed=seed, num_clusters=num_clusters,
              min_interests=min_interests, max_interests=max_interests, mean_length=mean_length,
              min_length=min_length, max_length=max_length, num_successors=num_successors,
              p_follow=p_follow, p_switch=p_switch, zipf=zipf)
  if num_domains != 1:  # the fingerprint of a one-domain log stays what it was
    args["num_domains"] = num_domains
  if not 1 <= num_domains <= num_clusters:
    raise ValueError(f"need 1 <= num_domains <= num_clusters, got {num_domains}")
  if num_items < 2 * num_clusters or num_clusters < 1:
    raise ValueError(f"need at least 2 items per cluster, got {num_items} items, "
                     f"{num_clusters} clusters")
  if not 1 <= min_interests <= max_interests <= num_clusters:
    raise ValueError("need 1 <= min_interests <= max_interests <= num_clusters")
  if mean_length < min_length or min_length < 1:
    raise ValueError("need 1 <= min_length <= mean_length")
  if p_follow < 0 or p_switch < 0 or p_follow + p_switch > 1:
    raise ValueError("need p_follow, p_switch >= 0 and p_follow + p_switch <= 1")
  rng = np.random.default_rng(seed)

  cluster_of = rng.permutation(num_items) % num_clusters  # item id - 1 -> cluster
  members = [np.flatnonzero(cluster_of == c) + 1 for c in range(num_clusters)]
  # Zipf popularity within each cluster over a random rank order.
  cum_weights = []
  for m in members:
    w = 1.0 / np.arange(1, len(m) + 1) ** zipf
    rng.shuffle(w)
    cum_weights.append(np.cumsum(w))
  successors = np.zeros((num_items + 1, num_successors), np.int64)
  for m in members:
    k = min(num_successors, len(m) - 1)
    for item in m:
      others = m[m != item]
      chosen = rng.choice(others, size=k, replace=False)
      successors[item] = np.resize(chosen, num_successors)
  succ_cum = np.cumsum(2.0 ** -np.arange(num_successors))
  cluster_pop = 1.0 / np.arange(1, num_clusters + 1) ** 0.7
  cluster_pop = cluster_pop[rng.permutation(num_clusters)]
  cluster_pop /= cluster_pop.sum()
  p_geom = 1.0 / (mean_length - min_length + 1)

  users, items, times = [], [], []
  for user in range(1, num_users + 1):
    k = int(rng.integers(min_interests, max_interests + 1))
    interests = rng.choice(num_clusters, size=k, replace=False, p=cluster_pop)
    length = min(max_length, min_length + int(rng.geometric(p_geom)) - 1)
    draws = rng.random((length, 3))
    seen: set[int] = set()
    cluster = int(interests[0])
    current = 0
    seq = []
    for step in range(length):
      r_kind, r_pick, r_other = draws[step]
      item = 0
      if current and r_kind < p_follow:
        item = int(successors[current][np.searchsorted(succ_cum, r_pick * succ_cum[-1])])
        if item in seen:
          item = 0  # the successor was consumed: fall back to popularity in the cluster
      elif r_kind < p_follow + p_switch and k > 1:
        choices = interests[interests != cluster]
        cluster = int(choices[int(r_other * len(choices))])
      if not item:
        item = _popular_unseen(members, cum_weights, cluster, r_pick, seen, rng)
      if not item:  # the cluster is used up: try the user's other interests
        for c in interests:
          item = _popular_unseen(members, cum_weights, int(c), r_pick, seen, rng)
          if item:
            cluster = int(c)
            break
      if not item:
        break
      seen.add(item)
      seq.append(item)
      current = item
    # Each user's events spread over most of the year, so global time cut points (the
    # temporal split) find most users on both sides.
    start = rng.uniform(0, 0.2 * _YEAR)
    gaps = rng.exponential(0.8 * _YEAR / max(len(seq), 1), len(seq))
    users.extend([user] * len(seq))
    items.extend(seq)
    times.extend((start + np.cumsum(gaps)).astype(np.int64).tolist())

  words = [_WORDS[c % len(_WORDS)] + (str(c // len(_WORDS)) if c >= len(_WORDS) else "")
           for c in range(num_clusters)]
  side = ItemSide(
      titles={i: f"{_ADJECTIVES[i % len(_ADJECTIVES)]} {words[cluster_of[i - 1]]} {i}"
              for i in range(1, num_items + 1)},
      attributes={i: [int(cluster_of[i - 1])] for i in range(1, num_items + 1)},
      attribute_names={c: f"cluster {c} ({words[c]})" for c in range(num_clusters)})
  if num_domains > 1:
    side.domains = {i: int(cluster_of[i - 1]) % num_domains for i in range(1, num_items + 1)}
    side.domain_names = [f"d{d}" for d in range(num_domains)]
  fingerprint = hashlib.sha256(json.dumps({"synthetic": SYNTHETIC_VERSION, **args},
                                          sort_keys=True).encode()).hexdigest()
  log = InteractionLog(users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
                       timestamps=np.asarray(times, np.int64), item_side=side,
                       source=f"synthetic(num_users={num_users}, num_items={num_items}, "
                       f"seed={seed})", fingerprint=fingerprint)
  logging.info("%s: %d events", log.source, len(log))
  return log


def _popular_unseen(members, cum_weights, cluster: int, r: float, seen: set[int],
                    rng: np.random.Generator) -> int:
  """A popularity-weighted unseen item of `cluster`, or 0 when the user has seen them all."""
  cw = cum_weights[cluster]
  item = int(members[cluster][min(np.searchsorted(cw, r * cw[-1]), len(cw) - 1)])
  if item not in seen:
    return item
  # Rare path: renormalise over the unseen members.
  m = members[cluster]
  unseen = np.fromiter((x not in seen for x in m.tolist()), bool, len(m))
  if not unseen.any():
    return 0
  w = np.diff(np.concatenate([[0.0], cw]))[unseen]
  return int(rng.choice(m[unseen], p=w / w.sum()))
