"""Cold-start report of train.py workdirs trained on a cold-item split; prints one table.

  python train.py --config configs/ml100k_content.py:cold --workdir runs/ml100k_cold_sum
  python train.py --config configs/ml100k_content.py:cold --workdir runs/ml100k_cold_id \
      --config.model.item_mode=id
  python cold_start.py --workdirs runs/ml100k_cold_id,runs/ml100k_cold_sum

Every workdir must use the same data and cold split (fraction, seed): the baselines are computed
once, from the first. See lstmrec_jax/train/cold_start.py for the protocol.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from lstmrec_jax.data.errors import DataError
from lstmrec_jax.train import logs

flags.DEFINE_list("workdirs", None, "train.py workdirs trained with cold_start.item_fraction > 0.",
                  required=True)
flags.DEFINE_string("checkpoint", "best", "'best' (validation NDCG@10), 'latest' or a step.")
flags.DEFINE_list("splits", ["valid", "test"], "Splits to evaluate.")
flags.DEFINE_string("data_path", None, "Override the runs' data.path.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    _main()
  except (DataError, FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None


def _main():
  import jax
  from lstmrec_jax.train import cold_start
  reports = {}
  for workdir in FLAGS.workdirs:
    rep = cold_start.evaluate_workdir(workdir, which=FLAGS.checkpoint, splits=FLAGS.splits,
                                      data_path=FLAGS.data_path)
    name = f"{os.path.basename(os.path.normpath(workdir))} ({rep['item_mode']})"
    reports[name] = rep
  first = next(iter(reports.values()))
  for name, rep in reports.items():
    if (rep["dataset"], rep["cold_fraction"], rep["cold_seed"]) != (
        first["dataset"], first["cold_fraction"], first["cold_seed"]):
      raise ValueError(f"{name} uses another dataset or cold split than the first workdir")
  if jax.process_index() == 0:
    for split in FLAGS.splits:
      print(cold_start.format_table(reports, split))
      print()
    for name, rep in reports.items():
      print(f"{name}: step {rep['step']}, {rep['epochs_trained']} epochs; "
            f"{os.path.join(rep['workdir'], f'cold_start_{FLAGS.checkpoint}.json')}")


if __name__ == "__main__":
  logs.setup()
  app.run(main)
