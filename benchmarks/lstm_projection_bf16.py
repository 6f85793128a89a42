"""The LSTM's hoisted input projection in f32 and bf16, forward and backward, jitted alone.

At the Beauty recipe's shape (1,600 positions x E = 256 -> 4H = 1,024): f32; bf16 operands with
f32 sums through autodiff; bf16 with a custom VJP that hands the backward's two products
materialised transposes (so each is [M, K] @ [K, N], the layout XLA's CPU bf16 kernels run fast).
Prints ms per forward + backward and the GFLOP/s. One core: `taskset -c 0 python
benchmarks/lstm_projection_bf16.py` on an idle machine.
"""
import time, jax, jax.numpy as jnp, numpy as np
from functools import partial
M, K, N = 1600, 256, 1024
kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
x = jax.random.normal(kx, (M, K)); w = jax.random.normal(kw, (K, N)) * 0.05; g = jax.random.normal(kg, (M, N))
def dot(a, b, ca, cb):
  return jax.lax.dot_general(a, b, (((ca,), (cb,)), ((), ())), preferred_element_type=jnp.float32)

def f32(x, w): return x @ w
def bf_auto(x, w): return dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1, 0)

@jax.custom_vjp
def bf_cv(x, w): return dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1, 0)
def bf_cv_fwd(x, w):
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  return dot(xb, wb, 1, 0), (xb.T, wb.T)
def bf_cv_bwd(res, g):
  xT, wT = res; gb = g.astype(jnp.bfloat16)
  return dot(gb, wT, 1, 0), dot(xT, gb, 1, 0)
bf_cv.defvjp(bf_cv_fwd, bf_cv_bwd)

def bench(fn, name):
  def loss(x, w): return (fn(x, w) * g).sum()
  vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  out = vg(x, w); jax.block_until_ready(out)
  ts = []
  for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(20): out = vg(x, w)
    jax.block_until_ready(out); ts.append((time.perf_counter() - t0) / 20 * 1e3)
  print(f"{name:10s} {min(ts):7.2f} ms  ({3*2*M*K*N/min(ts)/1e6:.0f} GFLOP/s)")
  return out
r0 = bench(f32, "f32"); r1 = bench(bf_auto, "bf_auto"); r2 = bench(bf_cv, "bf_custom")
print("grad rel err custom vs f32", float(jnp.abs(r2[1][1]-r0[1][1]).max()/jnp.abs(r0[1][1]).max()), float(jnp.abs(r2[1][0]-r1[1][0]).max()/jnp.abs(r1[1][0]).max()))
