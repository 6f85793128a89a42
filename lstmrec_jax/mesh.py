"""The device mesh of data-parallel training: one `data` axis over every device of every host.

Parameters and optimizer state are replicated; each batch is split along its leading axis over the
`data` axis. `jax.jit` with these shardings is the data-parallel ("pmap-sharded") step: the loss is
a mean over the global batch, so XLA's partitioner inserts the all-reduce of gradients itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"  # the vocabulary-parallel item table (train/vocab_parallel.py)


def make_mesh(num_devices: int | None = None, model: int = 1) -> Mesh:
  """A mesh over the first `num_devices` global devices (all when None or 0).

  model == 1: 1-D, `data` only. model > 1: `data x model` with `model` devices per group (the
  vocabulary-parallel item table, `model.vocab_shards`); the device count must be a multiple.
  """
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices are visible")
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ValueError("with several processes the mesh must span every device")
    devices = devices[:num_devices]
  if model > 1:
    if len(devices) % model:
      raise ValueError(f"model.vocab_shards={model} needs a multiple of {model} devices; "
                       f"{len(devices)} in use (train.num_devices)")
    return make_data_model_mesh(len(devices) // model, model, devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and optimizer state: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: leading axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_global_batch_size(global_batch_size: int, mesh: Mesh,
                            what: str = "global batch size") -> None:
  """Raises a clear error when the batch cannot be split evenly over devices and processes."""
  devices = mesh.shape[DATA_AXIS]  # a `model` axis holds copies of the batch, not slices
  if global_batch_size % devices:
    raise ValueError(f"{what}={global_batch_size} is not divisible by the {devices} devices of "
                     f"the mesh's data axis; choose a multiple of {devices}")
  if global_batch_size % jax.process_count():
    raise ValueError(f"{what}={global_batch_size} is not divisible by "
                     f"{jax.process_count()} processes")


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def replicate(tree, mesh: Mesh):
  """Places a host pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def make_data_model_mesh(data: int, model: int, devices=None) -> Mesh:
  """A `data x model` mesh over the first data*model devices (all of them by default).

  Example: make_data_model_mesh(2, 4) on 8 devices -> Mesh {'data': 2, 'model': 4}.
  """
  devices = jax.devices() if devices is None else list(devices)
  if data < 1 or model < 1 or data * model > len(devices):
    raise ValueError(f"a {data} x {model} mesh needs {data * model} devices; "
                     f"{len(devices)} are visible")
  return Mesh(np.asarray(devices[:data * model]).reshape(data, model), (DATA_AXIS, MODEL_AXIS))
