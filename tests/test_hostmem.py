"""--host_malloc (lstmrec_jax/hostmem.py): freed host buffers stay with the process."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

from lstmrec_jax import hostmem

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Allocates, writes and frees a block of SIZE MB COUNT times (the pattern of a step's large
# buffers), in the main thread or a second one, and prints the minor page faults this took.
_CHURN = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from lstmrec_jax import hostmem
    mode, size, count = sys.argv[1], int(sys.argv[2]) << 20, int(sys.argv[3])
    in_thread = sys.argv[4]
    print(hostmem.configure(mode), file=sys.stderr)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)

    def churn():
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      for _ in range(count):
        block = libc.malloc(size)
        assert block
        ctypes.memset(block, 1, size)
        libc.free(block)
      print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    if in_thread == "thread":
      worker = threading.Thread(target=churn)
      worker.start()
      worker.join()
    else:
      churn()
""")


def _faults(mode: str, size_mb: int, count: int, where: str = "main") -> tuple[int, str]:
  env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* settings of the caller's
  proc = subprocess.run([sys.executable, "-c", _CHURN, mode, str(size_mb), str(count), where],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
                        check=True)
  return int(proc.stdout.strip()), proc.stderr.strip()


@pytest.mark.skipif(hostmem._glibc() is None, reason="needs glibc (mallopt)")
def test_reuse_keeps_freed_blocks_so_they_do_not_fault_again():
  # 40 MB: above glibc's largest automatic mmap threshold (32 MB), so with its defaults every
  # block is a fresh mmap whose pages all fault.
  default, said_default = _faults("system", 40, 30)
  reuse, said_reuse = _faults("reuse", 40, 30)
  assert "defaults" in said_default and "kept for reuse" in said_reuse, (said_default, said_reuse)
  pages = 30 * (40 << 20) // 4096
  # Defaults: every block's pages fault again (~all 307k); reuse: the first block's only.
  assert default > pages // 2, default
  assert reuse < default // 4, (reuse, default)


@pytest.mark.skipif(hostmem._glibc() is None, reason="needs glibc (mallopt)")
def test_one_arena_keeps_a_threads_blocks_above_64_mib():
  # 80 MB from a second thread: above a thread arena's 64 MiB heap, which glibc mmaps whatever
  # M_MMAP_MAX says (XLA's worker threads allocate the step's temporaries).
  reuse, _ = _faults("reuse", 80, 10, "thread")
  one_arena, said = _faults("one_arena", 80, 10, "thread")
  assert "M_ARENA_MAX=1" in said, said
  pages = 10 * (80 << 20) // 4096
  assert reuse > pages // 2, reuse  # reuse alone: the thread's big blocks fault every time
  assert one_arena < reuse // 4, (one_arena, reuse)


def test_a_bad_mode_names_the_flag():
  with pytest.raises(ValueError,
                     match=r"--host_malloc='fast': must be one of reuse, one_arena, system"):
    hostmem.configure("fast")


def test_the_users_malloc_environment_wins(monkeypatch):
  calls = []

  class FakeLibc:
    def mallopt(self, param, value):
      calls.append((param, value))
      return 1

  monkeypatch.setattr(hostmem, "_glibc", FakeLibc)
  said = hostmem.configure("reuse", environ={"MALLOC_ARENA_MAX": "2"})
  assert said == "host malloc: left as the environment sets it (MALLOC_ARENA_MAX)" and not calls
  said = hostmem.configure("reuse", environ={"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
  assert "GLIBC_TUNABLES" in said and not calls
  assert "defaults" in hostmem.configure("system", environ={}) and not calls
  said = hostmem.configure("reuse", environ={"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
  assert "kept for reuse" in said
  assert calls == [(-4, 0), (-1, 2**31 - 1)]
  calls.clear()
  assert "M_ARENA_MAX=1" in hostmem.configure("one_arena", environ={})
  assert calls == [(-4, 0), (-1, 2**31 - 1), (-8, 1)]


def test_without_glibc_nothing_changes(monkeypatch):
  monkeypatch.setattr(hostmem, "_glibc", lambda: None)
  assert hostmem.configure("reuse", environ={}) == (
      "host malloc: the C library's defaults (not glibc: no mallopt)")
