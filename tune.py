"""Random hyper-parameter search: each trial is a train.py run in <tune_dir>/trial_<k>.

  python tune.py --config configs/beauty.py --space configs/spaces/lstm.py \
      --tune_dir runs/tune_beauty --num_trials 30 --config.train.num_epochs=50

Trials are chosen on validation NDCG@10 only; results.md and results.jsonl in the tune_dir list
them best first, without test metrics. Read the winner's test metrics once, at the end, with
`python eval.py --workdir <tune_dir>/trial_<k>`. Rerunning the same command resumes the search.
"""

import os

# Before TensorFlow is imported anywhere: quiet C++ logs. The pipeline hides accelerators from TF.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from lstmrec_jax.train import logs
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/default.py", "Base config of every trial "
                                "(configs/*.py); --config.* overrides apply to every trial.",
                                lock_config=True)
flags.DEFINE_string("space", "configs/spaces/lstm.py", "Search space: a Python file defining "
                    "get_space() -> {config key path: distribution spec}.")
flags.DEFINE_string("tune_dir", "runs/tune", "Trials (trial_<k>/, each a train.py workdir) and "
                    "results.md / results.jsonl go here; rerunning resumes the search.")
flags.DEFINE_integer("num_trials", 20, "Trials 0 .. num_trials - 1; raise it later to add trials.")
flags.DEFINE_integer("search_seed", 0, "Seeds the sampling; trial k's values depend only on it, "
                     "k and the space.")
FLAGS = flags.FLAGS


def main():
  from lstmrec_jax.train import tune
  tune.tune(FLAGS.config, tune.load_space(FLAGS.space), FLAGS.tune_dir,
            num_trials=FLAGS.num_trials, search_seed=FLAGS.search_seed)
  import jax
  if jax.process_index() == 0:
    path = os.path.join(FLAGS.tune_dir, "results.md")
    with open(path) as f:
      print(f.read())
    print(f"results: {path}")


if __name__ == "__main__":
  from lstmrec_jax.train import tune as tune_lib
  logs.run_main(main, user_errors=(tune_lib.TuneError,))
