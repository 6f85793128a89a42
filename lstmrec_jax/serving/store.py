"""User-state stores: where serve.py keeps each user's streaming state between requests.

A stored user is a flat f32 state vector (scoring/streaming.py: S floats) and the dense ids of their most
recent events (for exclude_seen; at most `max_seen`, newest kept). The interface is four calls,
`get_many`, `put_many`, `flush`, `close`; two backends:

  MemoryStore  in-process dict, persisted to one .npz file at an interval and on close
               (serve.py closes it on SIGTERM / SIGINT): a restart loses no user. One replica.
  RedisStore   redis-py against a Redis server: what several server replicas share. Keys are
               `<prefix><bundle id>:<user id>`, so two models never read each other's states.
"""

from __future__ import annotations

import abc
import logging
import os
import pathlib
import threading
from collections.abc import Iterable, Mapping

import numpy as np


class StoredUser:
  """One user's state vector (f32 S) and recent dense item ids (int32, oldest first)."""

  __slots__ = ("vector_S", "seen")

  def __init__(self, vector_S: np.ndarray, seen: np.ndarray):
    self.vector_S = np.asarray(vector_S, np.float32)
    self.seen = np.asarray(seen, np.int32)

  def to_bytes(self) -> bytes:
    """[S as u32][S f32][seen int32...]: what Redis keeps."""
    return (np.uint32(self.vector_S.size).tobytes() + self.vector_S.tobytes()
            + self.seen.tobytes())

  @classmethod
  def from_bytes(cls, data: bytes) -> StoredUser:
    size = int(np.frombuffer(data[:4], np.uint32)[0])
    vector = np.frombuffer(data[4:4 + 4 * size], np.float32)
    return cls(vector, np.frombuffer(data[4 + 4 * size:], np.int32))


class StateStore(abc.ABC):
  """Where user states live; thread-safe (the server calls it from a worker thread)."""

  @abc.abstractmethod
  def get_many(self, user_ids: Iterable[str]) -> dict[str, StoredUser]:
    """The stored users among `user_ids` (absent ones are left out)."""

  @abc.abstractmethod
  def put_many(self, users: Mapping[str, StoredUser]) -> None:
    """Stores (replaces) these users."""

  def flush(self) -> None:
    """Makes every put so far durable (no-op where each put already is)."""

  def close(self) -> None:
    """Flushes and releases the store."""
    self.flush()

  def __len__(self) -> int:
    raise NotImplementedError


class MemoryStore(StateStore):
  """In memory, persisted to `path` (.npz) every `interval_s` seconds and on close."""

  def __init__(self, path: str | os.PathLike | None = None, *, interval_s: float = 30.0):
    self.path = pathlib.Path(path) if path else None
    self._users: dict[str, StoredUser] = {}
    self._lock = threading.Lock()
    self._dirty = False
    self._stop = threading.Event()
    if self.path is not None and self.path.is_file():
      self._users = _read_npz(self.path)
      logging.info("state store: %d users restored from %s", len(self._users), self.path)
    self._thread = None
    if self.path is not None and interval_s > 0:
      self._thread = threading.Thread(target=self._persist_loop, args=(interval_s,),
                                      daemon=True, name="state-store-persist")
      self._thread.start()

  def _persist_loop(self, interval_s: float) -> None:
    while not self._stop.wait(interval_s):
      try:
        self.flush()
      except OSError as e:  # a full disk must not kill the server; the next interval retries
        logging.error("state store: could not persist to %s: %s", self.path, e)

  def get_many(self, user_ids: Iterable[str]) -> dict[str, StoredUser]:
    with self._lock:
      return {u: self._users[u] for u in user_ids if u in self._users}

  def put_many(self, users: Mapping[str, StoredUser]) -> None:
    with self._lock:
      self._users.update(users)
      self._dirty = True

  def flush(self) -> None:
    if self.path is None:
      return
    with self._lock:
      if not self._dirty:
        return
      snapshot = dict(self._users)
      self._dirty = False
    _write_npz(self.path, snapshot)

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    self.flush()

  def __len__(self) -> int:
    return len(self._users)


def _write_npz(path: pathlib.Path, users: Mapping[str, StoredUser]) -> None:
  """All users to one .npz, atomically (a temporary file renamed over the old one)."""
  ids = list(users)
  vectors = (np.stack([users[u].vector_S for u in ids]) if ids
             else np.zeros((0, 0), np.float32))
  seen_lengths = np.array([users[u].seen.size for u in ids], np.int64)
  seen = (np.concatenate([users[u].seen for u in ids]) if ids else np.zeros(0, np.int32))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    np.savez(f, user_ids=np.array(ids, dtype=str), vectors=vectors, seen_lengths=seen_lengths,
             seen=seen.astype(np.int32))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _read_npz(path: pathlib.Path) -> dict[str, StoredUser]:
  with np.load(path) as z:
    offsets = np.concatenate([[0], np.cumsum(z["seen_lengths"])])
    seen = z["seen"]
    return {str(u): StoredUser(v, seen[offsets[i]:offsets[i + 1]])
            for i, (u, v) in enumerate(zip(z["user_ids"], z["vectors"]))}


class RedisStore(StateStore):
  """States in Redis (redis-py), shared by every server replica pointing at the same server."""

  def __init__(self, url: str, *, namespace: str, prefix: str = "lstmrec:"):
    import redis  # pylint: disable=g-import-not-at-top
    self._client = redis.Redis.from_url(url)
    self._client.ping()  # fail at start-up, not on the first request
    self._prefix = f"{prefix}{namespace}:"

  def _key(self, user_id: str) -> str:
    return self._prefix + user_id

  def get_many(self, user_ids: Iterable[str]) -> dict[str, StoredUser]:
    ids = list(user_ids)
    if not ids:
      return {}
    values = self._client.mget([self._key(u) for u in ids])
    return {u: StoredUser.from_bytes(v) for u, v in zip(ids, values) if v is not None}

  def put_many(self, users: Mapping[str, StoredUser]) -> None:
    if users:
      self._client.mset({self._key(u): s.to_bytes() for u, s in users.items()})

  def close(self) -> None:
    self._client.close()

  def __len__(self) -> int:
    return sum(1 for _ in self._client.scan_iter(match=self._prefix + "*", count=1000))
