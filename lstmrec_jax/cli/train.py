"""`train.py` / `lstmrec-train`: trains (or resumes) a run, then evaluates its best checkpoint.

  python train.py                                   # built-in synthetic default
  python train.py --config beauty --workdir runs/beauty --config.model.hidden_size=128
  python train.py --config auto --workdir runs/mine --config.data.format=csv \
      --config.data.path=events.csv                 # your own data (README: Bring your own data)
"""

from __future__ import annotations

import os

from absl import flags

from lstmrec_jax.cli import common
from lstmrec_jax.cli import logs
from lstmrec_jax.cli import recipes

common.define_config_flag("config", recipes.default_config_path(), common.CONFIG_HELP)
flags.DEFINE_string("workdir", "runs/default", "Checkpoints, logs and the report go here; a "
                    "workdir with checkpoints is resumed.")
common.define_distributed_flags()
common.define_plugin_flag()
common.define_compilation_cache_flag("a rerun or resume of the same shapes skips the compiles")
common.define_host_malloc_flag()
FLAGS = flags.FLAGS


def main() -> None:
  common.use_host_malloc()
  import jax  # pylint: disable=g-import-not-at-top
  common.initialize_distributed()
  common.use_compilation_cache()
  from lstmrec_jax.evaluation import reports  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.train import loop  # pylint: disable=g-import-not-at-top
  common.load_plugins(FLAGS.workdir, record=True)
  common.pin_explicit_overrides()
  report = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, defaults=common.base_defaults())
  if "splits" in report and jax.process_index() == 0:
    print(reports.format_table(report))
    print(f"report: {os.path.join(FLAGS.workdir, 'report.json')}")


def run() -> None:
  """The console script."""
  logs.run_main(main)
