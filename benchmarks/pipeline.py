"""Offline pipeline throughput and memory on generated feeds, one worker against N in the same run.

Usage: python benchmarks/pipeline.py [--sizes 34 340 3400] [--workers 1 2] [--workdir DIR]

For each size: generates the synthetic feed (seed 7), then runs the whole pipeline (roster, mapping,
derivations, write-back bundles, exports, run report) into a fresh OUT in a fresh child process, first with
one worker (in process: the baseline) and then with each ``--workers`` count above 1, and prints per run: wall
seconds; when the first subject was done (``1st subj``: the run's start, i.e. study, roster, reading the
source, the workers' start-up and their first chunk) and what the run took after the last one (``end s``:
study.json, the exports, the state, the report), the parts that do not spread over workers; CPU seconds (all
processes: the workers are sampled from /proc) and those of the run's own process (it moves the subjects' files
into place); resources read per wall second and per CPU second; peak resident memory (RSS) of the run's
process, of its largest worker and of all of them together; the speed-up against the one-worker run; and
whether both runs wrote the same OUT. The load average is printed before and after: on a shared machine the
wall figures follow the load, the CPU figures much less. Prints numbers only; no pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fhir_adapter.synth import write_feed
from fhir_adapter.testing.outtree import differences, out_tree

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, resource, sys, threading, time
from pathlib import Path
from fhir_adapter.engine.forkserver import prepare
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import load_study

TICK = os.sysconf("SC_CLK_TCK")


def descendants(pid):
    found = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for kid in map(int, kids):
        found.append(kid)
        found.extend(descendants(kid))
    return found


def watch(seen, stop):
    # worker processes are not this process's children to wait for (a forkserver starts them): their CPU
    # time and peak RSS are sampled from /proc while they run
    me = os.getpid()
    while not stop.is_set():
        for pid in descendants(me):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("VmHWM:"))
            except (OSError, StopIteration, IndexError):
                continue
            seen[pid] = ((int(stat[11]) + int(stat[12])) / TICK, hwm / 1024)
        stop.wait(0.2)


def main():
    feed, out, study, workers = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    seen, stop = {}, threading.Event()
    threading.Thread(target=watch, args=(seen, stop), daemon=True).start()
    t0, c0 = time.perf_counter(), time.process_time()
    prepare(workers)  # as the CLI does: the workers' forkserver preloads while the study is loaded
    st = load_study(study)
    log = RunLog()
    done = []  # when each subject was done, from the start

    def on_subject(_):
        done.append(time.perf_counter() - t0)

    summary = run(FileSource(feed, log), st, out, log, workers=workers, on_subject=on_subject)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    read = sum(v for k, v in log.counts.items() if k.startswith("read."))
    print(json.dumps({"seconds": seconds, "cpu": cpu + sum(c for c, _ in seen.values()), "cpu_main": cpu,
                      "first_subject": done[0] if done else seconds, "after_last": seconds - (done[-1] if done else 0),
                      "resources": read, "subjects": summary.subjects, "results": summary.results_written,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_rss_mb": max((r for _, r in seen.values()), default=0.0),
                      "workers_rss_mb": sum(r for _, r in seen.values())}))


if __name__ == "__main__":
    main()
"""


def _run(feed: Path, out: Path, workers: int) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)  # a fresh OUT: no write-back state of an earlier run
    script = out.parent / "bench_child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(feed), str(out), str(ROOT / "mappings" / "lcar-aio"),
                           str(workers)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"the pipeline failed with --workers {workers}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[34, 340, 3400])
    ap.add_argument("--workers", type=int, nargs="+", default=[2],
                    help="worker processes of the runs after the one-worker baseline (1 alone: only the baseline)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.1f} "
          f"{os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
    header = ("subjects", "resources", "workers", "wall s", "1st subj", "end s", "CPU s", "main CPU", "res/s",
              "res/CPU-s", "RSS MB", "worker RSS", "all RSS", "speed-up", "same OUT")
    widths = (8, 10, 7, 7, 8, 6, 7, 8, 8, 9, 7, 10, 7, 8, 8)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for n in args.sizes:
        feed = work / f"feed-{n}"
        if not (feed / "manifest.json").is_file():
            write_feed(feed, subjects=n, seed=7)
        base: dict[str, float] | None = None
        for workers in [1, *sorted({w for w in args.workers if w > 1})]:
            out = work / f"out-{n}-w{workers}"
            r = _run(feed, out, workers)
            base = base or r
            same = "-" if workers == 1 else \
                ("yes" if not differences(out_tree(work / f"out-{n}-w1"), out_tree(out)) else "NO")
            print(f"{n:>8} {r['resources']:>10.0f} {workers:>7} {r['seconds']:>7.1f} {r['first_subject']:>8.2f} "
                  f"{r['after_last']:>6.2f} {r['cpu']:>7.1f} "
                  f"{r['cpu_main']:>8.1f} "
                  f"{r['resources'] / r['seconds']:>8.0f} {r['resources'] / r['cpu']:>9.0f} "
                  f"{r['peak_rss_mb']:>7.0f} {r['worker_rss_mb'] if workers > 1 else 0:>10.0f} "
                  f"{r['peak_rss_mb'] + (r['workers_rss_mb'] if workers > 1 else 0):>7.0f} "
                  f"{base['seconds'] / r['seconds']:>7.2f}x {same:>8}", flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}; feeds and outputs in {work}")


if __name__ == "__main__":
    main()
