"""`export.py` / `lstmrec-export`: writes a self-contained serving bundle from a workdir.

  python export.py --workdir runs/default --out bundles/default
  python serve.py --bundle bundles/default

The bundle (lstmrec_jax/serving/bundle.py) holds the parameters, model config, raw-id vocabulary,
popularity counts, item content and metadata, prepare / observe / top_k serialized with
jax.export, and the checksums of all of them; loading it never reads the training data and never
runs code. The digest printed at the end pins it: `serve.py --bundle_sha256 <digest>`.
"""

from __future__ import annotations

from absl import flags

from lstmrec_jax.cli import common
from lstmrec_jax.cli import logs

flags.DEFINE_string("workdir", "runs/default", "A train.py workdir.")
flags.DEFINE_string("out", None, "The bundle folder to write.", required=True)
flags.DEFINE_string("checkpoint", "best", "'best' (validation NDCG@10), 'latest' or a step.")
flags.DEFINE_string("data_path", None, "Override the run's data.path (read once, here only).")
flags.DEFINE_integer("export_k", 10, "K of the jax.export'ed top_k.")
common.define_plugin_flag()
FLAGS = flags.FLAGS


def main() -> None:
  from lstmrec_jax.serving import bundle  # pylint: disable=g-import-not-at-top
  common.load_plugins(FLAGS.workdir)  # recorded plug-ins only with --trust_plugins
  spec = common.workdir_spec(FLAGS.workdir, FLAGS.data_path)
  b = bundle.from_workdir(FLAGS.workdir, which=FLAGS.checkpoint, spec=spec,
                          trust_plugins=FLAGS.trust_plugins)
  out = bundle.save(b, FLAGS.out, export_k=FLAGS.export_k)
  print(f"bundle: {out} ({b.num_items - 1} items, step {b.meta['source'].get('step')}); "
        f"sha256 {bundle.digest(out)}")


def run() -> None:
  """The console script."""
  logs.run_main(main)
