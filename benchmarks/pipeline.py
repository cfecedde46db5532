"""Offline pipeline throughput and memory on generated feeds.

Usage: python benchmarks/pipeline.py [--sizes 34 340 3400] [--workdir DIR]

For each size: generates the synthetic feed (seed 7), then runs the whole pipeline (roster, mapping,
derivations, write-back bundles, exports) in a fresh child process, and prints resources read per second
and the child's peak resident memory (RSS). Prints numbers only; no pass/fail.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import load_study

feed, out, study = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
st = load_study(study)
log = RunLog()
t0 = time.perf_counter()
summary = run(FileSource(feed, log), st, out, log)
seconds = time.perf_counter() - t0
read = sum(v for k, v in log.counts.items() if k.startswith("read."))
print(json.dumps({"seconds": seconds, "resources": read, "subjects": summary.subjects,
                  "results": summary.results_written,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[34, 340, 3400])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    from fhir_adapter.synth import write_feed

    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-bench-"))
    header = ("subjects", "resources", "gen s", "run s", "res/s", "results", "peak RSS MB")
    widths = (8, 10, 7, 7, 9, 8, 11)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for n in args.sizes:
        feed, out = work / f"feed-{n}", work / f"out-{n}"
        t0 = time.perf_counter()
        write_feed(feed, subjects=n, seed=7)
        gen = time.perf_counter() - t0
        proc = subprocess.run([sys.executable, "-c", CHILD, str(feed), str(out), str(ROOT / "mappings" / "lcar-aio")],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rate = r["resources"] / r["seconds"] if r["seconds"] else float("nan")
        print(f"{n:>8} {r['resources']:>10} {gen:>7.1f} {r['seconds']:>7.1f} {rate:>9.0f} {r['results']:>8} "
              f"{r['peak_rss_mb']:>11.0f}", flush=True)
    print(f"(feeds and outputs in {work})")


if __name__ == "__main__":
    main()
