"""Robustness with and without adversarial training: the three attack tables of issue 14.

Trains the config twice (standard, and with the `adversarial` group on), on the config's data
re-exported as a seqfile (so the poisoned copies below differ from it only by the fake users),
then measures, on the test split:

  (a) test-time input-embedding perturbations (white-box FGSM, L2 radius eps x the mean item
      embedding norm, per position): NDCG@10 / HR@10 against eps (`attacks.perturbed_ranks`);
  (b) random noise: 10/20/30% of each history's events replaced by random items
      (`attacks.noisy_split`);
  (c) data poisoning: fake users (0.5/1/2% of the users) whose sequences pair a cold-ish target
      item with popular items are added to training, and each variant is retrained; the
      target's HR@10 among real users who never saw it, and the real users' NDCG@10
      (`attacks.fake_users`, `attacks.target_exposure`).

Writes PREFIX.md (the three tables) and PREFIX.json. Workdirs under --out_dir are resumed, so
an interrupted study restarts where it stopped.

  python benchmarks/robustness.py --config configs/beauty.py --out_dir runs/robust_beauty \
      --results benchmarks/results/beauty_robustness \
      --adv adversarial.kind=fgsm --adv adversarial.eps=0.1 --adv adversarial.weight=1.0

  python benchmarks/robustness.py --tiny --out_dir /tmp/robust   # seconds, the test's run

CPU (Beauty recipe, one core each): 8 trainings (2 variants x (clean + 3 poisoned)); a standard
run ~15 min, an FGSM one ~2.5x that (two extra forward/backward passes per step): ~3.5 h in
all, plus ~5 min of attacks. Cut it with --poison 0.01 (one level) or --set train.num_epochs=8.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import study_common  # noqa: E402  (puts the repository root on sys.path)

import numpy as np  # noqa: E402

from lstmrec_jax import config_keys
from lstmrec_jax import run as run_lib  # noqa: E402
from lstmrec_jax import workdir as workdir_lib  # noqa: E402
from lstmrec_jax.evaluation import attacks  # noqa: E402
from lstmrec_jax.evaluation import metrics  # noqa: E402
from lstmrec_jax.evaluation import ranking  # noqa: E402

DEFAULT_ADV = ("adversarial.kind=fgsm", "adversarial.eps=0.1", "adversarial.weight=1.0")


def _train(config, workdir: pathlib.Path) -> None:
  from lstmrec_jax.train import loop  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.configs import base  # pylint: disable=g-import-not-at-top
  defaults = run_lib.flatten(config_keys.plain(base.get_base_config()))
  loop.train_and_evaluate(config, workdir, defaults=defaults)


def _with_data(config, info: dict):
  c = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") \
      else config
  c.data.format = "seqfile"
  c.data.path = info["path"]
  c.data.attributes_path = info["attributes_path"]
  c.data.min_user_events = 0
  c.data.min_item_events = 0
  c.data.min_rating = 0.0
  return c


def study(config, out_dir: str, *, adv=DEFAULT_ADV, eps_list=(0.0, 0.02, 0.05, 0.1, 0.2, 0.5),
          noise_list=(0.1, 0.2, 0.3), poison_list=(0.005, 0.01, 0.02), seed: int = 0,
          adv_name: str = "adversarial") -> dict:
  """Runs the study; returns {"attacks": {"perturbation": ..., "noise": ..., "poisoning": ...}}.

  The adversarial variant trains in OUT_DIR/<adv_name>: another setting under another name
  shares the standard variant's (finished) runs instead of training them again.
  """
  eps_list = tuple(sorted({0.0, *eps_list}))  # eps 0: the clean reference of every table
  out = pathlib.Path(out_dir)
  (out / "data").mkdir(parents=True, exist_ok=True)
  base_spec = run_lib.spec_from_config(config)
  dataset = run_lib.load_data(base_spec)
  attrs = (base_spec.data.attributes_path
           if base_spec.data.format == "seqfile" and base_spec.data.attributes_path else None)
  clean = attacks.export_seqfile(dataset, out / "data" / "clean.txt", attributes_path=attrs)
  target = attacks.pick_target(dataset.item_counts_V, seed)
  target_key = int(dataset.item_keys[target])
  lengths = dataset.train.lengths_U
  fake_len = int(np.clip(np.median(lengths) + 2, 4, base_spec.input.max_len + 2))
  poisoned = {}
  for f in poison_list:
    rows = attacks.fake_users(dataset.item_counts_V, target, num_users=max(
        1, math.ceil(f * dataset.num_users)), length=fake_len, seed=seed)
    poisoned[f] = attacks.export_seqfile(dataset, out / "data" / f"poison_{f:g}.txt",
                                         extra_rows=rows, attributes_path=clean["attributes_path"])

  result = {"target_item": target_key, "target_train_events": int(dataset.item_counts_V[target]),
            "fake_user_length": fake_len, "adversarial": list(adv), "variants": {}}
  for variant, overrides in (("standard", ()), ("adversarial", adv)):
    cfg = _with_data(config, clean)
    study_common.apply_overrides(cfg, overrides)
    run_dir = out / (adv_name if variant == "adversarial" else variant)
    workdir = run_dir / "clean"
    _train(cfg, workdir)
    restored = workdir_lib.restore_run(workdir, spec=study_common.workdir_spec(workdir))
    run, params = restored.run, restored.params
    ds, inp, ev = run.dataset, run.spec.input, run.spec.eval
    tgt = int(np.flatnonzero(ds.item_keys.astype(str) == str(target_key))[0])
    common = dict(batch_size=inp.eval_batch_size, max_len=inp.max_len, chunk_size=ev.chunk_size)
    rep: dict = {"workdir": str(workdir)}
    # (a) perturbations
    ranks = attacks.perturbed_ranks(run.graphdef, params, run.consts, ds, ds.test,
                                    eps_list=eps_list, loss_cfg=run.spec.loss, **common)
    rep["perturbation"] = {f"{e:g}": _acc(r) for e, r in ranks.items()}
    # (b) noise (eps 0 of (a) is the clean reference)
    rep["noise"] = {"0": rep["perturbation"]["0"]}
    for f in noise_list:
      noisy = dataclasses.replace(ds, test=attacks.noisy_split(ds.test, fraction=f,
                                                               num_items=ds.num_items, seed=seed))
      r = ranking.evaluate_params(run.graphdef, params, run.consts, noisy, splits=("test",),
                                  mesh=run.mesh, exclude_seen=ev.exclude_seen, beyond_k=0,
                                  **common)
      rep["noise"][f"{f:g}"] = {k: r["splits"]["test"]["model"]["overall"][k]
                                for k in ("NDCG@10", "HR@10")}
    # (c) poisoning
    rep["poisoning"] = {"0": attacks.target_exposure(run.graphdef, params, run.consts, ds,
                                                     ds.test, tgt, **common)}
    for f, info in poisoned.items():
      pcfg = _with_data(config, info)
      study_common.apply_overrides(pcfg, overrides)
      pdir = run_dir / f"poison_{f:g}"
      _train(pcfg, pdir)
      pr = workdir_lib.restore_run(pdir, spec=study_common.workdir_spec(pdir))
      pds = pr.run.dataset
      ptgt = int(np.flatnonzero(pds.item_keys.astype(str) == str(target_key))[0])
      real = attacks.real_users_split(pds, pds.test, info["fake_user_keys"])
      rep["poisoning"][f"{f:g}"] = attacks.target_exposure(
          pr.run.graphdef, pr.params, pr.run.consts, pds, real, ptgt, **common)
    result["variants"][variant] = rep
  return result


def _acc(ranks_U) -> dict:
  m = metrics.metrics_from_ranks(ranks_U, (10,))
  return {"NDCG@10": m["NDCG@10"], "HR@10": m["HR@10"]}


def _f(x) -> str:
  return "-" if x is None else f"{x:.4f}"


def markdown(result: dict) -> str:
  std, adv = result["variants"]["standard"], result["variants"]["adversarial"]
  lines = [f"Adversarial training: {', '.join(result['adversarial'])}", ""]

  def table(title, key, label):
    lines.extend([f"### {title}", "",
                  f"| {label} | std NDCG@10 | adv NDCG@10 | std HR@10 | adv HR@10 |"
                  " std drop | adv drop |", "|---:|---:|---:|---:|---:|---:|---:|"])
    s0, a0 = std[key]["0"]["NDCG@10"], adv[key]["0"]["NDCG@10"]
    for level in std[key]:
      s, a = std[key][level], adv[key][level]
      drop = lambda x, x0: "-" if not x0 else f"{100 * (1 - x / x0):.1f}%"
      lines.append(f"| {level} | {_f(s['NDCG@10'])} | {_f(a['NDCG@10'])} | {_f(s['HR@10'])} | "
                   f"{_f(a['HR@10'])} | {drop(s['NDCG@10'], s0)} | {drop(a['NDCG@10'], a0)} |")
    lines.append("")

  table("(a) test-time input-embedding perturbation (FGSM; L2 radius per position = eps x the "
        "mean item embedding norm)", "perturbation", "eps")
  table("(b) random noise in histories (share of events replaced)", "noise", "noise")
  lines.extend([f"### (c) data poisoning (target item {result['target_item']}, "
                f"{result['target_train_events']} training events; fake users of "
                f"{result['fake_user_length']} events)", "",
                "| fake users | std target HR@10 | adv target HR@10 | std NDCG@10 (real) |"
                " adv NDCG@10 (real) |", "|---:|---:|---:|---:|---:|"])
  for level in std["poisoning"]:
    s, a = std["poisoning"][level], adv["poisoning"][level]
    share = "0" if level == "0" else f"{100 * float(level):g}%"
    lines.append(f"| {share} | {_f(s['target_HR@10'])} | {_f(a['target_HR@10'])} | "
                 f"{_f(s['NDCG@10'])} | {_f(a['NDCG@10'])} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/beauty.py")
  ap.add_argument("--set", action="append", default=[], help="group.key=value (both variants)")
  ap.add_argument("--adv", action="append", default=None,
                  help=f"the adversarial variant's overrides (default {' '.join(DEFAULT_ADV)})")
  ap.add_argument("--out_dir", required=True)
  ap.add_argument("--adv_name", default="adversarial",
                  help="the adversarial variant's folder under --out_dir: a new name for a new "
                       "--adv setting reuses the standard variant's runs")
  ap.add_argument("--results", default="benchmarks/results/robustness")
  ap.add_argument("--eps", default="0,0.02,0.05,0.1,0.2,0.5",
                  help="attack (a) radii, x the mean item embedding norm")
  ap.add_argument("--noise", default="0.1,0.2,0.3")
  ap.add_argument("--poison", default="0.005,0.01,0.02")
  ap.add_argument("--seed", type=int, default=0, help="the target item and the noise")
  ap.add_argument("--tiny", action="store_true", help="the seconds-long synthetic config")
  args = ap.parse_args(argv)
  if args.tiny:
    config = study_common.tiny_config(os.path.join(args.out_dir, "cache"))
    study_common.apply_overrides(config, args.set)
  else:
    config = study_common.load_config(args.config, args.set)
  floats = lambda s: tuple(float(x) for x in s.split(",") if x)
  result = study(config, args.out_dir, adv=tuple(args.adv or DEFAULT_ADV),
                 eps_list=floats(args.eps), noise_list=floats(args.noise),
                 poison_list=floats(args.poison), seed=args.seed, adv_name=args.adv_name)
  text = markdown(result)
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  pathlib.Path(args.results + ".md").write_text(text)
  pathlib.Path(args.results + ".json").write_text(json.dumps(result, indent=2))
  print(text)
  print(f"wrote {args.results}.md and .json")
  return result


if __name__ == "__main__":
  main()
