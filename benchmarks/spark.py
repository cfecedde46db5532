"""Local engine vs Spark (``local[2]``): wall time and peak memory of ``fhir-adapter run`` on the same feed,
and whether the two OUT folders are identical.

Usage: python benchmarks/spark.py [--subjects 340] [--master 'local[2]'] [--workers 1]

Each run is a fresh child process (Spark start-up included, as a user sees it). Peak memory is the peak of the
summed RSS of the run's whole process tree (for Spark: the driver, its JVM and the Python workers), sampled
every 0.2 s. Prints numbers only; no pass/fail.

What changes on a cluster: the executors' cores add up (one machine's two cores here are shared by the JVM,
the Python workers and the driver writing outputs), the files are read where they are stored, and the
driver only writes the outputs; the fixed cost of Spark (JVM start, task scheduling, a shuffle of the
subjects' lines) is paid once per run, so it matters less the larger the export. See docs/spark.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fhir_adapter.testing.outtree import differences, out_tree

ROOT = Path(__file__).resolve().parent.parent



def _tree_rss_mb(pid: int) -> float:
    """Summed RSS of ``pid`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 2**20


def timed_run(args: list[str]) -> tuple[float, float]:
    cli = str(Path(sys.executable).parent / "fhir-adapter")
    t0 = time.perf_counter()
    proc = subprocess.Popen([cli, "-q", "run", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.2)
    took = time.perf_counter() - t0
    if proc.returncode not in (0, 2):
        raise SystemExit(f"fhir-adapter run {' '.join(args)} exited {proc.returncode}")
    return took, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=340)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--workers", type=int, default=1, help="--workers of the local run")
    args = ap.parse_args()
    from fhir_adapter.synth import write_feed

    with tempfile.TemporaryDirectory(prefix="fa-spark-") as tmp:
        root = Path(tmp)
        feed = root / "feed"
        write_feed(feed, subjects=args.subjects, seed=7)
        print(f"{args.subjects} subjects, {len(os.sched_getaffinity(0))} cores; load average before "
              f"{os.getloadavg()[0]:.1f}")
        t, m = timed_run(["--source", str(feed), "--out", str(root / "local"), "--workers", str(args.workers)])
        print(f"  local --workers {args.workers:<10} {t:7.1f} s   peak {m:7.0f} MB")
        ts, ms = timed_run(["--engine", "spark", "--spark-master", args.master, "--source", str(feed),
                            "--out", str(root / "spark")])
        print(f"  spark {args.master:<20} {ts:7.1f} s   peak {ms:7.0f} MB   time {ts / t:.2f}x local")
        diff = differences(out_tree(root / "local"), out_tree(root / "spark"))
        print(f"  OUT identical: {'yes' if not diff else 'NO: ' + ', '.join(diff[:5])}")
        print(f"  load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
