"""``run --workers N``: wall time of the offline run with 1 worker (in process) and with N worker processes on
the same synthetic feed, and whether the two OUT folders are identical.

Usage: python benchmarks/workers.py [--subjects 340] [--workers 2] [--repeat 1]

Each run is ``fhir-adapter -q run --source FEED --out OUT --workers K`` in a fresh child process (start-up
included, as a user sees it). Prints the figures and the speed-up; no pass/fail. On a machine whose speed varies
from minute to minute, ``--repeat N`` runs the pair N times, one run right after the other, and prints the
median speed-up. The speed-up is bounded by the cores the machine gives the run: on a shared machine, say what
else was running (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fhir_adapter.testing.outtree import differences, out_tree

ROOT = Path(__file__).resolve().parent.parent



def timed_run(feed: Path, out: Path, workers: int) -> float:
    cli = str(Path(sys.executable).parent / "fhir-adapter")
    t0 = time.perf_counter()
    rc = subprocess.run([cli, "-q", "run", "--source", str(feed), "--out", str(out), "--workers", str(workers)],
                        check=False).returncode
    took = time.perf_counter() - t0
    if rc not in (0, 2):
        raise SystemExit(f"run --workers {workers} exited {rc}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=340)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of the two runs one after the other; prints each round's speed-up and the median")
    args = ap.parse_args()
    from fhir_adapter.synth import write_feed

    with tempfile.TemporaryDirectory(prefix="fa-workers-") as tmp:
        root = Path(tmp)
        write_feed(root / "feed", subjects=args.subjects, seed=7)
        print(f"{args.subjects} subjects, {len(os.sched_getaffinity(0))} cores; load average before "
              f"{os.getloadavg()[0]:.1f}")
        ratios = []
        for n in range(1, args.repeat + 1):
            label = f"round {n}: " if args.repeat > 1 else ""
            one = timed_run(root / "feed", root / "out1", 1)
            print(f"  {label}--workers 1              {one:7.1f} s")
            many = timed_run(root / "feed", root / "outN", args.workers)
            ratios.append(one / many)
            print(f"  {label}--workers {args.workers:<14} {many:7.1f} s   speed-up {one / many:.2f}x")
            diff = differences(out_tree(root / "out1"), out_tree(root / "outN"))
            print(f"  {label}OUT identical: {'yes' if not diff else 'NO: ' + ', '.join(diff[:5])}")
        if args.repeat > 1:
            print(f"  speed-up median {statistics.median(ratios):.2f}x "
                  f"(range {min(ratios):.2f}-{max(ratios):.2f}x over {args.repeat} rounds)")
        print(f"  load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
