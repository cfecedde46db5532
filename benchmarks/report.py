"""The study report's cost against cohort size: does `fhir-adapter report` stay linear in the subjects?

Usage: python benchmarks/report.py [--sizes 34 340] [--results OUT ...] [--workdir DIR]

For each size: generates the synthetic feed (seed 7) and runs the offline pipeline into a fresh OUT (or takes
the OUT folders given with ``--results``), then builds the report in this process and prints CPU seconds
(``time.process_time``) of loading OUT and of every section, the whole report and its peak resident memory
(the first size's report is built first, so the peak of a later size includes it only where it is larger),
and per section the ms per subject next to the first size's (the baseline of the same run): a section whose
cost per subject grows with the cohort (a matplotlib artist or shared axis per subject drawn against all the
others) shows a ratio well above 1. Prints numbers only; no pass/fail.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.report import assemble
from fhir_adapter.report.data import load
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import load_study
from fhir_adapter.synth import write_feed

ROOT = Path(__file__).resolve().parent.parent


def _out_for(n: int, work: Path) -> Path:
    feed, out = work / f"feed-{n}", work / f"out-{n}"
    write_feed(feed, subjects=n, seed=7)
    log = RunLog()
    run(FileSource(feed, log), load_study(ROOT / "mappings" / "lcar-aio"), out, log, workers=1)
    return out


def _timed(out: Path) -> tuple[int, dict[str, float]]:
    """(subjects, CPU seconds per step) of one report built from ``out``."""
    cpu: dict[str, float] = {}
    t = time.process_time()
    data = load(out)
    cpu["load OUT"] = time.process_time() - t
    for make, _ in assemble.SECTIONS:
        t = time.process_time()
        make(data)
        cpu[make.__name__.removesuffix("_section")] = time.process_time() - t
    t = time.process_time()
    assemble.render(data)   # every section again, and the page
    cpu["whole report"] = time.process_time() - t
    return len(data.subject_ids()), cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[34, 340])
    ap.add_argument("--results", type=Path, nargs="+", default=None, help="OUT folders of earlier runs")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fa-report-"))
    outs = list(args.results) if args.results else [_out_for(n, work) for n in args.sizes]
    rows: list[tuple[int, dict[str, float], int]] = []
    for out in outs:
        n, cpu = _timed(out)
        rows.append((n, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024))
    base_n, base, _ = rows[0]
    print(f"{'step':<20}" + "".join(f"{f'{n} subj: s':>14}{'ms/subj':>10}{'x base':>8}" for n, _, _ in rows))
    for step in base:
        line = f"{step:<20}"
        for n, cpu, _ in rows:
            per, base_per = 1000 * cpu[step] / n, 1000 * base[step] / base_n
            ratio = f"{per / base_per:.2f}" if base_per > 0.05 else "–"
            line += f"{cpu[step]:>14.2f}{per:>10.1f}{ratio:>8}"
        print(line)
    print("peak RSS MB".ljust(20) + "".join(f"{rss:>14}{'':>18}" for _, _, rss in rows))
    if not args.workdir and not args.results:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
