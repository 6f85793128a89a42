"""The self-contained model bundle: everything serving needs, and nothing from the training data.

Shape legend: V catalog size (row 0 padding), A attributes per item, T title tokens, B users,
S flat serving-state size (see scoring/streaming.py), X excluded items per user, K top-k.

A bundle folder holds:
  bundle.json   format version, the model config group, V, max_len, seed, state layout size,
                source workdir / checkpoint / step / validation metrics, data fingerprint, date;
                a multi-domain model's domain names
  items.json    the raw item ids by dense id (index 0 is the padding placeholder)
  arrays.npz    popularity_V (training counts), the item content arrays of hybrid models and,
                for a multi-domain catalogue, item_domains_V (the domain map by dense id)
  params.npz    the parameters, one entry per leaf path
  observe.jax   jax.export (StableHLO) of observe(state_BxS f32, item_ids_B i32) -> state_BxS
  top_k.jax     jax.export of top_k(state_BxS f32, exclude_BxX i32) -> (ids_BxK i32,
                scores_BxK f32), K = bundle.json's export_k; both with a symbolic batch (and X)
The exported functions carry the parameters as constants: a process with only jax and numpy
(not this project) deserializes and calls them (`jax.export.deserialize(bytes).call(...)`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstmrec_jax import model as model_lib
from lstmrec_jax import run as run_lib
from lstmrec_jax import workdir as workdir_lib
from lstmrec_jax.data import preprocess
from lstmrec_jax.errors import CheckpointError
from lstmrec_jax.scoring import streaming as fns

FORMAT_VERSION = 1


@dataclasses.dataclass
class Bundle:
  """A model ready to serve: config, parameters, raw-id vocabulary, popularity, content."""

  model: dict[str, Any]  # the config's model group (ModelConfig.from_mapping input)
  num_items: int  # V, padding included
  max_len: int
  seed: int
  params: dict[str, np.ndarray]  # leaf path (jax keystr of the pure dict) -> array
  item_keys: list[Any]  # raw ids by dense id; [0] is a placeholder
  popularity_V: np.ndarray  # int64 training counts
  content: dict[str, Any] | None  # ContentInputs fields (numpy), None for id-only models
  meta: dict[str, Any]
  # A multi-domain catalogue: the domains' names and each dense id's domain (-1 at 0); () / None
  domain_names: tuple[str, ...] = ()
  item_domains_V: np.ndarray | None = None

  def model_config(self):
    return model_lib.ModelConfig.from_mapping(
        dict(self.model), num_items=self.num_items, max_len=self.max_len,
        domain_starts=preprocess.domain_starts(self.item_domains_V, len(self.domain_names)))

  def build(self):
    """(graphdef, params, consts) of the model with this bundle's parameters."""
    kwargs = {}
    if self.content is not None:
      kwargs["item_content"] = model_lib.ContentInputs(**self.content)
    graphdef, template, consts = model_lib.create_model(self.model_config(), self.seed, **kwargs)
    params = _fill(template, self.params)
    return graphdef, params, consts


def data_fingerprint(dataset) -> str:
  """sha256 of the item vocabulary, the training events and the counts (what the model saw)."""
  h = hashlib.sha256()
  h.update(json.dumps([_plain_key(k) for k in dataset.item_keys[1:]]).encode())
  for arr in (dataset.train.offsets_U1, dataset.train.items_N, dataset.item_counts_V):
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


def _plain_key(key) -> Any:
  """A raw id as JSON keeps it: numpy ints -> int, bytes -> str, the rest str."""
  if isinstance(key, (np.integer, int)) and not isinstance(key, bool):
    return int(key)
  if isinstance(key, bytes):
    return key.decode()
  return str(key)


def _flat(tree) -> dict[str, np.ndarray]:
  """{"path": array} of a pure dict, e.g. {"a": {0: x}} -> {"['a'][0]": x}."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def _fill(template, flat: dict[str, np.ndarray]):
  """The template pytree with each leaf taken from `flat` by path (shapes checked)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  out = []
  for path, leaf in leaves:
    key = jax.tree_util.keystr(path)
    if key not in flat:
      raise CheckpointError(f"bundle parameters lack {key}: bundle and model code disagree")
    if tuple(flat[key].shape) != tuple(np.shape(leaf)):
      raise CheckpointError(f"bundle parameter {key} has shape {flat[key].shape}, the model "
                       f"{np.shape(leaf)}")
    out.append(jnp.asarray(flat[key]))
  return jax.tree_util.tree_unflatten(treedef, out)


def from_workdir(workdir: str | os.PathLike, *, which: str = "best", spec=None) -> Bundle:
  """A bundle from a train.py workdir's checkpoint (reads the training data once, here only)."""
  restored = workdir_lib.restore_run(workdir, which=which, spec=spec, num_devices=1)
  checkpoint_meta = {k: v for k, v in restored.meta.items() if isinstance(v, (int, float, str))}
  return from_run(restored.run, restored.params,
                  source={"workdir": str(workdir), "checkpoint": str(which),
                          "step": restored.step, "checkpoint_meta": checkpoint_meta})


def from_run(run, params, *, source: dict[str, Any] | None = None) -> Bundle:
  """A bundle of a built `run.Run` with `params` (e.g. the initial ones, in tests)."""
  content = None
  inputs = run_lib.model_inputs(run.dataset, run.model_cfg)
  if "item_content" in inputs:
    c = inputs["item_content"]
    content = {f.name: (np.asarray(v) if isinstance(v, (np.ndarray, jax.Array)) else v)
               for f in dataclasses.fields(c) for v in [getattr(c, f.name)]}
  meta = {"source": source or {},
          "dataset": {"source": run.dataset.source, "fingerprint": data_fingerprint(run.dataset),
                      "num_users": int(run.dataset.num_users)}}
  return Bundle(model=dict(run.spec.config["model"]), num_items=int(run.dataset.num_items),
                max_len=run.spec.input.max_len, seed=run.spec.seed,
                params=_flat(params),
                item_keys=[None] + [_plain_key(k) for k in run.dataset.item_keys[1:]],
                popularity_V=np.asarray(run.dataset.item_counts_V, np.int64), content=content,
                meta=meta, domain_names=tuple(run.dataset.domain_names),
                item_domains_V=(None if run.dataset.item_domains_V is None
                                else np.asarray(run.dataset.item_domains_V, np.int32)))


def save(bundle: Bundle, out: str | os.PathLike, *, export_k: int = 10,
         export_functions: bool = True) -> pathlib.Path:
  """Writes `bundle` to the folder `out` (created), with the jax.export'ed observe / top_k."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  np.savez(out / "params.npz", **bundle.params)
  arrays = {"popularity_V": bundle.popularity_V}
  if bundle.item_domains_V is not None:
    arrays["item_domains_V"] = bundle.item_domains_V
  content_scalars = {}
  for name, value in (bundle.content or {}).items():
    if isinstance(value, np.ndarray):
      arrays[f"content.{name}"] = value
    elif value is not None:
      content_scalars[name] = value
  np.savez(out / "arrays.npz", **arrays)
  (out / "items.json").write_text(json.dumps(bundle.item_keys))
  meta = {**bundle.meta, "format_version": FORMAT_VERSION, "model": bundle.model,
          "num_items": bundle.num_items, "max_len": bundle.max_len, "seed": bundle.seed,
          "has_content": bundle.content is not None, "content_scalars": content_scalars,
          "domain_names": list(bundle.domain_names),
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "jax_version": jax.__version__}
  if export_functions:
    meta["exported"] = export_functions_to(bundle, out, k=export_k)
  (out / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
  return out


def load(path: str | os.PathLike) -> Bundle:
  """Reads a bundle folder; never touches the training data."""
  path = pathlib.Path(path)
  if not (path / "bundle.json").is_file():
    raise FileNotFoundError(f"{path / 'bundle.json'} not found: is {path} an export.py bundle?")
  meta = json.loads((path / "bundle.json").read_text())
  if meta.get("format_version") != FORMAT_VERSION:
    raise CheckpointError(f"{path}: bundle format {meta.get('format_version')}, this code reads "
                     f"{FORMAT_VERSION}; re-export it")
  with np.load(path / "params.npz") as z:
    params = {k: z[k] for k in z.files}
  content = None
  with np.load(path / "arrays.npz") as z:
    popularity_V = z["popularity_V"]
    item_domains_V = z["item_domains_V"] if "item_domains_V" in z.files else None
    if meta["has_content"]:
      content = {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith("content.")}
      content.update(meta.get("content_scalars", {}))
      content.setdefault("attrs_VxA", None)
      content.setdefault("tokens_VxT", None)
  item_keys = json.loads((path / "items.json").read_text())
  rest = {k: meta[k] for k in ("source", "dataset", "exported", "created", "jax_version")
          if k in meta}
  # Bundles written before model.vocab_shards existed hold unsplit tables.
  model = {"vocab_shards": 1, **meta["model"]}
  return Bundle(model=model, num_items=meta["num_items"], max_len=meta["max_len"],
                seed=meta["seed"], params=params, item_keys=item_keys,
                popularity_V=popularity_V, content=content, meta=rest,
                domain_names=tuple(meta.get("domain_names", ())), item_domains_V=item_domains_V)


def export_functions_to(bundle: Bundle, out: pathlib.Path, *, k: int) -> dict[str, Any]:
  """Serializes observe and top_k with jax.export (parameters as constants); returns their spec."""
  graphdef, params, consts = bundle.build()
  model = nnx.merge(graphdef, params, consts)
  layout = fns.layout_of(model)
  tables = fns.make_tables(graphdef, params, consts, bundle.popularity_V)
  k = min(k, bundle.num_items - 1)

  def observe(state_BxS, item_ids_B):
    return fns.observe(graphdef, layout, tables, state_BxS, item_ids_B)

  def top_k(state_BxS, exclude_BxX):
    user_BxE, count_B = fns.user_of(layout, state_BxS)
    return fns.rank(tables, user_BxE, count_B, exclude_BxX, k=k)

  domains = bundle.item_domains_V
  if domains is not None:  # a multi-domain model: top_k takes each row's domain as well

    def top_k(state_BxS, exclude_BxX, domains_B):  # pylint: disable=function-redefined
      user_BxE, count_B = fns.user_of(layout, state_BxS, domains_B)
      return fns.rank(tables, user_BxE, count_B, exclude_BxX, k=k,
                      item_domains_V=jnp.asarray(domains), domains_B=domains_B)

  b, x = jax.export.symbolic_shape("b, x")
  state = jax.ShapeDtypeStruct((b, layout.size), jnp.float32)
  observed = jax.export.export(jax.jit(observe))(state, jax.ShapeDtypeStruct((b,), jnp.int32))
  top_k_args = [state, jax.ShapeDtypeStruct((b, x), jnp.int32)]
  if domains is not None:
    top_k_args.append(jax.ShapeDtypeStruct((b,), jnp.int32))
  ranked = jax.export.export(jax.jit(top_k))(*top_k_args)
  (out / "observe.jax").write_bytes(observed.serialize())
  (out / "top_k.jax").write_bytes(ranked.serialize())
  return {"state_size": layout.size, "k": k, "platforms": list(observed.platforms),
          "observe": "observe.jax: (state_BxS f32, item_ids_B i32; 0 = no event) -> state_BxS",
          "top_k": "top_k.jax: (state_BxS f32, exclude_BxX i32; 0 = none" + (
              ", domains_B i32: the domain index asked about (domain_names)"
              if domains is not None else "") + ") -> (ids_BxK i32 dense, scores_BxK f32)",
          "start_state": f"zeros (B, {layout.size}) f32",
          "ids": "dense ids index items.json (raw ids)"}
