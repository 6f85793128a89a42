"""The Python API: raw item ids in, `[(raw item id, score), ...]` out.

Shape legend: B users, L history length, S flat serving-state size, X excluded items, A allowed
items, K top-k, E item embedding size.

  rec = Recommender.load("runs/default")          # a workdir (best checkpoint) or a bundle
  rec.recommend(["i1", "i7"], k=10)               # one pass over the history
  state = rec.observe(rec.start(), "i1")          # streaming: O(1) per event (LSTM, GRU)
  rec.top_k(state, k=10)
  rec.recommend(["i1", "i7"], k=10, head="q")   # a model trained with an RL loss: its Q head
  rec.recommend(["i1", "k3"], k=10, domain="Kitchen")   # a multi-domain model: one domain's
  rec.top_k(state, k=10, domain="Food")                  # items, its user state for that domain

A multi-domain model (a catalogue of several domains, `domain_names`) recommends within the
domain asked for: only that domain's items are ranked and, for a cross-domain encoder, the user
state is the one for that domain (it needs `domain=`). A streaming state keeps every domain's
user vector, so one state answers for any domain.

Every call is jitted at a bucketed shape (batch and length rounded up to a power of two), so a
new history length does not recompile. Streaming encoders read the whole history (the carried
state has seen every event); the transformer reads its last `max_len` events, as trained, and
its `observe` re-encodes that window (it has no O(1) step).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from lstmrec_jax.scoring import streaming as fns
from lstmrec_jax.serving import bundle as bundle_lib


class Recommendations(list):
  """`[(raw item id, score), ...]`, best first (`.items`, `.scores`); `.unknown` counts skipped
  unknown history ids.

  `.fallback` is True when the user had no known event (popularity ranked the catalog).
  """

  def __init__(self, items=(), *, unknown: int = 0, fallback: bool = False):
    super().__init__(items)
    self.unknown = unknown
    self.fallback = fallback

  @property
  def items(self) -> list[Any]:
    """The raw item ids alone."""
    return [item for item, _ in self]

  @property
  def scores(self) -> list[float]:
    """The scores alone, in the order of `items`."""
    return [score for _, score in self]


@dataclasses.dataclass(frozen=True)
class UserState:
  """One user's streaming state: the flat vector, the dense ids seen, unknown ids skipped."""

  vector_S: np.ndarray  # f32 (S,), see scoring/streaming.py
  seen: tuple[int, ...] = ()  # dense ids, oldest first (for exclude_seen)
  unknown: int = 0

  @property
  def events(self) -> int:
    """Known events observed."""
    return int(self.vector_S[-1])


def bucket(n: int, lo: int = 1) -> int:
  """The power of two >= max(n, lo) that a dimension is padded to, e.g. bucket(5) == 8."""
  n = max(int(n), lo, 1)
  return 1 << (n - 1).bit_length()


def _bucketed(user_BxE, count_B, lists: Sequence[Sequence[int]]):
  """Users, counts and per-row id lists zero-padded to bucketed shapes (no recompiles)."""
  b = len(user_BxE)
  ids_BxW = np.zeros((bucket(b), bucket(max((len(x) for x in lists), default=1), 8)), np.int32)
  for row, x in enumerate(lists):
    ids_BxW[row, :len(x)] = x
  users = np.zeros((bucket(b), user_BxE.shape[1]), np.float32)
  users[:b] = user_BxE
  counts = np.zeros(bucket(b), np.float32)
  counts[:b] = count_B
  return users, counts, ids_BxW


class Recommender:
  """Recommendations and streaming user states of one model (see the module docstring)."""

  def __init__(self, bundle: bundle_lib.Bundle):
    self.bundle = bundle
    self.graphdef, params, consts = bundle.build()
    model = nnx.merge(self.graphdef, params, consts)
    self.streams = model.streams
    self.layout = fns.layout_of(model)
    self.tables = fns.make_tables(self.graphdef, params, consts, bundle.popularity_V)
    self.num_items = bundle.num_items
    self.max_len = bundle.max_len
    self.item_keys = bundle.item_keys
    self.domain_names = tuple(bundle.domain_names)
    self.item_domains_V = bundle.item_domains_V
    self.cross_domain = model.cross_domain
    # Raw ids as given in JSON or Python: "42" and 42 name the same item.
    self._ids = {str(key): i for i, key in enumerate(bundle.item_keys) if i > 0}
    g, lay = self.graphdef, self.layout
    self._observe = jax.jit(functools.partial(fns.observe, g, lay))
    self._observe_seq = jax.jit(functools.partial(fns.observe_sequence, g, lay))
    self._encode = jax.jit(functools.partial(fns.encode, g, lay))
    self._rank = jax.jit(fns.rank, static_argnames=("k", "head"))
    self._score_items = jax.jit(fns.score_items, static_argnames="head")
    self.heads = self.tables.heads  # ("softmax",), or ("softmax", "q") with Q heads
    self._user_of = functools.partial(fns.user_of, lay)

  # ------------------------------------------------------------------ loading

  @classmethod
  def load(cls, path: str | os.PathLike, *, which: str = "best", spec=None,
           trust_plugins: bool = False, expect_sha256: str | None = None) -> Recommender:
    """From an export.py bundle folder, or a train.py workdir (its `which` checkpoint).

    A workdir reads its training data once (the raw-id vocabulary, popularity, item content);
    a bundle never does, and is verified first (`bundle.load`: checksums, ids, finite
    parameters; `expect_sha256` pins its digest). A workdir's recorded plug-ins are imported
    only with `trust_plugins=True` (they run code; see plugins.py).
    """
    path = pathlib.Path(path)
    if (path / "bundle.json").is_file():
      return cls(bundle_lib.load(path, expect_sha256=expect_sha256))
    return cls(bundle_lib.from_workdir(path, which=which, spec=spec,
                                       trust_plugins=trust_plugins))

  def metadata(self) -> dict[str, Any]:
    """What the model is: encoder, sizes, streaming, source, data fingerprint."""
    m = self.bundle.model
    meta = dict(self.bundle.meta)
    # Where the model was trained is no business of a client (it named a local folder).
    meta["source"] = {k: v for k, v in meta.get("source", {}).items() if k != "workdir"}
    return {"encoder": m.get("encoder"), "item_mode": m.get("item_mode"),
            "num_layers": m.get("num_layers"), "embed_dim": m.get("embed_dim"),
            "hidden_size": m.get("hidden_size"), "num_items": self.num_items - 1,
            "max_len": self.max_len, "streams": self.streams, "state_size": self.layout.size,
            "domains": list(self.domain_names), "cross_domain": self.cross_domain,
            "heads": list(self.heads), **meta}

  # ------------------------------------------------------------------ ids

  def item_id(self, raw) -> int:
    """The dense id of a raw item id, 0 when unknown."""
    return self._ids.get(str(raw), 0)

  def dense(self, raw_items: Iterable[Any]) -> tuple[list[int], int]:
    """(known dense ids in order, how many raw ids were unknown and skipped)."""
    ids = [self.item_id(x) for x in raw_items]
    known = [i for i in ids if i]
    return known, len(ids) - len(known)

  def domain_index(self, domain: Any) -> int:
    """The index of a domain given by name or index; -1 (all items) for None on a model without
    a cross-domain encoder. A ValueError names the domains otherwise."""
    if domain is None:
      if self.cross_domain:
        raise ValueError("this model is cross-domain: name the domain to recommend in "
                         f"(domain= one of {', '.join(self.domain_names)})")
      return -1
    if not self.domain_names:
      raise ValueError(f"domain={domain!r}: this model's catalogue has no domains")
    if isinstance(domain, (int, np.integer)) and not isinstance(domain, bool) and (
        0 <= domain < len(self.domain_names)):
      return int(domain)
    if str(domain) in self.domain_names:
      return self.domain_names.index(str(domain))
    raise ValueError(f"unknown domain {domain!r}; the domains are "
                     f"{', '.join(self.domain_names)}")

  def _domains(self, domains, n: int) -> np.ndarray | None:
    """[n] domain indices (-1: any) of a batch's `domains`, or None without domains."""
    if domains is None and not self.cross_domain:
      return None
    domains = [None] * n if domains is None else list(domains)
    return np.asarray([self.domain_index(d) for d in domains], np.int32)

  def _window(self, ids: Sequence[int]) -> Sequence[int]:
    """What the encoder reads of a history: all of it when streaming, else the last max_len."""
    return ids if self.streams else ids[-self.max_len:]

  # ------------------------------------------------------------------ one pass over histories

  def recommend(self, history: Sequence[Any], k: int = 10, *, exclude_seen: bool = True,
                exclude: Iterable[Any] = (), allow: Iterable[Any] | None = None,
                domain: Any = None, head: str = "softmax") -> Recommendations:
    """The top-k next items for one history of raw ids (oldest first).

    domain: a name or index of a multi-domain model's domains: among that domain's items only.
    head: "softmax" (the recommender's own head) or "q" (the Q head of a model trained with an
    offline RL loss: items ranked by their estimated return); `self.heads` lists the model's.
    """
    return self.recommend_batch([history], k, exclude_seen=exclude_seen, exclude=[exclude],
                                allow=None if allow is None else [allow],
                                domains=None if domain is None else [domain], head=head)[0]

  def recommend_batch(self, histories: Sequence[Sequence[Any]], k: int = 10, *,
                      exclude_seen: bool = True, exclude: Sequence[Iterable[Any]] | None = None,
                      allow: Sequence[Iterable[Any] | None] | None = None,
                      domains: Sequence[Any] | None = None,
                      head: str = "softmax") -> list[Recommendations]:
    """`recommend` for many histories in one jitted call (per bucket)."""
    self.check_head(head)
    domains_B = self._domains(domains, len(histories))
    dense = [self.dense(h) for h in histories]
    user_BxE, count_B = self.encode_ids([ids for ids, _ in dense], domains_B)
    seen = [ids if exclude_seen else [] for ids, _ in dense]
    return self._finish(user_BxE, count_B, k, seen, exclude, allow,
                        [u for _, u in dense], domains_B, head)

  def encode_ids(self, histories: Sequence[Sequence[int]], domains_B: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(user_BxE, count_B) of dense-id histories, one full pass of the model per bucket (for a
    cross-domain encoder, each row's user state for its domain in `domains_B`)."""
    windows = [self._window(h) for h in histories]
    b = len(windows)
    length = bucket(max((len(w) for w in windows), default=1), 8)
    items_BxL = np.zeros((bucket(b), length), np.int32)
    for row, w in enumerate(windows):
      items_BxL[row, :len(w)] = w
    if domains_B is None:
      user_BxE, count_B = self._encode(self.tables, items_BxL)
    else:
      d_B = np.zeros(bucket(b), np.int32)
      d_B[:b] = np.maximum(domains_B, 0)
      user_BxE, count_B = self._encode(self.tables, items_BxL, d_B)
    return np.asarray(user_BxE)[:b], np.asarray(count_B)[:b]

  # ------------------------------------------------------------------ streaming

  def start(self, history: Sequence[Any] = ()) -> UserState:
    """A user's state, empty or after `history` (raw ids, oldest first) by the streaming path."""
    return self.observe_batch([self.empty_state()], [list(history)])[0]

  def empty_state(self) -> UserState:
    return UserState(fns.initial_state(self.layout, 1)[0])

  def observe(self, state: UserState, item: Any) -> UserState:
    """The state after one more event (one cell step per layer); an unknown id is skipped."""
    return self.observe_batch([state], [[item]])[0]

  def observe_batch(self, states: Sequence[UserState], items: Sequence[Sequence[Any]]
                    ) -> list[UserState]:
    """Each user's state after its own new events (raw ids, in order), one jitted call."""
    dense = [self.dense(x) for x in items]
    vectors_BxS = self.observe_ids(np.stack([s.vector_S for s in states]),
                                   [ids for ids, _ in dense])
    return [UserState(v, s.seen + tuple(ids), s.unknown + unknown)
            for v, s, (ids, unknown) in zip(vectors_BxS, states, dense)]

  def observe_ids(self, vectors_BxS: np.ndarray, items: Sequence[Sequence[int]]) -> np.ndarray:
    """Flat states after each row's dense-id events (0 = none); bucketed batch and length."""
    b = len(vectors_BxS)
    longest = max((len(x) for x in items), default=0)
    states_BxS = np.zeros((bucket(b), self.layout.size), np.float32)
    states_BxS[:b] = vectors_BxS
    if longest == 0:
      return states_BxS[:b]
    if longest == 1:
      ids_B = np.zeros(bucket(b), np.int32)
      ids_B[:b] = [x[0] if x else 0 for x in items]
      return np.asarray(self._observe(self.tables, states_BxS, ids_B))[:b]
    items_BxL = np.zeros((bucket(b), bucket(longest, 8)), np.int32)
    for row, x in enumerate(items):
      items_BxL[row, :len(x)] = x
    return np.asarray(self._observe_seq(self.tables, states_BxS, items_BxL))[:b]

  def top_k(self, state: UserState, k: int = 10, *, exclude_seen: bool = True,
            exclude: Iterable[Any] = (), allow: Iterable[Any] | None = None,
            domain: Any = None, head: str = "softmax") -> Recommendations:
    """The top-k next items of a streaming state (with `domain`: that domain's; `head` as in
    `recommend`)."""
    return self.top_k_batch([state], k, exclude_seen=exclude_seen, exclude=[exclude],
                            allow=None if allow is None else [allow],
                            domains=None if domain is None else [domain], head=head)[0]

  def top_k_batch(self, states: Sequence[UserState], k: int = 10, *, exclude_seen: bool = True,
                  exclude: Sequence[Iterable[Any]] | None = None,
                  allow: Sequence[Iterable[Any] | None] | None = None,
                  domains: Sequence[Any] | None = None,
                  head: str = "softmax") -> list[Recommendations]:
    """`top_k` of many users' states in one jitted call."""
    self.check_head(head)
    domains_B = self._domains(domains, len(states))
    user_BxE, count_B = self._user_of(np.stack([s.vector_S for s in states]),
                                      None if domains_B is None else np.maximum(domains_B, 0))
    seen = [list(s.seen) if exclude_seen else [] for s in states]
    return self._finish(np.asarray(user_BxE), np.asarray(count_B), k, seen, exclude, allow,
                        [s.unknown for s in states], domains_B, head)

  # ------------------------------------------------------------------ ranking

  def check_head(self, head: str) -> None:
    if head not in self.heads:
      raise ValueError(f"head={head!r} must be one of {', '.join(self.heads)} (this model's; a "
                       "'q' head needs a model trained with an RL loss, model.q_head=True)")

  def check_k(self, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < self.num_items:
      raise ValueError(f"k={k!r} must be an integer in [1, {self.num_items - 1}] (the catalog)")

  def rank_ids(self, user_BxE, count_B, k: int, exclude: Sequence[Sequence[int]], *,
               domains_B: np.ndarray | None = None,
               head: str = "softmax") -> tuple[np.ndarray, np.ndarray]:
    """(ids_BxK, scores_BxK) of `head` over the catalog without each row's excluded dense ids
    (with `domains_B`, over each row's domain; -1: all)."""
    b = len(user_BxE)
    users, counts, exclude_BxX = _bucketed(user_BxE, count_B, exclude)
    if domains_B is None:
      ids_BxK, scores_BxK = self._rank(self.tables, users, counts, exclude_BxX, k=k, head=head)
    else:
      d_B = np.full(len(users), -1, np.int32)
      d_B[:b] = domains_B
      ids_BxK, scores_BxK = self._rank(self.tables, users, counts, exclude_BxX, k=k, head=head,
                                       item_domains_V=self.item_domains_V, domains_B=d_B)
    return np.asarray(ids_BxK)[:b], np.asarray(scores_BxK)[:b]

  def score_allowed(self, user_BxE, count_B, allowed: Sequence[Sequence[int]],
                    head: str = "softmax") -> np.ndarray:
    """Scores of each row's allowed dense ids (-inf past a row's own list)."""
    b = len(user_BxE)
    users, counts, items_BxA = _bucketed(user_BxE, count_B, allowed)
    return np.asarray(self._score_items(self.tables, users, counts, items_BxA, head=head))[:b]

  def _finish(self, user_BxE, count_B, k, seen, exclude, allow, unknown,
              domains_B=None, head: str = "softmax") -> list[Recommendations]:
    self.check_k(k)
    b = len(user_BxE)
    exclude = [[] for _ in range(b)] if exclude is None else exclude
    drop = [sorted(set(s) | {self.item_id(x) for x in e} - {0}) for s, e in zip(seen, exclude)]
    out: list[Recommendations | None] = [None] * b
    rows = [i for i in range(b) if allow is None or allow[i] is None]
    if rows:
      ids_BxK, scores_BxK = self.rank_ids(user_BxE[rows], count_B[rows], k,
                                          [drop[i] for i in rows],
                                          domains_B=None if domains_B is None else domains_B[rows],
                                          head=head)
      for i, ids, scores in zip(rows, ids_BxK, scores_BxK):
        out[i] = self._answer(ids, scores, unknown[i], count_B[i])
    rest = [i for i in range(b) if out[i] is None]
    if rest:
      in_domain = lambda i, j: (domains_B is None or domains_B[i] < 0
                                or self.item_domains_V[j] == domains_B[i])
      allowed = [[j for j in dict.fromkeys(self.item_id(x) for x in allow[i])
                  if j and j not in set(drop[i]) and in_domain(i, j)] for i in rest]
      scores = self.score_allowed(user_BxE[rest], count_B[rest], allowed, head)
      for i, ids, row_scores in zip(rest, allowed, scores):
        order = np.argsort(-row_scores[:len(ids)], kind="stable")[:k]
        out[i] = self._answer(np.asarray(ids, np.int64)[order], row_scores[order], unknown[i],
                              count_B[i])
    return out

  def _answer(self, ids, scores, unknown, count) -> Recommendations:
    # -inf: fewer than k items were left after exclusions; those slots are not answers.
    pairs = [(self.item_keys[int(i)], float(s)) for i, s in zip(ids, scores)
             if int(i) > 0 and np.isfinite(s)]
    return Recommendations(pairs, unknown=int(unknown), fallback=bool(count == 0))
