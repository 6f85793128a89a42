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

Part 2 (--load_test): starts serve.py on 127.0.0.1, then --clients concurrent clients send
--requests POST /recommend (histories drawn at random) and --events POST /events, bounded by
--max_seconds; reports requests/s and p50 / p99 latency, checks every /recommend answer against
the Python API (same items) and that no request was dropped (every one answered 200).

Results: benchmarks/results/serving_<name>_<date>.{json,md} with the machine, command and date.
"""

from __future__ import annotations

import argparse
import asyncio
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
  from configs import base  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  model = base.get_base_config().model.to_dict()
  model.update(embed_dim=embed_dim, hidden_size=hidden, num_layers=layers, item_mode="id",
               encoder="lstm")
  b = bundle_lib.Bundle(model=model, num_items=num_items + 1, max_len=50, seed=seed, params={},
                        item_keys=[None, *range(1, num_items + 1)],
                        popularity_V=np.zeros(num_items + 1, np.int64), content=None,
                        meta={"source": {"synthetic": True}})
  _, params, _ = state_lib.create_model(b.model_config(), seed)
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


async def _load(url: str, rec: Recommender, args) -> dict[str, Any]:
  import httpx  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  keys = rec.item_keys
  histories = [[keys[int(i)] for i in rng.integers(1, rec.num_items, int(n))]
               for n in rng.integers(1, 50, 256)]
  expected = [rec.recommend(h, k=10).items for h in histories]
  deadline = time.perf_counter() + args.max_seconds
  results: dict[str, list] = {"recommend": [], "events": []}
  failures: list[str] = []
  queue: asyncio.Queue = asyncio.Queue()
  for i in range(args.requests):
    queue.put_nowait(("recommend", i))
  for i in range(args.events):
    queue.put_nowait(("events", i))
  limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

  async def client(http):
    while time.perf_counter() < deadline:
      try:
        kind, i = queue.get_nowait()
      except asyncio.QueueEmpty:
        return
      t = time.perf_counter()
      if kind == "recommend":
        j = i % len(histories)
        r = await http.post(f"{url}/recommend", json={"history": histories[j], "k": 10})
        ok = r.status_code == 200 and r.json()["items"] == expected[j]
      else:
        r = await http.post(f"{url}/events", json={"user_id": f"u{i % 1000}",
                                                   "item": keys[1 + i % (rec.num_items - 1)]})
        ok = r.status_code == 200
      results[kind].append(time.perf_counter() - t)
      if not ok:
        failures.append(f"{kind} {i}: {r.status_code} {r.text[:200]}")

  async with httpx.AsyncClient(limits=limits, timeout=30) as http:
    start = time.perf_counter()
    # Recommend requests first, then events: each phase's rate is measured alone.
    await asyncio.gather(*(client(http) for _ in range(args.clients)))
    wall = time.perf_counter() - start
  report = {"clients": args.clients, "wall_s": wall, "failures": failures[:10],
            "answered_wrong_or_failed": len(failures),
            "not_sent_time_bound": queue.qsize()}
  for kind, lat in results.items():
    if lat:
      lat_arr = np.asarray(lat)
      report[kind] = {"requests": len(lat), "p50_ms": float(np.percentile(lat_arr, 50) * 1e3),
                      "p99_ms": float(np.percentile(lat_arr, 99) * 1e3)}
  return report


def load_test(bundle_dir: str, rec: Recommender, args) -> dict[str, Any]:
  """serve.py on loopback under --clients concurrent clients; every answer checked."""
  port = _free_port()
  cmd = [sys.executable, str(REPO / "serve.py"), f"--bundle={bundle_dir}", f"--port={port}",
         "--state_file=", f"--max_batch={args.server_max_batch}",
         f"--max_wait_ms={args.server_max_wait_ms}", "--max_history=1024"]
  proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})
  url = f"http://127.0.0.1:{port}"
  try:
    import httpx  # pylint: disable=g-import-not-at-top
    for _ in range(1200):
      try:
        if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        time.sleep(0.5)
    rec_args = argparse.Namespace(**{**vars(args), "events": 0})
    ev_args = argparse.Namespace(**{**vars(args), "requests": 0})
    recs = asyncio.run(_load(url, rec, rec_args))
    events = asyncio.run(_load(url, rec, ev_args))
    meta = httpx.get(f"{url}/metadata").json()
  finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
  out = {"command": " ".join(cmd[1:]), "recommend": recs, "events": events,
         "server_batches": meta["batches"], "compiles_after_load": meta["compiles"]}
  for name, part in (("recommend", recs), ("events", events)):
    if name in part:
      part[name]["per_s"] = part[name]["requests"] / part["wall_s"]
  return out


def markdown(result: dict[str, Any]) -> str:
  lines = [f"# Serving benchmark: {result['name']}", "",
           f"- date: {result['date']}", f"- command: `{result['command']}`",
           f"- machine: {result['machine']}", f"- model: {result['model']}", "",
           "## Per request: one new event (observe + top_k) vs re-encoding the history", "",
           "| batch, history L | per event p50 / p99 ms | events/s | re-encode p50 / p99 ms | "
           "requests/s |", "|---|---|---|---|---|"]
  for key, ev in result["micro"]["per_event"].items():
    re = result["micro"]["re_encode"][key]
    lines.append(f"| {key} | {ev['p50_ms']:.2f} / {ev['p99_ms']:.2f} | {ev['per_s']:.0f} | "
                 f"{re['p50_ms']:.2f} / {re['p99_ms']:.2f} | {re['per_s']:.0f} |")
  if "load_test" in result:
    lt = result["load_test"]
    lines += ["", "## serve.py load test (loopback)", "", f"`{lt['command']}`", ""]
    for name in ("recommend", "events"):
      part = lt[name]
      if name in part:
        p = part[name]
        lines.append(f"- {name}: {p['requests']} requests, {part['clients']} clients, "
                     f"{p['per_s']:.0f}/s, p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms; "
                     f"wrong or failed: {part['answered_wrong_or_failed']}, not sent (time "
                     f"bound): {part['not_sent_time_bound']}")
    lines.append(f"- server batches: {lt['server_batches']}")
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
  p.add_argument("--clients", type=int, default=32)
  p.add_argument("--requests", type=int, default=5000)
  p.add_argument("--events", type=int, default=10000)
  p.add_argument("--max_seconds", type=float, default=60.0, help="bound of each load phase")
  p.add_argument("--server_max_batch", type=int, default=64)
  p.add_argument("--server_max_wait_ms", type=float, default=2.0)
  p.add_argument("--name", default="run")
  p.add_argument("--out", default=None, help="results path stem")
  args = p.parse_args()
  if bool(args.bundle) == bool(args.synthetic_items):
    p.error("give exactly one of --bundle and --synthetic_items")
  bundle_dir = args.bundle
  if args.bundle:
    rec = Recommender.load(args.bundle)
  else:
    b = synthetic_bundle(args.synthetic_items, args.embed_dim, args.hidden_size or args.embed_dim,
                         args.num_layers)
    rec = Recommender(b)
    if args.load_test:
      import tempfile  # pylint: disable=g-import-not-at-top
      bundle_dir = str(bundle_lib.save(b, pathlib.Path(tempfile.mkdtemp()) / "bundle",
                                       export_functions=False))
  result = {"name": args.name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]), "machine": machine_info(),
            "model": {k: v for k, v in rec.metadata().items()
                      if k in ("encoder", "num_layers", "embed_dim", "hidden_size", "num_items",
                               "state_size")}}
  result["micro"] = micro(rec, args.batch, args.iters, args.k)
  if args.load_test:
    result["load_test"] = load_test(bundle_dir, rec, args)
  out = args.out or str(REPO / "benchmarks" / "results" /
                        f"serving_{args.name}_{datetime.date.today().isoformat()}")
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(out + ".json").write_text(json.dumps(result, indent=1) + "\n")
  text = markdown(result)
  pathlib.Path(out + ".md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
