"""SIMULATION study of the plain LSTM and the offline RL heads on MovieLens-100K (issue 26).

Not an evaluation on logged data: every number this writes comes from a learned user simulator
(lstmrec_jax/evaluation/simulation.py), and says how the policies fare against that simulator.

  1. The users are split at random (--split_seed) into A (the simulated users) and B.
  2. The simulator is fitted on B only: a choice model, an LSTM trained with the plain recipe on
     B's events (its own seed, one per --user_seeds), and a rating model (mu + b_i + b_u).
  3. Each policy (a train.py workdir; --policies name=workdir, several seeds per name) and head
     starts from every A user's training history and recommends a slate of K for T steps; the
     simulated user takes a slate item or nothing, rates what it takes, and the item joins both
     histories (simulation.run_episodes).
  4. Reported per policy and head (mean +- std over the policy's seeds, each the mean over the
     simulator seeds): discounted return (gamma 0.5 and 0.9), hit rate, high-rating hit rate,
     distinct items shown, and the beyond-accuracy metrics of every slate shown
     (evaluation/beyond.py: coverage, Gini, novelty, genre ILD, personalization); references:
     random, popularity and the simulator's own greedy choice. Validity checks first: the choice
     model's HR@10 / NDCG@10 on A's test targets beside the plain policy's, and the rating
     model's RMSE on A's held-out ratings beside the item-mean and global-mean baselines.

The policies are the workdirs of the main ML-100K table (trained on every user's training
events, A's and B's): A's held-out events are unseen by the policies and the simulator alike.

  taskset -c 1 python benchmarks/rl_simulation.py --workdir runs/sim \\
      --policies plain=runs/plain_s0,plain=runs/plain_s1,sqn=runs/sqn_s0,...
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import pathlib
import sys

import numpy as np

import train_throughput as tt  # benchmarks/: machine_info, write_result, load_average

RATING_REWARD = {"threshold": 4.0, "above": 1.0, "below": 0.2}  # configs/ml100k_rl.py's


def reward_of(ratings: np.ndarray) -> np.ndarray:
  return np.where(ratings >= RATING_REWARD["threshold"], RATING_REWARD["above"],
                  RATING_REWARD["below"])


def split_users(users: np.ndarray, seed: int) -> set:
  """The raw user ids of part A (half of the users, a seeded draw)."""
  unique = np.unique(users)
  return set(np.random.default_rng(seed).permutation(unique)[:len(unique) // 2].tolist())


def train_user_model(csv: pathlib.Path, workdir: pathlib.Path, seed: int, cache: str,
                     epochs: int | None = None) -> None:
  """The plain ML-100K recipe on part B's events (a CSV), with its own seed, trained to the end of
  its schedule (no early stop: on half of the users an epoch is 3 steps, the recipe's 100-step
  warm-up lasts 33 epochs, and its patience of 10 validations ended one seed during it)."""
  from lstmrec_jax.configs import ml100k  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import loop  # pylint: disable=g-import-not-at-top
  if (workdir / "report.json").is_file():
    return
  c = ml100k.get_config()
  c.seed = seed
  c.data.format = "csv"
  c.data.path = str(csv)
  c.data.columns.user, c.data.columns.item = "user", "item"
  c.data.columns.time, c.data.columns.rating = "timestamp", "rating"
  c.data.cache_dir = cache
  c.input.backend = "numpy"
  c.train.progress_bar = False
  c.train.num_devices = 1
  c.train.patience = 0
  if epochs:
    c.train.num_epochs = epochs
  loop.train_and_evaluate(c, workdir)


class ServedModel:
  """A served model (`serving.Recommender`) over the common item ids of the policies' dataset.

  Histories start from their last `max_len` events (what the model read in training and in the
  offline evaluation) and grow by streaming; rankings exclude everything the user consumed.
  """

  def __init__(self, rec, common_keys: list, head: str = "softmax"):
    self.rec, self.head = rec, head
    own = {str(k): i for i, k in enumerate(rec.item_keys) if i > 0}
    self.to_own = np.asarray([own.get(str(k), 0) if i else 0
                              for i, k in enumerate(common_keys)], np.int64)
    self.to_common = np.zeros(len(rec.item_keys), np.int64)
    self.to_common[self.to_own[self.to_own > 0]] = np.flatnonzero(self.to_own > 0)

  def start(self, histories):
    windows = [[int(x) for x in self.to_own[h][-self.rec.max_len:] if x] for h in histories]
    states = np.zeros((len(histories), self.rec.layout.size), np.float32)
    states = self.rec.observe_ids(states, windows)
    return {"states": states, "seen": [list(h) for h in histories]}

  def observe(self, state, items_B):
    own = self.to_own[items_B]
    state["states"] = self.rec.observe_ids(state["states"],
                                           [[int(i)] if i else [] for i in own])
    for row, item in enumerate(items_B):
      if item:
        state["seen"][row].append(int(item))
    return state

  def scores(self, state) -> np.ndarray:
    """[B, V_common] scores of this head (-inf for items the model does not know)."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from lstmrec_jax.scoring import ranks  # pylint: disable=g-import-not-at-top
    from lstmrec_jax.scoring import steps  # pylint: disable=g-import-not-at-top
    user_BxE, count_B = self.rec._user_of(state["states"])  # pylint: disable=protected-access
    # A model with the transition prior: the vector ends with the last item, whose pairs add.
    user_BxE, pairs = self.rec.tables.pairs(jnp.asarray(user_BxE), self.head)
    table = self.rec.tables.head_table(self.head)
    own = steps.fallback_user(user_BxE, jnp.asarray(count_B) > 0) @ table.T
    if pairs is not None:
      own = ranks.add_pairs(own, pairs, 0)
    own = np.asarray(own, np.float64)
    out = np.full((own.shape[0], len(self.to_own)), -np.inf)
    known = self.to_own > 0
    out[:, known] = own[:, self.to_own[known]]
    return out

  def slates(self, state, k, exclude):
    user_BxE, count_B = self.rec._user_of(state["states"])  # pylint: disable=protected-access
    exclude = [[int(x) for x in self.to_own[list(s) + list(e)] if x]
               for s, e in zip(state["seen"], exclude)]
    ids, scores = self.rec.rank_ids(np.asarray(user_BxE), np.asarray(count_B), k, exclude,
                                    head=self.head)
    return np.where(np.isfinite(scores), self.to_common[ids], 0)

  def probabilities(self, state):
    s = self.scores(state)
    s[:, 0] = -np.inf
    s = s - s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=1, keepdims=True)


class FixedScores:
  """A reference policy ranking by fixed item scores (popularity) or fresh noise (random)."""

  def __init__(self, scores_V: np.ndarray | None, rng: np.random.Generator, num_items: int):
    self.scores_V, self.rng, self.num_items = scores_V, rng, num_items

  def start(self, histories):
    return {"seen": [set(h) for h in histories]}

  def observe(self, state, items_B):
    for row, item in enumerate(items_B):
      if item:
        state["seen"][row].add(int(item))
    return state

  def scores(self, state) -> np.ndarray:
    """[B, V] scores: the fixed ones for every row, or fresh noise."""
    b = len(state["seen"])
    return (np.tile(self.scores_V, (b, 1)).astype(np.float64) if self.scores_V is not None
            else self.rng.random((b, self.num_items)))

  def slates(self, state, k, exclude):
    s = self.scores(state)
    s[:, 0] = -np.inf
    for row, seen in enumerate(state["seen"]):
      s[row, list(seen | exclude[row])] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


class Greedy:
  """The simulator's own top-K (a ceiling of the hit rate): it shows what the user would take."""

  def __init__(self, user: ServedModel):
    self.user = user

  def start(self, histories):
    return self.user.start(histories)

  def observe(self, state, items_B):
    return self.user.observe(state, items_B)

  def slates(self, state, k, exclude):
    s = self.user.scores(state)
    s[:, 0] = -np.inf
    for row, seen in enumerate(state["seen"]):
      s[row, seen + list(exclude[row])] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def offline_check(model: ServedModel, histories, targets) -> dict[str, float]:
  """HR@10 / NDCG@10 of `model` on (history, target) pairs, seen items removed."""
  state = model.start(histories)
  s = model.scores(state)
  s[:, 0] = -np.inf
  for row, h in enumerate(histories):
    s[row, [x for x in h if x != targets[row]]] = -np.inf
  target_s = s[np.arange(len(targets)), targets]
  rank = (s >= target_s[:, None]).sum(axis=1) - 1
  rank = np.where(np.isfinite(target_s), rank, 10 ** 9)
  return {"HR@10": float(np.mean(rank < 10)),
          "NDCG@10": float(np.mean(np.where(rank < 10, 1 / np.log2(rank + 2.0), 0.0))),
          "users": len(targets)}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="the simulator's files (B's CSV, models)")
  p.add_argument("--policies", required=True,
                 help="name=workdir,... (a name repeated for each seed)")
  p.add_argument("--user_seeds", default="100,101,102", help="the choice model's seeds")
  p.add_argument("--split_seed", type=int, default=2026)
  p.add_argument("--episodes", type=int, default=2, help="episodes per A user")
  p.add_argument("--horizon", type=int, default=20)
  p.add_argument("--slate", type=int, default=10)
  p.add_argument("--miss_scale", type=float, default=1.0)
  p.add_argument("--data", default=str(pathlib.Path(tt.default_data_path()).parents[1]
                                       / "ml-100k"))
  p.add_argument("--user_epochs", type=int, default=0, help="choice model epochs (0: recipe)")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  from lstmrec_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.cli import common  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.data.formats import movielens  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.evaluation import beyond  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.evaluation import simulation  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.serving.recommender import Recommender  # pylint: disable=g-import-not-at-top

  # Workdirs saved before newer config keys (the choice models, the policies) take their defaults.
  run_lib.set_older_workdir_defaults(common.base_defaults())
  work = pathlib.Path(args.workdir)
  work.mkdir(parents=True, exist_ok=True)
  log = movielens.read_movielens(args.data)
  part_a = split_users(log.users, args.split_seed)
  in_a = np.asarray([u in part_a for u in log.users.tolist()])
  csv = work / "part_b.csv"
  if not csv.is_file():
    rows = ["user,item,rating,timestamp"] + [
        f"{u},{i},{int(r)},{t}" for u, i, r, t in zip(log.users[~in_a], log.items[~in_a],
                                                     log.ratings[~in_a], log.timestamps[~in_a])]
    csv.write_text("\n".join(rows) + "\n")
  seeds = [int(s) for s in args.user_seeds.split(",")]
  for seed in seeds:
    print(f"choice model, seed {seed} ...", flush=True)
    train_user_model(csv, work / f"user_s{seed}", seed, str(work / "cache"), args.user_epochs)

  policies = collections.defaultdict(list)
  for item in args.policies.split(","):
    name, path = item.split("=", 1)
    policies[name].append(path)
  first = next(iter(policies.values()))[0]
  spec = common.workdir_spec(first)  # keys added since a workdir was written: their defaults
  dataset = run_lib.load_data(spec)
  common_keys = [None] + dataset.item_keys[1:].tolist()
  num_items = len(common_keys)
  key_to_id = {k: i for i, k in enumerate(common_keys) if i}
  ratings_of = {(u, i): r for u, i, r in zip(log.users.tolist(), log.items.tolist(),
                                             log.ratings.tolist())}
  a_rows = [u for u in range(dataset.num_users) if dataset.user_keys[u] in part_a
            and len(dataset.train[u]) > 0]
  histories = [np.asarray(dataset.train[u], np.int64) for u in a_rows]
  # Rating model on B; each A user's offset from the ratings of their training history.
  b_items = np.asarray([key_to_id.get(i, 0) for i in log.items[~in_a].tolist()])
  rating_model = simulation.RatingModel.fit(b_items, log.ratings[~in_a], log.users[~in_a],
                                            num_items)
  user_keys = [dataset.user_keys[u] for u in a_rows]
  user_bias = np.asarray([rating_model.user_bias(h, [ratings_of[(k, common_keys[i])] for i in h])
                          for k, h in zip(user_keys, histories)])
  # Validity of the rating model: A's held-out (valid and test) ratings.
  held = [(b, int(split.targets_U[a])) for b, a in zip(range(len(a_rows)), a_rows)
          for split in (dataset.valid, dataset.test)]
  truth = np.asarray([ratings_of[(user_keys[b], common_keys[i])] for b, i in held])
  items_h = np.asarray([i for _, i in held])
  pred = rating_model.expected(user_bias[[b for b, _ in held]], items_h)
  rmse = lambda x: float(np.sqrt(np.mean(np.square(x - truth))))
  checks = {"rating_rmse": rmse(pred),
            "rating_rmse_item_mean": rmse(rating_model.mean + rating_model.item_bias_V[items_h]),
            "rating_rmse_global_mean": rmse(np.full(len(truth), rating_model.mean)),
            "rating_sigma": rating_model.sigma, "held_out_ratings": len(truth),
            "users_A": len(a_rows), "users_B": int(len(np.unique(log.users[~in_a])))}
  test_hist = [np.asarray(dataset.test.history[a], np.int64) for a in a_rows]
  test_targets = np.asarray([int(dataset.test.targets_U[a]) for a in a_rows])
  users = {s: ServedModel(Recommender.load(work / f"user_s{s}"), common_keys) for s in seeds}
  checks["choice_model_on_A_test"] = {s: offline_check(u, test_hist, test_targets)
                                      for s, u in users.items()}
  counts = np.asarray(dataset.item_counts_V, np.float64)
  checks["popularity_on_A_test"] = offline_check(  # the simulator's validity floor
      FixedScores(counts, np.random.default_rng(0), len(counts)), test_hist, test_targets)
  print("validity:", json.dumps(checks, indent=1), flush=True)
  weak = [s for s, c in checks["choice_model_on_A_test"].items()
          if c["HR@10"] <= checks["popularity_on_A_test"]["HR@10"]]
  if weak:
    raise SystemExit(f"{work}: choice model seed(s) {weak} rank A's test targets no better than "
                     f"popularity (HR@10 {checks['popularity_on_A_test']['HR@10']:.4f}): not a valid "
                     "simulator; delete their user_s<seed> folders to retrain, or drop the seeds")

  attrs = beyond.dataset_attributes(dataset)
  start = [h for h in histories for _ in range(args.episodes)]
  bias = np.repeat(user_bias, args.episodes)

  def simulate(make_policy, label, seed_index):
    per_sim = []
    for s in seeds:
      rng = np.random.default_rng([s, args.split_seed, seed_index])
      policy = make_policy(s)
      ep = simulation.run_episodes(policy, users[s], rating_model, start, bias,
                                   horizon=args.horizon, slate=args.slate, reward_of=reward_of,
                                   rng=rng, miss_scale=args.miss_scale)
      metrics = simulation.episode_metrics(ep)
      acc = beyond.BeyondAccumulator(dataset.item_counts_V, k=args.slate, attrs_VxA=attrs)
      for slates in ep.slates_TxBxK:
        acc.add(slates)
      metrics["beyond"] = acc.result()
      per_sim.append(metrics)
    print(f"{label}: return@0.5 {np.mean([m['return@0.5'] for m in per_sim]):.4f} hit rate "
          f"{np.mean([m['hit_rate'] for m in per_sim]):.4f}", flush=True)
    return per_sim

  results = {}
  for name, paths in policies.items():
    recs = [Recommender.load(path, spec=common.workdir_spec(path)) for path in paths]
    heads = ["softmax"] + (["q"] if "q" in recs[0].heads else [])
    for head in heads:
      offline = [offline_check(ServedModel(r, common_keys, head), test_hist, test_targets)
                 for r in recs]
      runs = [simulate(lambda s, r=r: ServedModel(r, common_keys, head), f"{name}/{head}/{k}", k)
              for k, r in enumerate(recs)]
      results[f"{name}/{head}"] = {"workdirs": paths, "offline_A_test": offline, "runs": runs}
  references = {
      "random": lambda s: FixedScores(None, np.random.default_rng(s), num_items),
      "popularity": lambda s: FixedScores(counts, np.random.default_rng(s), num_items),
      "simulator greedy": lambda s: Greedy(users[s])}
  for name, make in references.items():
    results[name] = {"workdirs": [], "offline_A_test": [], "runs": [simulate(make, name, 0)]}

  result = {"date": datetime.date.today().isoformat(), "machine": tt.machine_info(),
            "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
            "label": "SIMULATION (learned user simulator; not logged-data evaluation)",
            "settings": vars(args), "validity": checks, "results": results,
            "load_after": tt.load_average()}
  tt.write_result(result, args.out, "ml100k_rl_simulation", markdown)


SIM_KEYS = ("return@0.5", "return@0.9", "hit_rate", "high_hit_rate", "distinct_shown")
BEYOND_KEYS = ("coverage@10", "gini@10", "novelty@10", "ILD_attr@10", "personalization@10")


def _mean_std(values):
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  return f"{np.mean(values):.4f} +- {np.std(values, ddof=1) if len(values) > 1 else 0.0:.4f}"


def markdown(result) -> str:
  s = result["settings"]
  v = result["validity"]
  lines = [f"# SIMULATION: the plain LSTM and the offline RL heads against a learned user "
           f"simulator, MovieLens-100K ({result['date']})", "",
           "**These are simulated outcomes, not measurements on logged data.** The simulated "
           f"users are half of the users (part A, seed {s['split_seed']}); the simulator "
           "(an LSTM choice model, one per seed, and a baseline rating model) was fitted on "
           f"the other half only. {s['episodes']} episodes per A user, horizon "
           f"{s['horizon']}, slate {s['slate']}, outside-option scale {s['miss_scale']}; reward "
           "1.0 for a sampled rating >= 4, 0.2 below (the training reward).",
           f"Machine: {result['machine'].get('cpu_model')}; command: `{result['command']}`", "",
           "Validity checks (part A):", "",
           f"- rating model RMSE on A's {v['held_out_ratings']} held-out ratings: "
           f"{v['rating_rmse']:.3f} (item mean {v['rating_rmse_item_mean']:.3f}, global mean "
           f"{v['rating_rmse_global_mean']:.3f}); residual sigma {v['rating_sigma']:.3f}",
           "- choice model (trained on B) on A's test targets: " + ", ".join(
               f"seed {k}: HR@10 {c['HR@10']:.4f} NDCG@10 {c['NDCG@10']:.4f}"
               for k, c in v["choice_model_on_A_test"].items())
           + (f"; popularity: HR@10 {v['popularity_on_A_test']['HR@10']:.4f} NDCG@10 "
              f"{v['popularity_on_A_test']['NDCG@10']:.4f} (a choice model must beat it)"
              if "popularity_on_A_test" in v else ""), ""]
  header = ["policy / head", "offline HR@10 on A", *SIM_KEYS, *BEYOND_KEYS]
  lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
  for name, r in result["results"].items():
    per_seed = [{k: np.mean([m[k] for m in run]) for k in SIM_KEYS} for run in r["runs"]]
    beyond_seed = [{k: np.mean([m["beyond"].get(k) for m in run if m["beyond"].get(k)
                                is not None] or [np.nan]) for k in BEYOND_KEYS}
                   for run in r["runs"]]
    offline = _mean_std([o["HR@10"] for o in r["offline_A_test"]])
    cells = [_mean_std([p[k] for p in per_seed]) for k in SIM_KEYS]
    cells += [_mean_std([b[k] for b in beyond_seed if not np.isnan(b[k])]) for k in BEYOND_KEYS]
    lines.append(f"| {name} ({len(r['runs'])} seed{'s' * (len(r['runs']) > 1)}) | {offline} | "
                 + " | ".join(cells) + " |")
  lines += ["", "mean +- std over the policy's seeds (each the mean over the simulator seeds "
            f"{s['user_seeds']}); 95% intervals over episodes are in the JSON."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
