"""A bundle's jax.export'ed observe / top_k in a process that cannot import this project.

Must-show 2 of issue 12, on a real bundle (e.g. the Beauty model's): --users seeded random
histories of the bundle's own raw item ids are ranked by the Python API (`Recommender`) here and
by `observe.jax` / `top_k.jax` (format 2: with `prepare.jax`'s tables of `params.npz`) in a fresh `python -I -S` process whose path holds only the folder
with jax and numpy (no site hooks, so not even a `pip install -e .` of this project is visible);
the two top-k lists must be equal for every user.

  python export.py --workdir runs/beauty --out bundles/beauty
  python benchmarks/bundle_check.py --bundle bundles/beauty --out benchmarks/results/bundle_check_beauty
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from lstmrec_jax.serving.recommender import Recommender  # noqa: E402

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.append(SITE)
    import importlib.util, json
    import jax, numpy as np
    assert importlib.util.find_spec("lstmrec_jax") is None, "the project is importable"
    d = BUNDLE
    load = lambda name: jax.export.deserialize(open(d + "/" + name, "rb").read())
    observe, top_k = load("observe.jax"), load("top_k.jax")
    meta = json.load(open(d + "/bundle.json"))
    if meta["format_version"] >= 2:  # the parameters are an argument: params.npz, once
      tables = load("prepare.jax").call(dict(np.load(d + "/params.npz")))
      run_observe = lambda s, x: observe.call(tables, s, x)
      run_top_k = lambda s, x: top_k.call(tables, s, x)
    else:  # format 1: the parameters inside
      run_observe, run_top_k = observe.call, top_k.call
    keys = json.load(open(d + "/items.json"))
    ids = json.load(open(IDS))
    state = np.zeros((len(ids), meta["exported"]["state_size"]), np.float32)
    for t in range(max(map(len, ids))):
      step = np.array([h[t] if t < len(h) else 0 for h in ids], np.int32)
      state = run_observe(state, step)
    width = max(map(len, ids))
    seen = np.zeros((len(ids), width), np.int32)
    for r, h in enumerate(ids):
      seen[r, :len(h)] = h
    top, _ = run_top_k(state, seen)
    print(json.dumps([[keys[int(i)] for i in row] for row in np.asarray(top)]))
""")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--bundle", required=True)
  p.add_argument("--users", type=int, default=64)
  p.add_argument("--max_history", type=int, default=50)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  rec = Recommender.load(args.bundle)
  meta = json.loads((pathlib.Path(args.bundle) / "bundle.json").read_text())
  k = meta["exported"]["k"]
  rng = np.random.default_rng(args.seed)
  lengths = rng.integers(1, args.max_history + 1, args.users)
  histories = [[rec.item_keys[int(i)] for i in rng.integers(1, len(rec.item_keys), n)]
               for n in lengths]
  want = [list(rec.recommend(h, k=k).items) for h in histories]  # raw ids, best first
  ids = [[rec.item_id(x) for x in h] for h in histories]
  with tempfile.TemporaryDirectory() as tmp:
    ids_path = os.path.join(tmp, "ids.json")
    with open(ids_path, "w") as f:
      json.dump([[int(i) for i in h] for h in ids], f)
    site = os.path.dirname(os.path.dirname(jax.__file__))
    script = (SCRIPT.replace("SITE", repr(site))
              .replace("BUNDLE", repr(str(pathlib.Path(args.bundle).absolute())))
              .replace("IDS", repr(ids_path)))
    env = {k_: v for k_, v in os.environ.items() if k_ != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
  if proc.returncode:
    raise SystemExit(proc.stderr[-3000:])
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  same = [g == json.loads(json.dumps(w)) for g, w in zip(got, want)]
  result = {"date": datetime.date.today().isoformat(), "bundle": args.bundle,
            "bundle_meta": {k_: meta.get(k_) for k_ in ("source", "step", "num_items", "created")},
            "command": " ".join(["python", *sys.argv]), "users": args.users, "k": k,
            "same_top_k_users": int(sum(same)), "first_user": {"api": want[0], "exported": got[0]}}
  print(json.dumps(result, indent=1))
  if args.out:
    pathlib.Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
  if not all(same):
    raise SystemExit(f"{args.users - sum(same)} users got other top-{k} lists")


if __name__ == "__main__":
  main()
