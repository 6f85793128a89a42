"""The one-pass softmax (value and gradients, bf16 operands) at several blocks of positions.

1,600 positions x E = 256 against Beauty's 12,102 and Games' 23,699 items; the block of positions
is `losses.core._ONE_PASS_ROWS` (128). Prints ms per call, best of 3 rounds of 10. One core:
`taskset -c 0 python benchmarks/softmax_row_block.py` on an idle machine.
"""
import sys, time, os, jax, jax.numpy as jnp
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from lstmrec_jax.losses import core
def t(f, *a, n=10):
  jax.block_until_ready(f(*a)); best = 1e9
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(n): r = f(*a)
    jax.block_until_ready(r); best = min(best, (time.perf_counter() - t0) / n * 1e3)
  return best
for V in (12102, 23699):
  k = jax.random.split(jax.random.key(0), 3); N, E = 1600, 256
  u = jax.random.normal(k[0], (N, E)) * 0.5; w = jax.random.normal(k[1], (V, E)) * 0.1
  tg = jax.random.randint(k[2], (N,), 1, V); wt = jnp.ones((N,))
  for R in (128, 192, 256, 384):
    core._ONE_PASS_ROWS = R
    f = jax.jit(jax.value_and_grad(lambda u, w: core.chunked_softmax_cross_entropy(u, w, None, tg, wt, chunk_size=32768, compute_dtype="bfloat16")[0], argnums=(0, 1)))
    print(V, R, "%.1f ms" % t(f, u, w), flush=True)
