"""CPU of the output side per subject: what the engine does with a subject's CRF once it is mapped.

Usage: python benchmarks/output_cpu.py [--subjects 340 | --feed FOLDER] [--workdir DIR]

Runs the offline pipeline once, in this process with one worker, on a synthetic feed (seed 7; or ``--feed``)
and measures process CPU seconds (``time.process_time``) of the whole run and of every output-side step of
each subject (``SubjectEngine._derive``): the reviewers' decisions with the review candidates, the
derivations, the results row, the write-back resources and their full R4 check, the write-back bundle, the
CRF, candidates and bundle files, and the exports (CDISC rows and their table of cells, then CSV, Dataset-JSON
and ODM; where the findings rows are built straight into cells, the table of cells is timed inside the CDISC
rows). Prints each step in ms per subject, the output side's share of the run, and resources read per CPU
second of the run.
A step that this version of the code does not have is left out. On a shared machine the CPU figures move
less than wall time but still move with the load (printed): compare runs made close together.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhir_adapter.engine import subject as engine_subject
from fhir_adapter.export import odm, writer
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import load_study
from fhir_adapter.synth import write_feed

ROOT = Path(__file__).resolve().parent.parent
CPU: dict[str, float] = defaultdict(float)

#: (label, object, attribute): the steps timed, as the engine and the export renderer call them
STEPS: list[tuple[str, Any, str]] = [
    ("review decisions + candidates", engine_subject, "apply_decisions"),
    ("candidates file (JSON)", engine_subject, "candidates_file"),
    ("derivations (endpoints)", engine_subject, "derive_subject"),
    ("results row", engine_subject, "subject_row"),
    ("write-back resources", engine_subject, "writeback_resources"),
    ("full R4 check of them", engine_subject, "r4_problem"),
    ("write-back bundle", engine_subject, "offline_transaction"),
    ("CRF document", engine_subject, "crf_document"),
    ("JSON files (orjson)", engine_subject, "json_file"),
    ("files written", engine_subject.SubjectPieces, "write"),
    ("exports, all", writer.ExportRenderer, "render"),
    ("  CDISC rows", writer, "_rows"),
    ("  table of cells", writer, "tables"),
    ("  table of cells", writer, "table_of_cells"),  # (inside "CDISC rows" where the rows are built as cells)
    ("  Dataset-JSON", writer, "render_tables"),
    ("  Dataset-JSON", writer, "render_rows"),
    ("  ODM", odm.OdmSubjects, "render"),
]


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        c0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            CPU[label] += time.process_time() - c0
    return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=340)
    ap.add_argument("--feed", type=Path, help="an existing feed folder instead of a generated one")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-output-cpu-"))
    work.mkdir(parents=True, exist_ok=True)
    feed = args.feed or work / f"feed-{args.subjects}"
    if not args.feed and not (feed / "manifest.json").is_file():
        write_feed(feed, subjects=args.subjects, seed=7)
    timed: list[str] = []
    for label, owner, name in STEPS:
        fn = getattr(owner, name, None)
        if fn is not None:
            setattr(owner, name, _timed(label, fn))
            timed.append(label)
    derive = engine_subject.SubjectEngine._derive
    engine_subject.SubjectEngine._derive = _timed("output side (_derive)", derive)  # type: ignore[method-assign]
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    c0 = time.process_time()
    study = load_study(ROOT / "mappings" / "lcar-aio")
    log = RunLog()
    summary = run(FileSource(feed, log), study, out, log, workers=1)
    cpu = time.process_time() - c0
    n = max(summary.subjects, 1)
    read = sum(v for k, v in log.counts.items() if k.startswith("read."))
    side = CPU["output side (_derive)"]
    print(f"{summary.subjects} subjects, {read} resources; load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(f"run CPU {cpu:.1f} s = {read / cpu:,.0f} resources per CPU second; output side {side:.1f} s "
          f"({side / cpu:.0%} of the run) = {1000 * side / n:.1f} ms per subject")
    print(f"{'step':32} {'CPU s':>7} {'ms/subject':>11}")
    for label in dict.fromkeys(timed):
        print(f"{label:32} {CPU[label]:>7.2f} {1000 * CPU[label] / n:>11.2f}")
    print(f"feed and OUT in {work}")


if __name__ == "__main__":
    main()
