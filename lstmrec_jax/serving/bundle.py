"""The self-contained model bundle: everything serving needs, and nothing from the training data.

Shape legend: V catalog size (row 0 padding), A attributes per item, T title tokens, B users,
S flat serving-state size (see scoring/streaming.py), X excluded items per user, K top-k.

A bundle folder holds:
  bundle.json     format version, the model config group, V, max_len, seed, state layout size,
                  source checkpoint / step / validation metrics, data fingerprint, date; a
                  multi-domain model's domain names
  items.json      the raw item ids by dense id (index 0 is the padding placeholder)
  arrays.npz      popularity_V (training counts), the item content arrays of hybrid models and,
                  for a multi-domain catalogue, item_domains_V (the domain map by dense id)
  params.npz      the parameters, one entry per leaf path: the only copy of them
  prepare.jax     jax.export of prepare(params) -> tables: the item tables computed once
  observe.jax     observe(tables, state_BxS f32, item_ids_B i32) -> state_BxS
  top_k.jax       top_k(tables, state_BxS f32, exclude_BxX i32) -> (ids_BxK i32, scores_BxK f32),
                  K = bundle.json's export_k; observe and top_k with a symbolic batch (and X);
                  a multi-domain model's top_k takes domains_B i32 (the domain asked about) last
  top_k_q.jax     the same ranked by the Q head, for a model with Q heads (an offline RL loss);
                  `Recommender.recommend(..., head="q")` on a loaded bundle ranks the same way
  checksums.json  the sha256 of every other file; its own sha256 is the bundle's digest

The exported functions take the parameters as an argument (format 2; format 1 carried them as
constants, so a bundle held them three times): a process with only jax and numpy (not this
project) calls `tables = prepare.call(dict(np.load("params.npz")))` once, then observe and top_k
with those tables; per event that stays one cell step, not a pass over the catalog. prepare holds
the model's non-parameter constants (item content, popularity, a multi-domain catalogue's item
domains: data, not parameters).

`load` verifies a bundle before anything uses it: every file's checksum (and the digest, when the
caller pins one: `serve.py --bundle_sha256`), unique raw ids, counts that agree with each other,
finite parameters of the model's shapes. Any failure is one CheckpointError line. Checksums catch
damage and edits by mistake; someone who can rewrite the folder can rewrite checksums.json too,
which only a pinned digest catches.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
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

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before checksums and prepare.jax (loaded with a warning)
CHECKSUMS = "checksums.json"
FILES = ("bundle.json", "items.json", "arrays.npz", "params.npz")
EXPORTED = ("prepare.jax", "observe.jax", "top_k.jax")
EXPORTED_HEADS = ("top_k_q.jax",)  # written for a model with Q heads only


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


def from_workdir(workdir: str | os.PathLike, *, which: str = "best", spec=None,
                 trust_plugins: bool = False) -> Bundle:
  """A bundle from a train.py workdir's checkpoint (reads the training data once, here only).

  `trust_plugins`: import the plug-ins the workdir's plugins.json names (`workdir.restore_run`).
  """
  restored = workdir_lib.restore_run(workdir, which=which, spec=spec, num_devices=1,
                                     trust_plugins=trust_plugins)
  checkpoint_meta = {k: v for k, v in restored.meta.items() if isinstance(v, (int, float, str))}
  # The workdir's name only: a bundle travels, the folder layout of the machine it came from not.
  name = os.path.basename(os.path.normpath(os.fspath(workdir)))
  return from_run(restored.run, restored.params,
                  source={"workdir": name, "checkpoint": str(which),
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


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def digest(path: str | os.PathLike) -> str:
  """The bundle's digest: sha256 of its checksums.json (which holds every other file's)."""
  return _sha256(pathlib.Path(path) / CHECKSUMS)


def save(bundle: Bundle, out: str | os.PathLike, *, export_k: int = 10,
         export_functions: bool = True) -> pathlib.Path:
  """Writes `bundle` to the folder `out` (created), with the jax.export'ed functions, sealed last
  by checksums.json (an export killed half-way is refused at load, never served)."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / CHECKSUMS).unlink(missing_ok=True)  # a half-written bundle must not verify
  for name in (*EXPORTED, *EXPORTED_HEADS):
    (out / name).unlink(missing_ok=True)
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
  names = [*FILES, *(EXPORTED if export_functions else ()),
           *(name for name in EXPORTED_HEADS if (out / name).is_file())]
  sums = {"sha256": {name: _sha256(out / name) for name in names}}
  tmp = out / (CHECKSUMS + ".tmp")
  tmp.write_text(json.dumps(sums, indent=1, sort_keys=True))
  os.replace(tmp, out / CHECKSUMS)
  return out


def _bad(path: pathlib.Path, problem: str) -> CheckpointError:
  return CheckpointError(f"bundle {path}: {problem}; re-export it (python export.py --workdir "
                         "... --out ...)")


def verify(path: str | os.PathLike, *, expect_sha256: str | None = None) -> str | None:
  """Checks every file of a bundle against checksums.json; returns the digest (None: format 1).

  Raises:
    CheckpointError: a file missing or changed, no checksums in a format-2 bundle, or a digest
      other than `expect_sha256`.
  """
  path = pathlib.Path(path)
  sums_path = path / CHECKSUMS
  if not sums_path.is_file():
    if expect_sha256:
      raise _bad(path, f"no {CHECKSUMS}, so its digest cannot be {expect_sha256}")
    return None
  try:
    expected = json.loads(sums_path.read_text())["sha256"]
    if not isinstance(expected, dict) or not expected:
      raise ValueError("no files listed")
  except (ValueError, KeyError, TypeError) as e:
    raise _bad(path, f"{CHECKSUMS} is unreadable ({e})") from None
  got = digest(path)
  if expect_sha256 and got != expect_sha256.lower():
    raise _bad(path, f"digest {got} is not the expected {expect_sha256} (the bundle was changed "
                     "or replaced)")
  for name, want in sorted(expected.items()):
    file = path / name
    if os.path.basename(name) != name or not file.is_file():
      raise _bad(path, f"{name} is missing")
    if _sha256(file) != want:
      raise _bad(path, f"{name} does not match its checksum (damaged or edited)")
  return got


def _check_contents(path: pathlib.Path, b: Bundle) -> None:
  """Ids unique, counts that agree, finite parameters (shapes are checked by `Bundle.build`)."""
  keys = b.item_keys
  if not isinstance(keys, list) or len(keys) != b.num_items:
    raise _bad(path, f"items.json holds {len(keys) if isinstance(keys, list) else 'no list of'} "
                     f"ids but bundle.json says {b.num_items} (padding included)")
  seen: dict[str, int] = {}
  for i, key in enumerate(keys[1:], 1):
    if key is None or isinstance(key, (list, dict)):
      raise _bad(path, f"items.json entry {i} is not an id: {key!r}")
    if str(key) in seen:
      raise _bad(path, f"items.json names item {key!r} twice (dense ids {seen[str(key)]} and {i})")
    seen[str(key)] = i
  if b.popularity_V.shape != (b.num_items,):
    raise _bad(path, f"popularity_V has shape {b.popularity_V.shape}, expected ({b.num_items},)")
  if (b.popularity_V < 0).any():
    raise _bad(path, "popularity_V has negative counts")
  if b.item_domains_V is not None:
    doms = b.item_domains_V
    if doms.shape != (b.num_items,) or not np.issubdtype(doms.dtype, np.integer):
      raise _bad(path, f"item_domains_V has shape {doms.shape} ({doms.dtype}), expected "
                       f"({b.num_items},) integers")
    if not b.domain_names or (doms[1:] < 0).any() or (doms[1:] >= len(b.domain_names)).any():
      raise _bad(path, f"item_domains_V holds domains outside the {len(b.domain_names)} named "
                       "in bundle.json")
  for name, value in b.params.items():
    if not np.issubdtype(value.dtype, np.number):
      raise _bad(path, f"parameter {name} is not numeric ({value.dtype})")
    if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
      raise _bad(path, f"parameter {name} is not finite (NaN or inf): the run diverged")


def load(path: str | os.PathLike, *, expect_sha256: str | None = None) -> Bundle:
  """Reads and verifies a bundle folder (`verify`, `_check_contents`); never touches the data."""
  path = pathlib.Path(path)
  if not (path / "bundle.json").is_file():
    raise FileNotFoundError(f"{path / 'bundle.json'} not found: is {path} an export.py bundle?")
  sha = verify(path, expect_sha256=expect_sha256)
  try:
    meta = json.loads((path / "bundle.json").read_text())
    version = meta.get("format_version")
  except (ValueError, AttributeError) as e:
    raise _bad(path, f"bundle.json is not a JSON object ({e})") from None
  if version not in READABLE_VERSIONS:
    raise CheckpointError(f"{path}: bundle format {version}, this code reads "
                          f"{', '.join(map(str, READABLE_VERSIONS))}; re-export it")
  if sha is None:
    if version != 1:
      raise _bad(path, f"no {CHECKSUMS} (an export that did not finish)")
    logging.warning("bundle %s has no checksums (format 1, exported before they existed): its "
                    "integrity is not verified; re-export it", path)
  try:
    with np.load(path / "params.npz", allow_pickle=False) as z:
      params = {k: z[k] for k in z.files}
    content = None
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
      popularity_V = z["popularity_V"]
      item_domains_V = z["item_domains_V"] if "item_domains_V" in z.files else None
      if meta["has_content"]:
        content = {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith("content.")}
        content.update(meta.get("content_scalars", {}))
        content.setdefault("attrs_VxA", None)
        content.setdefault("tokens_VxT", None)
        for name in ("neighbors_VxK", "transition_ids_VxK", "transition_logp_VxK"):
          content.setdefault(name, None)
    item_keys = json.loads((path / "items.json").read_text())
    rest = {k: meta[k] for k in ("source", "dataset", "exported", "created", "jax_version")
            if k in meta}
    # Keys added after a bundle was written take the value its model had: unsplit tables
    # (vocab_shards), no Q heads (q_head), no weight drop (recurrent_weight_dropout; training only),
    # per-position dropout (locked_dropout; training only), no transition prior
    # (transition_*).
    model = {"vocab_shards": 1, "q_head": False, "recurrent_weight_dropout": 0.0,
             "locked_dropout": False, "transition_weight": 0.0, "transition_items": 32,
             "transition_window": 1, **meta["model"]}
    b = Bundle(model=model, num_items=int(meta["num_items"]), max_len=int(meta["max_len"]),
               seed=int(meta["seed"]), params=params, item_keys=item_keys,
               popularity_V=np.asarray(popularity_V), content=content, meta=rest,
               domain_names=tuple(meta.get("domain_names", ())), item_domains_V=item_domains_V)
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A damaged file (BadZipFile, truncated JSON, a missing key) is one line, not a traceback.
    raise _bad(path, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
               ) from None
  _check_contents(path, b)
  if sha is not None:
    b.meta["sha256"] = sha
  return b


def _flat_like(template, flat):
  """The template pytree with its leaves taken from a {keystr: leaf} dict (traced or not)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  return jax.tree_util.tree_unflatten(treedef,
                                      [flat[jax.tree_util.keystr(p)] for p, _ in leaves])


def export_functions_to(bundle: Bundle, out: pathlib.Path, *, k: int) -> dict[str, Any]:
  """Serializes prepare, observe and top_k with jax.export (the parameters an argument); returns
  their spec for bundle.json."""
  graphdef, params, consts = bundle.build()
  model = nnx.merge(graphdef, params, consts)
  layout = fns.layout_of(model)
  popularity_V = np.asarray(bundle.popularity_V, np.float32)
  k = min(k, bundle.num_items - 1)

  def tables_of(t):
    return fns.Tables(_flat_like(params, t["params"]), consts, t["input_VxE"], t["fallback_VxF"],
                      t.get("q_fallback_VxF"), t.get("transition_ids_VxP"),
                      t.get("transition_values_VxP"))

  item_domains_V = (None if bundle.item_domains_V is None
                    else np.asarray(bundle.item_domains_V, np.int32))

  def prepare(flat_params):
    built = fns.make_tables(graphdef, _flat_like(params, flat_params), consts, popularity_V)
    out = {"params": flat_params, "input_VxE": built.input_VxE,
           "fallback_VxF": built.fallback_VxF}
    if built.q_fallback_VxF is not None:  # a model with Q heads (an offline RL loss)
      out["q_fallback_VxF"] = built.q_fallback_VxF
    if built.transition_ids_VxP is not None:  # the transition prior (model.transition_weight)
      out["transition_ids_VxP"] = built.transition_ids_VxP
      out["transition_values_VxP"] = built.transition_values_VxP
    if item_domains_V is not None:  # a multi-domain catalogue: each dense id's domain
      out["item_domains_V"] = jnp.asarray(item_domains_V)
    return out

  def observe(t, state_BxS, item_ids_B):
    return fns.observe(graphdef, layout, tables_of(t), state_BxS, item_ids_B)

  def ranked_by(head: str):
    """top_k of `head`: (t, state, exclude) -> (ids, scores); a multi-domain model's also takes
    each row's domain (domains_B, the index into domain_names; -1: any domain, a model without a
    cross-domain encoder only)."""
    if item_domains_V is None:

      def top_k(t, state_BxS, exclude_BxX):
        user_BxE, count_B = fns.user_of(layout, state_BxS)
        return fns.rank(tables_of(t), user_BxE, count_B, exclude_BxX, k=k, head=head)

      return top_k

    def top_k_in_domain(t, state_BxS, exclude_BxX, domains_B):
      user_BxE, count_B = fns.user_of(layout, state_BxS, jnp.maximum(domains_B, 0))
      return fns.rank(tables_of(t), user_BxE, count_B, exclude_BxX, k=k, head=head,
                      item_domains_V=t["item_domains_V"], domains_B=domains_B)

    return top_k_in_domain

  flat = {name: jax.ShapeDtypeStruct(v.shape, v.dtype) for name, v in bundle.params.items()}
  prepared = jax.export.export(jax.jit(prepare))(flat)
  tables = jax.tree_util.tree_unflatten(
      prepared.out_tree, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in prepared.out_avals])
  b, x = jax.export.symbolic_shape("b, x")
  state = jax.ShapeDtypeStruct((b, layout.size), jnp.float32)
  top_k_args = [tables, state, jax.ShapeDtypeStruct((b, x), jnp.int32)]
  if item_domains_V is not None:
    top_k_args.append(jax.ShapeDtypeStruct((b,), jnp.int32))
  observed = jax.export.export(jax.jit(observe))(tables, state,
                                                 jax.ShapeDtypeStruct((b,), jnp.int32))
  ranked = jax.export.export(jax.jit(ranked_by("softmax")))(*top_k_args)
  (out / "prepare.jax").write_bytes(prepared.serialize())
  (out / "observe.jax").write_bytes(observed.serialize())
  (out / "top_k.jax").write_bytes(ranked.serialize())
  heads = {}
  if bundle.model.get("q_head"):
    ranked_q = jax.export.export(jax.jit(ranked_by("q")))(*top_k_args)
    (out / "top_k_q.jax").write_bytes(ranked_q.serialize())
    heads = {"top_k_q": "top_k_q.jax: top_k ranked by the Q head (same arguments and results)"}
  domains = (", domains_B i32: the domain index asked about (domain_names; -1: any, for a "
             "model without a cross-domain encoder)" if item_domains_V is not None else "")
  return {"state_size": layout.size, "k": k, "platforms": list(observed.platforms), **heads,
          "prepare": "prepare.jax: (params: dict(np.load('params.npz'))) -> tables (a dict); "
                     "call once",
          "observe": "observe.jax: (tables, state_BxS f32, item_ids_B i32; 0 = no event) -> "
                     "state_BxS",
          "top_k": "top_k.jax: (tables, state_BxS f32, exclude_BxX i32; 0 = none" + domains
                   + ") -> (ids_BxK i32 dense, scores_BxK f32)",
          "start_state": f"zeros (B, {layout.size}) f32",
          "ids": "dense ids index items.json (raw ids)"}
