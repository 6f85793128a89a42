"""`cold_start.py` / `lstmrec-cold-start`: how well new items (never trained on) are recommended.

A cold-start report needs workdirs trained on a cold split: a share of the items removed from
training entirely (`--config.cold_start.item_fraction=0.1`, or a recipe's `:cold`), so that
item content (attributes, titles) is all the model knows of them:

  python train.py --config ml100k_content:cold --workdir runs/ml100k_cold_sum
  python train.py --config ml100k_content:cold --workdir runs/ml100k_cold_id \
      --config.model.item_mode=id
  python cold_start.py --workdirs runs/ml100k_cold_id,runs/ml100k_cold_sum

Every workdir must use the same data and cold split (fraction, seed): the baselines are computed
once, from the first. The table's legend is printed under it; the protocol is in
lstmrec_jax/evaluation/cold_start.py.
"""

from __future__ import annotations

import os

from absl import flags

from lstmrec_jax.cli import common
from lstmrec_jax.cli import eval as eval_cli  # noqa: F401  # its --checkpoint, --splits, --data_path flags
from lstmrec_jax.cli import logs

flags.DEFINE_list("workdirs", None, "train.py workdirs trained with cold_start.item_fraction > 0.",
                  required=True)
FLAGS = flags.FLAGS  # --checkpoint, --splits and --data_path are eval.py's flags


LEGEND = """\
Columns (HR@10 / NDCG@10 of each group of targets):
  cold targets, all items   targets never trained on, ranked among all items (seen removed)
  cold targets, cold only   the same targets ranked among the cold items only: does the content
                            tell new items apart, whatever their scale against warm items
  warm targets              targets that had training events, ranked among all items
  all targets               every user of the split
Rows:
  random                    the rank a random order expects (cold-only column)
  popularity                training counts; a cold item scores 0, so it is never recommended
  content_popularity        a cold item scores the mean popularity of its attributes
  <workdir> (<item_mode>)   each model; item_mode id knows no cold item, sum/content/gate use
                            their attributes and titles"""


def main() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from lstmrec_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.evaluation import cold_start  # pylint: disable=g-import-not-at-top
  reports = {}
  for workdir in FLAGS.workdirs:
    common.load_plugins(workdir)  # eval.py's --plugins / --trust_plugins
    rep = workdir_lib.evaluate_cold_start(workdir, which=FLAGS.checkpoint, splits=FLAGS.splits,
                                          spec=common.workdir_spec(workdir, FLAGS.data_path))
    name = f"{os.path.basename(os.path.normpath(workdir))} ({rep['item_mode']})"
    reports[name] = rep
  first = next(iter(reports.values()))
  for name, rep in reports.items():
    if (rep["dataset"], rep["cold_fraction"], rep["cold_seed"]) != (
        first["dataset"], first["cold_fraction"], first["cold_seed"]):
      raise ConfigError(f"{name} uses another dataset or cold split than the first workdir")
  if jax.process_index() == 0:
    for split in FLAGS.splits:
      print(cold_start.format_table(reports, split))
      print()
    print(LEGEND)
    print()
    for name, rep in reports.items():
      print(f"{name}: step {rep['step']}, {rep['epochs_trained']} epochs; "
            f"{os.path.join(rep['workdir'], f'cold_start_{FLAGS.checkpoint}.json')}")


def run() -> None:
  """The console script."""
  logs.run_main(main, borrowed=("checkpoint", "splits", "data_path"))
