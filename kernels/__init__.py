"""Pallas kernels of the LSTM recurrence, each beside a plain-jnp reference with its signature.

  lstm_step.py        fused-gate step kernel (one pallas_call per step inside a lax.scan)
  lstm_persistent.py  persistent sequence kernel (the time loop inside the kernel)
  lstm_backward.py    the reverse-time kernels both use for their custom VJPs
  lstm_common.py      shared checks, padded layouts, backend choice and cell math
  dispatch.py         get_recurrence(impl) / default_impl(): XLA scan or a kernel

The folder sits at the repository's top (the project's layout) and is the package
`lstmrec_jax.kernels` (`lstmrec_jax/kernels` links here; the wheel installs it there): it claims
no top-level import name. Imports go one way: model -> kernels -> lstmrec_jax.core (the
reference recurrence and `LSTMState`).
"""
