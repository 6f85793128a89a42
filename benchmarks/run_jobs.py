"""Runs a file of train.py jobs (each followed by eval.py) several at a time, inside a deadline.

For studies of many short runs on one machine: the cross-domain table's 3 seeds x 4 models x 2
datasets on a GPU box, or a queue on a many-core CPU. A job file has one job a line,
`name config [train.py flags...]`, `#` comments allowed; `{runs}` in a flag is the --runs folder.
A job whose flags name `{runs}/<other job>` (say `--config.train.init_from={runs}/fk_merged_s0`)
starts after that job has finished.

  python benchmarks/run_jobs.py --jobs jobs.txt --runs runs/xd --parallel 8 \
      --eval_args=--domain_cold_start --deadline_s 900 --out runs/xd/jobs.json

Jobs start in file order (put the ones that matter most first). A job that finished before (its
<runs>/<name>.done marker) is skipped: rerun the command to go on after a stop (train.py resumes
from its checkpoints). No job
starts after --deadline_s minus --start_margin_s; at the deadline the running ones are stopped
(SIGTERM, then SIGKILL) and recorded as such. The summary (--out) gives each job's command, exit
status and wall seconds, and the machine; --pack writes a .tar.gz of every job's small files
(report, metrics, config, logs; no checkpoints) to carry the results off the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
# What --pack takes from a job's workdir (every file at its top level of these names or suffixes).
PACK_SUFFIXES = (".json", ".jsonl", ".log", ".txt")


def parse_jobs(text: str, runs: pathlib.Path, source: str = "jobs",
               common: tuple[str, ...] = ()) -> list[dict]:
  """[{name, config, flags, after}] from a job file's text (`common`: flags every job gets first;
  a job's own come after them and win); one error line per bad line."""
  jobs: list[dict] = []
  for lineno, raw in enumerate(text.splitlines(), 1):
    line = raw.split("#", 1)[0].strip()
    if not line:
      continue
    parts = shlex.split(line)
    if len(parts) < 2:
      raise SystemExit(f"{source}:{lineno}: a job is 'name config [flags...]', got {raw.strip()!r}")
    name, config, *flags = parts
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
      raise SystemExit(f"{source}:{lineno}: job name {name!r} is not letters, digits, '_.-'")
    if any(j["name"] == name for j in jobs):
      raise SystemExit(f"{source}:{lineno}: job {name!r} appears twice")
    jobs.append({"name": name, "config": config, "flags": [*common, *flags], "line": lineno})
  # `{runs}/<a job's name>` in a job's flags makes it wait for that job, which must come first.
  order = {j["name"]: i for i, j in enumerate(jobs)}
  for i, job in enumerate(jobs):
    named = set(re.findall(r"\{runs\}/([A-Za-z0-9_.-]+)", " ".join(job["flags"])))
    job["after"] = sorted(n for n in named if n in order)
    for other in job["after"]:
      if order[other] >= i:
        raise SystemExit(f"{source}:{job['line']}: job {job['name']!r} needs {other!r}, which "
                         "must come on a line above it")
    job["flags"] = [f.replace("{runs}", str(runs)) for f in job["flags"]]
  return jobs


class _Job:
  """One job's train.py then eval.py, as a chain of child processes."""

  def __init__(self, spec: dict, runs: pathlib.Path, eval_args: list[str]):
    self.spec = spec
    self.workdir = runs / spec["name"]
    self.log = runs / f"{spec['name']}.log"
    self.marker = runs / f"{spec['name']}.done"  # written when train.py and eval.py both succeed
    self.commands = [
        [sys.executable, "train.py", "--config", spec["config"], "--workdir", str(self.workdir),
         *spec["flags"]],
        [sys.executable, "eval.py", "--workdir", str(self.workdir), *eval_args],
    ]
    self.stage = 0
    self.proc: subprocess.Popen | None = None
    self.started = self.ended = None
    self.status = "waiting"
    self.returncodes: list[int] = []

  def start_stage(self) -> None:
    with open(self.log, "a") as out:  # the child keeps its own copy of the descriptor
      out.write(f"$ {shlex.join(self.commands[self.stage])}\n")
      out.flush()
      self.proc = subprocess.Popen(self.commands[self.stage], cwd=REPO, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)

  def start(self) -> None:
    self.started = time.time()
    self.status = "running"
    self.start_stage()

  def poll(self) -> None:
    """Advances the chain when a stage ends; sets status to done / failed at the end."""
    if self.proc is None or self.proc.poll() is None:
      return
    self.returncodes.append(self.proc.returncode)
    if self.proc.returncode != 0:
      self.status, self.ended, self.proc = "failed", time.time(), None
      return
    self.stage += 1
    if self.stage == len(self.commands):
      self.status, self.ended, self.proc = "done", time.time(), None
      self.marker.write_text(json.dumps({"wall_s": round(self.ended - self.started, 1)}) + "\n")
      return
    self.start_stage()

  def signal(self, sig: int) -> None:
    if self.proc is not None:
      try:
        os.killpg(self.proc.pid, sig)
      except ProcessLookupError:
        pass

  def reap(self) -> bool:
    """Whether the stopped job's process has exited (its status is then set)."""
    if self.proc is not None and self.proc.poll() is None:
      return False
    self.status, self.ended, self.proc = "stopped at the deadline", time.time(), None
    return True

  def record(self) -> dict:
    return {"name": self.spec["name"], "status": self.status, "after": self.spec["after"],
            "commands": [shlex.join(c) for c in self.commands], "returncodes": self.returncodes,
            "wall_s": round(self.ended - self.started, 1) if self.started and self.ended else None}


def run(jobs: list[dict], runs: pathlib.Path, parallel: int, deadline_s: float,
        start_margin_s: float, eval_args: list[str], poll_s: float = 1.0,
        grace_s: float = 10.0) -> list[_Job]:
  """Runs `jobs` (parse_jobs) at most `parallel` at once; returns them with their records."""
  launched = time.time()
  todo = [_Job(spec, runs, eval_args) for spec in jobs]
  by_name = {j.spec["name"]: j for j in todo}
  for job in todo:
    if job.marker.is_file():
      job.status = "skipped: finished before"
  while True:
    now = time.time() - launched
    for job in todo:
      job.poll()
    running = [j for j in todo if j.status == "running"]
    if now >= deadline_s:
      # SIGTERM to every running job at once, SIGKILL to what is left after grace_s.
      for job in running:
        print(f"[{now:6.0f}s] deadline: stopping {job.spec['name']}", flush=True)
        job.signal(signal.SIGTERM)
      end = time.time() + grace_s
      while running and time.time() < end:
        running = [j for j in running if not j.reap()]
        time.sleep(poll_s)
      for job in running:
        job.signal(signal.SIGKILL)
        job.proc.wait(10)
        job.reap()
      break
    for job in todo:
      if job.status != "waiting" or len(running) >= parallel or now > deadline_s - start_margin_s:
        continue
      needs = [by_name[a].status for a in job.spec["after"]]
      if any(s.startswith(("failed", "stopped", "not started")) for s in needs):
        job.status = "not started: a job it needs did not finish"
        continue
      if all(s == "done" or s.startswith("skipped") for s in needs):
        print(f"[{now:6.0f}s] start {job.spec['name']}", flush=True)
        job.start()
        running.append(job)
    if not running and not any(j.status == "waiting" and now <= deadline_s - start_margin_s
                               for j in todo):
      break
    time.sleep(poll_s)
  for job in todo:
    if job.status == "waiting":
      job.status = "not started: no time left before the deadline"
    if job.status not in ("running",) and job.ended is None and job.started:
      job.ended = time.time()
  return todo


def pack(runs: pathlib.Path, names: list[str], out: pathlib.Path) -> int:
  """A .tar.gz of each job's log and its workdir's top-level small files; returns the count."""
  count = 0
  with tarfile.open(out, "w:gz") as tar:
    for name in names:
      for path in [runs / f"{name}.log", *sorted((runs / name).glob("*"))]:
        if path.is_file() and path.suffix in PACK_SUFFIXES:
          tar.add(path, arcname=str(path.relative_to(runs)))
          count += 1
  return count


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--jobs", required=True, help="the job file (see above)")
  p.add_argument("--runs", required=True, help="the folder of the jobs' workdirs and logs")
  p.add_argument("--parallel", type=int, default=1)
  p.add_argument("--deadline_s", type=float, default=float("inf"))
  p.add_argument("--start_margin_s", type=float, default=0.0,
                 help="start no job later than this before the deadline")
  p.add_argument("--eval_args", default="", help="eval.py's flags after each training")
  p.add_argument("--match", default="", help="run only the jobs whose name this regex finds")
  p.add_argument("--common_flags", default="", help="train.py flags every job gets (its own win)")
  p.add_argument("--out", default=None, help="the summary JSON (default <runs>/jobs.json)")
  p.add_argument("--pack", default=None, help="also write this .tar.gz of the results")
  args = p.parse_args(argv)
  if args.parallel < 1:
    raise SystemExit(f"--parallel must be >= 1, got {args.parallel}")
  runs = pathlib.Path(args.runs).absolute()
  runs.mkdir(parents=True, exist_ok=True)
  jobs = parse_jobs(pathlib.Path(args.jobs).read_text(), runs, source=args.jobs,
                    common=tuple(shlex.split(args.common_flags)))
  if args.match:
    kept = {j["name"] for j in jobs if re.search(args.match, j["name"])}
    missing = {a for j in jobs if j["name"] in kept for a in j["after"]} - kept
    if missing:
      raise SystemExit(f"--match {args.match!r} keeps jobs that need {sorted(missing)}, "
                       "which it leaves out")
    jobs = [j for j in jobs if j["name"] in kept]
  start = time.time()
  done = run(jobs, runs, args.parallel, args.deadline_s, args.start_margin_s,
             shlex.split(args.eval_args))
  records = [j.record() for j in done]
  summary = {
      "command": shlex.join([sys.executable, *sys.argv]), "host": platform.node(),
      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "elapsed_s": round(time.time() - start, 1), "parallel": args.parallel, "jobs": records,
      "counts": {s: sum(r["status"] == s for r in records)
                 for s in sorted({r["status"] for r in records})},
  }
  out = pathlib.Path(args.out) if args.out else runs / "jobs.json"
  out.write_text(json.dumps(summary, indent=2) + "\n")
  for r in records:
    print(f"{r['name']:32s} {r['status']:40s} {r['wall_s']}")
  print(f"counts {summary['counts']}; summary {out}")
  if args.pack:
    n = pack(runs, [r["name"] for r in records if r["status"] != "waiting"], pathlib.Path(args.pack))
    print(f"packed {n} files into {args.pack}")


if __name__ == "__main__":
  main()
