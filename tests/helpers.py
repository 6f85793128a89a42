"""Helpers shared by the tests."""

from __future__ import annotations

from lstmrec_jax import config_keys
from lstmrec_jax.configs import base as base_config
from lstmrec_jax.data.config import DataConfig


def data_config(**overrides) -> DataConfig:
  """configs/base.py's data group with `overrides`, validated; no cache unless one is given.

  Nested groups merge: `data_config(columns={"user": "uid"})` keeps the other column keys.
  Example: `data_config(format="pairs", path=str(tmp_path / "Video.txt"))`.
  """
  group = base_config.get_base_config().data.to_dict()
  group["cache_dir"] = ""  # tests write no cache/ folder into the working tree unless asked
  for key, value in overrides.items():
    if key in ("columns", "synthetic") and isinstance(value, dict) and key in group:
      value = {**group[key], **value}
    group[key] = value
  return DataConfig.from_mapping(group)


def model_config(num_items: int = 40, max_len: int = 8, *, domain_starts=(), **overrides):
  """configs/base.py's model group with `overrides`, validated, for a catalog of `num_items`
  (with `domain_starts`, a multi-domain catalogue: the first id of each domain).

  Example: `model_config(embed_dim=8, hidden_size=8, encoder="gru")`.
  """
  from lstmrec_jax.configs import base  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.model import ModelConfig  # pylint: disable=g-import-not-at-top

  group = base.get_base_config().model.to_dict()
  unknown = sorted(set(overrides) - set(group))
  if unknown:
    raise ValueError(f"unknown model keys {unknown}")
  group.update(overrides)
  return ModelConfig.from_mapping(group, num_items=num_items, max_len=max_len,
                                  domain_starts=domain_starts)


def loss_config(**overrides):
  """configs/base.py's loss group with `overrides`, validated; e.g. `loss_config(kind="full")`."""
  from lstmrec_jax.configs import base  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.losses import LossConfig  # pylint: disable=g-import-not-at-top

  group = base.get_base_config().loss.to_dict()
  group.update(overrides)
  return LossConfig.from_mapping(group)


def forward(model, inputs_BxL, mask_BxL, resets_BxL=None, *, dropout_key=None):
  """The model's user states with its own input table (what a step does, tables computed once)."""
  table_VxE = model.item_tables(model.id_keep_mask(dropout_key))[0]
  return model(inputs_BxL, mask_BxL, resets_BxL, item_table_VxE=table_VxE,
               dropout_key=dropout_key)


def jitted_forward(cfg, seed: int = 0):
  """(model, jitted forward(inputs, mask, resets=None, key=None)) for fast repeated calls."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.model import SeqRecModel  # pylint: disable=g-import-not-at-top

  model = SeqRecModel(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda state, *args, key=None: forward(nnx.merge(graphdef, state), *args,
                                                       dropout_key=key))
  return model, lambda *args, key=None: run(state, *args, key=key)


def ce_loss(model, inputs_BxL, mask_BxL, targets_BxL, *, dropout_key=None, loss=None):
  """Full softmax cross-entropy (or `loss`, same signature) of the model on one batch."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import losses  # pylint: disable=g-import-not-at-top

  loss = loss or losses.softmax_cross_entropy
  input_VxE, output_VxE, bias_V = model.item_tables(model.id_keep_mask(dropout_key))
  user_BxLxE = model(inputs_BxL, mask_BxL, item_table_VxE=input_VxE, dropout_key=dropout_key)
  targets_N = targets_BxL.reshape(-1)
  return loss(user_BxLxE.reshape(-1, user_BxLxE.shape[-1]), output_VxE, bias_V, targets_N,
              (targets_N > 0).astype(jnp.float32))[0]


def tiny_config(tmp_path, *, lock: bool = False, **overrides):
  """The default config shrunk to seconds: 240 synthetic users, E = H = 16, 2 epochs of 8 rows.

  `overrides` are "group.key" paths or train keys, e.g. `tiny_config(p, stop_after_steps=5)` or
  `tiny_config(p, **{"model.item_mode": "sum", "input.batch_size": 32})`. `lock=True` locks the
  config as train.py / tune.py load it (a key the config lacks cannot be set).
  """
  from lstmrec_jax.configs import default as default_config  # pylint: disable=g-import-not-at-top

  c = default_config.get_config()
  c.data.synthetic = {"num_users": 240, "num_items": 80, "seed": 3}
  c.data.cache_dir = str(tmp_path / "cache")
  c.input.max_len = 16
  c.input.batch_size = 8
  c.input.eval_batch_size = 64
  c.model.embed_dim = 16
  c.model.hidden_size = 16
  c.optim.warmup_steps = 2
  c.optim.learning_rate = 1e-2
  c.train.num_epochs = 2
  c.train.log_every_steps = 1
  c.train.progress_bar = False
  c.train.num_devices = 1
  for path, value in overrides.items():
    group, key = path.split(".") if "." in path else ("train", path)
    if key not in c[group]:
      raise KeyError(f"tiny_config: no key {group}.{key}")
    c[group][key] = value
  if lock:
    c.lock()
  return c


def optim_config(**overrides):
  """configs/base.py's optim group with `overrides`, validated."""
  from lstmrec_jax.configs import base  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import run  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import optim  # pylint: disable=g-import-not-at-top

  return config_keys.build_group(optim.OptimConfig, "optim", base.group("optim", **overrides))
