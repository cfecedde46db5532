"""CPU a run pays once, whatever the cohort: start-up (imports, the study), the serial work before the
subjects and the end of the run; and the start of the commands that process no subject.

Usage: python benchmarks/fixed_costs.py FEED [--study mappings/lcar-aio] [--profile N]

In this process, CPU seconds (``time.process_time``) of each phase of ``run --source FEED --workers 1``:
the imports the command needs, ``load_study``, the run up to the roster (``on_start``), the subjects (not a
fixed cost: the input and output sides, see input_side.py and output_cpu.py) and the end of the run after the
last subject (results/study.json, the exports closed, state, quarantine, run-report.json, the staging folder
moved into OUT). Then, each in a fresh process (its CPU from ``getrusage``): ``fhir-adapter --help``,
``run --help`` and ``check`` (the study only). The load average is printed next to the figures: on a shared
machine CPU seconds move less than wall time but still move with the load. With ``--profile N``: the run
again under cProfile in a fresh process (imports and caches cold, as in the measured run), and the N functions
with the most cumulative time outside the subjects' phase.
Prints numbers only; no pass/fail.
"""

from __future__ import annotations

import time

CPU0 = time.process_time()

import argparse  # noqa: E402  (after the first clock reading: the imports are measured)
import cProfile  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _run_phases(feed: Path, study_dir: Path, out: Path) -> dict[str, float]:
    """CPU seconds per phase of one run in this process (the first call also pays the imports)."""
    marks: dict[str, float] = {"start": time.process_time()}
    import fhir_adapter.cli.commands  # noqa: F401  (what `fhir-adapter run` imports)
    from fhir_adapter.engine.cores import default_workers  # noqa: F401
    from fhir_adapter.engine.forkserver import prepare  # noqa: F401
    from fhir_adapter.job.pipeline import run
    from fhir_adapter.job.runlog import RunLog
    from fhir_adapter.source.files import FileSource
    from fhir_adapter.study.load import load_study

    marks["imported"] = time.process_time()
    study = load_study(study_dir)
    marks["study loaded"] = time.process_time()
    log = RunLog()

    def started(_n: int) -> None:
        marks["roster built"] = time.process_time()

    def advanced(_sid: str) -> None:
        marks["last subject"] = time.process_time()

    run(FileSource(feed, log), study, out, log, on_start=started, on_subject=advanced, workers=1)
    marks["finished"] = time.process_time()
    return {
        "imports": marks["imported"] - marks["start"],
        "load study": marks["study loaded"] - marks["imported"],
        "before the subjects": marks["roster built"] - marks["study loaded"],
        "subjects": marks["last subject"] - marks["roster built"],
        "after the subjects": marks["finished"] - marks["last subject"],
    }


def _child_cpu(args: list[str]) -> float:
    """CPU seconds (user + system) of ``fhir-adapter ARGS`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "from fhir_adapter.cli import main; main()", *args], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("feed", type=Path)
    ap.add_argument("--study", type=Path, default=ROOT / "mappings" / "lcar-aio")
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    ap.add_argument("--profile-here", type=int, default=0, help=argparse.SUPPRESS)  # the fresh process of --profile
    args = ap.parse_args()
    if args.profile_here:
        work = Path(tempfile.mkdtemp(prefix="fhir-adapter-fixed-costs-"))
        try:
            _profile(args.feed, args.study, work / "out", args.profile_here)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    work = Path(tempfile.mkdtemp(prefix="fhir-adapter-fixed-costs-"))
    load = os.getloadavg()[0]
    try:
        interpreter = time.process_time() - CPU0
        phases = _run_phases(args.feed, args.study, work / "out")
        fixed = sum(v for k, v in phases.items() if k != "subjects")
        print(f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; CPU seconds:")
        print(f"{'(this script: argparse, subprocess…)':36} {interpreter:7.2f}")
        for phase, cpu in phases.items():
            print(f"{phase:36} {cpu:7.2f}")
        print(f"{'fixed costs (all but the subjects)':36} {fixed:7.2f}")
        for cmd in (["--help"], ["run", "--help"], ["check", "--study", str(args.study)]):
            print(f"{'fhir-adapter ' + ' '.join(cmd[:2]):36} {_child_cpu(cmd):7.2f}  (a fresh process)")
        if args.profile:
            subprocess.run([sys.executable, __file__, str(args.feed), "--study", str(args.study),
                            "--profile-here", str(args.profile)], check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _profile(feed: Path, study_dir: Path, out: Path, n: int) -> None:
    """cProfile of the imports, load_study and the run, switched off from the roster to the last subject."""
    profile = cProfile.Profile()
    profile.enable()
    import fhir_adapter.cli.commands  # noqa: F401
    from fhir_adapter.engine.cores import default_workers  # noqa: F401
    from fhir_adapter.engine.forkserver import prepare  # noqa: F401
    from fhir_adapter.job.pipeline import run
    from fhir_adapter.job.runlog import RunLog
    from fhir_adapter.source.files import FileSource
    from fhir_adapter.study.load import load_study

    left = [0]

    def started(subjects: int) -> None:
        left[0] = subjects
        if subjects:
            profile.disable()

    def advanced(_sid: str) -> None:
        left[0] -= 1
        if left[0] == 0:
            profile.enable()

    study = load_study(study_dir)
    log = RunLog()
    run(FileSource(feed, log), study, out, log, on_start=started, on_subject=advanced, workers=1)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(n)
    print("cProfile of the imports, load_study and the run without its subjects (inflates small functions):")
    print(text.getvalue())


if __name__ == "__main__":
    main()
