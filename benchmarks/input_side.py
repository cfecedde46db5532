"""CPU of the offline pipeline's input side per resource: reading and routing the feed, parsing each
subject's lines, the quick R4 check and the mapping to CRF records, phase by phase, in this process.

Usage: python benchmarks/input_side.py FEED [--study mappings/lcar-aio] [--profile N]

Runs what ``run --source FEED --workers 1`` runs before the derivations — the roster, the subjects pass
(:meth:`FileSource.subject_records`), :func:`checked_records` (orjson), :func:`with_day1` and
:meth:`SubjectMapper.map` (the R4 check of every input resource, observations, visits, medications, adverse
events…) — with the run's collector settings (:mod:`fhir_adapter.engine.collector`), and prints the CPU
seconds (``time.process_time``) of each phase, the resources read, and resources per CPU second of the input
side, so the figure does not follow the load of a shared machine. The load average is printed next to it.
With ``--profile N``: the same under cProfile, then the N functions of the input side with the most internal
time (cProfile inflates small functions: read the phase figures for the totals).
Prints numbers only; no pass/fail.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time
from pathlib import Path

from fhir_adapter.engine.collector import fewer_collections
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.subject import SubjectMapper
from fhir_adapter.roster.day1 import with_day1
from fhir_adapter.roster.enrollees import build_roster
from fhir_adapter.source.files import FileSource, checked_records
from fhir_adapter.study.load import load_study

ROOT = Path(__file__).resolve().parent.parent
#: the modules of the input side (what the profile listing keeps)
AREA = ("fhir_adapter/fhir/", "fhir_adapter/mapping/", "fhir_adapter/source/", "fhir_adapter/roster/",
        "fhir_adapter/study/", "fhir_adapter/terminology/")


def input_side(feed: Path, study_dir: Path) -> dict[str, float]:
    """CPU seconds per phase of the input side on ``feed``, and the resources read."""
    cpu: dict[str, float] = {}
    t = time.process_time()
    study = load_study(study_dir)
    cpu["load study"] = time.process_time() - t
    log = RunLog()
    source = FileSource(feed, log)
    t = time.process_time()
    roster = build_roster(source.roster(), study, log)
    cpu["roster"] = time.process_time() - t
    mapper = SubjectMapper(study, log)
    base = source.roster().base
    read = parse = day1 = mapping = 0.0
    subjects = 0
    records_of = source.subject_records(roster.patient_ids)
    while True:
        t = time.process_time()
        nxt = next(records_of, None)
        read += time.process_time() - t
        if nxt is None:
            break
        pid, records = nxt
        t = time.process_time()
        resources = checked_records(records, pid, base, log)
        t1 = time.process_time()
        e = with_day1(roster.enrolled[pid], resources, study, log)
        t2 = time.process_time()
        mapper.map(e, resources)
        t3 = time.process_time()
        parse, day1, mapping = parse + t1 - t, day1 + t2 - t1, mapping + t3 - t2
        subjects += 1
    cpu |= {"read + route (subjects pass)": read, "parse lines (checked_records)": parse, "day 1": day1,
            "R4 check + mapping (SubjectMapper.map)": mapping}
    cpu["resources"] = float(sum(v for k, v in log.counts.items() if k.startswith("read.")))
    cpu["subjects"] = float(subjects)
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("feed", type=Path)
    ap.add_argument("--study", type=Path, default=ROOT / "mappings" / "lcar-aio")
    ap.add_argument("--profile", type=int, default=0, help="list the N input-side functions of a cProfile run")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"{len(os.sched_getaffinity(0))} cores; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    with fewer_collections():  # as a run has it (job/pipeline.py)
        figures = input_side(args.feed, args.study)
    resources, subjects = figures.pop("resources"), figures.pop("subjects")
    total = sum(figures.values())
    print(f"{int(subjects)} subjects, {int(resources):,} resources read")
    for phase, seconds in figures.items():
        print(f"  {phase:40s} {seconds:7.2f} CPU s  {100 * seconds / total:5.1f}%")
    print(f"  {'input side':40s} {total:7.2f} CPU s  = {resources / total:,.0f} resources per CPU second")
    if args.profile:
        profile = cProfile.Profile()
        with fewer_collections():
            profile.enable()
            input_side(args.feed, args.study)
            profile.disable()
        stats = pstats.Stats(profile, stream=io.StringIO())
        rows = [(tt, ct, n, f"{Path(file).name}:{line}({name})")
                for (file, line, name), (_cc, n, tt, ct, _callers) in stats.stats.items()  # type: ignore[attr-defined]
                if any(a in file for a in AREA)]
        print(f"cProfile, input side, top {args.profile} by internal time (profiled total "
              f"{stats.total_tt:.1f} s):")  # type: ignore[attr-defined]
        print(f"  {'tottime':>8} {'cumtime':>8} {'calls':>9}  function")
        for tt, ct, n, where in sorted(rows, reverse=True)[:args.profile]:
            print(f"  {tt:8.2f} {ct:8.2f} {n:9d}  {where}")


if __name__ == "__main__":
    main()
