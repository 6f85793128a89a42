"""`tune.py` / `lstmrec-tune`: random search; each trial is a train.py run in <tune_dir>/trial_<k>.

  python tune.py --config beauty --space lstm \
      --tune_dir runs/tune_beauty --num_trials 30 --config.train.num_epochs=50

Trials are chosen on validation NDCG@10 only; results.md and results.jsonl in the tune_dir list
them best first, without test metrics. Read the winner's test metrics once, at the end, with
`python eval.py --workdir <tune_dir>/trial_<k>`. Rerunning the same command resumes the search.
"""

from __future__ import annotations

import os

from absl import flags
from etils import epath

from lstmrec_jax.cli import common
from lstmrec_jax.cli import logs
from lstmrec_jax.cli import recipes

common.define_config_flag("config", recipes.default_config_path(), "Base config of every "
                          "trial: " + common.CONFIG_HELP + " --config.* overrides apply to every "
                          "trial.")
flags.DEFINE_string("space", recipes.default_config_path("spaces/lstm.py"), "Search space: a "
                    "space shipped by name (lstm) or a Python file defining get_space() -> "
                    "{config key path: distribution spec}.")
flags.DEFINE_string("tune_dir", "runs/tune", "Trials (trial_<k>/, each a train.py workdir) and "
                    "results.md / results.jsonl go here; rerunning resumes the search.")
flags.DEFINE_integer("num_trials", 20, "Trials 0 .. num_trials - 1; raise it later to add trials.")
flags.DEFINE_integer("search_seed", 0, "Seeds the sampling; trial k's values depend only on it, "
                     "k and the space.")
common.define_distributed_flags()
common.define_plugin_flag()
common.define_host_malloc_flag()
FLAGS = flags.FLAGS


def main() -> None:
  common.use_host_malloc()  # the trials train in this process
  import jax  # pylint: disable=g-import-not-at-top
  common.initialize_distributed()
  from lstmrec_jax.tuning import search  # pylint: disable=g-import-not-at-top
  common.load_plugins()
  common.pin_explicit_overrides()
  space = search.load_space(recipes.resolve_config_file(FLAGS.space, "--space", "spaces"))
  search.tune(FLAGS.config, space, FLAGS.tune_dir,
              num_trials=FLAGS.num_trials, search_seed=FLAGS.search_seed,
              defaults=common.base_defaults())
  if jax.process_index() == 0:
    path = os.path.join(FLAGS.tune_dir, "results.md")
    print(epath.Path(path).read_text())  # a gs:// tune_dir too
    print(f"results: {path}")


def run() -> None:
  """The console script."""
  logs.run_main(main)
