"""Evaluates a checkpoint of a train.py workdir over all items; prints a table, writes JSON.

  python eval.py --workdir runs/beauty                      # best checkpoint, valid + test
  python eval.py --workdir runs/beauty --checkpoint latest --topk_out top10.tsv
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from lstmrec_jax.train import logs

flags.DEFINE_string("workdir", "runs/default", "A train.py workdir.")
flags.DEFINE_string("checkpoint", "best", "'best' (validation NDCG@10), 'latest' or a step.")
flags.DEFINE_list("splits", ["valid", "test"], "Splits to evaluate.")
flags.DEFINE_bool("keep_seen", False, "Keep the user's already-seen items in the ranking.")
flags.DEFINE_string("topk_out", None, "Write each test user's top-K next items here (TSV).")
flags.DEFINE_integer("topk", 10, "K for --topk_out.")
flags.DEFINE_string("data_path", None, "Override the run's data.path.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (several hosts).")
FLAGS = flags.FLAGS


def main():
  import jax
  if FLAGS.distributed:
    jax.distributed.initialize()
  from lstmrec_jax.train import evaluate
  report = evaluate.evaluate_checkpoint(
      FLAGS.workdir, which=FLAGS.checkpoint, splits=FLAGS.splits,
      exclude_seen=not FLAGS.keep_seen, topk_out=FLAGS.topk_out, topk=FLAGS.topk,
      data_path=FLAGS.data_path)
  if jax.process_index() == 0:
    print(f"checkpoint {FLAGS.checkpoint} (step {report['step']}) of {FLAGS.workdir}")
    print(evaluate.format_table(report))
    print(f"report: {os.path.join(FLAGS.workdir, f'eval_{FLAGS.checkpoint}.json')}")


if __name__ == "__main__":
  logs.run_main(main)
