"""The HTTP JSON service of serve.py: a plain ASGI app (msgspec, on uvicorn) over one Recommender.

  POST /recommend  {"history": [raw ids]} or {"user_id": u}, plus k, exclude_seen, exclude, allow,
                   domain (a multi-domain model: a domain's name or index; its items only), and
                   head ("softmax", or "q" for a model trained with an offline RL loss)
                   -> {"items": [raw ids], "scores": [...], "unknown": n, "fallback": bool}
                   (a user_id with no stored event is ranked by popularity: fallback true)
  POST /events     {"user_id": u, "item": raw id} or {"user_id": u, "items": [raw ids]}
                   -> {"user_id": u, "events": n stored, "unknown": n skipped}
  GET  /healthz    -> 200 {"ok": true, "uptime_s": s, "store": {...}}; 503 while warming up or
                      while the state store does not answer
  GET  /metadata   -> the model (encoder, sizes, data fingerprint, bundle digest), the server's
                      limits, the store, the batcher's counters and the XLA compiles so far

Concurrent requests are micro-batched (`Batcher`): while the worker is idle the first request
waits at most `max_wait_ms` for others; while it is busy requests queue and leave together the
moment it is free, up to `max_batch`. A batch is one jitted call per kind of work (events,
encoding per history-length bucket, ranking) in one worker thread (JAX calls never interleave).
Every dimension is padded to a bucket (batch and list sizes: powers of `growth`; history
lengths: powers of two from 8) and `warm_up` compiles every bucket at start-up, so no request
compiles (`/metadata` counts the compiles: a test holds it flat).

Durability: a batch's events are committed to the store (`StateStore.commit`: the memory store's
journal, or Redis) before any of their answers is sent, and the memory store's journal is
replayed at start (`Service.prepare`): an acknowledged event survives kill -9.

A store that can stall (Redis: `store.local` is False) is never called from the compute thread:
requests that need it (events, recommend by user_id) go through their own lane (fetch -> compute
-> commit, one batch at a time so a user's updates never race), each store call bounded by
`store_timeout_s` (503 past it), while history requests keep being answered.

Connections (`limited_protocol`): at most `max_connections` open (past it the longest-idle
connection without a request in flight is closed), request headers must arrive within
`header_timeout_s` of the connection (or of the previous answer on a kept-alive one), bodies
within `body_timeout_s`, and an idle kept-alive connection closes after `keep_alive_s`: one
client's idle or trickling connections cannot take the descriptors every other client needs.

Why a plain ASGI app with msgspec on uvicorn: see `create_app`.
"""

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np

from lstmrec_jax.errors import ConfigError
from lstmrec_jax.errors import RequestError
from lstmrec_jax.scoring import streaming as fns
from lstmrec_jax.serving import recommender as rec_lib
from lstmrec_jax.serving import store as store_lib

RawId = int | str


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  """Limits and batching of the service."""

  max_batch: int = 64  # requests per jitted call, >= 1
  max_wait_ms: float = 0.5  # while the worker is idle, the longest a request waits for others
  max_k: int = 100  # largest k a request may ask (capped at the catalog size)
  max_history: int = 1024  # longest history a request may send (and events kept to exclude)
  max_exclude: int = 256  # longest `exclude` list
  max_allow: int = 1024  # longest `allow` list
  max_events: int = 256  # events in one POST /events
  max_user_id_bytes: int = 256  # longest user_id, in UTF-8 bytes (413 past it)
  growth: int = 4  # bucket sizes grow by this factor: fewer compiles, more padding
  store_timeout_s: float = 2.0  # a state-store call longer than this answers 503
  max_connections: int = 2048  # open connections (past it the longest-idle one is closed)
  header_timeout_s: float = 10.0  # a request's headers must arrive within this (else closed)
  body_timeout_s: float = 10.0  # a request's body must arrive within this (else 408)
  keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this


# Compiles happen in the XLA backend; counting them process-wide is what "no recompiles" means.
# A compile served by JAX's persistent cache counts too, and also as a cache hit.
_COMPILES = [0]
_CACHE_HITS = [0]


def _count_compiles(event: str, *args, **kwargs) -> None:
  del args, kwargs
  if event == "/jax/core/compile/backend_compile_duration":
    _COMPILES[0] += 1


def _count_cache_hits(event: str, **kwargs) -> None:
  del kwargs
  if event == "/jax/compilation_cache/cache_hits":
    _CACHE_HITS[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)
jax.monitoring.register_event_listener(_count_cache_hits)


def compile_count() -> int:
  """XLA compiles in this process so far (persistent-cache hits included)."""
  return _COMPILES[0]


def cache_hit_count() -> int:
  """Compiles answered by JAX's persistent compilation cache so far."""
  return _CACHE_HITS[0]


# The fixed cost of one encode call in units of padded (row x step) work: on the Beauty model
# (E = H = 256, one CPU core) a row-step costs ~15 us and a call ~0.25 ms beside it.
_CALL_COST = 16


def _buckets(lo: int, hi: int, growth: int) -> list[int]:
  """lo, lo * growth, ... up to the first >= hi, e.g. _buckets(16, 100, 4) == [16, 64, 256]."""
  out = [lo]
  while out[-1] < hi:
    out.append(out[-1] * growth)
  return out


class Service:
  """The model, the store and the batched work behind the endpoints (no HTTP here)."""

  def __init__(self, recommender: rec_lib.Recommender, store: store_lib.StateStore,
               config: ServerConfig = ServerConfig()):
    self.rec = recommender
    self.store = store
    self.cfg = config
    self.k = min(config.max_k, recommender.num_items - 1)
    g = config.growth
    self.batch_buckets = _buckets(1, config.max_batch, g)
    self.len_buckets = _buckets(8, config.max_history, 2)  # as Recommender: powers of two
    self.exclude_buckets = _buckets(16, config.max_history + config.max_exclude, g)
    self.allow_buckets = _buckets(16, config.max_allow, g)
    self.event_buckets = _buckets(16, config.max_events, g)
    self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "replayed_events": 0}
    self.warm = False  # every bucket compiled
    self.replayed = False  # the store's journal applied

  # ------------------------------------------------------------------ shapes

  @staticmethod
  def _pick(buckets: list[int], n: int) -> int:
    return next(b for b in buckets if b >= n)

  def _pad_rows(self, rows: list[list[int]], buckets: list[int], batch: int) -> np.ndarray:
    out = np.zeros((batch, self._pick(buckets, max((len(r) for r in rows), default=1))),
                   np.int32)
    for i, r in enumerate(rows):
      out[i, :len(r)] = r
    return out

  def _chunks(self, n: int):
    """Row ranges of at most max_batch, each padded to a batch bucket by the caller."""
    for lo in range(0, n, self.cfg.max_batch):
      yield lo, min(n, lo + self.cfg.max_batch)

  # ------------------------------------------------------------------ jitted work, bucketed

  def _length_groups(self, lengths: list[int]) -> list[tuple[int, list[int]]]:
    """Rows (by index) grouped into (padded length, rows) so padded work is least.

    Rows sorted by length fall into length buckets; neighbouring buckets merge when one call at
    the longer length costs less than two (cost ~ padded batch x padded length + a fixed cost
    per call): a batch of short histories never pays for one long one, and a small batch is not
    split into many tiny calls.
    """
    by_bucket: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
      by_bucket.setdefault(self._pick(self.len_buckets, max(n, 1)), []).append(i)
    keys = sorted(by_bucket)

    def cost(rows: int, length: int) -> int:
      full, rest = divmod(rows, self.cfg.max_batch)
      calls = [self.cfg.max_batch] * full + ([rest] if rest else [])
      return sum(self._pick(self.batch_buckets, b) * length + _CALL_COST for b in calls)

    # best[j]: least cost of the first j buckets, with the cut that reached it.
    best = [(0, 0)] + [(None, 0)] * len(keys)
    for j in range(1, len(keys) + 1):
      rows = 0
      for i in range(j, 0, -1):  # buckets i-1 .. j-1 in one group at length keys[j - 1]
        rows += len(by_bucket[keys[i - 1]])
        c = best[i - 1][0] + cost(rows, keys[j - 1])
        if best[j][0] is None or c < best[j][0]:
          best[j] = (c, i - 1)
    groups, j = [], len(keys)
    while j > 0:
      i = best[j][1]
      groups.append((keys[j - 1], [r for k in keys[i:j] for r in by_bucket[k]]))
      j = i
    return groups

  def _domain_rows(self, domains: list[int] | None, part: list[int], batch: int):
    """The `domains_B` argument of a multi-domain model's calls (0-padded), else ()."""
    if not self.rec.domain_names:
      return ()
    out = np.zeros(batch, np.int32)
    if domains is not None:
      out[:len(part)] = [max(domains[i], 0) for i in part]
    return (out,)

  def encode(self, histories: list[list[int]], domains: list[int] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(users, counts) of dense-id histories, one jitted call per length group and max_batch
    (a cross-domain model: each row's user state for its domain in `domains`)."""
    rows = [self.rec._window(h) for h in histories]  # pylint: disable=protected-access
    users = np.zeros((len(rows), self.rec.layout.user_width), np.float32)
    counts = np.zeros(len(rows), np.float32)
    for length, members in self._length_groups([len(r) for r in rows]):
      for lo, hi in self._chunks(len(members)):
        part = members[lo:hi]
        b = self._pick(self.batch_buckets, len(part))
        items = self._pad_rows([rows[i] for i in part], [length], b)
        user_BxE, count_B = self.rec._encode(  # pylint: disable=protected-access
            self.rec.tables, items, *self._domain_rows(domains, part, b))
        users[part] = np.asarray(user_BxE)[:len(part)]
        counts[part] = np.asarray(count_B)[:len(part)]
    return users, counts

  def observe(self, vectors_BxS: np.ndarray, events: list[list[int]]) -> np.ndarray:
    out = []
    for lo, hi in self._chunks(len(events)):
      b = self._pick(self.batch_buckets, hi - lo)
      states = np.zeros((b, self.rec.layout.size), np.float32)
      states[:hi - lo] = vectors_BxS[lo:hi]
      rows = events[lo:hi]
      if max(len(r) for r in rows) == 1:
        ids_B = np.zeros(b, np.int32)
        ids_B[:hi - lo] = [r[0] for r in rows]
        new = self.rec._observe(self.rec.tables, states, ids_B)  # pylint: disable=protected-access
      else:
        new = self.rec._observe_seq(  # pylint: disable=protected-access
            self.rec.tables, states, self._pad_rows(rows, self.event_buckets, b))
      out.append(np.asarray(new)[:hi - lo])
    return np.concatenate(out)

  def rank(self, user_BxE, count_B, exclude: list[list[int]], domains: list[int] | None = None,
           head: str = "softmax"):
    ids, scores = [], []
    for lo, hi in self._chunks(len(exclude)):
      b = self._pick(self.batch_buckets, hi - lo)
      users = np.zeros((b, user_BxE.shape[1]), np.float32)
      users[:hi - lo] = user_BxE[lo:hi]
      counts = np.zeros(b, np.float32)
      counts[:hi - lo] = count_B[lo:hi]
      by_domain = {}
      if self.rec.domain_names:  # a multi-domain model: each row's domain (-1: all items)
        d_B = np.full(b, -1, np.int32)
        if domains is not None:
          d_B[:hi - lo] = domains[lo:hi]
        by_domain = {"item_domains_V": self.rec.item_domains_V, "domains_B": d_B}
      i, s = self.rec._rank(self.rec.tables, users, counts,  # pylint: disable=protected-access
                            self._pad_rows(exclude[lo:hi], self.exclude_buckets, b), k=self.k,
                            head=head, **by_domain)
      ids.append(np.asarray(i)[:hi - lo])
      scores.append(np.asarray(s)[:hi - lo])
    return np.concatenate(ids), np.concatenate(scores)

  def score_allowed(self, user_BxE, count_B, allowed: list[list[int]],
                    head: str = "softmax") -> list[np.ndarray]:
    out = []
    for lo, hi in self._chunks(len(allowed)):
      b = self._pick(self.batch_buckets, hi - lo)
      users = np.zeros((b, user_BxE.shape[1]), np.float32)
      users[:hi - lo] = user_BxE[lo:hi]
      counts = np.zeros(b, np.float32)
      counts[:hi - lo] = count_B[lo:hi]
      s = self.rec._score_items(  # pylint: disable=protected-access
          self.rec.tables, users, counts, self._pad_rows(allowed[lo:hi], self.allow_buckets, b),
          head=head)
      out.extend(np.asarray(s)[:hi - lo])
    return out

  def warm_up(self) -> int:
    """Compiles (and runs once) every bucket the requests can reach; returns the compiles.

    Each call is waited for: JAX runs them asynchronously, and with the compiles taken from the
    persistent cache in milliseconds, 84 unwaited runs were still queued when the first request
    came (a 3 s wait on one core, after "ready").
    """
    before = compile_count()
    e = self.rec.layout.user_width
    rec, done = self.rec, jax.block_until_ready
    for b in self.batch_buckets:
      domains = self._domain_rows(None, [], b)
      for n in self.len_buckets:
        done(rec._encode(rec.tables, np.zeros((b, n), np.int32), *domains))  # pylint: disable=protected-access
      states = np.zeros((b, rec.layout.size), np.float32)
      done(rec._observe(rec.tables, states, np.zeros(b, np.int32)))  # pylint: disable=protected-access
      for n in self.event_buckets:
        done(rec._observe_seq(rec.tables, states, np.zeros((b, n), np.int32)))  # pylint: disable=protected-access
      users, counts = np.zeros((b, e), np.float32), np.zeros(b, np.float32)
      by_domain = ({"item_domains_V": rec.item_domains_V,
                    "domains_B": np.full(b, -1, np.int32)} if rec.domain_names else {})
      for head in rec.heads:
        for n in self.exclude_buckets:
          done(rec._rank(rec.tables, users, counts, np.zeros((b, n), np.int32), k=self.k,  # pylint: disable=protected-access
                         head=head, **by_domain))
        for n in self.allow_buckets:
          done(rec._score_items(rec.tables, users, counts,  # pylint: disable=protected-access
                                np.zeros((b, n), np.int32), head=head))
    return compile_count() - before

  def prepare(self, warm_up: bool = True) -> None:
    """Before serving: replays the store's journal (events acknowledged before a crash), then
    compiles every bucket. Idempotent (serve.py calls it before it listens, the app's start-up
    again)."""
    size = getattr(self.store, "vector_size", lambda: None)()
    if size is not None and size != self.rec.layout.size:
      raise ConfigError(f"the state store holds states of {size} floats, this model's are "
                        f"{self.rec.layout.size}: another model's states; pass another "
                        "--state_file")
    if not self.replayed:
      t = time.time()
      n = self.replay()
      self.replayed = True
      if n:
        logging.info("state store: replayed %d journaled events in %.1fs", n, time.time() - t)
    if warm_up and not self.warm:
      t, hits = time.time(), cache_hit_count()
      n = self.warm_up()
      self.warm = True
      logging.info("warm-up: %d compiles (%d from the persistent compilation cache) in %.1fs", n,
                   cache_hit_count() - hits, time.time() - t)

  # ------------------------------------------------------------------ one batch of requests

  @staticmethod
  def needs_store(job: dict[str, Any]) -> bool:
    return job["kind"] == "events" or job.get("user_id") is not None

  @staticmethod
  def user_ids(jobs: list[dict[str, Any]]) -> set[str]:
    return {j["user_id"] for j in jobs if Service.needs_store(j)}

  def run_batch(self, jobs: list[dict[str, Any]]) -> list[Any]:
    """A whole batch against a local store: fetch, compute, commit; one result per job."""
    ids = self.user_ids(jobs)
    stored = self.store.get_many(ids) if ids else {}
    results, changed, record = self.compute(jobs, stored)
    if changed:
      try:
        self.store.commit(changed, record)
      except OSError as e:  # e.g. the journal's disk is full: not acknowledged
        logging.error("state store: could not commit %d users: %s", len(changed), e)
        self.fail_events(jobs, results, f"state store could not write ({e.strerror or e})")
    return results

  @staticmethod
  def fail_events(jobs, results, why: str) -> None:
    """Answers every event job of a batch 503: its events were not stored."""
    for i, job in enumerate(jobs):
      if job["kind"] == "events":
        results[i] = RequestError(503, f"{why}; the events were not stored: retry")

  def compute(self, jobs: list[dict[str, Any]], stored: dict[str, store_lib.StoredUser]
              ) -> tuple[list[Any], dict[str, store_lib.StoredUser], bytes]:
    """Events first (in arrival order per user), then recommendations.

    Returns (one result per job, the users the events changed, the journal record of the events:
    what `replay` applies again after a crash).
    """
    self.stats["batches"] += 1
    self.stats["requests"] += len(jobs)
    self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
    results: list[Any] = [None] * len(jobs)
    events = [i for i, j in enumerate(jobs) if j["kind"] == "events"]
    changed, record = {}, b""
    if events:
      changed = self._apply_events(jobs, events, stored, results)
      record = _encode_record([(jobs[i]["user_id"], jobs[i]["items"]) for i in events])
      stored = {**stored, **changed}
    recs = [i for i, j in enumerate(jobs) if j["kind"] == "recommend"]
    if recs:
      self._recommend(jobs, recs, stored, results)
    return results, changed, record

  def replay(self) -> int:
    """Applies the store's journal (batches committed after its last snapshot); returns events."""
    import msgspec  # pylint: disable=g-import-not-at-top
    n = 0
    for record in self.store.pending():
      pairs = msgspec.msgpack.decode(record)
      jobs = [{"kind": "events", "user_id": store_lib.decode_id(u), "items": list(items),
               "unknown": 0} for u, items in pairs]
      stored = self.store.get_many({j["user_id"] for j in jobs})
      changed = self._apply_events(jobs, list(range(len(jobs))), stored, [None] * len(jobs))
      self.store.put_many(changed)
      n += sum(len(j["items"]) for j in jobs)
    self.stats["replayed_events"] += n
    if n:
      self.store.flush()  # a snapshot: the next start does not replay them again
    return n

  def _apply_events(self, jobs, events, stored, results) -> dict[str, store_lib.StoredUser]:
    changed: dict[str, store_lib.StoredUser] = {}
    pending = list(events)
    while pending:  # rounds: a user with two event requests in one batch gets them in order
      taken, later, seen_users = [], [], set()
      for i in pending:
        (later if jobs[i]["user_id"] in seen_users else taken).append(i)
        seen_users.add(jobs[i]["user_id"])
      vectors = []
      for i in taken:
        user = changed.get(jobs[i]["user_id"]) or stored.get(jobs[i]["user_id"])
        vectors.append(user.vector_S if user is not None
                       else fns.initial_state(self.rec.layout, 1)[0])
      new = self.observe(np.stack(vectors), [jobs[i]["items"] or [0] for i in taken])
      for i, vector in zip(taken, new):
        uid = jobs[i]["user_id"]
        old = changed.get(uid) or stored.get(uid)
        seen = np.concatenate([old.seen if old is not None else np.zeros(0, np.int32),
                               np.asarray(jobs[i]["items"], np.int32)])[-self.cfg.max_history:]
        changed[uid] = store_lib.StoredUser(vector, seen)
        results[i] = {"user_id": uid, "events": int(vector[-1]), "unknown": jobs[i]["unknown"]}
      pending = later
    return changed

  def _recommend(self, jobs, recs, stored, results) -> None:
    by_history = [i for i in recs if jobs[i].get("history") is not None]
    users = np.zeros((len(jobs), self.rec.layout.user_width), np.float32)
    counts = np.zeros(len(jobs), np.float32)
    domain_of = [j.get("domain", -1) if j["kind"] == "recommend" else -1 for j in jobs]
    seen: dict[int, list[int]] = {}
    if by_history:
      u, c = self.encode([jobs[i]["history"] for i in by_history],
                         [domain_of[i] for i in by_history])
      users[by_history], counts[by_history] = u, c
      seen.update({i: jobs[i]["history"] for i in by_history})
    for i in recs:
      if jobs[i].get("history") is not None:
        continue
      user = stored.get(jobs[i]["user_id"])
      if user is None:  # no known event stored: popularity (count 0), as for an empty history
        seen[i] = []
        continue
      u, c = fns.user_of(self.rec.layout, user.vector_S[None],
                         np.asarray([max(domain_of[i], 0)], np.int32))
      users[i], counts[i] = np.asarray(u)[0], np.asarray(c)[0]
      seen[i] = user.seen.tolist()
    ok = list(recs)
    drop = {i: sorted((set(seen[i]) if jobs[i]["exclude_seen"] else set())
                      | set(jobs[i]["exclude"])) for i in ok}
    in_domain = lambda i, a: domain_of[i] < 0 or self.rec.item_domains_V[a] == domain_of[i]
    for head in self.rec.heads:  # one ranking call per head the batch asks for
      full = [i for i in ok if jobs[i]["allow"] is None and jobs[i].get("head", "softmax") == head]
      if full:
        ids, scores = self.rank(users[full], counts[full], [drop[i] for i in full],
                                [domain_of[i] for i in full], head)
        for i, row_ids, row_scores in zip(full, ids, scores):
          results[i] = self._answer(jobs[i], row_ids, row_scores, counts[i])
      restricted = [i for i in ok if jobs[i]["allow"] is not None
                    and jobs[i].get("head", "softmax") == head]
      if restricted:
        allowed = [[a for a in jobs[i]["allow"] if a not in set(drop[i]) and in_domain(i, a)]
                   for i in restricted]
        scores = self.score_allowed(users[restricted], counts[restricted], allowed, head)
        for i, ids, row_scores in zip(restricted, allowed, scores):
          order = np.argsort(-row_scores[:len(ids)], kind="stable")
          results[i] = self._answer(jobs[i], np.asarray(ids, np.int64)[order],
                                    row_scores[order], counts[i])

  def _answer(self, job, ids, scores, count) -> dict[str, Any]:
    keys = self.rec.item_keys
    items, out_scores = [], []
    for i, s in zip(ids, scores):
      if len(items) == job["k"]:
        break
      if int(i) > 0 and np.isfinite(s):  # -inf: fewer than k items left after exclusions
        items.append(keys[int(i)])
        out_scores.append(float(s))
    return {"items": items, "scores": out_scores, "unknown": job["unknown"],
            "fallback": bool(count == 0)}


def _encode_record(events: list[tuple[str, list[int]]]) -> bytes:
  """One batch's events for the journal: msgpack [[user id as UTF-8 bytes, [dense ids]], ...]."""
  import msgspec  # pylint: disable=g-import-not-at-top
  return msgspec.msgpack.encode([(store_lib.encode_id(u), items) for u, items in events])


class Batcher:
  """Collects concurrent jobs into batches on one compute thread (`Service`).

  While the worker is idle, the first job waits at most `max_wait_ms` for others (up to
  `max_batch`); while it is busy, jobs queue, and the moment it finishes the next batch leaves
  with everything queued (up to `max_batch`): under load the batches grow by themselves, and no
  job waits for a timer that a full worker would not have let it use anyway.

  With a local store every job shares one lane (`Service.run_batch`: fetch, compute, commit in
  the compute thread). With a store that can stall, jobs that need it take a lane of their own:
  the store is called from its own thread, bounded by `store_timeout_s`, one batch at a time
  (fetch -> compute -> commit: a user's updates never race); the other lane keeps the compute
  thread busy with history requests meanwhile.
  """

  def __init__(self, service: Service):
    self.service = service
    self.max_batch = service.cfg.max_batch
    self.max_wait_s = service.cfg.max_wait_ms / 1000.0
    self.split = not service.store.local
    self._lanes = {name: _Lane() for name in (("compute", "store") if self.split else ("all",))}
    self._loop: asyncio.AbstractEventLoop | None = None
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jax-worker")
    self._store_executor = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
                            if self.split else None)
    self.store_health = {"ok": True, "error": None, "since": time.time()}

  async def start(self) -> None:
    self._loop = asyncio.get_running_loop()

  async def stop(self) -> None:
    for lane in self._lanes.values():
      if lane.timer is not None:
        lane.timer.cancel()
    self._executor.shutdown(wait=True)
    if self._store_executor is not None:
      self._store_executor.shutdown(wait=False, cancel_futures=True)

  def _lane_of(self, job: dict[str, Any]) -> str:
    if not self.split:
      return "all"
    return "store" if Service.needs_store(job) else "compute"

  async def submit(self, job: dict[str, Any]) -> Any:
    future = self._loop.create_future()
    name = self._lane_of(job)
    lane = self._lanes[name]
    lane.pending.append((job, future))
    if not lane.busy:
      if len(lane.pending) >= self.max_batch:
        self._dispatch(name)
      elif lane.timer is None:  # 0 ms: the requests already read in this loop pass go together
        lane.timer = (self._loop.call_soon(self._dispatch, name) if self.max_wait_s <= 0 else
                      self._loop.call_later(self.max_wait_s, self._dispatch, name))
    result = await future
    if isinstance(result, Exception):
      raise result
    return result

  def _dispatch(self, name: str) -> None:
    lane = self._lanes[name]
    if lane.timer is not None:
      lane.timer.cancel()
      lane.timer = None
    if lane.busy or not lane.pending:
      return
    batch, lane.pending = lane.pending[:self.max_batch], lane.pending[self.max_batch:]
    lane.busy = True
    jobs = [job for job, _ in batch]
    if name == "store":
      done = asyncio.ensure_future(self._store_batch(jobs))
    elif name == "compute":
      done = self._loop.run_in_executor(self._executor, self._compute_only, jobs)
    else:
      done = self._loop.run_in_executor(self._executor, self.service.run_batch, jobs)
    done.add_done_callback(lambda f: self._finish(name, batch, f))

  def _compute_only(self, jobs):
    return self.service.compute(jobs, {})[0]

  async def _store_call(self, fn, *args):
    """fn(*args) in the store's thread, bounded by store_timeout_s; StoreUnavailable past it."""
    timeout = self.service.cfg.store_timeout_s
    try:
      out = await asyncio.wait_for(
          self._loop.run_in_executor(self._store_executor, fn, *args), timeout)
    except (asyncio.TimeoutError, store_lib.StoreUnavailable) as e:
      why = (f"no answer within {timeout:g}s" if isinstance(e, asyncio.TimeoutError)
             else str(e))
      if self.store_health["ok"]:
        logging.error("state store unavailable: %s", why)
        self.store_health = {"ok": False, "error": why, "since": time.time()}
      raise store_lib.StoreUnavailable(why) from None
    if not self.store_health["ok"]:
      logging.info("state store answers again")
      self.store_health = {"ok": True, "error": None, "since": time.time()}
    return out

  async def _store_batch(self, jobs: list[dict[str, Any]]) -> list[Any]:
    service = self.service
    try:
      stored = await self._store_call(service.store.get_many, service.user_ids(jobs))
    except store_lib.StoreUnavailable as e:
      return [RequestError(503, f"state store unavailable ({e}); retry")] * len(jobs)
    results, changed, record = await self._loop.run_in_executor(
        self._executor, service.compute, jobs, stored)
    if changed:
      try:
        await self._store_call(service.store.commit, changed, record)
      except store_lib.StoreUnavailable as e:
        # Redis may or may not have applied the put before it stopped answering: say so.
        service.fail_events(jobs, results, f"state store unavailable ({e}); it is unknown "
                                           "whether it applied them")
    return results

  def _finish(self, name: str, batch, done: asyncio.Future) -> None:
    lane = self._lanes[name]
    lane.busy = False
    try:
      results = done.result()
    except Exception as e:  # pylint: disable=broad-except
      # One broken batch answers 500 to its own requests; the server keeps serving.
      logging.error("batch of %d failed", len(batch), exc_info=e)
      results = [RequestError(500, f"internal error: {type(e).__name__}: {e}")] * len(batch)
    for (_, future), result in zip(batch, results):
      if not future.done():
        future.set_result(result)
    if lane.pending:  # they queued while the worker was busy: they go now
      self._dispatch(name)

  async def store_status(self) -> dict[str, Any]:
    """The store's health for /healthz: a ping (shared by concurrent callers, bounded)."""
    info = {**self.service.store.describe(), "ok": True}
    if not self.split:
      return info
    if self._ping is None or self._ping.done() and time.time() - self._ping_at > 0.5:
      self._ping_at = time.time()
      self._ping = asyncio.ensure_future(self._ping_once())
    ok, error = await asyncio.shield(self._ping)
    if ok and not self.store_health["ok"]:
      if self.store_health["since"] > self._ping_at:  # a batch's call failed after this ping
        ok, error = False, self.store_health["error"]
      else:  # a ping sent after the failure got through: the store answers again
        logging.info("state store answers again")
        self.store_health = {"ok": True, "error": None, "since": time.time()}
    info.update(ok=ok, **({"error": error} if error else {}))
    return info

  _ping: asyncio.Future | None = None
  _ping_at = 0.0

  async def _ping_once(self) -> tuple[bool, str | None]:
    timeout = min(1.0, self.service.cfg.store_timeout_s)
    loop = asyncio.get_running_loop()
    try:  # not the store's own thread: a stalled batch there must not hold the health check
      await asyncio.wait_for(loop.run_in_executor(None, self.service.store.ping), timeout)
    except asyncio.TimeoutError:
      return False, f"no answer to a ping within {timeout:g}s"
    except store_lib.StoreUnavailable as e:
      return False, str(e)
    return True, None


class _Lane:
  """One queue of the Batcher: its pending jobs, whether a batch of it runs, its timer."""

  __slots__ = ("pending", "busy", "timer")

  def __init__(self):
    self.pending: list[tuple[dict[str, Any], asyncio.Future]] = []
    self.busy = False
    self.timer: asyncio.Handle | None = None


def _request_types():
  """The request bodies as msgspec Structs: unknown fields and wrong types are rejected while
  the JSON is decoded (in C), with a one-line message naming the field."""
  import msgspec  # pylint: disable=g-import-not-at-top

  class RecommendBody(msgspec.Struct, forbid_unknown_fields=True):
    history: list[RawId] | None = None
    user_id: RawId | None = None
    k: int = 10
    exclude_seen: bool = True
    exclude: list[RawId] = []
    allow: list[RawId] | None = None
    domain: RawId | None = None  # a multi-domain model: the domain's name or index
    head: str = "softmax"

  class EventsBody(msgspec.Struct, forbid_unknown_fields=True):
    user_id: RawId
    item: RawId | None = None
    items: list[RawId] | None = None

  return RecommendBody, EventsBody


def _decode_error(e: Exception) -> RequestError:
  """msgspec's message as one line: 400 for bytes that are not JSON, 422 for the wrong shape."""
  import msgspec  # pylint: disable=g-import-not-at-top
  if isinstance(e, UnicodeDecodeError):
    return RequestError(400, f"malformed JSON: invalid UTF-8 at byte {e.start}")
  message = str(e).splitlines()[0] if str(e) else type(e).__name__
  if isinstance(e, msgspec.ValidationError):
    message = message.replace("Object contains unknown field", "unknown field")
    message = message.replace("Object missing required field", "missing field")
    return RequestError(422, message)
  return RequestError(400, f"malformed JSON: {message}")


def create_app(service: Service, *, warm_up: bool = True, max_body_bytes: int = 1 << 20):
  """The ASGI app over `service` (the batcher starts with the app, the store closes with it).

  Why a plain ASGI callable and msgspec on uvicorn (httptools, uvloop): the whole app is four
  routes, and the framework's per-request work was most of the server's CPU. Measured on one
  core with benchmarks/loadgen.py, a minimal JSON POST cost 0.22 ms of server CPU under FastAPI +
  pydantic, 0.066 ms under Starlette + msgspec and 0.041 ms as a plain ASGI callable; at 5,000
  events/s on 2 cores that difference is the budget. msgspec decodes and validates a body in one
  C pass (unknown fields, wrong types), with one-line messages naming the field.
  """
  import gc  # pylint: disable=g-import-not-at-top
  import msgspec  # pylint: disable=g-import-not-at-top

  recommend_type, events_type = _request_types()
  decode_recommend = msgspec.json.Decoder(recommend_type).decode
  decode_events = msgspec.json.Decoder(events_type).decode
  encode = msgspec.json.Encoder().encode
  batcher = Batcher(service)
  cfg, rec = service.cfg, service.rec
  started = time.time()
  state = {"ready": False}

  def decode(data: bytes, decoder):
    try:
      return decoder(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
      raise _decode_error(e) from None

  def dense(raw: list[RawId], what: str, limit: int) -> tuple[list[int], int]:
    if len(raw) > limit:
      raise RequestError(413, f"{what} has {len(raw)} items; the limit is {limit}")
    return rec.dense(raw)

  def user_id(raw: RawId) -> str:
    uid = str(raw)
    try:
      size = len(uid.encode("utf-8"))
    except UnicodeEncodeError:
      raise RequestError(400, "user_id is not valid Unicode (a lone surrogate)") from None
    if size > cfg.max_user_id_bytes:
      raise RequestError(413, f"user_id of {size} bytes; the limit is {cfg.max_user_id_bytes} "
                              "(UTF-8)")
    return uid

  async def recommend(data: bytes):
    body = decode(data, decode_recommend)
    if (body.history is None) == (body.user_id is None):
      raise RequestError(422, "give exactly one of 'history' and 'user_id'")
    if not 1 <= body.k <= service.k:
      raise RequestError(422, f"k={body.k} must be in [1, {service.k}] (the catalog has "
                              f"{rec.num_items - 1} items; the server's --max_k is {cfg.max_k})")
    if body.head not in rec.heads:
      raise RequestError(422, f"head={body.head!r} must be one of {', '.join(rec.heads)} (this "
                              "model's; 'q' needs a model trained with an RL loss)")
    job = {"kind": "recommend", "k": body.k, "exclude_seen": body.exclude_seen,
           "user_id": None if body.user_id is None else user_id(body.user_id), "history": None,
           "unknown": 0, "allow": None, "head": body.head,
           "exclude": dense(body.exclude, "exclude", cfg.max_exclude)[0]}
    try:
      job["domain"] = rec.domain_index(body.domain)
    except ValueError as e:
      raise RequestError(422, str(e)) from None
    if body.history is not None:
      job["history"], job["unknown"] = dense(body.history, "history", cfg.max_history)
    if body.allow is not None:
      job["allow"] = list(dict.fromkeys(dense(body.allow, "allow", cfg.max_allow)[0]))
    return await batcher.submit(job)

  async def events(data: bytes):
    body = decode(data, decode_events)
    if (body.item is None) == (body.items is None):
      raise RequestError(422, "give exactly one of 'item' and 'items'")
    raw = [body.item] if body.item is not None else body.items
    if not raw:
      raise RequestError(422, "'items' is empty")
    uid = user_id(body.user_id)
    ids, unknown = dense(raw, "items", cfg.max_events)
    return await batcher.submit({"kind": "events", "user_id": uid, "items": ids,
                                 "unknown": unknown})

  async def healthz(data: bytes):
    del data
    store = await batcher.store_status()
    ok = state["ready"] and store["ok"]
    body = {"ok": ok, "ready": state["ready"], "uptime_s": round(time.time() - started, 1),
            "store": store}
    if not ok:
      raise _Answer(503, body)
    return body

  async def metadata(data: bytes):
    del data
    return {"model": rec.metadata(), "server": dataclasses.asdict(cfg),
            "store": service.store.describe(), "batches": dict(service.stats),
            "compiles": compile_count(), "compile_cache_hits": cache_hit_count(),
            "buckets": {"batch": service.batch_buckets, "history": service.len_buckets,
                        "exclude": service.exclude_buckets, "allow": service.allow_buckets,
                        "events": service.event_buckets}}

  routes = {"/recommend": ("POST", recommend), "/events": ("POST", events),
            "/healthz": ("GET", healthz), "/metadata": ("GET", metadata)}

  async def lifespan(receive, send) -> None:
    while True:
      message = await receive()
      if message["type"] == "lifespan.startup":
        try:
          # serve.py has done both before it listens; a test client's app does them here.
          await asyncio.get_running_loop().run_in_executor(None, service.prepare, warm_up)
          # What is alive now lives as long as the server: keep it out of the collector's passes.
          gc.collect()
          gc.freeze()
          await batcher.start()
          state["ready"] = True
        except Exception as e:  # pylint: disable=broad-except
          await send({"type": "lifespan.startup.failed", "message": f"{type(e).__name__}: {e}"})
          return
        await send({"type": "lifespan.startup.complete"})
      elif message["type"] == "lifespan.shutdown":
        await batcher.stop()
        service.store.close()
        logging.info("state store closed (%s)", type(service.store).__name__)
        await send({"type": "lifespan.shutdown.complete"})
        return

  async def respond(send, status: int, body: Any, extra=()) -> None:
    data = encode(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *extra]})
    await send({"type": "http.response.body", "body": data})

  def take(message, data: bytes) -> tuple[bytes, bool]:
    if message["type"] == "http.disconnect":
      raise ConnectionAbortedError("client went away")
    data += message.get("body", b"")
    if len(data) > max_body_bytes:
      raise RequestError(413, f"body over the limit of {max_body_bytes} bytes")
    return data, message.get("more_body", False)

  async def read_body(scope, receive) -> bytes:
    for name, value in scope["headers"]:
      if name == b"content-length" and value.isdigit() and int(value) > max_body_bytes:
        raise RequestError(413, f"body of {int(value)} bytes; the limit is {max_body_bytes}")
    # The usual body is already in: the first message holds all of it, no timer needed.
    data, more = take(await receive(), b"")
    if not more:
      return data
    try:
      async with asyncio.timeout(cfg.body_timeout_s):
        while more:
          data, more = take(await receive(), data)
    except TimeoutError:
      raise RequestError(408, f"the body did not arrive within {cfg.body_timeout_s:g}s") from None
    return data

  async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
      return await lifespan(receive, send)
    if scope["type"] != "http":
      return None
    route = routes.get(scope["path"])
    if route is None:
      return await respond(send, 404, {"error": f"{scope['path']}: no such endpoint (POST "
                                                "/recommend, POST /events, GET /healthz, "
                                                "GET /metadata)"})
    method, fn = route
    if scope["method"] != method:
      return await respond(send, 405, {"error": f"{scope['method']} {scope['path']}: use "
                                                f"{method}"}, [(b"allow", method.encode())])
    try:
      result = await fn(await read_body(scope, receive) if method == "POST" else b"")
    except RequestError as e:
      return await respond(send, e.status, {"error": str(e)})
    except _Answer as e:
      return await respond(send, e.status, e.body)
    except ConnectionAbortedError:
      return None
    except Exception as e:  # pylint: disable=broad-except
      logging.error("unhandled error", exc_info=e)
      return await respond(send, 500, {"error": f"internal error: {type(e).__name__}"})
    return await respond(send, 200, result)

  return app


class _Answer(Exception):
  """A non-200 answer with a JSON body of its own (not an error message): /healthz's 503."""

  def __init__(self, status: int, body: dict[str, Any]):
    super().__init__(status)
    self.status, self.body = status, body


# ----------------------------------------------------------------------------- connections


def limited_protocol(cfg: ServerConfig):
  """uvicorn's httptools protocol with the connection limits of `cfg` (module docstring).

  uvicorn bounds neither the connections it holds nor the time a request's headers may take: one
  local client's ~20,000 idle connections (or ~1,000 under a 1,024-descriptor limit) stopped
  every new request. Here a connection whose headers are not complete within header_timeout_s is
  closed, and at max_connections a new connection closes the longest-idle ones without a request
  in flight (a client that sent nothing, or a kept-alive one between requests): the descriptors
  stay for clients that talk. Per request this costs two attribute writes: one sweep over the
  connections every header_timeout_s / 4 finds the late ones (no timer per request).
  """
  from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # pylint: disable=g-import-not-at-top

  class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus a header time-out and a connection limit (idle ones go first)."""

    closed_idle = 0  # connections closed by the limit or a time-out (process-wide)
    _sweeping: set = set()  # the event loops with a sweep scheduled

    def connection_made(self, transport) -> None:
      self._in_flight = False
      self._waiting_since = self.loop.time()  # for headers (or, kept alive, the next request)
      if len(self.connections) >= cfg.max_connections:
        _make_room(self.connections, cfg.max_connections - 1)
      super().connection_made(transport)
      if self.loop not in LimitedHttpToolsProtocol._sweeping:
        LimitedHttpToolsProtocol._sweeping.add(self.loop)
        self.loop.call_later(cfg.header_timeout_s / 4, _sweep, self.loop, self.connections)

    def on_message_begin(self) -> None:
      super().on_message_begin()
      self._waiting_since = self.loop.time()  # a kept-alive connection's next request

    def on_headers_complete(self) -> None:
      self._in_flight = True
      super().on_headers_complete()

    def on_response_complete(self) -> None:
      self._in_flight = False
      self._waiting_since = self.loop.time()
      super().on_response_complete()

  def _sweep(loop, connections) -> None:
    """Closes the connections whose headers are late; runs again while any connection is open."""
    late = loop.time() - cfg.header_timeout_s
    for c in list(connections):
      if not getattr(c, "_in_flight", True) and c._waiting_since < late and \
          not c.transport.is_closing():  # pylint: disable=protected-access
        LimitedHttpToolsProtocol.closed_idle += 1
        c.transport.close()
    if connections:
      loop.call_later(cfg.header_timeout_s / 4, _sweep, loop, connections)
    else:
      LimitedHttpToolsProtocol._sweeping.discard(loop)  # pylint: disable=protected-access

  def _make_room(connections, keep: int) -> None:
    """Closes the longest-idle connections without a request in flight, down to `keep` open."""
    open_ = [c for c in connections if not c.transport.is_closing()]
    extra = len(open_) - keep
    if extra <= 0:
      return
    idle = sorted((c for c in open_ if not getattr(c, "_in_flight", False)),
                  key=lambda c: getattr(c, "_waiting_since", 0.0))
    for c in idle[:extra]:
      LimitedHttpToolsProtocol.closed_idle += 1
      c.transport.close()

  return LimitedHttpToolsProtocol
