"""`eval.py` / `lstmrec-eval`: evaluates a checkpoint over all items; prints a table, writes JSON.

  python eval.py --workdir runs/beauty                      # best checkpoint, valid + test
  python eval.py --workdir runs/beauty --checkpoint latest --topk_out top10.tsv
  python eval.py --workdir runs/checkins --seen_targets rankable   # repeats stay rankable
  python eval.py --summarize runs/beauty_s0,runs/beauty_s1,runs/beauty_s2   # mean +- std
  python eval.py --workdir runs/beauty --plot     # loss and validation curves: runs/beauty/curves.png
"""

from __future__ import annotations

import json
import os

from absl import flags
from etils import epath

from lstmrec_jax import config_keys
from lstmrec_jax.cli import common
from lstmrec_jax.cli import logs

flags.DEFINE_string("workdir", "runs/default", "A train.py workdir.")
flags.DEFINE_string("checkpoint", "best", "'best' (validation NDCG@10), 'latest' or a step.")
flags.DEFINE_list("splits", ["valid", "test"], "Splits to evaluate.")
flags.DEFINE_bool("keep_seen", False, "Keep the user's already-seen items in the ranking.")
flags.DEFINE_enum("seen_targets", None, list(config_keys.SEEN_TARGETS), "A target already in the user's "
                  "history: 'miss' (the published protocol) or 'rankable'; default: the run's "
                  "eval.seen_targets. Where repeats exist the report holds both.")
flags.DEFINE_string("topk_out", None, "Write every user's next K items here (TSV): from the "
                    "whole history (train + valid + test), all seen items removed; not the "
                    "evaluation's input (see evaluation.ranking.write_topk).")
flags.DEFINE_integer("topk", 10, "K for --topk_out.")
flags.DEFINE_string("data_path", None, "Override the run's data.path.")
flags.DEFINE_bool("domain_cold_start", False, "Multi-domain runs: test metrics by target-domain "
                  "events before the test item (0-2, 3-5, 6+; histories cut to their last m "
                  "events of the target domain), per domain and protocol, instead of the report.")
flags.DEFINE_bool("allow_other_data", False, "Evaluate even when the data differs from what the "
                  "run trained on (its data.json); otherwise refused, the metrics would be wrong.")
common.define_distributed_flags()
common.define_plugin_flag()
common.define_compilation_cache_flag("evaluating the same shapes again skips the compiles")
common.define_host_malloc_flag()
flags.DEFINE_list("summarize", None, "Workdirs (e.g. one config, several seeds) whose saved "
                  "eval_<checkpoint>.json reports are summarized as mean +- std; no evaluation.")
flags.DEFINE_string("summary_split", "test", "The split --summarize reads.")
flags.DEFINE_bool("plot", False, "Write <workdir>/curves.png: the training loss and the validation "
                  "NDCG@10 / HR@10 by step, from its metrics.jsonl (also while it trains); no "
                  "evaluation.")
FLAGS = flags.FLAGS


def summarize() -> None:
  from lstmrec_jax.evaluation import reports  # pylint: disable=g-import-not-at-top
  loaded = []
  for workdir in FLAGS.summarize:
    path = epath.Path(workdir) / f"eval_{FLAGS.checkpoint}.json"  # gs:// kept
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no report; run python eval.py --workdir {workdir} first")
    loaded.append(json.loads(path.read_text()))
  if reports.is_domain_report(loaded[0]):  # a multi-domain dataset: per domain and protocol
    print(reports.format_domain_summary(reports.summarize_domain_reports(loaded,
                                                                        FLAGS.summary_split)))
    return
  print(reports.format_summary(reports.summarize_reports(loaded, FLAGS.summary_split)))


SPLITS = ("valid", "test")


def check_flags() -> None:
  """--checkpoint, --splits and the output paths, checked before anything is computed."""
  from lstmrec_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  which = FLAGS.checkpoint
  if which not in ("best", "latest") and not (which.isdigit() and int(which) >= 0):
    raise ConfigError(f"--checkpoint={which!r} must be 'best', 'latest' or a step number")
  bad = [s for s in FLAGS.splits if s not in SPLITS]
  if bad or not FLAGS.splits:
    raise ConfigError(f"--splits={','.join(FLAGS.splits)}: each must be one of "
                      f"{', '.join(SPLITS)} (the training split has no held-out targets)")
  if FLAGS.topk < 1:
    raise ConfigError(f"--topk={FLAGS.topk} must be >= 1")
  # The report is written after minutes of ranking: fail now, not then.
  if os.path.isdir(FLAGS.workdir):  # a missing workdir is named by the config read instead
    ckpt_lib.check_writable(FLAGS.workdir)
  if FLAGS.topk_out:
    ckpt_lib.check_writable(os.path.dirname(os.path.abspath(FLAGS.topk_out)))


def main() -> None:
  if FLAGS.summarize:
    summarize()
    return
  if FLAGS.plot:
    from lstmrec_jax.evaluation import curves  # pylint: disable=g-import-not-at-top
    print(f"curves: {curves.plot_curves(FLAGS.workdir)}")
    return
  check_flags()
  common.use_host_malloc()
  import jax  # pylint: disable=g-import-not-at-top
  common.initialize_distributed()
  common.use_compilation_cache()
  from lstmrec_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from lstmrec_jax.evaluation import reports  # pylint: disable=g-import-not-at-top
  common.load_plugins(FLAGS.workdir)
  if FLAGS.domain_cold_start:
    report = workdir_lib.evaluate_domain_cold_start(
        FLAGS.workdir, which=FLAGS.checkpoint,
        spec=common.workdir_spec(FLAGS.workdir, FLAGS.data_path))
    if jax.process_index() == 0:
      print(reports.format_domain_cold_start(report))
      print(f"report: {os.path.join(FLAGS.workdir, f'domain_cold_start_{FLAGS.checkpoint}.json')}")
    return
  report = workdir_lib.evaluate_checkpoint(
      FLAGS.workdir, which=FLAGS.checkpoint, splits=FLAGS.splits,
      exclude_seen=not FLAGS.keep_seen, topk_out=FLAGS.topk_out, topk=FLAGS.topk,
      spec=common.workdir_spec(FLAGS.workdir, FLAGS.data_path),
      allow_other_data=FLAGS.allow_other_data, seen_targets=FLAGS.seen_targets)
  if jax.process_index() == 0:
    print(f"checkpoint {FLAGS.checkpoint} (step {report['step']}) of {FLAGS.workdir}")
    print(f"protocol: seen_targets={report['seen_targets']}"
          f"{'' if report['exclude_seen'] else ' (--keep_seen: nothing removed)'}; "
          f"{report['protocol']}")
    print(reports.format_table(report))
    print(f"report: {os.path.join(FLAGS.workdir, f'eval_{FLAGS.checkpoint}.json')}")


def run() -> None:
  """The console script."""
  logs.run_main(main)
