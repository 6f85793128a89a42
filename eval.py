"""Evaluates a checkpoint of a train.py workdir over all items; prints a table, writes JSON.

  python eval.py --workdir runs/beauty                      # best checkpoint, valid + test
  python eval.py --workdir runs/beauty --checkpoint latest --topk_out top10.tsv
  python eval.py --summarize runs/beauty_s0,runs/beauty_s1,runs/beauty_s2   # mean +- std
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
flags.DEFINE_list("summarize", None, "Workdirs (e.g. one config, several seeds) whose saved "
                  "eval_<checkpoint>.json reports are summarized as mean +- std; no evaluation.")
flags.DEFINE_string("summary_split", "test", "The split --summarize reads.")
FLAGS = flags.FLAGS


def summarize() -> None:
  import json
  import pathlib
  from lstmrec_jax.train import evaluate
  reports = []
  for workdir in FLAGS.summarize:
    path = pathlib.Path(workdir) / f"eval_{FLAGS.checkpoint}.json"
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no report; run python eval.py --workdir {workdir} first")
    reports.append(json.loads(path.read_text()))
  print(evaluate.format_summary(evaluate.summarize_reports(reports, FLAGS.summary_split)))


def main():
  if FLAGS.summarize:
    summarize()
    return
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
