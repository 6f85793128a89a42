"""A lean HTTP/1.1 load generator for serve.py (asyncio streams, keep-alive, pre-encoded requests).

Every request goes on one "lane" (a keep-alive connection) that sends its requests in order, one
at a time, so a user whose events share a lane sees them applied in order. Two modes:
  - closed loop (rate=None): each lane sends its next request as soon as the last is answered;
    latency is send -> answer; the rate is whatever the server sustains at that concurrency;
  - open loop (rate=R requests/s): request i is due at start + i / R; a lane sends it when due
    (or at once if the lane is behind) and latency is counted from the DUE time, so a server that
    falls behind shows it in the latency (no coordinated omission).
Requests are encoded before the clock starts and answers kept as raw bytes, checked after the
clock stops: the client costs a few tens of microseconds a request. Talks to 127.0.0.1 only,
bounded by a request count and a time limit.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def post(path: str, body: Any, host: str = "127.0.0.1") -> bytes:
  """One keep-alive POST with a JSON body, as bytes on the wire."""
  data = json.dumps(body, separators=(",", ":")).encode()
  return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
          f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
  head = await reader.readuntil(b"\r\n\r\n")
  status = int(head[9:12])
  length = 0
  for line in head.split(b"\r\n")[1:]:
    if line[:15].lower() == b"content-length:":
      length = int(line[15:])
      break
  return status, await reader.readexactly(length)


async def run(port: int, requests: Sequence[bytes], lanes: int, *,
              lane_of: Sequence[int] | None = None, rate: float | None = None,
              max_seconds: float = 60.0, host: str = "127.0.0.1") -> dict[str, Any]:
  """Sends `requests` over `lanes` connections (request i on lane `lane_of[i]`, default i % lanes).

  Returns wall time (first send to last answer), per-request latency in s (NaN: not sent before
  `max_seconds`), HTTP status and body of each request.
  """
  n = len(requests)
  lane_of = np.arange(n) % lanes if lane_of is None else np.asarray(lane_of)
  latency = np.full(n, np.nan)
  status = np.zeros(n, np.int32)
  bodies: list[bytes | None] = [None] * n
  start = time.perf_counter()
  deadline = start + max_seconds
  last = [start]

  async def lane(order: np.ndarray):
    reader, writer = await asyncio.open_connection(host, port)
    try:
      for i in order:
        due = start + i / rate if rate else None
        now = time.perf_counter()
        if now >= deadline:
          return
        if due is not None and due > now:
          await asyncio.sleep(due - now)
        sent = time.perf_counter()
        writer.write(requests[i])
        status[i], bodies[i] = await _read_answer(reader)
        done = time.perf_counter()
        latency[i] = done - (due if due is not None else sent)
        last[0] = max(last[0], done)
    finally:
      writer.close()

  await asyncio.gather(*(lane(np.flatnonzero(lane_of == j)) for j in range(lanes)))
  return {"wall_s": last[0] - start, "latency_s": latency, "status": status, "bodies": bodies}


def drive(port: int, requests: Sequence[bytes], lanes: int, **kwargs) -> dict[str, Any]:
  """`run` on uvloop when installed, with the garbage collector paused: a collection of the
  client's heap (the answers, the expected results) in the middle of a phase would be charged to
  the server's latency."""
  try:
    import uvloop  # pylint: disable=g-import-not-at-top
    factory = uvloop.new_event_loop
  except ImportError:
    factory = None
  gc.collect()
  gc.disable()
  try:
    with asyncio.Runner(loop_factory=factory) as runner:
      return runner.run(run(port, requests, lanes, **kwargs))
  finally:
    gc.enable()


def summary(result: dict[str, Any]) -> dict[str, Any]:
  """Answered requests, their rate, p50 / p99 / max latency, non-200 answers, requests not sent."""
  sent = np.isfinite(result["latency_s"])
  lat = result["latency_s"][sent]
  pct = lambda q: round(float(np.percentile(lat, q)) * 1e3, 2) if lat.size else None  # noqa: E731
  return {"requests": int(lat.size), "wall_s": round(result["wall_s"], 3),
          "per_s": round(lat.size / result["wall_s"], 1) if result["wall_s"] > 0 else None,
          "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": pct(100),
          "not_200": int((result["status"][sent] != 200).sum()),
          "not_sent_time_bound": int((~sent).sum())}
