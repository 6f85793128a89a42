"""Host memory: let freed buffers be reused by the process instead of handed back to the kernel.

XLA:CPU allocates the intermediate buffers of every step with malloc and frees them when the
step ends. glibc's defaults hand large freed blocks back to the kernel (munmap for a block it
mmapped, trimming for the top of a heap), so the next step writes into fresh pages: every 4 KiB
page faults and the kernel zeroes it. On the fast Beauty step (configs/beauty_fast.py:
E = H = 128, 2,048 sampled negatives, 8 rows) that was ~8,400 page faults a step; with the
blocks kept, 9-1,300, and the step ran 27-70% more events a second on 2 cores and 59-63% more on
one (docs/results.md, "Host memory"; `benchmarks/step_efficiency.py --host_malloc both`). How
much it gives depends on the sizes of a step's buffers: glibc's own adaptive thresholds already
kept the Games fast step's (~1,000 faults a step either way, the same speed).

`configure("reuse")` (the default of train.py, eval.py and tune.py, `--host_malloc`) sets, with
glibc's `mallopt`:

  M_MMAP_MAX = 0             no block is mmapped on its own: all come from the heaps
  M_TRIM_THRESHOLD = 2 GiB   (its maximum) the heaps are not trimmed back after a free

so the memory one step freed is there for the next. The process keeps the footprint of its
largest step, which it reaches every step anyway. What this leaves: a block larger than a thread
arena's 64 MiB heap is still mmapped by glibc (it falls back to mmap whatever M_MMAP_MAX says),
so the Beauty recipe's step (exact softmax; one ~140 MB block a step) still takes ~36,000 faults
and runs as fast as before. `configure("one_arena")` also sets

  M_ARENA_MAX = 1            every thread allocates from the main heap (no 64 MiB limit)

which keeps that block too: the recipe's step ran 7-12% faster. But the threads then share one
arena's lock, and small steps can slow down (the fast step: -23% to +6% over four measurements),
so it is a choice (`--host_malloc=one_arena`) for steps whose temporaries pass 64 MiB, not the
default.

Only glibc has these knobs; elsewhere (macOS, musl) `configure` changes nothing and says so.
Settings the user made in the environment (MALLOC_*_ variables, glibc.malloc tunables in
GLIBC_TUNABLES) win: then nothing is changed either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MODES = ("reuse", "one_arena", "system")

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# M_TRIM_THRESHOLD takes an int: its largest value, 2 GiB.
_TRIM_MAX = 2**31 - 1

_ENV_KNOBS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
              "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def _glibc() -> ctypes.CDLL | None:
  """The C library when it is glibc (it has mallopt and gnu_get_libc_version), else None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    libc.gnu_get_libc_version()
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
  except (OSError, AttributeError):
    return None
  return libc


def _user_settings(environ) -> list[str]:
  """The malloc settings the environment already makes (names), which `configure` leaves."""
  found = [name for name in _ENV_KNOBS if environ.get(name)]
  if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
    found.append("GLIBC_TUNABLES (glibc.malloc.*)")
  return found


def configure(mode: str = "reuse", environ=None) -> str:
  """Sets the host allocator for `mode` (one of MODES); returns one line for the log.

  Call it once, before the first large allocation (before jax creates its thread pool); the
  settings hold for the rest of the process. "system" changes nothing.
  Raises ValueError naming `--host_malloc` for an unknown mode.
  """
  if mode not in MODES:
    raise ValueError(f"--host_malloc={mode!r}: must be one of {', '.join(MODES)}")
  if mode == "system":
    return "host malloc: the C library's defaults (--host_malloc=system)"
  environ = os.environ if environ is None else environ
  user = _user_settings(environ)
  if user:
    return f"host malloc: left as the environment sets it ({', '.join(user)})"
  libc = _glibc()
  if libc is None:
    return "host malloc: the C library's defaults (not glibc: no mallopt)"
  ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_MAX) == 1
  if ok and mode == "one_arena":
    ok = libc.mallopt(_M_ARENA_MAX, 1) == 1
  if not ok:
    return "host malloc: glibc refused a mallopt setting; its defaults may partly stay"
  arena = ", M_ARENA_MAX=1" if mode == "one_arena" else ""
  return (f"host malloc: freed blocks kept for reuse (glibc mallopt M_MMAP_MAX=0, "
          f"M_TRIM_THRESHOLD=2 GiB{arena}; --host_malloc=system for the defaults)")
