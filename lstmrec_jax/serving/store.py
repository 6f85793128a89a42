"""User-state stores: where serve.py keeps each user's streaming state between requests.

A stored user is a flat f32 state vector (scoring/streaming.py: S floats) and the dense ids of their
most recent events (for exclude_seen; at most `max_seen`, newest kept). User ids are any text (NUL
bytes included) of at most the server's `max_user_id_bytes` in UTF-8. Two backends:

  MemoryStore  in-process dict. Every batch of events is appended to a journal before its answer
               is sent (`commit`), and the whole dict is written as a snapshot every
               `interval_s` (and on close); a start reads the snapshot and hands back the journal
               written since (`pending`), which the server replays. An acknowledged event
               survives kill -9: the journal's write reaches the operating system before the
               answer leaves (with `fsync=True` it reaches the disk: a power cut too). One
               replica: the folder is locked.
  RedisStore   redis-py against a Redis server: what several server replicas share. Keys are
               `<prefix><bundle id>:<user id>`, so two models never read each other's states. A
               put is acknowledged by Redis before the answer (durability: Redis's own
               appendonly / save settings). Every call times out after `timeout_s`
               (`StoreUnavailable`), so a stalled Redis answers 503 instead of holding requests.

`local` says whether calls are in-process and quick (MemoryStore: the server calls it in its compute
thread) or network I/O that can stall (RedisStore: a thread of its own, with a timeout).
"""

from __future__ import annotations

import abc
import fcntl
import logging
import os
import pathlib
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Mapping

import numpy as np

from lstmrec_jax.errors import ConfigError


class StoreUnavailable(RuntimeError):
  """The store did not answer (timed out, connection lost): the server answers 503."""


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


def encode_id(user_id: str) -> bytes:
  """A user id as stored: UTF-8 (lone surrogates kept, so any str round-trips)."""
  return user_id.encode("utf-8", "surrogatepass")


def decode_id(data: bytes) -> str:
  return data.decode("utf-8", "surrogatepass")


class StateStore(abc.ABC):
  """Where user states live; thread-safe (the server calls it from a worker thread)."""

  local = True  # in-process and quick: no thread of its own, no timeout

  @abc.abstractmethod
  def get_many(self, user_ids: Iterable[str]) -> dict[str, StoredUser]:
    """The stored users among `user_ids` (absent ones are left out)."""

  @abc.abstractmethod
  def put_many(self, users: Mapping[str, StoredUser]) -> None:
    """Stores (replaces) these users."""

  def commit(self, users: Mapping[str, StoredUser], record: bytes) -> None:
    """Stores these users durably before the caller acknowledges the events in `record`.

    `record` is the caller's description of the events (what it replays after a crash); a store
    whose puts are durable by themselves ignores it.
    """
    del record
    self.put_many(users)

  def pending(self) -> list[bytes]:
    """The records committed after the last snapshot, oldest first (none where puts are durable)."""
    return []

  def ping(self) -> None:
    """Raises StoreUnavailable when the store cannot be used now."""

  def flush(self) -> None:
    """Makes every put so far durable (no-op where each put already is)."""

  def close(self) -> None:
    """Flushes and releases the store."""
    self.flush()

  def describe(self) -> dict:
    """What /metadata and /healthz show of the store."""
    return {"kind": type(self).__name__}

  def __len__(self) -> int:
    raise NotImplementedError


# ----------------------------------------------------------------------------- the journal

_HEADER = struct.Struct("<II")  # record length, crc32 of the record


class _Journal:
  """Append-only segments `<stem>.journal.<seq>` of length-prefixed, checksummed records.

  Records before a snapshot live in segments below the snapshot's `journal_from`; `rotate`
  starts a new segment at a snapshot, `drop_before` removes the ones it covers.
  """

  def __init__(self, stem: pathlib.Path, *, fsync: bool):
    self.stem, self.fsync = stem, fsync
    self.fd = -1
    self.seq = max(self.segments(), default=0) + 1
    self.bytes = 0

  def segments(self) -> list[int]:
    prefix = self.stem.name + ".journal."
    return sorted(int(p.name[len(prefix):]) for p in self.stem.parent.glob(prefix + "*")
                  if p.name[len(prefix):].isdigit())

  def path(self, seq: int) -> pathlib.Path:
    return self.stem.with_name(f"{self.stem.name}.journal.{seq:08d}")

  def append(self, record: bytes) -> None:
    if self.fd < 0:
      self.fd = os.open(self.path(self.seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    data = _HEADER.pack(len(record), zlib.crc32(record)) + record
    written = os.write(self.fd, data)  # one call: in the OS's hands once it returns
    if written != len(data):
      raise OSError(f"short write to {self.path(self.seq)}: {written} of {len(data)} bytes")
    if self.fsync:
      os.fsync(self.fd)
    self.bytes += len(data)

  def rotate(self) -> int:
    """Closes the current segment; later appends start the next one. Returns its number."""
    if self.fd >= 0:
      os.close(self.fd)
      self.fd = -1
    self.seq += 1
    self.bytes = 0
    return self.seq

  def drop_before(self, seq: int) -> None:
    for s in self.segments():
      if s < seq:
        self.path(s).unlink(missing_ok=True)

  def read_from(self, seq: int) -> list[bytes]:
    """The records of segments >= seq; a torn or damaged tail (never acknowledged) is dropped."""
    out = []
    for s in self.segments():
      if s < seq:
        continue
      data = self.path(s).read_bytes()
      at = 0
      while at < len(data):
        if at + _HEADER.size > len(data):
          break
        n, crc = _HEADER.unpack_from(data, at)
        record = data[at + _HEADER.size:at + _HEADER.size + n]
        if len(record) != n or zlib.crc32(record) != crc:
          break
        out.append(record)
        at += _HEADER.size + n
      if at < len(data):
        logging.warning("state journal %s: dropped a torn or damaged tail of %d bytes (a write "
                        "cut by a crash: its events were never acknowledged)", self.path(s),
                        len(data) - at)
    return out

  def close(self) -> None:
    if self.fd >= 0:
      os.close(self.fd)
      self.fd = -1


class MemoryStore(StateStore):
  """In memory; with a `path`, journaled per batch and snapshotted to `path` (.npz) every
  `interval_s` seconds, when the journal passes `max_journal_bytes`, and on close."""

  def __init__(self, path: str | os.PathLike | None = None, *, interval_s: float = 30.0,
               fsync: bool = False, max_journal_bytes: int = 256 << 20):
    self.path = pathlib.Path(path) if path else None
    self._users: dict[str, StoredUser] = {}
    self._lock = threading.Lock()
    self._dirty = False
    self._stop = threading.Event()
    self._journal = None
    self._pending: list[bytes] = []
    self._lock_file = None
    self.max_journal_bytes = max_journal_bytes
    if self.path is not None:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._lock_file = _lock(self.path.with_name(self.path.name + ".lock"))
      journal_from = 0
      if self.path.is_file():
        self._users, journal_from = _read_npz(self.path)
        logging.info("state store: %d users restored from %s", len(self._users), self.path)
      self._journal = _Journal(self.path, fsync=fsync)
      self._pending = self._journal.read_from(journal_from)
      # Segments the snapshot already holds (a crash between its rename and their removal).
      self._journal.drop_before(journal_from)
    self._thread = None
    if self.path is not None and interval_s > 0:
      self._thread = threading.Thread(target=self._persist_loop, args=(interval_s,),
                                      daemon=True, name="state-store-persist")
      self._thread.start()

  def _persist_loop(self, interval_s: float) -> None:
    last = time.monotonic()
    while not self._stop.wait(min(interval_s, 1.0)):
      due = time.monotonic() - last >= interval_s
      if not (due or self._journal.bytes > self.max_journal_bytes):
        continue
      last = time.monotonic()
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

  def commit(self, users: Mapping[str, StoredUser], record: bytes) -> None:
    with self._lock:
      if self._journal is not None:
        self._journal.append(record)  # before the dict: a failed write changes nothing
      self._users.update(users)
      self._dirty = True

  def pending(self) -> list[bytes]:
    out, self._pending = self._pending, []
    return out

  def flush(self) -> None:
    """Writes a snapshot, then drops the journal segments it holds."""
    if self.path is None:
      return
    with self._lock:
      if not self._dirty:
        return
      snapshot = dict(self._users)
      journal_from = self._journal.rotate()  # later commits: not in this snapshot
      self._dirty = False
    try:
      _write_npz(self.path, snapshot, journal_from)
    except BaseException:
      with self._lock:
        self._dirty = True
      raise
    self._journal.drop_before(journal_from)

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    self.flush()
    if self._journal is not None:
      self._journal.close()
    if self._lock_file is not None:
      self._lock_file.close()
      self._lock_file = None

  def vector_size(self) -> int | None:
    """S of the stored states (None when empty): a snapshot of another model's states differs."""
    with self._lock:
      first = next(iter(self._users.values()), None)
    return None if first is None else first.vector_S.size

  def describe(self) -> dict:
    return {"kind": "MemoryStore", "users": len(self._users),
            "journal": None if self._journal is None else {
                "fsync": self._journal.fsync, "bytes_since_snapshot": self._journal.bytes}}

  def __len__(self) -> int:
    return len(self._users)


def _lock(path: pathlib.Path):
  """An exclusive lock held while the store is open: a second server on the same state refuses."""
  f = open(path, "a+")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "?"
    f.close()
    raise ConfigError(f"{path.with_suffix('')} is in use by process {holder} (another serve.py "
                      "with the same state file); stop it or pass another --state_file") from None
  f.seek(0)
  f.truncate()
  f.write(str(os.getpid()))
  f.flush()
  return f


def _write_npz(path: pathlib.Path, users: Mapping[str, StoredUser], journal_from: int) -> None:
  """All users to one .npz, atomically (a temporary file renamed over the old one).

  User ids are one UTF-8 byte string with offsets: a fixed-width text array would pad every id to
  the longest (one 900 KB id made a 7.2 GB file) and drop trailing NUL characters.
  """
  ids = list(users)
  encoded = [encode_id(u) for u in ids]
  id_offsets = np.zeros(len(ids) + 1, np.int64)
  np.cumsum([len(b) for b in encoded], out=id_offsets[1:])
  vectors = (np.stack([users[u].vector_S for u in ids]) if ids
             else np.zeros((0, 0), np.float32))
  seen_lengths = np.array([users[u].seen.size for u in ids], np.int64)
  seen = (np.concatenate([users[u].seen for u in ids]) if ids else np.zeros(0, np.int32))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    np.savez(f, format=np.int64(2), user_id_bytes=np.frombuffer(b"".join(encoded), np.uint8),
             user_id_offsets=id_offsets, vectors=vectors, seen_lengths=seen_lengths,
             seen=seen.astype(np.int32), journal_from=np.int64(journal_from))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _read_npz(path: pathlib.Path) -> tuple[dict[str, StoredUser], int]:
  """(users, first journal segment not in the snapshot) of a snapshot file."""
  try:
    with np.load(path, allow_pickle=False) as z:
      offsets = np.concatenate([[0], np.cumsum(z["seen_lengths"])])
      seen = z["seen"]
      if "user_id_bytes" in z.files:
        blob, at = z["user_id_bytes"].tobytes(), z["user_id_offsets"]
        ids = [decode_id(blob[at[i]:at[i + 1]]) for i in range(len(at) - 1)]
        journal_from = int(z["journal_from"])
      else:  # written before the journal: fixed-width ids
        ids, journal_from = [str(u) for u in z["user_ids"]], 0
      users = {u: StoredUser(v, seen[offsets[i]:offsets[i + 1]])
               for i, (u, v) in enumerate(zip(ids, z["vectors"]))}
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{path}: unreadable state snapshot ({type(e).__name__}: {e}); move it "
                      "away to start without the stored users") from None
  return users, journal_from


class RedisStore(StateStore):
  """States in Redis (redis-py), shared by every server replica pointing at the same server."""

  local = False

  def __init__(self, url: str, *, namespace: str, prefix: str = "lstmrec:",
               timeout_s: float = 2.0):
    import redis  # pylint: disable=g-import-not-at-top
    from redis.backoff import NoBackoff  # pylint: disable=g-import-not-at-top
    from redis.retry import Retry  # pylint: disable=g-import-not-at-top
    self._errors = (redis.RedisError, OSError)
    self.url, self.timeout_s = url, timeout_s
    try:
      # No retries: a stalled server costs one timeout, not four.
      self._client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                          socket_connect_timeout=timeout_s,
                                          retry=Retry(NoBackoff(), 0))
      self._client.ping()  # fail at start-up, not on the first request
    except self._errors as e:
      raise ConfigError(f"--store={_redacted(url)}: Redis does not answer ({type(e).__name__}: "
                        f"{e}); start it or fix the URL") from None
    self._prefix = f"{prefix}{namespace}:".encode()

  def _key(self, user_id: str) -> bytes:
    return self._prefix + encode_id(user_id)

  def _call(self, fn, *args):
    try:
      return fn(*args)
    except self._errors as e:
      raise StoreUnavailable(f"Redis {type(e).__name__}: {e}") from None

  def get_many(self, user_ids: Iterable[str]) -> dict[str, StoredUser]:
    ids = list(user_ids)
    if not ids:
      return {}
    values = self._call(self._client.mget, [self._key(u) for u in ids])
    return {u: StoredUser.from_bytes(v) for u, v in zip(ids, values) if v is not None}

  def put_many(self, users: Mapping[str, StoredUser]) -> None:
    if users:
      self._call(self._client.mset, {self._key(u): s.to_bytes() for u, s in users.items()})

  def ping(self) -> None:
    self._call(self._client.ping)

  def close(self) -> None:
    self._client.close()

  def describe(self) -> dict:
    return {"kind": "RedisStore", "url": _redacted(self.url), "timeout_s": self.timeout_s}

  def __len__(self) -> int:
    return sum(1 for _ in self._client.scan_iter(match=self._prefix + b"*", count=1000))


def _redacted(url: str) -> str:
  """A Redis URL without its password, e.g. redis://:pw@h:6379/0 -> redis://:***@h:6379/0."""
  scheme, sep, rest = url.partition("://")
  if "@" not in rest:
    return url
  auth, _, host = rest.rpartition("@")
  user = auth.split(":", 1)[0]
  return f"{scheme}{sep}{user}:***@{host}"
