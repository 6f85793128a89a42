"""Trains (or resumes) a run, then evaluates its best checkpoint on validation and test.

  python train.py                                   # built-in synthetic default
  python train.py --config configs/beauty.py --workdir runs/beauty --config.model.hidden_size=128
"""

import os

# Before TensorFlow is imported anywhere: quiet C++ logs. The pipeline hides accelerators from TF.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from lstmrec_jax.train import logs
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/default.py", "Config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/default", "Checkpoints, logs and the report go here; a "
                    "workdir with checkpoints is resumed.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (several hosts).")
FLAGS = flags.FLAGS


def main():
  import jax
  if FLAGS.distributed:
    jax.distributed.initialize()
  from lstmrec_jax.train import evaluate, loop
  report = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if "splits" in report and jax.process_index() == 0:
    print(evaluate.format_table(report))
    print(f"report: {os.path.join(FLAGS.workdir, 'report.json')}")


if __name__ == "__main__":
  logs.run_main(main)
