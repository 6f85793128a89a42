"""`serve.py` / `lstmrec-serve`: the HTTP JSON recommendation service (lstmrec_jax/serving/server.py).

  python serve.py --bundle bundles/default                  # or --workdir runs/default
  python serve.py --bundle B --store redis://127.0.0.1:6379/0   # states shared by replicas
  curl -s localhost:8000/recommend -d '{"history": ["i1", "i7"], "k": 10}'

User states (POST /events) live in memory and are persisted to --state_file every
--persist_interval_s seconds and on SIGTERM / SIGINT (uvicorn's graceful shutdown closes the
store), so a restart keeps them; with --store redis://... they live in Redis instead.
"""

from __future__ import annotations

import logging

from absl import flags

from lstmrec_jax.cli import common
from lstmrec_jax.cli import logs

flags.DEFINE_string("bundle", None, "An export.py bundle folder (never reads the training data).")
flags.DEFINE_string("workdir", None, "Or a train.py workdir (reads its data once at start-up).")
flags.DEFINE_string("checkpoint", "best", "--workdir: 'best', 'latest' or a step.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
flags.DEFINE_integer("port", 8000, "Port to listen on.")
flags.DEFINE_string("store", "memory", "'memory' (persisted to --state_file) or a redis:// URL.")
flags.DEFINE_string("state_file", None, "memory store: its .npz file (default: "
                    "<bundle or workdir>/serving_states.npz; '' keeps states in memory only).")
flags.DEFINE_float("persist_interval_s", 30.0, "memory store: seconds between saves (0: only "
                   "at shutdown).")
flags.DEFINE_integer("max_batch", 64, "Requests batched into one jitted call.")
flags.DEFINE_float("max_wait_ms", 0.5, "While the worker is idle, the longest a request waits for "
                   "others to batch with (while it is busy, requests batch by themselves).")
flags.DEFINE_integer("max_k", 100, "Largest k a request may ask.")
flags.DEFINE_integer("max_history", 1024, "Longest history a request may send.")
flags.DEFINE_integer("max_events", 256, "Most events in one POST /events.")
flags.DEFINE_integer("bucket_growth", 4, "Shape buckets grow by this factor.")
flags.DEFINE_bool("xla_multi_thread", False, "CPU: let XLA split each call over a thread pool. "
                  "Off by default: a micro-batch is too small to gain from it, and the pool's "
                  "wake-ups took CPU from the HTTP event loop (benchmarks/serving.py).")
FLAGS = flags.FLAGS


def main() -> None:
  import os  # pylint: disable=g-import-not-at-top
  if not FLAGS.xla_multi_thread:  # read when the first JAX backend starts, which is below
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
  import uvicorn  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving import recommender, server, store  # pylint: disable=g-import-not-at-top
  if bool(FLAGS.bundle) == bool(FLAGS.workdir):
    raise ConfigError("give exactly one of --bundle and --workdir")
  source = FLAGS.bundle or FLAGS.workdir
  if FLAGS.bundle:
    rec = recommender.Recommender.load(FLAGS.bundle)
  else:
    rec = recommender.Recommender.load(FLAGS.workdir, which=FLAGS.checkpoint,
                                       spec=common.workdir_spec(FLAGS.workdir))
  if FLAGS.store == "memory":
    path = (os.path.join(source, "serving_states.npz") if FLAGS.state_file is None
            else FLAGS.state_file)
    states = store.MemoryStore(path or None, interval_s=FLAGS.persist_interval_s)
  elif FLAGS.store.startswith(("redis://", "rediss://", "unix://")):
    fingerprint = rec.metadata().get("dataset", {}).get("fingerprint", "")[:12]
    states = store.RedisStore(FLAGS.store, namespace=f"{fingerprint}-{rec.layout.size}")
  else:
    raise ConfigError(f"--store={FLAGS.store!r}: expected 'memory' or a redis:// URL")
  config = server.ServerConfig(max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms,
                               max_k=FLAGS.max_k, max_history=FLAGS.max_history,
                               max_events=FLAGS.max_events, growth=FLAGS.bucket_growth)
  app = server.create_app(server.Service(rec, states, config))
  logging.info("serving %s on http://%s:%d", source, FLAGS.host, FLAGS.port)
  # uvicorn turns SIGTERM / SIGINT into a graceful shutdown: the app's lifespan closes the store.
  uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, log_level="warning", access_log=False,
              loop="uvloop", http="httptools", backlog=4096)


def run() -> None:
  """The console script."""
  logs.run_main(main)
