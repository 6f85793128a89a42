"""Serving cost: per-event observe + top_k against re-encoding the history, and a serve.py load test.

  # The Beauty model (export its bundle first), then a synthetic 10^6-item catalog:
  python export.py --workdir runs/beauty --out bundles/beauty
  python benchmarks/serving.py --bundle bundles/beauty --name beauty --load_test
  python benchmarks/serving.py --synthetic_items 1000000 --name synthetic_1m
  # Seconds-long smoke run (what tests and development use):
  python benchmarks/serving.py --synthetic_items 2000 --embed_dim 16 --iters 20 --name smoke

Part 1 (in process, no HTTP): for B = 1 (one user) and B = --batch users, the latency of one new
event per user (`observe`: one cell step per layer) followed by `top_k` (full catalog, seen items
excluded), p50 / p99 over --iters calls, and events/s; beside it, re-encoding the whole history
per request (`encode` + `top_k`) at history lengths 10 / 50 / 200 / 1,000. The per-event column
stays flat in L (O(1)); re-encoding grows with L (O(L)).

Part 2 (--load_test): starts serve.py on 127.0.0.1 (pinned to --server_cpus) and drives it from
this process (pinned to --client_cpus) with benchmarks/loadgen.py: (1) --users users' whole
histories (from --histories, e.g. the Beauty file) as single POST /events, in order per user;
(2) POST /recommend by stored user_id and (3) by history, closed loop at --clients in flight
(the most the server answers); (4-5) the same at an open-loop --rate (latency from each
request's due time) and (6) fresh users' events at --event_rate. Every answer is checked: 200,
each user's event count, and every /recommend top-k against the Python API
(`Recommender.recommend_batch` on the same history). Bounded by --max_seconds a phase.

Durability (issue 24): by default the server keeps its states in a temporary --state_file
(`--state file`), as a deployment would: the memory store journals every batch of events
before answering. `--state none` runs without persistence. `--server_repo` starts another
checkout's serve.py against the same client and bundle (a before/after comparison: run both back
to back; `--bundle_format 1` writes the synthetic bundle in the format older servers read, which
newer ones read too); `--server_args` passes flags that only one of them knows. `--phases` picks
the load phases; `--startup_runs N` times N starts of serve.py to its first answer (a restart
reuses the persistent compilation cache when `--server_args` names one).

Results: benchmarks/results/serving_<name>_<date>.{json,md} with the machine, command and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# The serving configuration (serve.py --xla_multi_thread=false): set before JAX starts a backend.
if "--xla_multi_thread" not in sys.argv:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_multi_thread_eigen=false").strip()
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from lstmrec_jax.serving import bundle as bundle_lib  # noqa: E402
from lstmrec_jax.serving.recommender import Recommender  # noqa: E402

LENGTHS = (10, 50, 200, 1000)


def machine_info() -> dict[str, Any]:
  return {"platform": platform.platform(), "cpus": os.cpu_count(),
          "processor": platform.processor() or platform.machine(),
          "loadavg_at_start": list(os.getloadavg()), "jax": jax.__version__,
          "devices": [str(d) for d in jax.devices()]}


def synthetic_bundle(num_items: int, embed_dim: int, hidden: int, layers: int,
                     seed: int = 0) -> bundle_lib.Bundle:
  """A random-parameter LSTM bundle over a catalog of `num_items` (cost, not quality)."""
  sys.path.insert(0, str(REPO))
  from lstmrec_jax.configs import base  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import model as model_lib  # noqa: E402
  model = base.get_base_config().model.to_dict()
  model.update(embed_dim=embed_dim, hidden_size=hidden, num_layers=layers, item_mode="id",
               encoder="lstm")
  b = bundle_lib.Bundle(model=model, num_items=num_items + 1, max_len=50, seed=seed, params={},
                        item_keys=[None, *range(1, num_items + 1)],
                        popularity_V=np.zeros(num_items + 1, np.int64), content=None,
                        meta={"source": {"synthetic": True}})
  _, params, _ = model_lib.create_model(b.model_config(), seed)
  b.params = bundle_lib._flat(params)  # pylint: disable=protected-access
  rng = np.random.default_rng(seed)
  b.popularity_V = np.concatenate([[0], rng.zipf(1.3, num_items).clip(max=10 ** 6)])
  return b


def _timed(fn, iters: int) -> np.ndarray:
  fn()  # compile
  fn()
  out = np.empty(iters)
  for i in range(iters):
    t = time.perf_counter()
    fn()
    out[i] = time.perf_counter() - t
  return out


def _summary(seconds: np.ndarray, per_call: int) -> dict[str, float]:
  return {"p50_ms": float(np.percentile(seconds, 50) * 1e3),
          "p99_ms": float(np.percentile(seconds, 99) * 1e3),
          "per_s": float(per_call / np.mean(seconds))}


def micro(rec: Recommender, batch: int, iters: int, k: int) -> dict[str, Any]:
  """observe + top_k per event vs encode + top_k per request, at each history length."""
  rng = np.random.default_rng(0)
  out: dict[str, Any] = {"per_event": {}, "re_encode": {}}
  for b in (1, batch):
    for length in LENGTHS:
      histories = [list(rng.integers(1, rec.num_items, length)) for _ in range(b)]
      # The streaming state after `length` events (how it got there is not timed).
      states = rec.observe_ids(np.zeros((b, rec.layout.size), np.float32), histories)
      seen = [h[-256:] for h in histories]  # a server keeps the recent events to exclude
      new_B = [[int(x)] for x in rng.integers(1, rec.num_items, b)]

      def per_event(states=states, seen=seen, new_B=new_B):
        s = rec.observe_ids(states, new_B)
        user, count = rec._user_of(s)  # pylint: disable=protected-access
        rec.rank_ids(np.asarray(user), np.asarray(count), k, seen)

      def re_encode(histories=histories, seen=seen):
        user, count = rec.encode_ids(histories)
        rec.rank_ids(user, count, k, seen)

      out["per_event"][f"B={b} L={length}"] = _summary(_timed(per_event, iters), b)
      out["re_encode"][f"B={b} L={length}"] = _summary(
          _timed(re_encode, max(3, iters // (1 + length // 100))), b)
      print(f"B={b} L={length}: per event {out['per_event'][f'B={b} L={length}']}, "
            f"re-encode {out['re_encode'][f'B={b} L={length}']}", flush=True)
  return out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def read_histories(path: str, users: int, seed: int = 0) -> list[list[str]]:
  """`users` whole histories (raw ids, oldest first) drawn from a seqfile ("user item item ...")."""
  lines = [line.split()[1:] for line in pathlib.Path(path).read_text().splitlines()
           if len(line.split()) > 1]
  rng = np.random.default_rng(seed)
  return [lines[i] for i in rng.choice(len(lines), min(users, len(lines)), replace=False)]


def _cpu_seconds(pid: int) -> float:
  fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _check(result, expected) -> dict[str, int]:
  """Answers against the Python API's items: equal, or different only where scores tie."""
  wrong, ties = 0, 0
  for body, want in zip(result["bodies"], expected):
    if body is None:
      continue
    got = json.loads(body)
    if got.get("items") == want.items:
      continue
    mine = dict(want)
    if len(got.get("items", ())) == len(want) and all(
        abs(mine.get(i, np.inf) - s) <= 1e-4 * max(1.0, abs(s))
        for i, s in zip(got["items"], got["scores"])):
      ties += 1  # the same top-k up to the order of scores equal at 1e-4
    else:
      wrong += 1
  return {"differs_from_python_api": wrong, "differs_only_in_tied_order": ties}


def load_test(bundle_dir: str, rec: Recommender, args) -> dict[str, Any]:
  """serve.py on loopback: events, recommend by stored user, recommend by history; every answer
  checked (module docstring, Part 2)."""
  import httpx  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / "benchmarks"))
  import loadgen  # pylint: disable=g-import-not-at-top

  if args.histories:
    histories = read_histories(args.histories, args.users)
  else:
    rng = np.random.default_rng(1)
    keys = rec.item_keys
    histories = [[keys[int(i)] for i in rng.integers(1, rec.num_items, int(n))]
                 for n in rng.integers(1, 50, args.users)]
  lengths = np.array([len(h) for h in histories])
  expected = []
  for lo in range(0, len(histories), 256):
    expected += rec.recommend_batch(histories[lo:lo + 256], k=args.k)
  users = [f"user{j}" for j in range(len(histories))]

  port = _free_port()
  cmd = server_command(bundle_dir, port, args)
  proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(args.server_repo)})
  if args.client_cpus:
    os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
  url = f"http://127.0.0.1:{port}"
  out: dict[str, Any] = {"command": " ".join(cmd), "client_cpus": args.client_cpus or "any",
                         "users": len(histories), "k": args.k,
                         "history_length": {"mean": float(lengths.mean()),
                                            "p50": float(np.median(lengths)),
                                            "max": int(lengths.max())},
                         "histories": args.histories or "synthetic, 1-49 random items"}
  try:
    for _ in range(1200):
      if proc.poll() is not None:
        raise RuntimeError(f"serve.py exited with {proc.returncode}")
      try:
        if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        time.sleep(0.5)
    pid = proc.pid  # taskset execs serve.py in its own process
    out["compiles_at_start"] = httpx.get(f"{url}/metadata").json()["compiles"]

    def phase(name, requests, *, lanes, lane_of=None, rate=None, expect=None):
      cpu0 = _cpu_seconds(pid)
      result = loadgen.drive(port, requests, lanes, lane_of=lane_of, rate=rate,
                             max_seconds=args.max_seconds)
      part = {**loadgen.summary(result), "lanes": lanes, "rate": rate,
              "server_cpu_ms_per_request": round(
                  (_cpu_seconds(pid) - cpu0) * 1e3 / max(1, np.isfinite(
                      result["latency_s"]).sum()), 3)}
      if expect is not None:
        part.update(_check(result, expect))
      out[name] = part
      print(name, part, flush=True)
      return result

    # 1. Every sampled user's whole history as single events, in order (a user keeps one lane).
    order = [(u, item) for u, h in enumerate(histories) for item in h]
    if "events" in args.phases:
      ev = phase("events", [loadgen.post("/events", {"user_id": users[u], "item": item})
                            for u, item in order],
                 lanes=args.clients, lane_of=[u % args.clients for u, _ in order])
      last_count = {users[u]: json.loads(b)["events"] for (u, _), b in zip(order, ev["bodies"])
                    if b is not None}
      out["events"]["users_with_wrong_event_count"] = sum(
          last_count.get(users[u]) != len(h) for u, h in enumerate(histories))
    n = args.requests
    pick = [j % len(histories) for j in range(n)]
    by_user = [loadgen.post("/recommend", {"user_id": users[j], "k": args.k}) for j in pick]
    by_history = [loadgen.post("/recommend", {"history": histories[j], "k": args.k})
                  for j in pick]
    want = [expected[j] for j in pick]
    # 2-3. Closed loop: the most the server answers at --clients requests in flight.
    if "recommend_user_closed" in args.phases:
      phase("recommend_user_closed", by_user, lanes=args.clients, expect=want)
    if "recommend_history_closed" in args.phases:
      phase("recommend_history_closed", by_history, lanes=args.clients, expect=want)
    # 4-6. Open loop at the target rates: latency from each request's due time.
    if "recommend_user_open" in args.phases:
      phase("recommend_user_open", by_user, lanes=args.open_lanes, rate=args.rate, expect=want)
    if "recommend_history_open" in args.phases:
      phase("recommend_history_open", by_history, lanes=args.open_lanes, rate=args.rate,
            expect=want)
    # 6. The same events again for fresh users, due at --event_rate.
    if "events_open" in args.phases:
      phase("events_open", [loadgen.post("/events", {"user_id": "open-" + users[u],
                                                     "item": item}) for u, item in order],
            lanes=args.open_lanes, lane_of=[u % args.open_lanes for u, _ in order],
            rate=args.event_rate)
    meta = httpx.get(f"{url}/metadata").json()
  finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
  out["server_batches"] = meta["batches"]
  out["compiles_during_load"] = meta["compiles"] - out["compiles_at_start"]
  return out


PHASES = ("events", "events_open", "recommend_user_closed", "recommend_user_open",
          "recommend_history_closed", "recommend_history_open")


def server_command(bundle_dir: str, port: int, args) -> list[str]:
  """serve.py of --server_repo on loopback, pinned to --server_cpus, with the state it keeps."""
  pin = ["taskset", "-c", args.server_cpus] if args.server_cpus else []
  state = "--state_file=" if args.state == "none" else (
      f"--state_file={pathlib.Path(args.state_dir) / f'states_{port}.npz'}")
  return [*pin, sys.executable, str(pathlib.Path(args.server_repo) / "serve.py"),
          f"--bundle={bundle_dir}", f"--port={port}", state,
          f"--xla_multi_thread={args.xla_multi_thread}",
          f"--max_batch={args.server_max_batch}", f"--max_wait_ms={args.server_max_wait_ms}",
          "--max_history=1024", *args.server_args.split()]


def startup_times(bundle_dir: str, args) -> dict[str, Any]:
  """Seconds from starting serve.py to its first 200 from /healthz, --startup_runs times."""
  import httpx  # pylint: disable=g-import-not-at-top
  out = []
  for _ in range(args.startup_runs):
    port = _free_port()
    t = time.time()
    proc = subprocess.Popen(server_command(bundle_dir, port, args),
                            env={**os.environ, "PYTHONPATH": str(args.server_repo)})
    try:
      while True:
        if proc.poll() is not None:
          raise RuntimeError(f"serve.py exited with {proc.returncode}")
        try:
          if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
            break
        except httpx.HTTPError:
          time.sleep(0.05)
      out.append(round(time.time() - t, 2))
      print(f"start to first answer: {out[-1]} s", flush=True)
    finally:
      proc.send_signal(signal.SIGTERM)
      proc.wait(timeout=120)
  return {"seconds": out, "server": " ".join(server_command(bundle_dir, 0, args))}


def markdown(result: dict[str, Any]) -> str:
  lines = [f"# Serving benchmark: {result['name']}", "",
           f"- date: {result['date']}", f"- command: `{result['command']}`",
           f"- machine: {result['machine']}", f"- model: {result['model']}", "",
           "## Per request: one new event (observe + top_k) vs re-encoding the history", "",
           "| batch, history L | per event p50 / p99 ms | events/s | re-encode p50 / p99 ms | "
           "requests/s |", "|---|---|---|---|---|"]
  for key, ev in result.get("micro", {}).get("per_event", {}).items():
    re = result["micro"]["re_encode"][key]
    lines.append(f"| {key} | {ev['p50_ms']:.2f} / {ev['p99_ms']:.2f} | {ev['per_s']:.0f} | "
                 f"{re['p50_ms']:.2f} / {re['p99_ms']:.2f} | {re['per_s']:.0f} |")
  if "load_test" in result:
    lt = result["load_test"]
    lines += ["", "## serve.py load test (loopback)", "", f"Server: `{lt['command']}`; client "
              f"(benchmarks/loadgen.py) on CPUs {lt['client_cpus']}. {lt['users']} users' "
              f"histories from {lt['histories']} (length mean {lt['history_length']['mean']:.1f}, "
              f"median {lt['history_length']['p50']:.0f}, max {lt['history_length']['max']}), "
              f"k = {lt['k']}. Closed loop: `lanes` requests in flight, latency send -> answer. "
              "Open loop: requests due at a fixed rate, latency from the due time.", "",
              "| phase | lanes | target /s | answered | per s | p50 ms | p99 ms | max ms | "
              "server CPU ms/req | not 200 | not sent | differs from API (tied order) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("events", "events_open", "recommend_user_closed", "recommend_user_open",
                 "recommend_history_closed", "recommend_history_open"):
      if name not in lt:
        continue
      q = lt[name]
      check = (f"{q['differs_from_python_api']} ({q['differs_only_in_tied_order']})"
               if "differs_from_python_api" in q else
               f"event counts wrong: {q['users_with_wrong_event_count']}"
               if "users_with_wrong_event_count" in q else "")
      lines.append(f"| {name} | {q['lanes']} | {q['rate'] or 'as fast as answered'} | "
                   f"{q['requests']} | {q['per_s']:.0f} | {q['p50_ms']:.1f} | {q['p99_ms']:.1f} "
                   f"| {q['max_ms']:.1f} | {q['server_cpu_ms_per_request']:.3f} | "
                   f"{q['not_200']} | {q['not_sent_time_bound']} | {check} |")
    lines += ["", f"- server batches: {lt['server_batches']}; XLA compiles during the load: "
              f"{lt['compiles_during_load']}"]
  if "startup" in result:
    lines += ["", "## Start-up (serve.py start to its first answer)", "",
              f"- server: `{result['startup']['server']}`",
              f"- seconds, run after run: {result['startup']['seconds']}"]
  return "\n".join(lines) + "\n"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--bundle", help="an export.py bundle (e.g. of the Beauty run)")
  p.add_argument("--synthetic_items", type=int, help="or a random LSTM over this many items")
  p.add_argument("--embed_dim", type=int, default=64)
  p.add_argument("--hidden_size", type=int, default=None)
  p.add_argument("--num_layers", type=int, default=1)
  p.add_argument("--batch", type=int, default=64, help="users per batched call")
  p.add_argument("--iters", type=int, default=200)
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--load_test", action="store_true")
  p.add_argument("--histories", help="load test: a seqfile (user item item ...) whose users' "
                 "whole histories are replayed (e.g. the Beauty file); default: random")
  p.add_argument("--users", type=int, default=2000, help="load test: users drawn")
  p.add_argument("--clients", type=int, default=32, help="closed loop: requests in flight")
  p.add_argument("--open_lanes", type=int, default=128, help="open loop: connections")
  p.add_argument("--rate", type=float, default=1000.0, help="open loop: /recommend per s")
  p.add_argument("--event_rate", type=float, default=5000.0, help="open loop: /events per s")
  p.add_argument("--requests", type=int, default=10000, help="per /recommend phase")
  p.add_argument("--max_seconds", type=float, default=60.0, help="bound of each load phase")
  p.add_argument("--server_cpus", default="0", help="taskset list for serve.py ('' = any)")
  p.add_argument("--client_cpus", default="1", help="CPUs of this (client) process ('' = any)")
  p.add_argument("--xla_multi_thread", action="store_true", help="as serve.py's flag")
  p.add_argument("--skip_micro", action="store_true", help="only the load test")
  p.add_argument("--server_max_batch", type=int, default=64)
  p.add_argument("--server_max_wait_ms", type=float, default=0.5)
  p.add_argument("--server_repo", default=str(REPO), help="the checkout whose serve.py runs")
  p.add_argument("--server_args", default="", help="extra serve.py flags (space-separated)")
  p.add_argument("--state", choices=("file", "none"), default="file",
                 help="file: the memory store persisted (journal + snapshots) in --state_dir")
  p.add_argument("--state_dir", default=None, help="where --state file keeps it (default: a "
                 "temporary folder)")
  p.add_argument("--bundle_format", type=int, choices=(1, 2), default=2,
                 help="synthetic bundle: 1 is what servers before issue 24 read")
  p.add_argument("--phases", default=",".join(PHASES), help="load phases to run")
  p.add_argument("--startup_runs", type=int, default=0, help="time this many starts")
  p.add_argument("--name", default="run")
  p.add_argument("--out", default=None, help="results path stem")
  args = p.parse_args()
  args.phases = [x for x in args.phases.split(",") if x]
  if bool(args.bundle) == bool(args.synthetic_items):
    p.error("give exactly one of --bundle and --synthetic_items")
  if args.state == "file" and args.state_dir is None:
    import tempfile  # pylint: disable=g-import-not-at-top
    args.state_dir = tempfile.mkdtemp(prefix="serving_states_")
  bundle_dir = args.bundle
  if args.bundle:
    rec = Recommender.load(args.bundle)
  else:
    b = synthetic_bundle(args.synthetic_items, args.embed_dim, args.hidden_size or args.embed_dim,
                         args.num_layers)
    rec = Recommender(b)
    if args.load_test or args.startup_runs:
      import tempfile  # pylint: disable=g-import-not-at-top
      bundle_dir = str(bundle_lib.save(b, pathlib.Path(tempfile.mkdtemp()) / "bundle",
                                       export_functions=False))
      if args.bundle_format == 1:  # what servers before checksums read (newer ones read it too)
        meta = json.loads((pathlib.Path(bundle_dir) / "bundle.json").read_text())
        meta["format_version"] = 1
        (pathlib.Path(bundle_dir) / "bundle.json").write_text(json.dumps(meta))
        (pathlib.Path(bundle_dir) / "checksums.json").unlink()
  result = {"name": args.name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]), "machine": machine_info(),
            "model": {k: v for k, v in rec.metadata().items()
                      if k in ("encoder", "num_layers", "embed_dim", "hidden_size", "num_items",
                               "state_size")}}
  if not args.skip_micro:
    if args.server_cpus:  # the in-process part measures the server's own work, on its CPUs
      os.sched_setaffinity(0, {int(c) for c in args.server_cpus.split(",")})
    result["micro"] = micro(rec, args.batch, args.iters, args.k)
  if args.load_test:
    result["load_test"] = load_test(bundle_dir, rec, args)
  if args.startup_runs:
    result["startup"] = startup_times(bundle_dir, args)
  out = args.out or str(REPO / "benchmarks" / "results" /
                        f"serving_{args.name}_{datetime.date.today().isoformat()}")
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(out + ".json").write_text(json.dumps(result, indent=1) + "\n")
  text = markdown(result)
  pathlib.Path(out + ".md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
