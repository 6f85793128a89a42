"""`serve.py` / `lstmrec-serve`: the HTTP JSON recommendation service (lstmrec_jax/serving/server.py).

  python serve.py --bundle bundles/default                  # or --workdir runs/default
  python serve.py --bundle B --store redis://127.0.0.1:6379/0   # states shared by replicas
  curl -s localhost:8000/recommend -d '{"history": ["i1", "i7"], "k": 10}'

Start-up: the bundle is verified (checksums; --bundle_sha256 pins its digest), the state store's
journal replayed, every shape compiled (from JAX's persistent cache on a restart:
--compilation_cache), and only then does the server listen and log "ready".

User states (POST /events) live in memory: each batch of events is journaled before it is
answered (an acknowledged event survives kill -9), and the whole store is snapshotted to
--state_file every --persist_interval_s and on SIGTERM / SIGINT; the default file is under the
user's state folder, never inside the bundle (a bundle stays read-only). With --store
redis://... they live in Redis instead.
"""

from __future__ import annotations

import logging
import os

from absl import flags

from lstmrec_jax.cli import common
from lstmrec_jax.cli import logs

flags.DEFINE_string("bundle", None, "An export.py bundle folder (never reads the training data).")
flags.DEFINE_string("bundle_sha256", None, "Refuse the bundle unless its digest (what export.py "
                    "printed) is this: checksums catch damage, a pinned digest catches a bundle "
                    "rewritten on purpose.")
flags.DEFINE_string("workdir", None, "Or a train.py workdir (reads its data once at start-up).")
flags.DEFINE_string("checkpoint", "best", "--workdir: 'best', 'latest' or a step.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
flags.DEFINE_integer("port", 8000, "Port to listen on.")
flags.DEFINE_string("store", "memory", "'memory' (journaled, snapshotted to --state_file) or a "
                    "redis:// URL.")
flags.DEFINE_string("state_file", None, "memory store: its snapshot (.npz; the journal and a lock "
                    "file sit beside it). Default: $XDG_STATE_HOME (~/.local/state)/lstmrec/"
                    "serving/<model id>/states.npz; '' keeps states in memory only (a restart "
                    "loses them).")
flags.DEFINE_float("persist_interval_s", 30.0, "memory store: seconds between snapshots (0: only "
                   "at shutdown; the journal keeps every acknowledged event between them).")
flags.DEFINE_bool("journal_fsync", False, "memory store: fsync the journal before each answer "
                  "(survives a power cut too, at the disk's latency per batch; without it an "
                  "acknowledged event survives a crash of the process, kill -9 included).")
flags.DEFINE_float("store_timeout_s", 2.0, "Longest wait for the state store (Redis) per call; "
                   "past it the request is answered 503 and history requests go on.")
flags.DEFINE_integer("max_batch", 64, "Requests batched into one jitted call.")
flags.DEFINE_float("max_wait_ms", 0.5, "While the worker is idle, the longest a request waits for "
                   "others to batch with (while it is busy, requests batch by themselves).")
flags.DEFINE_integer("max_k", 100, "Largest k a request may ask.")
flags.DEFINE_integer("max_history", 1024, "Longest history a request may send.")
flags.DEFINE_integer("max_events", 256, "Most events in one POST /events.")
flags.DEFINE_integer("max_user_id_bytes", 256, "Longest user_id (UTF-8 bytes).")
flags.DEFINE_integer("max_connections", 2048, "Open connections (lowered to fit the descriptor "
                     "limit); past it the longest-idle connection without a request is closed.")
flags.DEFINE_float("header_timeout_s", 10.0, "A connection whose request headers take longer "
                   "is closed.")
flags.DEFINE_float("body_timeout_s", 10.0, "A request body that takes longer is answered 408.")
flags.DEFINE_float("keep_alive_s", 5.0, "An idle kept-alive connection is closed after this.")
flags.DEFINE_integer("bucket_growth", 4, "Shape buckets grow by this factor.")
flags.DEFINE_string("compilation_cache", None, "JAX's persistent compilation cache folder, so a "
                    "restart of the same bundle does not compile again. Default: "
                    "$XDG_CACHE_HOME (~/.cache)/lstmrec/jax; '' turns it off.")
flags.DEFINE_bool("xla_multi_thread", False, "CPU: let XLA split each call over a thread pool. "
                  "Off by default: a micro-batch is too small to gain from it, and the pool's "
                  "wake-ups took CPU from the HTTP event loop (benchmarks/serving.py).")
common.define_plugin_flag()
FLAGS = flags.FLAGS

_FD_RESERVE = 128  # descriptors kept for JAX, logs, the journal, Redis and the listening socket


def _user_folder(env: str, fallback: str) -> str:
  return os.environ.get(env) or os.path.join(os.path.expanduser("~"), fallback)


def default_state_file(rec, source: str) -> str:
  """Where a memory store lives unless told: the user's state folder, one folder per model.

  Never the bundle folder (a bundle is read-only, and may be shared by several servers); the
  folder is named by the bundle's digest (or the workdir's path and step), so another model
  never reads these states.
  """
  import hashlib  # pylint: disable=g-import-not-at-top
  meta = rec.metadata()
  identity = meta.get("sha256") or f"{os.path.abspath(source)}:{meta['source'].get('step')}"
  name = os.path.basename(os.path.normpath(source)) or "model"
  key = hashlib.sha256(identity.encode()).hexdigest()[:16]
  return os.path.join(_user_folder("XDG_STATE_HOME", ".local/state"), "lstmrec", "serving",
                      f"{name}-{key}", "states.npz")


def _descriptor_limit() -> int:
  """Raises the soft descriptor limit to the hard one; returns it."""
  import resource  # pylint: disable=g-import-not-at-top
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if hard == resource.RLIM_INFINITY or hard > soft:
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    try:
      resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
      soft = target
    except (ValueError, OSError):
      pass
  return soft


def main() -> None:
  if not FLAGS.xla_multi_thread:  # read when the first JAX backend starts, which is below
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
  import jax  # pylint: disable=g-import-not-at-top
  import uvicorn  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import recommender, server, store  # pylint: disable=g-import-not-at-top
  cache = (os.path.join(_user_folder("XDG_CACHE_HOME", ".cache"), "lstmrec", "jax")
           if FLAGS.compilation_cache is None else FLAGS.compilation_cache)
  if cache:
    # Every compile is kept (the smallest bucket compiles in milliseconds, 84 of them do not).
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if bool(FLAGS.bundle) == bool(FLAGS.workdir):
    raise ConfigError("give exactly one of --bundle and --workdir")
  source = FLAGS.bundle or FLAGS.workdir
  if FLAGS.bundle:
    if FLAGS.plugins:
      common.load_plugins()  # a bundle of a plug-in encoder: the user names the plug-in
    rec = recommender.Recommender.load(FLAGS.bundle, expect_sha256=FLAGS.bundle_sha256)
  else:
    common.load_plugins(FLAGS.workdir)
    rec = recommender.Recommender.load(FLAGS.workdir, which=FLAGS.checkpoint,
                                       spec=common.workdir_spec(FLAGS.workdir),
                                       trust_plugins=FLAGS.trust_plugins)
  if FLAGS.store == "memory":
    path = (default_state_file(rec, source) if FLAGS.state_file is None else FLAGS.state_file)
    states = store.MemoryStore(path or None, interval_s=FLAGS.persist_interval_s,
                               fsync=FLAGS.journal_fsync)
    logging.info("state store: memory, %s", f"journal and snapshot at {path}" if path else
                 "not persisted (--state_file='')")
  elif FLAGS.store.startswith(("redis://", "rediss://", "unix://")):
    meta = rec.metadata()
    namespace = (meta["sha256"][:16] if meta.get("sha256") else
                 f"{meta.get('dataset', {}).get('fingerprint', '')[:12]}-{rec.layout.size}")
    states = store.RedisStore(FLAGS.store, namespace=namespace, timeout_s=FLAGS.store_timeout_s)
  else:
    raise ConfigError(f"--store={FLAGS.store!r}: expected 'memory' or a redis:// URL")
  descriptors = _descriptor_limit()
  max_connections = max(1, min(FLAGS.max_connections, descriptors - _FD_RESERVE))
  if max_connections < FLAGS.max_connections:
    logging.warning("--max_connections=%d lowered to %d: this process may open %d descriptors",
                    FLAGS.max_connections, max_connections, descriptors)
  config = server.ServerConfig(
      max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms, max_k=FLAGS.max_k,
      max_history=FLAGS.max_history, max_events=FLAGS.max_events,
      max_user_id_bytes=FLAGS.max_user_id_bytes, growth=FLAGS.bucket_growth,
      store_timeout_s=FLAGS.store_timeout_s, max_connections=max_connections,
      header_timeout_s=FLAGS.header_timeout_s, body_timeout_s=FLAGS.body_timeout_s,
      keep_alive_s=FLAGS.keep_alive_s)
  service = server.Service(rec, states, config)
  try:
    service.prepare()  # the journal replayed and every shape compiled before the port opens
  except BaseException:
    states.close()
    raise
  app = server.create_app(service)
  host, port = FLAGS.host, FLAGS.port

  class Server(uvicorn.Server):
    """uvicorn's server that says "ready" once the socket listens (start-up is done by then)."""

    async def startup(self, sockets=None) -> None:
      await super().startup(sockets)
      if self.started:
        logging.info("ready: serving %s on http://%s:%d", source, host, port)

  # uvicorn turns SIGTERM / SIGINT into a graceful shutdown: the app's lifespan closes the store.
  Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                        loop="uvloop", http=server.limited_protocol(config), backlog=4096,
                        timeout_keep_alive=config.keep_alive_s)).run()


def run() -> None:
  """The console script."""
  logs.run_main(main)
