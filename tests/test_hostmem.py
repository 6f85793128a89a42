"""--host_malloc (lstmrec_jax/hostmem.py): freed host buffers stay with the process."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

from lstmrec_jax import hostmem

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Allocates, writes and frees a 40 MB block 30 times (the pattern of a step's large buffers) and
# prints the minor page faults this took. 40 MB is above glibc's largest automatic mmap
# threshold (32 MB): with its defaults every block is a fresh mmap whose pages all fault.
_CHURN = textwrap.dedent("""
    import ctypes, resource, sys
    from lstmrec_jax import hostmem
    print(hostmem.configure(sys.argv[1]), file=sys.stderr)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 40 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(30):
      block = libc.malloc(size)
      assert block
      ctypes.memset(block, 1, size)
      libc.free(block)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> tuple[int, str]:
  env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* settings of the caller's
  proc = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=120, check=True)
  return int(proc.stdout.strip()), proc.stderr.strip()


@pytest.mark.skipif(hostmem._glibc() is None, reason="needs glibc (mallopt)")
def test_reuse_keeps_freed_blocks_so_they_do_not_fault_again():
  default, said_default = _faults("system")
  reuse, said_reuse = _faults("reuse")
  assert "defaults" in said_default and "kept for reuse" in said_reuse, (said_default, said_reuse)
  pages = 30 * (40 << 20) // 4096
  # Defaults: every block's pages fault again (~all 307k); reuse: the first block's only.
  assert default > pages // 2, default
  assert reuse < default // 4, (reuse, default)


def test_a_bad_mode_names_the_flag():
  with pytest.raises(ValueError, match=r"--host_malloc='fast': must be one of reuse, system"):
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


def test_without_glibc_nothing_changes(monkeypatch):
  monkeypatch.setattr(hostmem, "_glibc", lambda: None)
  assert hostmem.configure("reuse", environ={}) == (
      "host malloc: the C library's defaults (not glibc: no mallopt)")
