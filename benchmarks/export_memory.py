"""Memory follows the trial, not the export: peak RSS and reading speed of the file source while the part of
the export that is NOT the trial grows.

Usage: python benchmarks/export_memory.py [--subjects 10] [--factors 1 5 20] [--gzip] [--compare-ref REF]

Generates the synthetic trial (seed 7), then adds patients who are not enrolled: copies of the enrolled
subjects' Patients and resources under new ids, FACTOR times the trial's own data (a hospital export of which
the trial is a small part). For each factor, in fresh child processes:

* ``read``: the file source alone (roster, then every enrolled subject's resources): seconds, resources/s
  (every line of the export counts), peak RSS;
* ``run``: the whole pipeline: seconds, peak RSS.

``--compare-ref REF`` also reads each export with the file source of git revision REF (e.g. the one before
streaming) for the same figures. Prints numbers only; no pass/fail.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent

#: peak RSS of the child's own image (VmHWM: ru_maxrss would carry the parent's peak across fork + exec)
PEAK = r"""
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
"""

READ = PEAK + r"""
import json, sys, time, types
from pathlib import Path
from fhir_adapter.job.runlog import RunLog
feed, ref_source = Path(sys.argv[1]), sys.argv[2]
if ref_source:
    mod = types.ModuleType("old_files")
    exec(compile(Path(ref_source).read_text(), "old_files.py", "exec"), mod.__dict__)
    FileSource = mod.FileSource
else:
    from fhir_adapter.source.files import FileSource
log = RunLog()
t0 = time.perf_counter()
src = FileSource(feed, log)
roster = src.roster()
enrolled = {p for rs in roster.subjects
            if (p := (rs.get("individual") or {}).get("reference", "").split("/")[-1]) in roster.patients}
kept = sum(len(res) for _, res in src.subject_resources(enrolled))
seconds = time.perf_counter() - t0
lines = int(sys.argv[3])
print(json.dumps({"seconds": seconds, "lines": lines, "kept": kept,
                  "peak_rss_mb": peak_rss_mb()}))
"""

RUN = PEAK + r"""
import json, sys, time
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
print(json.dumps({"seconds": time.perf_counter() - t0, "subjects": summary.subjects,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def _write(path: Path, lines: list[bytes], gz: bool) -> None:
    data = b"\n".join(lines) + b"\n"
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb", compresslevel=1) as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def build_export(trial: Path, dst: Path, factor: int, gz: bool) -> int:
    """The trial plus FACTOR copies of its enrolled patients' data under non-enrolled patient ids; returns the
    number of resources (lines) in the export."""
    dst.mkdir(parents=True)
    enrolled = {json.loads(line)["individual"]["reference"].split("/")[-1]
                for line in (trial / "ResearchSubject.ndjson").read_bytes().splitlines() if line.strip()}
    total = 0
    for path in sorted(trial.glob("*.ndjson")):
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        out = list(lines)
        if path.stem not in ("ResearchStudy", "ResearchSubject", "Organization"):
            for line in lines:
                res = orjson.loads(line)
                pid = res["id"] if res["resourceType"] == "Patient" else \
                    (res.get("subject") or {}).get("reference", "").split("/")[-1]
                if pid not in enrolled:
                    continue
                for c in range(1, factor + 1):
                    copy = line.replace(pid.encode(), f"{pid[:-4]}x{c:03d}".encode())
                    out.append(copy if res["resourceType"] == "Patient" else
                               copy.replace(res["id"].encode(), f"{res['id'][:-4]}x{c:03d}".encode(), 1))
        _write(dst / path.name, out, gz)
        total += len(out)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--gzip", action="store_true", help="write the export as .ndjson.gz")
    ap.add_argument("--compare-ref", default=None, help="git revision whose file source to read with as well")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    from fhir_adapter.synth import write_feed

    work = args.workdir or Path(tempfile.mkdtemp(prefix="fhir-adapter-export-mem-"))
    trial = work / "trial"
    write_feed(trial, subjects=args.subjects, seed=7)
    (trial / "manifest.json").unlink()
    old = ""
    if args.compare_ref:
        old_path = work / "old_files.py"
        old_path.write_text(subprocess.run(["git", "-C", str(ROOT), "show",
                                            f"{args.compare_ref}:fhir_adapter/source/files.py"],
                                           check=True, capture_output=True, text=True).stdout)
        old = str(old_path)
    header = ("factor", "resources", "MB", "source", "read s", "res/s", "read RSS", "run s", "run RSS")
    widths = (6, 10, 7, 8, 7, 9, 9, 7, 8)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for factor in args.factors:
        feed = work / f"export-x{factor}"
        lines = build_export(trial, feed, factor, args.gzip)
        mb = sum(p.stat().st_size for p in feed.iterdir()) / 2**20
        for label, ref in (("current", ""), *((("old", old),) if old else ())):
            read = json.loads(subprocess.run([sys.executable, "-c", READ, str(feed), ref, str(lines)],
                                             check=True, capture_output=True, text=True, cwd=ROOT).stdout)
            run = {"seconds": float("nan"), "peak_rss_mb": float("nan")}
            if not ref:
                run = json.loads(subprocess.run([sys.executable, "-c", RUN, str(feed), str(work / f"out-{factor}"),
                                                 str(ROOT / "mappings" / "lcar-aio")],
                                                check=True, capture_output=True, text=True, cwd=ROOT).stdout)
            row = (factor, lines, f"{mb:.1f}", label, f"{read['seconds']:.2f}",
                   f"{lines / read['seconds']:.0f}", f"{read['peak_rss_mb']:.0f}",
                   f"{run['seconds']:.2f}", f"{run['peak_rss_mb']:.0f}")
            print(" ".join(f"{v!s:>{w}}" for v, w in zip(row, widths, strict=True)), flush=True)


if __name__ == "__main__":
    main()
