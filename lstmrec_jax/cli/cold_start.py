"""`cold_start.py` / `lstmrec-cold-start`: cold-start report of workdirs trained on a cold split.

  python train.py --config configs/ml100k_content.py:cold --workdir runs/ml100k_cold_sum
  python train.py --config configs/ml100k_content.py:cold --workdir runs/ml100k_cold_id \
      --config.model.item_mode=id
  python cold_start.py --workdirs runs/ml100k_cold_id,runs/ml100k_cold_sum

Every workdir must use the same data and cold split (fraction, seed): the baselines are computed
once, from the first. See lstmrec_jax/evaluation/cold_start.py for the protocol.
"""

from __future__ import annotations

import os

from absl import flags

from lstmrec_jax.cli import common
from lstmrec_jax.cli import eval as eval_cli  # its --checkpoint, --splits, --data_path flags
from lstmrec_jax.cli import logs

flags.DEFINE_list("workdirs", None, "train.py workdirs trained with cold_start.item_fraction > 0.",
                  required=True)
FLAGS = flags.FLAGS  # --checkpoint, --splits and --data_path are eval.py's flags


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
    for name, rep in reports.items():
      print(f"{name}: step {rep['step']}, {rep['epochs_trained']} epochs; "
            f"{os.path.join(rep['workdir'], f'cold_start_{FLAGS.checkpoint}.json')}")


def run() -> None:
  """The console script."""
  logs.run_main(main)
