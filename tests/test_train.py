"""The trainer end to end: steps, determinism, checkpoints, resume, evaluation, data parallelism."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstmrec_jax import mesh as mesh_lib
from lstmrec_jax import run as run_lib
from lstmrec_jax.cli import common
from lstmrec_jax.data import pipeline
from lstmrec_jax.evaluation import reports
from lstmrec_jax.train import loop
from lstmrec_jax import losses
from lstmrec_jax import optim
from lstmrec_jax import model as model_lib  # noqa: E402
from lstmrec_jax.train import steps
from helpers import loss_config, optim_config, tiny_config
from lstmrec_jax import workdir as workdir_lib


def read_losses(workdir: pathlib.Path) -> dict[int, float]:
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "loss" in row:
      out[row["step"]] = row["loss"]
  return out


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
  """Dataset, model and a jitted step of the tiny config, shared by the step-level tests."""
  config = tiny_config(tmp_path_factory.mktemp("setup"))
  spec = run_lib.spec_from_config(config)
  dataset = run_lib.load_data(spec)
  model_cfg = spec.model_config(dataset.num_items)
  graphdef, params, consts = model_lib.create_model(model_cfg, 0)
  assert not jax.tree.leaves(consts)  # an id-only model has no constants
  tx = optim.make_optimizer(optim_config(learning_rate=1e-2, warmup_steps=1), 10)
  batches = pipeline.TrainBatches(dataset.train, batch_size=8, max_len=16, seed=0, pack=True)
  return config, dataset, graphdef, params, tx, batches


def test_every_parameter_changes_after_one_step(tiny_setup):
  _, _, graphdef, params, tx, batches = tiny_setup
  step_fn = jax.jit(functools.partial(steps.train_step, graphdef=graphdef, tx=tx,
                                      loss_cfg=loss_config(kind="full")))
  state = optim.init_state(params, tx, 0)
  batch = next(iter(batches.epoch(0)))
  new_state, out = step_fn(state, batch, {"consts": {}, "log_q_V": None})
  assert np.isfinite(float(out["loss"]))
  unchanged = [jax.tree_util.keystr(p) for p, a, b in zip(
      *zip(*jax.tree_util.tree_leaves_with_path(state.params)),
      jax.tree.leaves(new_state.params)) if np.array_equal(np.asarray(a), np.asarray(b))]
  assert not unchanged, f"parameters not updated by a train step: {unchanged}"


def test_step_compiles_once_across_batches(tiny_setup):
  _, _, graphdef, params, tx, batches = tiny_setup
  step_fn = jax.jit(functools.partial(steps.train_step, graphdef=graphdef, tx=tx,
                                      loss_cfg=loss_config(kind="chunked", chunk_size=32)),
                    donate_argnums=0)
  state = optim.init_state(jax.tree.map(jnp.copy, params), tx, 0)  # donated below
  for i, batch in zip(range(4), batches.epoch(1)):
    state, _ = step_fn(state, batch, {"consts": {}, "log_q_V": None})
  assert step_fn._cache_size() == 1


def test_losses_agree_full_chunked(tiny_setup):
  _, _, graphdef, params, tx, batches = tiny_setup
  batch = next(iter(batches.epoch(0)))
  outs = {}
  for kind in ("full", "chunked"):
    fn = jax.jit(functools.partial(steps.train_step, graphdef=graphdef, tx=tx,
                                   loss_cfg=loss_config(kind=kind, chunk_size=24)))
    _, out = fn(optim.init_state(params, tx, 0), batch, {"consts": {}, "log_q_V": None})
    outs[kind] = float(out["loss"])
  assert outs["full"] == pytest.approx(outs["chunked"], rel=1e-5)


@pytest.mark.parametrize("kind", ["full", "chunked"])
def test_train_items_only_equals_the_reduced_catalog(tiny_setup, kind):
  """Left-out items vanish from the training softmax: same loss as a catalog without them, and
  their table rows get no gradient."""
  _, _, graphdef, params, _, batches = tiny_setup
  batch = next(iter(batches.epoch(0)))
  num_items = params["item_repr"]["embedding"].shape[0]
  targets = np.unique(np.asarray(batch["targets_BxL"]))
  mask_V = np.zeros(num_items, bool)
  mask_V[targets[targets > 0]] = True
  mask_V[1::3] = True  # and some non-target items
  cfg = loss_config(kind=kind, chunk_size=32, train_items_only=True)
  key = jax.random.PRNGKey(0)

  def loss(p, mask):
    model = nnx.merge(graphdef, p, {})
    return steps.sequence_loss(model, batch, key, cfg, None, mask)

  got, grads = jax.value_and_grad(loss)(params, jnp.asarray(mask_V))
  # Reference: user states from the model, then a plain softmax over the kept items only.
  model = nnx.merge(graphdef, params, {})
  user = model(batch["inputs_BxL"], batch["mask_BxL"], batch.get("resets_BxL"),
               item_table_VxE=model.item_tables()[0], dropout_key=key).reshape(-1, params["item_repr"]["embedding"].shape[1])
  kept = np.flatnonzero(mask_V)
  logits = np.asarray(user) @ np.asarray(model.item_table())[kept].T
  targets_N = np.asarray(batch["targets_BxL"]).reshape(-1)
  real = targets_N > 0
  col = np.searchsorted(kept, targets_N[real])
  lse = jax.nn.logsumexp(logits[real], axis=1)
  want = float(np.mean(lse - logits[real][np.arange(real.sum()), col]))
  assert float(got) == pytest.approx(want, rel=1e-5)
  # Tied table: a row also gets gradient as an input; cold items never are inputs, so look at the
  # left-out items this batch does not read.
  unread_V = ~mask_V
  unread_V[np.asarray(batch["inputs_BxL"]).ravel()] = False
  unread_V[0] = False
  assert unread_V.sum() >= 5
  d_table = np.asarray(grads["item_repr"]["embedding"])
  assert np.all(d_table[unread_V] == 0.0) and np.any(d_table[mask_V] != 0.0)
  # Without the mask the same rows are trained as negatives.
  _, grads_all = jax.value_and_grad(loss)(params, None)
  assert np.all(np.any(np.asarray(grads_all["item_repr"]["embedding"])[unread_V] != 0.0, axis=1))


def test_golden_loss(tmp_path):
  """Loss after a few steps on fixed seeded data.

  If you did not mean to change behaviour (data generation, packing, initialisation, model, loss,
  optimizer), a failure here is a bug. If you did, update the numbers and say why in the commit.
  """
  config = tiny_config(tmp_path, stop_after_steps=5)
  loop.train_and_evaluate(config, tmp_path / "run")
  losses = read_losses(tmp_path / "run")
  got = [round(losses[s], 4) for s in range(1, 6)]
  expected = GOLDEN_LOSSES
  np.testing.assert_allclose(got, expected, atol=2e-3, err_msg=(
      "golden losses changed: if you did not mean to change behaviour, this is a bug"))


GOLDEN_LOSSES = [4.3999, 4.3940, 4.3726, 4.3835, 4.3628]  # reviewed run, 2026-11-28


def test_train_resume_and_evaluate(tmp_path):
  """Unbroken run vs killed-and-resumed run: same losses after the resume; eval reads the result."""
  full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
  report = loop.train_and_evaluate(tiny_config(tmp_path), full_dir)
  steps_total = max(read_losses(full_dir))
  stop = steps_total // 2 + 1  # mid-epoch, after the first validation
  out = loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=stop), resumed_dir)
  assert out["stopped_at_step"] == stop
  assert (resumed_dir / "checkpoints" / str(stop)).is_dir()
  loop.train_and_evaluate(tiny_config(tmp_path), resumed_dir)  # the same command again
  full, resumed = read_losses(full_dir), read_losses(resumed_dir)
  assert set(resumed) == set(full), "the resumed run restarted or skipped steps"
  for s in range(stop + 1, steps_total + 1):
    assert resumed[s] == pytest.approx(full[s], rel=1e-6, abs=1e-6), f"step {s}"

  test = report["splits"]["test"]
  assert test["model"]["overall"]["users"] == 240
  assert set(test["model"]["by_history_length"]) == {"1-2", "3-5", "6-10", ">10"}
  again = workdir_lib.evaluate_checkpoint(full_dir, which="best", num_devices=1,
                                       topk_out=str(tmp_path / "top.tsv"), topk=5)
  assert again["splits"]["test"]["model"]["overall"] == test["model"]["overall"]
  rows = (tmp_path / "top.tsv").read_text().splitlines()
  assert len(rows) == 240 and all(len(r.split("\t")[1].split(",")) == 5 for r in rows)
  assert (full_dir / "eval_best.json").exists()


def test_two_runs_identical(tmp_path):
  a = loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=4), tmp_path / "a")
  b = loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=4), tmp_path / "b")
  assert a == b
  assert read_losses(tmp_path / "a") == read_losses(tmp_path / "b")


def test_changed_config_refuses_to_resume(tmp_path):
  loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=2), tmp_path / "run")
  other = tiny_config(tmp_path, stop_after_steps=2)
  other.model.hidden_size = 8
  with pytest.raises(ValueError, match="model.hidden_size"):
    loop.train_and_evaluate(other, tmp_path / "run")


def test_resume_accepts_keys_added_since_at_their_defaults(tmp_path):
  """A workdir saved before a config key existed resumes while the key keeps its default."""
  run = tmp_path / "run"
  loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=2), run)
  saved = json.loads((run / "config.json").read_text())
  del saved["loss"]["compute_dtype"]  # as if written before the key was added
  (run / "config.json").write_text(json.dumps(saved))
  defaults = common.base_defaults()  # what train.py passes: configs/base.py, flattened
  with pytest.raises(ValueError, match="loss.compute_dtype"):
    loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=3), run)  # no defaults given
  loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=3), run, defaults=defaults)
  assert 3 in read_losses(run)
  changed = tiny_config(tmp_path, stop_after_steps=4)
  changed.loss.compute_dtype = "bfloat16"
  with pytest.raises(ValueError, match="loss.compute_dtype"):
    loop.train_and_evaluate(changed, run, defaults=defaults)


def test_batch_not_divisible_by_devices_is_an_error():
  mesh = mesh_lib.make_mesh(8)
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    mesh_lib.check_global_batch_size(36, mesh)


def _run_steps(tiny_setup, num_devices, n=3):
  _, _, graphdef, params, tx, batches = tiny_setup
  mesh = mesh_lib.make_mesh(num_devices)
  repl, sh = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
  fn = jax.jit(functools.partial(steps.train_step, graphdef=graphdef, tx=tx,
                                 loss_cfg=loss_config(kind="chunked", chunk_size=32)),
               in_shardings=(repl, sh, repl), out_shardings=(repl, repl))
  state = mesh_lib.replicate(optim.init_state(params, tx, 0), mesh)
  losses = []
  for _, batch in zip(range(n), batches.epoch(0)):
    state, out = fn(state, mesh_lib.to_global(batch, mesh), {"consts": {}, "log_q_V": None})
    losses.append(float(out["loss"]))
  return losses, jax.device_get(state.params)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
def test_eight_devices_equal_one(tiny_setup):
  losses1, params1 = _run_steps(tiny_setup, 1)
  losses8, params8 = _run_steps(tiny_setup, 8)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
def test_checkpoint_moves_between_device_counts_and_eval_is_identical(tmp_path):
  config = tiny_config(tmp_path, num_devices=8, stop_after_steps=0)
  report8 = loop.train_and_evaluate(config, tmp_path / "run8")
  one = workdir_lib.evaluate_checkpoint(tmp_path / "run8", which="best", num_devices=1)
  for split in ("valid", "test"):
    assert one["splits"][split]["model"] == report8["splits"][split]["model"]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
def test_resume_on_another_device_count(tmp_path):
  """Stopped on 1 device, resumed on 8: the losses continue as in the unbroken 1-device run."""
  loop.train_and_evaluate(tiny_config(tmp_path), tmp_path / "full")
  full = read_losses(tmp_path / "full")
  loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=4), tmp_path / "moved")
  loop.train_and_evaluate(tiny_config(tmp_path, num_devices=8), tmp_path / "moved")
  moved = read_losses(tmp_path / "moved")
  assert set(moved) == set(full)
  for s in sorted(full):
    assert moved[s] == pytest.approx(full[s], rel=1e-4), f"step {s}"


def test_summarize_reports_mean_and_sample_std():
  def report(ndcg, hr, pop):
    overall = {k: 0.0 for k in reports.SUMMARY_KEYS}
    overall.update({"NDCG@10": ndcg, "HR@10": hr})
    return {"workdir": f"run_{ndcg}", "step": 10,
            "splits": {"test": {"model": {"overall": overall},
                                "popularity": {"overall": {**overall, "NDCG@10": pop}}}}}

  s = reports.summarize_reports([report(0.04, 0.07, 0.005), report(0.05, 0.08, 0.005),
                                  report(0.06, 0.09, 0.005)])
  assert s["runs"] == 3
  assert s["model"]["NDCG@10"] == pytest.approx((0.05, 0.01))  # sample std (ddof 1)
  assert s["model"]["HR@10"] == pytest.approx((0.08, 0.01))
  assert s["popularity"]["NDCG@10"][0] == pytest.approx(0.005)
  text = reports.format_summary(s)
  assert "**0.0500** +- 0.0100" in text and text.count("| run_") == 3
  assert reports.summarize_reports([report(0.04, 0.07, 0.0)])["model"]["NDCG@10"] == (0.04, 0.0)
  with pytest.raises(ValueError, match="no reports"):
    reports.summarize_reports([])


def test_checkpoint_with_pre_registry_parameter_paths_restores_to_the_same_metrics(tmp_path):
  """Workdirs saved before the encoder registry name the LSTM `lstm_layers`, not `encoder.layers`
  (model/compat.py): they still resume and evaluate to exactly the same metrics."""
  import shutil  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.model import compat  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  new_dir, old_dir = tmp_path / "new", tmp_path / "old"
  loop.train_and_evaluate(tiny_config(tmp_path, stop_after_steps=4), new_dir)
  want = workdir_lib.evaluate_checkpoint(new_dir, which="latest", num_devices=1)
  # The same state saved under the old names, as the previous code wrote it.
  restored = workdir_lib.restore_run(new_dir, which="latest", num_devices=1)
  tx = restored.run.optimizer(10)
  like = optim.init_state(restored.run.params, tx, 0)
  reader = ckpt_lib.Checkpointer(new_dir, read_only=True)
  state, meta = reader.restore_train_state(like, restored.run.mesh)
  reader.close()
  old_dir.mkdir()
  for name in ("config.json", "data.json"):
    if (new_dir / name).exists():
      shutil.copy(new_dir / name, old_dir / name)
  writer = ckpt_lib.Checkpointer(old_dir)
  writer.save_latest(state._replace(params=compat.to_legacy(state.params),
                                    opt_state=compat.to_legacy(state.opt_state)), meta)
  writer.close()
  assert "lstm_layers" in (old_dir / "checkpoints" / "4" / "params" / "_METADATA").read_text()
  got = workdir_lib.evaluate_checkpoint(old_dir, which="latest", num_devices=1)
  for split in ("valid", "test"):
    assert got["splits"][split]["model"] == want["splits"][split]["model"]
  # Both resume (the optimizer state renamed too) and continue with the same losses.
  loop.train_and_evaluate(tiny_config(tmp_path), new_dir)
  loop.train_and_evaluate(tiny_config(tmp_path), old_dir)
  new_losses, old_losses = read_losses(new_dir), read_losses(old_dir)
  assert min(old_losses) == 5 and max(old_losses) == max(new_losses)
  for s in old_losses:
    assert old_losses[s] == pytest.approx(new_losses[s], rel=1e-6), f"step {s}"


def test_a_workdir_saved_before_keys_existed_is_read_with_their_defaults(tmp_path):
  """eval.py / export.py / serve.py on a workdir whose config.json predates some keys (here:
  the reward and rl groups and the cross-domain keys): with the base defaults registered (the
  entry points do it), the missing keys take them; without, one ConfigError names them."""
  import json  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.cli import common  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  defaults = common.base_defaults()
  old = {k: v for k, v in defaults.items()
         if not k.startswith(("reward.", "rl.")) and k not in ("data.domain", "train.init_from")}
  old["model.embed_dim"] = 24  # a value of the run's own, kept
  (tmp_path / "config.json").write_text(json.dumps(run_lib.unflatten(old)))
  run_lib.set_older_workdir_defaults({})
  try:
    with pytest.raises(ConfigError, match="missing"):
      run_lib.spec_from_config(run_lib.read_workdir_config(tmp_path))
    run_lib.set_older_workdir_defaults(defaults)
    cfg = run_lib.read_workdir_config(tmp_path)
    spec = run_lib.spec_from_config(cfg)
    assert spec.model.embed_dim == 24
    assert cfg["reward"] == run_lib.unflatten(
        {k: v for k, v in defaults.items() if k.startswith("reward.")})["reward"]
    assert cfg["data"]["domain"] == defaults["data.domain"]
  finally:
    run_lib.set_older_workdir_defaults({})


def test_target_contrastive_term_adds_its_weighted_value(tiny_setup):
  """loss.target_contrastive_weight adds weight x same_target_nce of the step's user states
  (the states computed with the step's dropout key); 0 leaves the loss as it was."""
  from lstmrec_jax.losses import contrastive
  _, _, graphdef, params, _, batches = tiny_setup
  batch = next(iter(batches.epoch(0)))
  key = jax.random.PRNGKey(4)
  model = nnx.merge(graphdef, params, {})
  plain = float(steps.sequence_loss(model, batch, key, loss_config(kind="full"), None))
  cfg = loss_config(kind="full", target_contrastive_weight=0.5,
                    target_contrastive_temperature=0.2)
  got = float(steps.sequence_loss(model, batch, key, cfg, None))
  user = model(batch["inputs_BxL"], batch["mask_BxL"], batch.get("resets_BxL"),
               item_table_VxE=model.item_tables()[0], dropout_key=key)
  term = float(contrastive.same_target_nce(user.reshape(-1, user.shape[-1]),
                                           jnp.asarray(batch["targets_BxL"]).reshape(-1), 0.2))
  assert term > 0
  assert got == pytest.approx(plain + 0.5 * term, rel=1e-5)
  with pytest.raises(ValueError, match="loss.target_contrastive_temperature"):
    loss_config(target_contrastive_temperature=0.0)
  with pytest.raises(ValueError, match="loss.target_contrastive_weight"):
    loss_config(target_contrastive_weight=-1.0)


@pytest.mark.parametrize("kind", ["full", "chunked"])
def test_exclude_seen_leaves_each_positions_own_history_out(tiny_setup, kind):
  """loss.exclude_seen: the step's softmax at each position leaves out the items before it in its
  own packed history (not its target), built here by a loop over the batch."""
  _, _, graphdef, params, _, batches = tiny_setup
  batch = next(iter(batches.epoch(0)))
  inputs, targets, resets = (np.asarray(batch[k]) for k in ("inputs_BxL", "targets_BxL",
                                                             "resets_BxL"))
  b, l = inputs.shape
  exclude = np.zeros((b * l, l), np.int32)
  for row in range(b):
    for t in range(l):
      start = max([j for j in range(t + 1) if resets[row, j]], default=0)
      seen = sorted({int(i) for i in inputs[row, start:t + 1]} - {0, int(targets[row, t])})
      exclude[row * l + t, :len(seen)] = seen
  assert (exclude > 0).sum() > b * l  # the batch has histories to leave out
  key = jax.random.PRNGKey(4)
  model = nnx.merge(graphdef, params, {})
  got = float(steps.sequence_loss(model, batch, key,
                                  loss_config(kind=kind, chunk_size=24, exclude_seen=True), None))
  plain = float(steps.sequence_loss(model, batch, key, loss_config(kind=kind, chunk_size=24),
                                    None))
  user = model(batch["inputs_BxL"], batch["mask_BxL"], batch.get("resets_BxL"),
               item_table_VxE=model.item_tables()[0], dropout_key=key)
  targets_N = jnp.asarray(targets).reshape(-1)
  want = float(losses.softmax_cross_entropy(
      user.reshape(-1, user.shape[-1]), model.item_tables()[1], None, targets_N,
      (targets_N > 0).astype(jnp.float32), exclude_NxS=jnp.asarray(exclude))[0])
  assert got == pytest.approx(want, rel=1e-5)
  assert got < plain


def test_further_targets_add_the_items_ahead_in_each_history(tiny_setup):
  """loss.further_targets: the step adds weight x the cross-entropy of the items 2..K+1 steps
  ahead in the position's own packed history (built here by a loop) to the next-item loss."""
  _, _, graphdef, params, _, batches = tiny_setup
  batch = next(iter(batches.epoch(0)))
  targets, resets = np.asarray(batch["targets_BxL"]), np.asarray(batch["resets_BxL"])
  b, l = targets.shape
  segment = np.cumsum(resets, axis=1)
  key = jax.random.PRNGKey(4)
  model = nnx.merge(graphdef, params, {})
  user = model(batch["inputs_BxL"], batch["mask_BxL"], batch.get("resets_BxL"),
               item_table_VxE=model.item_tables()[0], dropout_key=key)
  logits = np.asarray(user.reshape(b * l, -1) @ model.item_tables()[1].T, np.float64)
  real = logits[:, 1:]
  lse = np.log(np.exp(real - real.max(1, keepdims=True)).sum(1)) + real.max(1)
  total, count = 0.0, 0
  for row in range(b):
    for t in range(l):
      if targets[row, t] == 0:
        continue
      n = row * l + t
      total += lse[n] - logits[n, targets[row, t]]
      count += 1
      for j in (1, 2):
        if t + j < l and segment[row, t + j] == segment[row, t] and targets[row, t + j] > 0:
          total += 0.25 * (lse[n] - logits[n, targets[row, t + j]])
  got = float(steps.sequence_loss(model, batch, key, loss_config(
      kind="chunked", chunk_size=24, further_targets=2, further_weight=0.25), None))
  assert got == pytest.approx(total / count, rel=1e-5)
