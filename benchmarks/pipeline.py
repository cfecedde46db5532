"""Offline pipeline throughput and memory on generated feeds, one worker against N in the same run.

Usage: python benchmarks/pipeline.py [--sizes 34 340 3400] [--workers 2] [--workdir DIR]

For each size: generates the synthetic feed (seed 7), then runs the whole pipeline (roster, mapping,
derivations, write-back bundles, exports, run report) in a fresh child process, first with one worker (in
process: the baseline) and then with ``--workers`` worker processes, and prints per run: wall seconds,
CPU seconds (the run's process and its workers), resources read per wall second and per CPU second, peak
resident memory (RSS) of the run's process and of its largest worker, the speed-up against the one-worker run,
and whether both runs wrote the same OUT. The load average is printed before and after: on a shared machine
the wall figures follow the load, the CPU figures much less. Prints numbers only; no pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fhir_adapter.synth import write_feed
from fhir_adapter.testing.outtree import differences, out_tree

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import load_study

def main():
    feed, out, study, workers = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    t0, c0 = time.perf_counter(), time.process_time()
    st = load_study(study)
    log = RunLog()
    summary = run(FileSource(feed, log), st, out, log, workers=workers)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    read = sum(v for k, v in log.counts.items() if k.startswith("read."))
    print(json.dumps({"seconds": seconds, "cpu": cpu + kids.ru_utime + kids.ru_stime, "cpu_main": cpu,
                      "resources": read, "subjects": summary.subjects, "results": summary.results_written,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_rss_mb": kids.ru_maxrss / 1024}))

if __name__ == "__main__":
    main()
"""


def _run(feed: Path, out: Path, workers: int) -> dict[str, float]:
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
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the second run (0: skip it)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.1f} "
          f"{os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}")
    header = ("subjects", "resources", "workers", "wall s", "CPU s", "res/s", "res/CPU-s", "RSS MB",
              "worker RSS", "speed-up", "same OUT")
    widths = (8, 10, 7, 7, 7, 8, 9, 7, 10, 8, 8)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for n in args.sizes:
        feed = work / f"feed-{n}"
        if not (feed / "manifest.json").is_file():
            write_feed(feed, subjects=n, seed=7)
        base: dict[str, float] | None = None
        for workers in [1] + ([args.workers] if args.workers > 1 else []):
            out = work / f"out-{n}-w{workers}"
            r = _run(feed, out, workers)
            base = base or r
            same = "-" if workers == 1 else \
                ("yes" if not differences(out_tree(work / f"out-{n}-w1"), out_tree(out)) else "NO")
            print(f"{n:>8} {r['resources']:>10.0f} {workers:>7} {r['seconds']:>7.1f} {r['cpu']:>7.1f} "
                  f"{r['resources'] / r['seconds']:>8.0f} {r['resources'] / r['cpu']:>9.0f} "
                  f"{r['peak_rss_mb']:>7.0f} {r['worker_rss_mb'] if workers > 1 else 0:>10.0f} "
                  f"{base['seconds'] / r['seconds']:>7.2f}x {same:>8}", flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}; feeds and outputs in {work}")


if __name__ == "__main__":
    main()
