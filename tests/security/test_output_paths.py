"""Input cannot choose where the adapter writes: quarantine files come from a closed set of names, subject
file names from one injective, length-bounded function, and nothing lands outside OUT."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.job.outpaths import (
    MAX_NAME,
    OutFolders,
    SubjectFileNames,
    UnsafePath,
    inside,
    quarantine_file_name,
    subject_file_name,
)
from fhir_adapter.job.pipeline import RunSummary, run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from tests.feedkit import Feed, at

DAY1 = dt.date(2024, 2, 1)


def _feed(subject_ids: list[str]) -> Feed:
    f = Feed()
    for i, sid in enumerate(subject_ids, start=1):
        f.subject(f"p{i}", sid, name=f"Test Person{i}", mrn=f"MRN-{i}", birth="1990-01-01", day1=DAY1)
        f.obs(f"p{i}", "777-3", at(DAY1, 29), value=150 + i, unit="10*9/L", id_=f"plt-{i}")
    return f


def _run(tmp_path: Path, f: Feed, study: Study) -> tuple[RunSummary, Path, dict[str, Any]]:
    feed = f.write(tmp_path / "work" / "feed")
    out = tmp_path / "work" / "out"
    log = RunLog()
    summary = run(FileSource(feed, log), study, out, runlog=log)
    report = json.loads((out / "run-report.json").read_text())
    return summary, out, report


def _all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("rtype", ["../../PWNED", "../PWNED", "/tmp/fhir-adapter-PWNED", "Obs\x00ervation",
                                   "X" * 5000, "Observation/../../x", "..", ""])
def test_resource_type_never_names_a_path(tmp_path: Path, study: Study, rtype: str) -> None:
    f = _feed(["101-001"])
    f.raw_lines.append(json.dumps({"resourceType": rtype, "id": "x"}).encode())
    before = _all_files(tmp_path)
    summary, out, report = _run(tmp_path, f, study)
    written = _all_files(tmp_path) - before
    assert all(p.is_relative_to(out) or p.is_relative_to(tmp_path / "work" / "feed") for p in written)
    assert not Path("/tmp/fhir-adapter-PWNED.ndjson").exists()
    assert not any("PWNED" in p.name for p in _all_files(tmp_path))
    # the run completes with its report; the line is quarantined under the closed name "unknown"
    assert report["exit_code"] == 2 == summary.exit_code
    assert report["summary"]["subjects"] == 1
    assert sorted(p.name for p in (out / "quarantine").iterdir()) == ["unknown.ndjson"]
    assert any(q["resource_type"] == rtype for q in report["quarantine"])


def test_quarantine_names_are_r4_types_or_unknown() -> None:
    assert quarantine_file_name("Observation") == "Observation.ndjson"
    for bad in ("../../PWNED", "/etc/passwd", "Observaton", "A\x00", "Z" * 300, "observation", "Obs ervation"):
        assert quarantine_file_name(bad) == "unknown.ndjson"


def test_subject_file_names_are_injective_and_safe() -> None:
    ids = ["101-001", "a/b", "a_b", "a\\b", "..", ".", "", "a\x00b", "a\nb", "ä", "a b", "/abs/path", "_2F"]
    names = [subject_file_name(s) for s in ids]
    assert len(set(names)) == len(ids)
    assert subject_file_name("101-001") == "101-001"
    for n in names:
        assert n and not n.startswith(".") and len(n) <= MAX_NAME
        assert not any(c in n for c in "/\\\x00") and n.isprintable()
    long_a, long_b = "A" * 300, "A" * 299 + "B"
    assert subject_file_name(long_a) != subject_file_name(long_b)
    assert len(subject_file_name(long_a)) <= MAX_NAME


def test_subject_file_name_clash_names_both_subjects() -> None:
    names = SubjectFileNames()
    names.name("AB-1")
    assert names.name("AB-1") == "AB-1"  # the same subject again (incremental runs) is fine
    with pytest.raises(UnsafePath, match=r"'ab-1'.*'AB-1'"):
        names.name("ab-1")


def test_inside_refuses_paths_outside_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert inside(out, out / "crf" / "x.json") == out / "crf" / "x.json"
    for bad in (out / ".." / "x", Path("/etc/x"), out / "crf" / ".." / ".." / "x", out / "a\x00b"):
        with pytest.raises(UnsafePath):
            inside(out, bad)


def test_out_folders_resolve_a_folder_once_and_still_refuse_what_leaves_out(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    folders = OutFolders(out)
    first = folders.file(out / "crf" / "a.json")  # the folder is made
    assert first == out / "crf" / "a.json" and (out / "crf").is_dir()
    (out / "crf" / "b.json").symlink_to(elsewhere / "b.json")  # a file of a checked folder pointing outside
    (out / "crf" / "c.json").symlink_to(out / "crf" / "a.json")  # ... and one pointing inside
    with pytest.raises(UnsafePath):
        folders.file(out / "crf" / "b.json")
    assert folders.file(out / "crf" / "c.json") == out / "crf" / "c.json"
    (out / "writeback").symlink_to(elsewhere, target_is_directory=True)  # a folder pointing outside
    for bad in (out / "writeback" / "x.json", out / "crf" / ".." / ".." / "x", out / "crf" / "a\x00b"):
        with pytest.raises(UnsafePath):
            folders.file(bad)
    assert not list(elsewhere.iterdir())


def test_slash_and_underscore_subjects_keep_their_own_files(tmp_path: Path, study: Study) -> None:
    summary, out, _ = _run(tmp_path, _feed(["a/b", "a_b", "../evil", "/abs"]), study)
    assert summary.subjects == 4 and not summary.subjects_failed
    crfs = {json.loads(p.read_text())["subject_id"] for p in (out / "crf").glob("*.json")}
    assert crfs == {"a/b", "a_b", "../evil", "/abs"}
    assert len(list((out / "writeback").glob("*.json"))) == 4
    assert not (tmp_path / "work" / "evil.json").exists() and not Path("/abs.json").exists()


def test_long_subject_id_is_processed(tmp_path: Path, study: Study) -> None:
    long_id = "1" * 300
    summary, out, _ = _run(tmp_path, _feed([long_id]), study)
    assert summary.subjects == 1 and not summary.subjects_failed
    (crf,) = (out / "crf").glob("*.json")
    assert json.loads(crf.read_text())["subject_id"] == long_id
    assert len(crf.name) <= MAX_NAME + len(".json")


def test_case_clash_fails_the_second_subject_naming_both(tmp_path: Path, study: Study) -> None:
    summary, _, report = _run(tmp_path, _feed(["AB-1", "ab-1"]), study)
    assert summary.subjects == 1 and len(summary.subjects_failed) == 1
    msg = next(w["message"] for w in report["warnings"] if w.get("rule") == "subject-failed")
    assert "'AB-1'" in msg and "'ab-1'" in msg
    assert report["exit_code"] == 2
