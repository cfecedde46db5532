"""Every layout a Bulk Data export produces reads the same: gzip'd files, numbered parts, ``N.Type`` names,
sub-folders, a manifest with absolute URLs and error files, lines in another order — same CRFs, results,
write-back bundles and CDISC rows, byte for byte, as the plain NDJSON of the same data. A file the adapter
cannot read is an error naming it."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.job.pipeline import RunSummary, run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import SourceError
from fhir_adapter.source.files import FileSource
from fhir_adapter.synth import write_feed
from tests.feedkit import recount_manifest

COMPARED = ("crf", "results", "writeback")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, study: Any) -> Path:
    root = tmp_path_factory.mktemp("layouts")
    write_feed(root / "feed", subjects=4, seed=7)
    log = RunLog()
    summary = run(FileSource(root / "feed", log), study, root / "out", log)
    assert summary.subjects == 4 and summary.visits > 0
    (root / "exit_code").write_text(str(summary.exit_code))
    return root


def _outputs(out: Path) -> dict[str, bytes]:
    files = [p for sub in COMPARED for p in sorted((out / sub).rglob("*")) if p.is_file()]
    files += sorted((out / "export").glob("*.csv"))  # the CDISC rows and their --SEQ (the JSON and XML: dated)
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files}


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def _gz(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")


def all_gzipped(feed: Path, dst: Path) -> None:
    for p in feed.glob("*.ndjson"):
        _gz(dst / (p.name + ".gz"), _lines(p))


def only_observations_gzipped(feed: Path, dst: Path) -> None:
    shutil.copytree(feed, dst)
    (dst / "manifest.json").unlink()
    _gz(dst / "Observation.ndjson.gz", _lines(feed / "Observation.ndjson"))
    (dst / "Observation.ndjson").unlink()


def numbered_parts(feed: Path, dst: Path) -> None:
    """``Type.000.ndjson.gz`` … in a sub-folder; Observations split over three parts."""
    for p in feed.glob("*.ndjson"):
        lines = _lines(p)
        third = max(1, len(lines) // 3)
        parts = [lines[:third], lines[third:2 * third], lines[2 * third:]] if p.stem == "Observation" else [lines]
        for i, part in enumerate(parts):
            if part:
                _gz(dst / "export" / f"{p.stem}.{i:03d}.ndjson.gz", part)


def smart_manifest(feed: Path, dst: Path) -> None:
    """The SMART reference server's names (``1.Observation.ndjson``), absolute URLs in the manifest, one error
    file."""
    manifest: dict[str, Any] = {"transactionTime": "2026-11-01T00:00:00Z", "request": "https://x/$export",
                                "requiresAccessToken": False, "output": [], "error": []}
    dst.mkdir(parents=True)
    for n, p in enumerate(sorted(feed.glob("*.ndjson")), start=1):
        name = f"{n}.{p.stem}.ndjson"
        shutil.copy(p, dst / name)
        manifest["output"].append({"type": p.stem, "url": f"https://bulk.example.org/files/{name}",
                                   "count": len(_lines(p))})
    (dst / "errors").mkdir()
    outcome = {"resourceType": "OperationOutcome", "id": "e1", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "Condition export failed: timeout"}]}
    (dst / "errors" / "OperationOutcome.ndjson").write_bytes(orjson.dumps(outcome) + b"\n")
    manifest["error"].append({"type": "OperationOutcome", "url": "https://bulk.example.org/files/errors/"
                              "OperationOutcome.ndjson"})
    (dst / "manifest.json").write_text(json.dumps(manifest))


def reversed_lines(feed: Path, dst: Path) -> None:
    """Every file's lines in the reverse order: a server's search order, or a Bulk file's, is its own — the same
    data must give the same CRFs (their NOT DONE records and medications), results and exports (--SEQ)."""
    shutil.copytree(feed, dst)
    for p in dst.glob("*.ndjson"):
        p.write_bytes(b"\n".join(reversed(_lines(p))) + b"\n")


def byte_order_marks(feed: Path, dst: Path) -> None:
    """Every file, the manifest too, saved with a UTF-8 byte order mark (as Windows tools write them)."""
    shutil.copytree(feed, dst)
    for p in [*dst.glob("*.ndjson"), dst / "manifest.json"]:
        p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())


LAYOUTS: dict[str, Callable[[Path, Path], None]] = {
    "gzip": all_gzipped, "only-observations-gzip": only_observations_gzipped, "numbered-parts": numbered_parts,
    "smart-manifest": smart_manifest, "reversed-lines": reversed_lines, "byte-order-marks": byte_order_marks,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_gives_the_same_outputs(plain: Path, tmp_path: Path, study: Any, layout: str) -> None:
    LAYOUTS[layout](plain / "feed", tmp_path / "feed")
    log = RunLog()
    summary: RunSummary = run(FileSource(tmp_path / "feed", log), study, tmp_path / "out", log)
    names = {str(p.relative_to(tmp_path / "feed")) for p in (tmp_path / "feed").rglob("*") if p.is_file()}
    assert _outputs(tmp_path / "out") == _outputs(plain / "out")
    assert summary.visits > 0
    if layout == "smart-manifest":  # the export's error file is in the run report, and the run is not "ok"
        report = orjson.loads((tmp_path / "out" / "run-report.json").read_bytes())
        errors = [q for q in report["quarantine"] if q["rule"] == "export-error"]
        assert len(errors) == 1 and "Condition export failed" in errors[0]["reason"]
        assert errors[0]["file"] == "errors/OperationOutcome.ndjson" and summary.exit_code == 2
    else:
        assert summary.exit_code == int((plain / "exit_code").read_text())
        report = orjson.loads((tmp_path / "out" / "run-report.json").read_bytes())
        assert _unplaced(report["quarantine"]) == _unplaced(
            orjson.loads((plain / "out" / "run-report.json").read_bytes())["quarantine"])
        assert all(q["file"] in names for q in report["quarantine"] if "file" in q)


def _unplaced(quarantine: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The quarantine entries without their file and line: those name the layout's files."""
    return [{k: v for k, v in q.items() if k not in ("file", "line")} for q in quarantine]


def _cli_run(feed: Path, out: Path) -> Any:
    return CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(out)])


def test_truncated_gzip_is_an_error_naming_the_file(plain: Path, tmp_path: Path) -> None:
    all_gzipped(plain / "feed", tmp_path / "feed")
    path = tmp_path / "feed" / "Observation.ndjson.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = _cli_run(tmp_path / "feed", tmp_path / "out")
    assert result.exit_code == 1
    assert "Observation.ndjson.gz" in result.output and "truncated" in result.output


@pytest.mark.parametrize(("workers", "verbose"), [("1", []), ("2", []), ("1", ["-v"])])
def test_an_empty_gzip_file_is_an_error_naming_the_file(plain: Path, tmp_path: Path, workers: str,
                                                         verbose: list[str]) -> None:
    """Issue 17: labs that vanish silently. Python's gzip reads a 0-byte .gz as no data: the run must stop. With
    -v the same line follows the stack trace (a user's error, not "internal error … a bug")."""
    all_gzipped(plain / "feed", tmp_path / "feed")
    (tmp_path / "feed" / "Observation.ndjson.gz").write_bytes(b"")
    result = CliRunner().invoke(main, [*verbose, "run", "--source", str(tmp_path / "feed"), "--out",
                                       str(tmp_path / "out"), "--workers", workers])
    assert result.exit_code == 1, result.output
    assert "Observation.ndjson.gz: is empty (0 bytes)" in result.output and "internal error" not in result.output


def test_unknown_extension_next_to_data_files_is_an_error(plain: Path, tmp_path: Path) -> None:
    shutil.copytree(plain / "feed", tmp_path / "feed")
    (tmp_path / "feed" / "Observation.ndjson.bz2").write_bytes(b"BZh")
    result = _cli_run(tmp_path / "feed", tmp_path / "out")
    assert result.exit_code == 1 and "Observation.ndjson.bz2" in result.output


def test_a_manifest_entry_whose_file_is_missing_is_an_error(plain: Path, tmp_path: Path, study: Any) -> None:
    smart_manifest(plain / "feed", tmp_path / "feed")
    next(tmp_path.glob("feed/*.Observation.ndjson")).unlink()
    with pytest.raises(SourceError, match=r"https://bulk.example.org/files/\d+.Observation.ndjson"):
        FileSource(tmp_path / "feed", RunLog()).roster()
    result = _cli_run(tmp_path / "feed", tmp_path / "out")
    assert result.exit_code == 1 and "Observation.ndjson" in result.output


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_file_with_fewer_lines_than_its_manifest_count_is_said(plain: Path, tmp_path: Path, gzipped: bool) -> None:
    """A file cut at a line end reads as valid NDJSON: the manifest's count (Bulk Data IG v2) tells it is not all
    — a warning naming the file (a local folder may also have been filtered on purpose: read, not refused)."""
    smart_manifest(plain / "feed", tmp_path / "feed")
    path = next(tmp_path.glob("feed/*.Observation.ndjson"))
    lines = _lines(path)
    path.write_bytes(b"\n".join(lines[:-3]) + b"\n\n")  # cut at a line end (a blank line is no resource)
    if gzipped:
        _gz(path.with_name(path.name + ".gz"), _lines(path))
        path.unlink()
    log = RunLog()
    FileSource(tmp_path / "feed", log).roster()
    [said] = [w for w in log.warnings if w.get("rule") == "manifest-count"]
    assert re.match(rf".*{path.name}(.gz)?: holds {len(lines) - 3} line\(s\), but its entry in .*manifest.json "
                    rf"gives count {len(lines)}: the file is incomplete", said["message"]), said
    result = _cli_run(tmp_path / "feed", tmp_path / "out")
    assert result.exit_code in (0, 2), result.output
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    assert any(w["rule"] == "manifest-count" for w in report["warnings"])


@pytest.mark.parametrize("name", ["Observation.ndjson", "bundle.json"])
def test_gzip_data_in_a_file_not_named_gz_is_an_error_naming_the_fix(plain: Path, tmp_path: Path, name: str) -> None:
    """Not thousands of "not valid UTF-8" quarantine lines: one error naming the file and the name it needs."""
    shutil.copytree(plain / "feed", tmp_path / "feed")
    (tmp_path / "feed" / name).write_bytes(gzip.compress((tmp_path / "feed" / "Observation.ndjson").read_bytes()))
    with pytest.raises(SourceError, match=rf"{name}: holds gzip data .*rename it to {name}.gz"):
        FileSource(tmp_path / "feed", RunLog()).roster()
    result = _cli_run(tmp_path / "feed", tmp_path / "out")
    assert result.exit_code == 1 and f"rename it to {name}.gz" in result.output
    assert not (tmp_path / "out" / "quarantine").exists()


def test_gzip_that_is_not_gzip_is_an_error(plain: Path, tmp_path: Path) -> None:
    shutil.copytree(plain / "feed", tmp_path / "feed")
    (tmp_path / "feed" / "Observation.ndjson").rename(tmp_path / "feed" / "Observation.ndjson.gz")
    result = _cli_run(tmp_path / "feed", tmp_path / "out")
    assert result.exit_code == 1 and "Observation.ndjson.gz" in result.output


def test_hidden_files_are_not_data(plain: Path, tmp_path: Path, study: Any) -> None:
    shutil.copytree(plain / "feed", tmp_path / "feed")
    (tmp_path / "feed" / ".Observation.000.ndjson.gz.part").write_bytes(b"\x1f\x8b partial")
    log = RunLog()
    run(FileSource(tmp_path / "feed", log), study, tmp_path / "out", log)
    assert _outputs(tmp_path / "out") == _outputs(plain / "out")


def test_a_patient_linked_to_a_subjects_patient_is_said_not_read(plain: Path, tmp_path: Path) -> None:
    """A merged record of a subject (Patient.link replaced-by the subject's Patient, the EHR's master patient
    index): its resources are not read as the subject's — a link is the EHR's claim, and following it would let
    any record pose as a subject — and the run report names both records, once, with what to do."""
    shutil.copytree(plain / "feed", tmp_path / "feed")
    subject = orjson.loads(_lines(tmp_path / "feed" / "ResearchSubject.ndjson")[0])
    enrolled = subject["individual"]["reference"].split("/")[1]
    old = {"resourceType": "Patient", "id": "merged-away-1", "active": False,
           "link": [{"other": {"reference": f"Patient/{enrolled}"}, "type": "replaced-by"}]}
    patients = tmp_path / "feed" / "Patient.ndjson"
    lines = [orjson.loads(x) for x in _lines(patients)]
    for p in lines:
        if p["id"] == enrolled:
            p["link"] = [{"other": {"reference": "Patient/merged-away-1"}, "type": "replaces"}]
    patients.write_bytes(b"\n".join(orjson.dumps(p) for p in [*lines, old]) + b"\n")
    recount_manifest(tmp_path / "feed")
    log = RunLog()
    FileSource(tmp_path / "feed", log).roster()
    said = [w for w in log.warnings if w["rule"] == "patient-link"]
    assert len(said) == 1 and said[0]["resource"] == f"Patient/{enrolled}"
    assert "Patient/merged-away-1" in said[0]["message"] and "merge or re-file" in said[0]["fix"]


def test_a_subjects_patient_merged_away_is_said_with_the_patient_to_repoint_it_at(plain: Path, tmp_path: Path) -> None:
    """The subject's own Patient is the one merged away (`replaced-by` on it, `replaces` on the survivor): the
    person's records now live under the survivor, so the warning says to point the subject at it."""
    shutil.copytree(plain / "feed", tmp_path / "feed")
    subject = orjson.loads(_lines(tmp_path / "feed" / "ResearchSubject.ndjson")[0])
    enrolled = subject["individual"]["reference"].split("/")[1]
    survivor = {"resourceType": "Patient", "id": "survivor-1",
                "link": [{"other": {"reference": f"Patient/{enrolled}"}, "type": "replaces"}]}
    patients = tmp_path / "feed" / "Patient.ndjson"
    lines = [orjson.loads(x) for x in _lines(patients)]
    for p in lines:
        if p["id"] == enrolled:
            p.update(active=False, link=[{"other": {"reference": "Patient/survivor-1"}, "type": "replaced-by"}])
    patients.write_bytes(b"\n".join(orjson.dumps(p) for p in [survivor, *lines]) + b"\n")
    recount_manifest(tmp_path / "feed")
    log = RunLog()
    FileSource(tmp_path / "feed", log).roster()
    [said] = [w for w in log.warnings if w["rule"] == "patient-link"]
    assert said["resource"] == f"Patient/{enrolled}"
    assert f"the enrolled Patient/{enrolled} was replaced by Patient/survivor-1" in said["message"]
    assert "ResearchSubject.individual" in said["fix"]


def test_two_enrolled_patients_linked_as_one_person_are_said_as_such(plain: Path, tmp_path: Path) -> None:
    """Two subjects' Patients linked (no link type): each is still read as its own subject's, and the warning asks
    whether one person was enrolled twice — not that one's records go unread."""
    shutil.copytree(plain / "feed", tmp_path / "feed")
    first, second = (orjson.loads(x)["individual"]["reference"].split("/")[1]
                     for x in _lines(tmp_path / "feed" / "ResearchSubject.ndjson")[:2])
    patients = tmp_path / "feed" / "Patient.ndjson"
    lines = [orjson.loads(x) for x in _lines(patients)]
    for p in lines:
        if p["id"] == first:
            p["link"] = [{"other": {"reference": f"Patient/{second}"}}]
    patients.write_bytes(b"\n".join(orjson.dumps(p) for p in lines) + b"\n")
    log = RunLog()
    FileSource(tmp_path / "feed", log).roster()
    [said] = [w for w in log.warnings if w["rule"] == "patient-link"]
    assert f"the enrolled Patients {first} and {second} are linked as the same person (no link type)" in \
        said["message"] and "two people" in said["fix"]


def test_a_bundle_with_the_patient_before_its_research_subject_says_the_link_the_same_way(tmp_path: Path) -> None:
    """Folders of Bundles: whether a linked Patient is a subject's is decided once every subject is read, not by
    the order of a Bundle's entries."""
    def bundle(pid: str, other: str) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "id": pid,
                          "link": [{"other": {"reference": f"Patient/{other}"}, "type": "seealso"}]}},
            {"resource": {"resourceType": "ResearchSubject", "id": f"rs-{pid}", "status": "on-study",
                          "study": {"reference": "ResearchStudy/s1"}, "individual": {"reference": f"Patient/{pid}"}}}]}

    (tmp_path / "a.json").write_bytes(orjson.dumps(bundle("A", "B")))
    (tmp_path / "b.json").write_bytes(orjson.dumps(bundle("B", "A")))
    log = RunLog()
    FileSource(tmp_path, log).roster()
    assert [w["message"] for w in log.warnings if w["rule"] == "patient-link"] == [
        "the enrolled Patients A and B are linked as the same person (link type seealso): each is read as its own "
        "subject's"]
