"""One run spec and one run builder: where data, model, optimizer and mesh meet.

The ConfigDict of a config file (or a workdir's config.json) is validated once, by
`spec_from_config`, into a frozen `RunSpec` of per-group dataclasses. None of them has defaults:
`configs/base.py` is the only source of defaults, and every key must be present. Unknown keys,
missing keys and bad values of every group are named together in one `ConfigError`.

`build_run(spec)` then loads the data, fills in what only the data knows (the catalog size V),
builds the model, its step constants, the optimizer and the mesh: the one `Run` that training,
evaluation, tuning, cold start, serving and the benchmarks start from. A workdir's run with a
checkpoint restored is one floor up (`workdir.restore_run`).

The library never imports `configs/`: entry points load config files and pass the ConfigDict in.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import types
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstmrec_jax import auto as auto_lib
from lstmrec_jax import config_keys
from lstmrec_jax import data as data_lib
from lstmrec_jax import losses
from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax import model as model_lib
from lstmrec_jax import optim
from lstmrec_jax import paths
from lstmrec_jax.data import augment as augment_lib
from lstmrec_jax.data import content as content_data
from lstmrec_jax.data.config import DataConfig
from lstmrec_jax.data.rewards import RewardConfig
from lstmrec_jax.errors import ConfigError
from lstmrec_jax.model import cooccurrence
from lstmrec_jax.losses import adversarial as adversarial_lib
from lstmrec_jax.losses import rl as rl_lib

GROUPS = ("data", "input", "model", "loss", "optim", "train", "eval", "cold_start",
          "adversarial", "augment", "reward", "rl")
# Keys that may differ between a workdir's saved config and the config that resumes it (the
# dataset cache is keyed by the data's bytes and options: where it lives changes no number).
RESUMABLE_KEYS = ("train.stop_after_steps", "train.progress_bar", "train.num_devices",
                  "data.cache_dir")


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """Batches: history length, rows per step, users per evaluation batch, packing, prefetch."""

  max_len: int  # L: most recent events per example, >= 1
  batch_size: int  # global rows per training step, >= 1
  eval_batch_size: int  # users per evaluation batch, >= 1
  pack: bool  # several histories per row, state reset at boundaries
  # training-batch prefetch: tf | numpy (no TensorFlow) | auto
  backend: str = config_keys.key(choices=("tf", "numpy", "auto"))

  def __post_init__(self):
    _check_positive(self, "input", ("max_len", "batch_size", "eval_batch_size"))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Schedule, validation, early stopping, checkpoints and logging of the training loop."""

  num_epochs: int  # passes over the training examples, >= 1
  eval_every_epochs: float  # validation period in epochs of the run's data, finite and > 0
  eval_every_steps: int  # override of eval_every_epochs, in steps, >= 0 (0 = use epochs)
  valid_users: int  # validation during training on a seeded sample of this many users, >= 0 (0 = all)
  patience: int  # validations without improvement before stopping, >= 0 (0 = never)
  log_every_steps: int  # scalar logging period in steps, >= 1
  keep_checkpoints: int  # latest checkpoints kept for resuming, >= 1
  num_devices: int  # devices of the data-parallel mesh, >= 0 (0 = all)
  stop_after_steps: int  # stop as if killed after this step, >= 0 (0 = off)
  progress_bar: bool
  divergence_factor: float  # stop when a loss exceeds this x the running median, >= 1 (0 = off)
  skip_nonfinite_steps: bool  # drop (and count) a step with a non-finite loss instead of stopping
  # Transfer: a train.py workdir whose best parameters start this run (each parameter whose path
  # and shape match; the rest as initialized); "" = none. A resumed run ignores it.
  init_from: str
  # The id item table's first values: "random" (N(0, 1/E)) | "cooccurrence" (rows from the SVD
  # of the training sequences' co-occurrence PPMI, model/cooccurrence.py); a resumed run keeps
  # its own, and init_from's table replaces it.
  item_init: str = config_keys.key(choices=("random", "cooccurrence"))
  item_init_window: int  # cooccurrence: positions apart that count as co-occurring, >= 1

  def __post_init__(self):
    _check_positive(self, "train", ("num_epochs", "log_every_steps", "keep_checkpoints",
                                    "item_init_window"))
    _check_non_negative(self, "train", ("eval_every_steps", "patience", "num_devices",
                                        "stop_after_steps", "valid_users"))
    if not (0 < self.eval_every_epochs < float("inf")):
      raise ValueError(f"train.eval_every_epochs={self.eval_every_epochs} must be finite and > 0")
    f = self.divergence_factor
    if not (f == 0 or (f >= 1 and f < float("inf"))):
      raise ValueError(f"train.divergence_factor={f} must be 0 (off) or finite and >= 1")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Full-ranking evaluation."""

  exclude_seen: bool  # remove the user's history items from the ranking
  # A target already in the user's history: "miss" (the published protocol) | "rankable" (kept
  # in the ranking while the rest of the history is removed); no effect when exclude_seen is off
  seen_targets: str = config_keys.key(choices=config_keys.SEEN_TARGETS)
  chunk_size: int  # items per ranking chunk, >= 1
  # Multi-domain data: the sampled protocol's negatives per target (0 = full ranking only), >= 0
  sampled_negatives: int
  sampled_seed: int  # the sampled negatives' seed (with the split and the user)

  def __post_init__(self):
    _check_positive(self, "eval", ("chunk_size",))
    _check_non_negative(self, "eval", ("sampled_negatives",))


@dataclasses.dataclass(frozen=True)
class ColdStartConfig:
  """The cold-item split: a share of items removed from training entirely."""

  item_fraction: float  # in [0, 1)
  seed: int

  def __post_init__(self):
    if not 0.0 <= self.item_fraction < 1.0:
      raise ValueError(f"cold_start.item_fraction={self.item_fraction} must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A validated config: one frozen dataclass per group (the model's V comes from the data)."""

  seed: int
  data: DataConfig
  input: InputConfig
  model: model_lib.ModelConfig  # the model group (num_items None: `model_config(V)` fills it)
  loss: losses.LossConfig
  optim: optim.OptimConfig
  train: TrainConfig
  eval: EvalConfig
  cold_start: ColdStartConfig
  adversarial: adversarial_lib.AdversarialConfig
  augment: augment_lib.AugmentConfig
  reward: RewardConfig  # the reward of each logged event (data/rewards.py)
  rl: rl_lib.RLConfig  # the offline RL losses' keys (losses/rl.py)
  auto: tuple[str, ...]  # "group.key"s that build_run sets from the data (auto.AUTO_KEYS)
  config: Mapping[str, Any]  # the nested plain dict this spec was built from (config.json)

  def model_config(self, num_items: int,
                   domain_starts: tuple[int, ...] = ()) -> model_lib.ModelConfig:
    """The model hyper-parameters with the catalog size V (padding item 0 included) and, for a
    multi-domain catalogue, the first item id of each domain (validated again: a cross-domain
    encoder needs domains)."""
    try:
      return dataclasses.replace(self.model, num_items=int(num_items),
                                 domain_starts=tuple(int(s) for s in domain_starts))
    except ValueError as e:
      raise ConfigError(str(e)) from None


def _check_positive(obj, group: str, names) -> None:
  bad = [f"{group}.{n}={getattr(obj, n)} must be >= 1" for n in names if getattr(obj, n) < 1]
  if bad:
    raise ValueError("; ".join(bad))


def _check_non_negative(obj, group: str, names) -> None:
  bad = [f"{group}.{n}={getattr(obj, n)} must be >= 0" for n in names if getattr(obj, n) < 0]
  if bad:
    raise ValueError("; ".join(bad))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested mapping -> {"group.key": value}, e.g. {"a": {"b": 1}, "c": {}} -> {"a.b": 1, "c": {}}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:  # an empty group (e.g. data.synthetic = {}) stays a key, or unflatten would lose it
      out[f"{prefix}{k}"] = dict(v) if isinstance(v, Mapping) else v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{"group.key": value} -> nested dicts, e.g. {"a.b": 1} -> {"a": {"b": 1}}."""
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out


# Every group but `model` (which takes sizes from the data too), by its name in the config.
GROUP_CLASSES = {"data": DataConfig, "input": InputConfig, "loss": losses.LossConfig,
                 "optim": optim.OptimConfig, "train": TrainConfig, "eval": EvalConfig,
                 "cold_start": ColdStartConfig, "adversarial": adversarial_lib.AdversarialConfig,
                 "augment": augment_lib.AugmentConfig, "reward": RewardConfig,
                 "rl": rl_lib.RLConfig}


def spec_from_config(config: Any) -> RunSpec:
  """Validates a whole config (ConfigDict or nested dict) once into a RunSpec.

  Raises:
    ConfigError: naming every unknown key, missing key and bad value, in one message.
  """
  cfg = config_keys.plain(config)
  problems = [f"unknown group or key {k!r}"
              for k in sorted(set(cfg) - {*GROUPS, "seed", "auto"})]
  problems += [f"missing group {g!r}" for g in GROUPS if not isinstance(cfg.get(g), Mapping)]
  if "seed" not in cfg:
    problems.append("missing key 'seed'")
  elif isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int):
    problems.append(f"seed={cfg['seed']!r} must be an integer")
  if "auto" not in cfg:
    problems.append("missing key 'auto'")
  elif not isinstance(cfg["auto"], (list, tuple)) or not all(
      isinstance(k, str) for k in cfg["auto"]):
    problems.append(f"auto={cfg['auto']!r} must be a list of 'group.key' names")
  else:
    bad = [k for k in cfg["auto"] if k not in auto_lib.AUTO_KEYS]
    if bad:
      problems.append(f"auto: {bad} cannot be set from the data; these can: "
                      f"{', '.join(auto_lib.AUTO_KEYS)}")
  if problems:
    raise ConfigError("config: " + "; ".join(problems))

  built: dict[str, Any] = {}

  def attempt(name: str, fn) -> None:
    try:
      built[name] = fn()
    except ValueError as e:  # ConfigError and DataError are ValueErrors: one message for all
      problems.append(str(e))

  for name, cls in GROUP_CLASSES.items():
    attempt(name, lambda cls=cls, name=name: config_keys.build_group(cls, name, cfg[name]))
  max_len = built["input"].max_len if "input" in built else 1
  # V is known only from the data (build_run fills it in).
  attempt("model", lambda: config_keys.build_group(model_lib.ModelConfig, "model", cfg["model"],
                                                   num_items=None, max_len=max_len,
                                                   domain_starts=()))
  if not problems:
    problems += _rl_problems(built)
  if problems:
    raise ConfigError("config: " + "; ".join(problems))
  return RunSpec(seed=cfg["seed"], data=built["data"], input=built["input"],
                 model=built["model"], loss=built["loss"],
                 optim=built["optim"], train=built["train"], eval=built["eval"],
                 cold_start=built["cold_start"], adversarial=built["adversarial"],
                 augment=built["augment"], reward=built["reward"], rl=built["rl"],
                 auto=tuple(cfg["auto"]), config=types.MappingProxyType(cfg))


def _rl_problems(built: Mapping[str, Any]) -> list[str]:
  """What an offline RL loss (`losses.needs_transitions`) needs from the other groups."""
  kind = built["loss"].kind
  if not losses.needs_transitions(kind):
    return []
  problems = []
  if not built["model"].q_head:
    problems.append(f"loss.kind={kind!r} trains the Q heads: set model.q_head=True")
  aug = built["augment"]
  if aug.any_transform and not aug.views_only:
    problems.append(f"loss.kind={kind!r} reads the logged rewards of the targets, which the "
                    "augment transforms replace: turn them off (or set augment.views_only)")
  if built["adversarial"].on:
    problems.append(f"loss.kind={kind!r} does not combine with adversarial training")
  if built["loss"].domain_softmax:
    problems.append(f"loss.kind={kind!r} does not combine with loss.domain_softmax (the Q heads "
                    "are trained over the whole catalogue)")
  return problems


def with_overrides(spec: RunSpec, **group_values: Mapping[str, Any]) -> RunSpec:
  """The spec re-validated with some keys changed, e.g. with_overrides(s, data={"path": p})."""
  cfg = config_keys.plain(dict(spec.config))
  for group, values in group_values.items():
    if group in ("seed", "auto"):
      cfg[group] = values
    else:
      cfg[group] = {**cfg[group], **config_keys.plain(values)}
  return spec_from_config(cfg)


# ----------------------------------------------------------------------------- the run


def load_data(spec: RunSpec):
  """The dataset of `spec.data` (cached on disk) with the rewards of `spec.reward`, with the
  cold-item split when configured."""
  dataset = data_lib.load_dataset(spec.data, spec.reward)
  if spec.cold_start.item_fraction:
    dataset = content_data.cold_item_split(dataset, fraction=spec.cold_start.item_fraction,
                                           seed=spec.cold_start.seed)
  return dataset


def model_inputs(dataset, model_cfg) -> dict[str, Any]:
  """Arrays from the data that the model is built with (item content, the co-occurrence
  neighbour lists of `model.item_neighbors`, the transition prior's lists of
  `model.transition_weight`); none for id-only items without either."""
  neighbors_VxK = None
  if model_cfg.item_neighbors:
    neighbors_VxK = cooccurrence.neighbor_lists(
        dataset.train.offsets_U1, dataset.train.items_N, dataset.num_items,
        model_cfg.item_neighbors, window=model_cfg.neighbor_window,
        score=model_cfg.neighbor_score)
    logging.info("model.item_neighbors=%d: %d of %d items have co-occurring neighbours in the "
                 "training sequences (window %d, ranked by %s), %.1f on average",
                 model_cfg.item_neighbors, int((neighbors_VxK[:, 0] > 0).sum()),
                 dataset.num_items - 1, model_cfg.neighbor_window, model_cfg.neighbor_score,
                 float((neighbors_VxK > 0).sum(1)[1:].mean()))
  graph = {"neighbors_VxK": neighbors_VxK}
  if model_cfg.transition_weight:
    ids, logp = cooccurrence.transition_lists(
        dataset.train.offsets_U1, dataset.train.items_N, dataset.num_items,
        model_cfg.transition_items, window=model_cfg.transition_window)
    graph.update(transition_ids_VxK=ids, transition_logp_VxK=logp)
    logging.info("model.transition_weight=%g: %d of %d items have next items in the training "
                 "sequences (window %d), %.1f of up to %d kept on average",
                 model_cfg.transition_weight, int((ids[:, 0] > 0).sum()), dataset.num_items - 1,
                 model_cfg.transition_window, float((ids > 0).sum(1)[1:].mean()),
                 model_cfg.transition_items)
  if model_cfg.item_mode == "id":
    if all(v is None for v in graph.values()):
      return {}
    return {"item_content": model_lib.ContentInputs(
        known_V=content_data.known_items(dataset), **graph)}
  c = content_data.item_content(
      dataset, attributes=model_cfg.content_attributes, titles=model_cfg.content_titles,
      max_attrs=model_cfg.max_attributes, title_min_count=model_cfg.title_min_count,
      title_max_tokens=model_cfg.title_max_tokens)
  if not c.has_content:
    raise ValueError(f"model.item_mode={model_cfg.item_mode!r} needs item content, but "
                     f"{dataset.source} has no item attributes or titles (or both are off); use "
                     "model.item_mode='id'")
  return {"item_content": model_lib.ContentInputs(
      known_V=c.known_V, attrs_VxA=c.attrs_VxA, num_attrs=c.num_attrs, tokens_VxT=c.tokens_VxT,
      vocab_size=len(c.vocab) if c.vocab is not None else 2, **graph)}


@functools.partial(jax.jit, static_argnames=("alpha", "train_items_only", "log_q"))
def _count_aux(counts_V: jax.Array, *, alpha: float, train_items_only: bool, log_q: bool
               ) -> tuple[jax.Array, jax.Array | None]:
  """(trained_V: items with a training event, the sampling log-q or None) from the counts.

  One jitted program: run op by op, its dozen small ops each compiled apart (~0.5 s of a run's
  start-up on 2 cores); the values are the same.
  """
  trained_V = counts_V > 0
  if not log_q:
    return trained_V, None
  log_q_V = losses.popularity_log_q(counts_V, alpha)
  if train_items_only:
    log_q_V = jnp.where(trained_V, log_q_V, -jnp.inf)
    log_q_V = log_q_V - jax.nn.logsumexp(log_q_V)
  return trained_V, log_q_V


@dataclasses.dataclass
class Run:
  """A built run: data, model (graph + initial parameters + step constants) and mesh."""

  spec: RunSpec
  dataset: Any  # data.SequenceDataset
  model_cfg: Any  # model.ModelConfig
  graphdef: Any
  params: Any  # initial parameters (host), a pure dict
  consts: Any  # the model's non-parameter state, replicated over `mesh`
  mesh: Any

  def step_aux(self, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """What the train step reads but never changes: constants, sampling log-q, candidate mask,
    for an RL loss the first step past its warm-up (`rl.warmup_epochs` x steps_per_epoch;
    0 when steps_per_epoch is None), and for the co-occurrence teacher its lists and the step
    where a decaying teacher stops (`loss.teacher_epochs` x steps_per_epoch)."""
    aux: dict[str, Any] = {"consts": self.consts, "log_q_V": None}
    if losses.needs_transitions(self.spec.loss):
      start = 0 if steps_per_epoch is None else int(round(self.spec.rl.warmup_epochs
                                                          * steps_per_epoch))
      aux["rl_start_step"] = mesh_lib.replicate(jnp.asarray(start, jnp.int32), self.mesh)
    loss = self.spec.loss
    trained_V, log_q_V = _count_aux(
        jnp.asarray(self.dataset.item_counts_V), alpha=loss.alpha,
        train_items_only=loss.train_items_only, log_q=losses.needs_log_q(loss))
    if loss.train_items_only:
      aux["item_mask_V"] = mesh_lib.replicate(trained_V, self.mesh)
    if log_q_V is not None:
      aux["log_q_V"] = mesh_lib.replicate(log_q_V, self.mesh)
    if loss.teacher_weight:
      aux["teacher_ids_VxK"], aux["teacher_probs_VxK"] = (
          mesh_lib.replicate(jnp.asarray(x), self.mesh) for x in self.teacher_lists())
      # The step where a decaying teacher's weight reaches 0 (0: constant weight).
      until = (0 if not loss.teacher_epochs or steps_per_epoch is None
               else max(int(round(loss.teacher_epochs * steps_per_epoch)), 1))
      if loss.teacher_epochs and steps_per_epoch is None:
        logging.warning("loss.teacher_epochs=%g without steps_per_epoch: the teacher's weight "
                        "stays constant", loss.teacher_epochs)
      aux["teacher_until_step"] = mesh_lib.replicate(jnp.asarray(until, jnp.int32), self.mesh)
    return aux

  def teacher_lists(self) -> tuple[np.ndarray, np.ndarray]:
    """The co-occurrence teacher's partners and probabilities (`loss.teacher_weight`), from the
    training sequences only (the trainer asks once, through `step_aux`)."""
    loss, train = self.spec.loss, self.dataset.train
    ids, probs = cooccurrence.teacher_lists(train.offsets_U1, train.items_N,
                                            self.dataset.num_items, loss.teacher_items,
                                            window=loss.teacher_window,
                                            direction=loss.teacher_direction)
    logging.info("loss.teacher_weight=%g: %d of %d items teach up to %d partners (window %d, "
                 "direction %s)", loss.teacher_weight, int((ids[:, 0] > 0).sum()),
                 self.dataset.num_items - 1, loss.teacher_items, loss.teacher_window,
                 loss.teacher_direction)
    return ids, probs

  def optimizer(self, total_steps: int, steps_per_epoch: int | None = None
                ) -> optax.GradientTransformation:
    return optim.make_optimizer(self.spec.optim, total_steps, steps_per_epoch)


def pin_explicit(config: Any, keys: Iterable[str]) -> list[str]:
  """Takes `keys` out of `config`'s `auto` list (in place): an explicit value wins over the data.

  A key set explicitly (a `--config.group.key=v` flag, a value a tuning trial samples) keeps
  that value: `build_run` sets only the keys still listed in `auto`, and config.json, the search
  table and the run agree. Works on a ConfigDict (locked too) or a plain dict.

  Returns:
    The keys taken out, in `auto`'s order (for the log), e.g. ["train.num_epochs"] for
    auto ("model.embed_dim", "train.num_epochs") and keys {"train.num_epochs", "seed"}.
  """
  keys = set(keys)
  auto = tuple(config["auto"])
  removed = [k for k in auto if k in keys]
  if removed:
    config["auto"] = tuple(k for k in auto if k not in keys)
  return removed


def resolve_auto(spec: RunSpec, dataset) -> RunSpec:
  """`spec` with its `auto` keys set from the dataset's statistics (`auto.py`), re-validated.

  Example: auto ("model.embed_dim",) on a dataset with item attributes -> model.embed_dim 256.
  """
  if not spec.auto:
    return spec
  values = auto_lib.auto_values(auto_lib.dataset_stats(dataset), max_len=spec.input.max_len)
  return with_overrides(spec, **unflatten({k: values[k] for k in spec.auto}))


def auto_resolved(spec: RunSpec) -> dict[str, Any]:
  """{"group.key": value} of the keys a resolved spec took from the data (for logs, reports)."""
  flat = flatten(dict(spec.config))
  return {k: flat[k] for k in spec.auto}


def build_run(spec: RunSpec, *, num_devices: int | None = None, dataset=None) -> Run:
  """Loads the data (unless given), sets `spec.auto`'s keys from it, builds the model and mesh.

  The returned `Run.spec` is the resolved spec: use it, not the one passed in.
  """
  dataset = load_data(spec) if dataset is None else dataset
  if spec.loss.domain_softmax and not dataset.domain_names:
    raise ConfigError(f"loss.domain_softmax: {dataset.source} has one catalogue (no domains); "
                      "it needs a multi-domain log (data.format crossdomain)")
  spec = resolve_auto(spec, dataset)
  check_max_len(spec, dataset)
  model_cfg = spec.model_config(int(dataset.num_items), dataset.domain_starts)
  graphdef, params, consts = model_lib.create_model(model_cfg, spec.seed,
                                                    **model_inputs(dataset, model_cfg))
  num_devices = spec.train.num_devices if num_devices is None else num_devices
  shards, in_use = model_cfg.vocab_shards, num_devices or len(jax.devices())
  if shards > 1 and in_use % shards:
    # Evaluation / serving elsewhere: the split tables restore whole on every device.
    logging.warning("model.vocab_shards=%d but %d devices: the item tables are replicated",
                    shards, in_use)
    shards = 1
  per_position = [f"loss.{key}" for key in ("exclude_seen", "further_targets", "teacher_weight")
                  if getattr(spec.loss, key)]
  if shards > 1 and per_position:
    raise ConfigError(f"{' and '.join(per_position)} do not run with the item tables split over "
                      f"devices (model.vocab_shards={shards}): set model.vocab_shards=1")
  mesh = mesh_lib.make_mesh(num_devices, model=shards)
  for what, size in (("input.batch_size", spec.input.batch_size),
                     ("input.eval_batch_size", spec.input.eval_batch_size)):
    mesh_lib.check_global_batch_size(size, mesh, what)
  return Run(spec, dataset, model_cfg, graphdef, params, mesh_lib.replicate(consts, mesh), mesh)


def _physical_memory() -> int:
  """Bytes of RAM of this machine (0 when unknown)."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 0


def check_max_len(spec: RunSpec, dataset) -> None:
  """Refuses an `input.max_len` far past the data that could not fit in memory, in one line.

  Every evaluation batch is `eval_batch_size x max_len` steps whatever the histories' lengths,
  and the recurrence's gates over it are `x 4H` floats: `input.max_len=100000` asked for ~52 GB.
  A max_len longer than every history is refused only when that estimate is over half the
  machine's memory (a few padded steps past the longest history cost nothing and are kept).
  """
  inp, m = spec.input, spec.model
  longest = max(int(dataset.train.lengths_U.max(initial=0)),
                int(dataset.test.history.lengths_U.max(initial=0)))
  if inp.max_len <= longest:
    return
  width = 4 * max(m.hidden_size, m.embed_dim)
  need = inp.eval_batch_size * inp.max_len * width * 4
  memory = _physical_memory()
  if memory and need > memory // 2:
    raise ConfigError(
        f"input.max_len={inp.max_len} is longer than the longest history in the data ({longest} "
        f"events) and would need ~{need / 2**30:.0f} GiB per evaluation batch "
        f"({inp.eval_batch_size} users x {inp.max_len} steps x {width} floats; this machine has "
        f"{memory / 2**30:.0f} GiB): use input.max_len <= {longest}")


_OLDER_WORKDIR_DEFAULTS: dict[str, Any] = {}


def set_older_workdir_defaults(flat: Mapping[str, Any]) -> None:
  """configs/base.py's values, flattened: the keys a workdir's config.json lacks (it was saved
  before they existed) take them when the workdir is read. The entry points set this (the
  library never imports configs/); without it such a workdir is one ConfigError naming the keys.
  """
  _OLDER_WORKDIR_DEFAULTS.clear()
  _OLDER_WORKDIR_DEFAULTS.update(flat)


def read_workdir_config(workdir: str | os.PathLike) -> dict[str, Any]:
  """The config a train.py run saved in its workdir (config.json), as a nested dict; keys added
  since it was saved take their defaults (`set_older_workdir_defaults`), logged."""
  path = paths.workdir_path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: is {workdir} a train.py workdir?")
  try:
    cfg = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: not valid JSON ({e})") from None
  if not _OLDER_WORKDIR_DEFAULTS or not isinstance(cfg, dict):
    return cfg
  flat = flatten(cfg)

  def present(key: str) -> bool:  # the key, a key below it, or a leaf above it
    parts = key.split(".")
    return (key in flat or any(k.startswith(key + ".") for k in flat)
            or any(".".join(parts[:i]) in flat for i in range(1, len(parts))))

  added = {k: v for k, v in _OLDER_WORKDIR_DEFAULTS.items()
           if k.split(".", 1)[0] in GROUPS and not present(k)}
  if added:
    logging.info("%s was saved before %d config keys existed; they take their defaults: %s",
                 path, len(added), ", ".join(sorted(added)))
    flat.update(added)
    cfg = unflatten(flat)
  return cfg


def data_signature(dataset) -> dict[str, Any]:
  """What identifies the data a run trained on: sizes and a hash of the splits and item keys."""
  h = hashlib.sha256()
  arrays = (dataset.train.offsets_U1, dataset.train.items_N, dataset.valid.users_U,
            dataset.valid.targets_U, dataset.test.users_U, dataset.test.targets_U)
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  h.update("\x00".join(map(str, dataset.item_keys)).encode())
  return {"num_users": int(dataset.num_users), "num_items": int(dataset.num_items) - 1,
          "sha256": h.hexdigest()}


def check_data_signature(workdir: str | os.PathLike, dataset, *,
                         fix: str = "pass the run's own data, or --allow_other_data to evaluate on "
                                    "this data anyway") -> None:
  """Refuses data other than what the workdir trained on (its data.json), in one line."""
  path = paths.workdir_path(workdir) / "data.json"
  if not path.is_file():
    return  # trained before data.json existed
  saved, now = json.loads(path.read_text()), data_signature(dataset)
  if saved != now:
    diff = ", ".join(f"{k} {saved.get(k)} -> {now[k]}" for k in ("num_users", "num_items")
                     if saved.get(k) != now[k]) or "same sizes, different events"
    raise ConfigError(f"{workdir} was trained on other data than {dataset.source} ({diff}); "
                      f"metrics would be wrong: {fix}")
