"""The device mesh of data-parallel training: one `data` axis over every device of every host, and
the shardings of item tables split over a `model` axis (`model.vocab_shards`).

Parameters and optimizer state are replicated; each batch is split along its leading axis over the
`data` axis. `jax.jit` with these shardings is the data-parallel ("pmap-sharded") step: the loss is
a mean over the global batch, so XLA's partitioner inserts the all-reduce of gradients itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"  # the vocabulary-parallel item tables (`model.vocab_shards`)


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


# ----------------------------------------------------------------------------- split item tables
# `model.vocab_shards` > 1: the item tables (and their optimizer moments) split row-wise over
# `model`; the vocabulary-parallel softmax (losses/vocab_parallel.py) and ranking
# (scoring/vocab_parallel.py) compute over these shards.


def pad_rows(x: jax.Array, rows: int, fill=0) -> jax.Array:
  """Pads the leading (item) axis of `x` to `rows` with `fill` (e.g. a table to `padded_num_items`)."""
  pad = rows - x.shape[0]
  if pad == 0:
    return x
  return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), constant_values=fill)


def padded_num_items(num_items: int, num_shards: int) -> int:
  """Rows of the padded table: the smallest multiple of `num_shards` >= `num_items`.

  Example: padded_num_items(101, 4) == 104 (3 padding rows, 26 per shard).
  """
  return -(-num_items // num_shards) * num_shards


def table_sharding(mesh: Mesh, model_axis: str = MODEL_AXIS) -> NamedSharding:
  """Sharding of a V x E table (or a V bias): rows split over `model`, copies over other axes."""
  return NamedSharding(mesh, P(model_axis))


def split_axes(mesh: Mesh, model_axis: str) -> tuple[int, tuple[str, ...]]:
  """(shards along `model_axis`, the other mesh axes, which split the batch)."""
  if model_axis not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} have no {model_axis!r} axis")
  batch_axes = tuple(a for a in mesh.axis_names if a != model_axis)
  return mesh.shape[model_axis], batch_axes


def check_split_batch(rows: int, mesh: Mesh, batch_axes: tuple[str, ...], what: str) -> None:
  split = math.prod(mesh.shape[a] for a in batch_axes)
  if rows % split:
    raise ValueError(f"{rows} {what} cannot be split evenly over the {split} devices of mesh "
                     f"axes {batch_axes}; use a multiple of {split}")


# The item parameters with one row per item (model/modules.py, model/content.py), by their path
# of dict keys in the parameter tree; optimizer moments mirror these paths.
TABLE_PARAM_PATHS = (("item_repr", "embedding"), ("output_embedding",), ("bias",))


def _dict_keys(path) -> tuple[str, ...]:
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(tree, mesh: Mesh, table_rows: int, model_axis: str = MODEL_AXIS):
  """NamedShardings for a parameter or train-state tree: item tables split over `model`.

  A leaf is split row-wise when its dict-key path is one of `TABLE_PARAM_PATHS` (the parameter
  itself, or an optimizer moment of it: optax nests moments in tuples, not dicts) and its first
  axis has `table_rows` rows; everything else (the encoder, step counters, the rng) is
  replicated. On a mesh without `model_axis` every leaf is replicated.
  """
  repl = NamedSharding(mesh, P())
  if model_axis not in mesh.axis_names:
    return jax.tree.map(lambda _: repl, tree)
  split = table_sharding(mesh, model_axis)

  def pick(path, leaf):
    keys = _dict_keys(path)
    is_table = keys in TABLE_PARAM_PATHS
    shape = getattr(leaf, "shape", ())
    return split if is_table and len(shape) >= 1 and shape[0] == table_rows else repl

  return jax.tree_util.tree_map_with_path(pick, tree)
