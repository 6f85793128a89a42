"""Intent prototypes (`loss.intent_weight` > 0): k-means over the training user states, once an
epoch, for the prototype term of the train step (`losses.contrastive.intent_nce`).

ICLRec (Chen et al., WWW 2022) and ICSRec (Qin et al., WSDM 2024) read a user's latent intent
as the cluster its sequence representation falls in: at the start of every epoch they encode
the training sequences with the current model, run k-means, and during the epoch pull each
representation toward its cluster's centroid. Here every real training position is a
subsequence (packed rows score every prefix), so the states clustered are those of the epoch's
positions: the model without dropout, on the first batches of the epoch (its own shuffled
order, the rows as stored, never an `augment` transform's) up to `MAX_POINTS` real positions.
Spherical k-means (cosine, unit centroids) matches the cosine of the term; `KMEANS_ITERS` Lloyd
iterations from K distinct positions drawn at random; a cluster left empty keeps its previous
centroid.

From `loss.intent_start_epoch` on (the states of an untrained model are noise), the prototypes
are recomputed at each epoch start and handed to the step in `aux` (`intents_KxE`, and
`intent_scale` 1.0; before, 0.0 and zeros: the step compiles once). They are written to
`intents.npz` in the workdir, so a run resumed in the middle of an epoch continues with the
prototypes it had (a run resumed at an epoch start computes them from the same parameters).

Cost per epoch: one forward pass of the encoder over up to MAX_POINTS positions and
KMEANS_ITERS products of (points x E) by (E x K); logged with the cluster sizes.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax import paths
from lstmrec_jax.data import pipeline
from lstmrec_jax.errors import ConfigError
from lstmrec_jax.losses import contrastive

KMEANS_ITERS = 10
MAX_POINTS = 131_072
FILE = "intents.npz"


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def spherical_kmeans(x_NxE: jax.Array, valid_N: jax.Array, key: jax.Array, *, k: int,
                     iters: int = KMEANS_ITERS) -> tuple[jax.Array, jax.Array]:
  """(centroids_KxE of norm 1, sizes_K): k-means on the directions of the valid rows.

  Starts from k distinct valid rows drawn with `key` (the caller makes sure there are k), then
  `iters` Lloyd steps: each valid row joins the centroid of highest cosine, each centroid
  becomes the normalised mean direction of its rows (kept as it was when it has none).
  sizes_K counts the rows of each cluster at the last assignment.

  Example: rows [[1, 0], [2, 0.1], [0, 1], [0.1, 3]], k = 2: centroids near [1, 0] and [0, 1]
  (in some order), sizes [2, 2].
  """
  valid = valid_N.astype(bool)
  z = jnp.where(valid[:, None], contrastive.unit_rows(x_NxE), 0.0)
  p = valid.astype(jnp.float32) / jnp.maximum(valid.sum(), 1)
  start_K = jax.random.choice(key, z.shape[0], (k,), replace=False, p=p)
  c = z[start_K]

  def assign(c):
    a_N = jnp.argmax(z @ c.T, axis=-1)
    sums_KxE = jax.ops.segment_sum(z, a_N, num_segments=k)  # invalid rows are zero
    sizes_K = jax.ops.segment_sum(valid.astype(jnp.int32), a_N, num_segments=k)
    return sums_KxE, sizes_K

  def lloyd(c, _):
    sums_KxE, sizes_K = assign(c)
    return jnp.where((sizes_K > 0)[:, None], contrastive.unit_rows(sums_KxE), c), None

  c, _ = jax.lax.scan(lloyd, c, None, length=iters)
  return c, assign(c)[1]


def _states_fn(graphdef, consts, mesh):
  """jit(params, batch) -> (user_NxE, real_N): the states of a batch, no dropout, replicated."""

  def states(params, batch):
    model = nnx.merge(graphdef, params, consts)
    input_VxE, _, _ = model.item_tables()
    domains = model.item_domains(batch["targets_BxL"]) if model.cross_domain else None
    user_BxLxE = model(batch["inputs_BxL"], batch["mask_BxL"], batch["resets_BxL"],
                       item_table_VxE=input_VxE, target_domains_BxL=domains)
    return (user_BxLxE.reshape(-1, user_BxLxE.shape[-1]),
            (batch["targets_BxL"] > 0).reshape(-1))

  return jax.jit(states, out_shardings=mesh_lib.replicated(mesh))


class Prototypes:
  """The intent prototypes of a run: recomputed at epoch starts, saved for resuming."""

  KEYS = ("inputs_BxL", "targets_BxL", "mask_BxL", "resets_BxL")

  def __init__(self, run, batches, workdir, *, clusters: int, start_epoch: int, seed: int):
    self.run, self.batches, self.workdir = run, batches, workdir
    self.k, self.start_epoch, self.seed = clusters, start_epoch, seed
    self.embed_dim = run.model_cfg.embed_dim
    positions = batches.real_positions_per_epoch
    if positions < clusters:
      raise ConfigError(f"loss.intent_clusters={clusters} is more than the {positions} training "
                        "positions of an epoch; lower it")
    self._states = _states_fn(run.graphdef, run.consts, run.mesh)

  def initial_aux(self) -> dict[str, jax.Array]:
    """The step's aux entries before the start epoch: zero prototypes at scale 0."""
    return self._aux(np.zeros((self.k, self.embed_dim), np.float32), 0.0)

  def _aux(self, centroids_KxE: np.ndarray, scale: float) -> dict[str, jax.Array]:
    return {"intents_KxE": mesh_lib.replicate(jnp.asarray(centroids_KxE, jnp.float32),
                                              self.run.mesh),
            "intent_scale": mesh_lib.replicate(jnp.asarray(scale, jnp.float32), self.run.mesh)}

  def for_epoch(self, epoch: int, params: Any, mid_epoch: bool) -> dict[str, jax.Array] | None:
    """The aux entries for `epoch` (None: keep the current ones, before the start epoch).

    mid_epoch: the run resumes inside `epoch`; the saved prototypes of that epoch are used when
    the workdir has them (else they are computed from the resumed parameters, with a warning).
    """
    if epoch < self.start_epoch:
      return None
    if mid_epoch:
      saved = self._load(epoch)
      if saved is not None:
        logging.info("intent prototypes of epoch %d read from %s", epoch, self.workdir / FILE)
        return self._aux(saved, 1.0)
      logging.warning("no saved intent prototypes of epoch %d in %s: computing them from the "
                      "resumed parameters (the uninterrupted run used the epoch start's)",
                      epoch, self.workdir)
    t0 = time.perf_counter()
    x_NxE, valid_N = self._collect(epoch, params)
    key = jax.random.fold_in(jax.random.key(self.seed), 0x1E7 + epoch)
    centroids, sizes = jax.device_get(spherical_kmeans(x_NxE, valid_N, key, k=self.k))
    logging.info("intent prototypes of epoch %d: k-means of %d positions into %d clusters "
                 "(sizes %d-%d, median %d; %d empty) in %.1fs", epoch, int(valid_N.sum()),
                 self.k, sizes.min(), sizes.max(), int(np.median(sizes)),
                 int((sizes == 0).sum()), time.perf_counter() - t0)
    self._save(epoch, centroids)
    return self._aux(centroids, 1.0)

  def _collect(self, epoch: int, params) -> tuple[np.ndarray, np.ndarray]:
    """The states and real-position flags of the epoch's first batches (>= MAX_POINTS real
    positions, or the whole epoch)."""
    per_batch = max(1, self.batches.real_positions_per_epoch // self.batches.steps_per_epoch)
    n = min(self.batches.steps_per_epoch, -(-MAX_POINTS // per_batch))
    xs, vs = [], []
    # The rows as stored: an augmenting subclass's epoch() would cluster altered histories.
    it = pipeline.TrainBatches.epoch(self.batches, epoch)
    try:
      for batch in itertools.islice(it, n):
        x, v = self._states(params, mesh_lib.to_global({k: batch[k] for k in self.KEYS},
                                                       self.run.mesh))
        xs.append(x)
        vs.append(v)
    finally:
      close = getattr(it, "close", None)
      if close is not None:
        close()
    x_NxE = np.concatenate(jax.device_get(xs))
    valid_N = np.concatenate(jax.device_get(vs))
    return x_NxE, valid_N

  def _save(self, epoch: int, centroids: np.ndarray) -> None:
    if jax.process_index() != 0:
      return
    buf = io.BytesIO()
    np.savez(buf, epoch=np.int64(epoch), centroids=centroids)
    paths.replace_bytes(self.workdir / FILE, buf.getvalue())

  def _load(self, epoch: int) -> np.ndarray | None:
    path = self.workdir / FILE
    if not path.exists():
      return None
    with np.load(io.BytesIO(path.read_bytes())) as f:
      if int(f["epoch"]) != epoch or f["centroids"].shape != (self.k, self.embed_dim):
        return None
      return np.asarray(f["centroids"], np.float32)
