"""Local engine vs Spark (``local[2]``): wall time and peak memory of ``fhir-adapter run`` on the same feed, for
340 and 3,400 subjects, and whether the two OUT folders are identical (340 subjects by default; the OUT of
3,400 subjects is compared with ``--compare-up-to 3400``).

Usage: python benchmarks/spark.py [--subjects 340 3400] [--master 'local[2]'] [--remote 'local[2]'] [--workers 1]
                                 [--feed 3400=/path/to/feed] [--workdir DIR]

``--feed N=PATH`` runs on a feed of N subjects already written (``fhir_adapter.synth.write_feed(PATH,
subjects=N, seed=7)``) instead of writing one; ``--workdir DIR`` keeps the OUT folders and each run's log
(stderr) there instead of in a temporary folder removed at the end.

Each run is a fresh child process (Spark start-up included, as a user sees it). Peak memory is the peak of the
summed RSS of the run's whole process tree, sampled every 0.2 s, and the peak of each part of it: for Spark the
driver (the ``fhir-adapter`` process), the JVM (driver and, with a local master, the executors) and the
executors' Python workers. ``--remote local[2]`` also times the run over Spark Connect (a Connect server in the
run's process). Prints numbers only; no pass/fail.

What changes on a cluster: the executors' cores add up (one machine's two cores here are shared by the JVM,
the Python workers and the driver writing outputs), the files are read where they are stored, and the
driver only writes the outputs; the fixed cost of Spark (JVM start, task scheduling, a shuffle of the
subjects' lines) is paid once per run, so it matters less the larger the export. See docs/spark.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fhir_adapter.testing.outtree import normalized

ROOT = Path(__file__).resolve().parent.parent



def _tree_rss_mb(pid: int) -> dict[str, float]:
    """RSS of ``pid`` and its descendants (Linux /proc), in MB: in all, and per part (driver, JVM, Python
    workers)."""
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
    parts = {"all": 0.0, "driver": 0.0, "jvm": 0.0, "python workers": 0.0}
    todo = [pid]
    while todo:
        p = todo.pop()
        mb = rss.get(p, 0) / 2**20
        parts["all"] += mb
        if p == pid:
            parts["driver"] += mb
        else:
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                cmd = b""
            parts["jvm" if b"java" in cmd.split(b"\0", 1)[0] else "python workers"] += mb
        todo.extend(children.get(p, []))
    return parts


def timed_run(args: list[str], log: Path) -> tuple[float, dict[str, float]]:
    cli = str(Path(sys.executable).parent / "fhir-adapter")
    t0 = time.perf_counter()
    with log.open("wb") as err:
        proc = subprocess.Popen([cli, "-q", "run", *args], stdout=subprocess.DEVNULL, stderr=err)
        peak: dict[str, float] = {}
        while proc.poll() is None:
            for k, v in _tree_rss_mb(proc.pid).items():
                peak[k] = max(peak.get(k, 0.0), v)
            time.sleep(0.2)
    took = time.perf_counter() - t0
    if proc.returncode not in (0, 2):
        raise SystemExit(f"fhir-adapter run {' '.join(args)} exited {proc.returncode}; its log: {log}")
    return took, peak


def differences_on_disk(a: Path, b: Path) -> list[str]:
    """The files that differ between two OUT folders (as ``fhir_adapter.testing.outtree.differences`` finds
    them), read line by line: a 3,400-subject OUT (8.6 GB, a 1.7 GB odm.xml) is never in memory."""
    def files(out: Path) -> set[str]:
        return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}

    found = []
    for name in sorted(files(a) | files(b)):
        pa, pb = a / name, b / name
        if not (pa.is_file() and pb.is_file()):
            found.append(name)
            continue
        with pa.open("rb") as fa, pb.open("rb") as fb:
            for la, lb in itertools.zip_longest(fa, fb):
                if la is None or lb is None or normalized(a, pa, la) != normalized(b, pb, lb):
                    found.append(name)
                    break
    return found


def _memory(peak: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.0f}" for k, v in peak.items() if k != "all" and v)
    return f"peak {peak.get('all', 0):6.0f} MB ({parts})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, nargs="+", default=[340, 3400])
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--remote", default=None, help="also run over Spark Connect (e.g. 'local[2]')")
    ap.add_argument("--workers", type=int, default=1, help="--workers of the local run")
    ap.add_argument("--compare-up-to", type=int, default=340, help="compare the OUT folders up to this many subjects")
    ap.add_argument("--feed", action="append", default=[], metavar="N=PATH",
                    help="an existing feed of N subjects (seed 7) instead of writing one")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the OUT folders and the runs' logs here")
    args = ap.parse_args()
    from fhir_adapter.synth import write_feed

    feeds = {int(n): Path(path) for n, path in (f.split("=", 1) for f in args.feed)}
    for n in args.subjects:
        with tempfile.TemporaryDirectory(prefix="fa-spark-") as tmp:
            root = Path(tmp) if args.workdir is None else args.workdir / f"spark-{n}"
            root.mkdir(parents=True, exist_ok=True)
            feed = feeds.get(n, root / "feed")
            if n not in feeds:
                write_feed(feed, subjects=n, seed=7)
            print(f"{n} subjects, {len(os.sched_getaffinity(0))} cores; load average before "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            t, m = timed_run(["--source", str(feed), "--out", str(root / "local"), "--workers", str(args.workers)],
                             root / "local.log")
            print(f"  local --workers {args.workers:<12} {t:7.1f} s   {_memory(m)}", flush=True)
            runs = [("spark", ["--spark-master", args.master], f"--spark-master {args.master}")]
            if args.remote:
                runs.append(("connect", ["--spark-remote", args.remote], f"--spark-remote {args.remote}"))
            for name, opts, label in runs:
                ts, ms = timed_run(["--engine", "spark", *opts, "--source", str(feed), "--out", str(root / name)],
                                   root / f"{name}.log")
                print(f"  {label:<24} {ts:7.1f} s   {_memory(ms)}   time {ts / t:.2f}x local", flush=True)
                if n <= args.compare_up_to:
                    diff = differences_on_disk(root / "local", root / name)
                    print(f"    OUT identical to local: {'yes' if not diff else 'NO: ' + ', '.join(diff[:5])}",
                          flush=True)
            print(f"  load average after {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
