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


# -- symbolic links already inside OUT (or a report's folder) are never written through --------------------------
# A link where an output the adapter replaces whole goes is replaced like a previous output (its target untouched);
# a link in place of a folder the adapter writes into stops the command, naming the link, before anything is
# written (fhir_adapter/job/outpaths.py: without_links, real_folder, replaced_output).

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fhir_adapter.synth import write_feed

    feed = tmp_path_factory.mktemp("feed")
    write_feed(feed, subjects=3, seed=7)
    return feed


def _cli_run(feed: Path, out: Path) -> Any:
    from click.testing import CliRunner

    from fhir_adapter.cli.commands import main

    return CliRunner().invoke(main, ["-q", "run", "--source", str(feed), "--out", str(out), "--workers", "1",
                                     "--study", str(ROOT / "mappings" / "lcar-aio")])


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_link_in_place_of_last_run_json_is_replaced_not_written_through(synth_feed: Path, tmp_path: Path) -> None:
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    victim.write_text("ORIGINAL\n")
    (out / "state").mkdir(parents=True)
    (out / "state" / "last-run.json").symlink_to(victim)
    res = _cli_run(synth_feed, out)
    assert res.exit_code in (0, 2), res.output
    assert victim.read_text() == "ORIGINAL\n"
    last_run = out / "state" / "last-run.json"
    assert not last_run.is_symlink() and "started" in json.loads(last_run.read_text())


@pytest.mark.parametrize("folder", ["state", "review"])
def test_a_linked_output_folder_stops_the_run_before_it_writes(synth_feed: Path, tmp_path: Path, folder: str) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "kept.txt").write_text("not the adapter's\n")
    out.mkdir()
    (out / folder).symlink_to(elsewhere, target_is_directory=True)
    res = _cli_run(synth_feed, out)
    assert res.exit_code == 1
    assert f"{out / folder} is a symbolic link" in res.output and "replace the link by a real folder" in res.output
    assert _tree(elsewhere) == {"kept.txt": b"not the adapter's\n"}  # state/written.json, review/candidates: none
    assert sorted(p.name for p in out.iterdir()) == [folder]  # nothing moved in, no staging folder left


def test_a_dangling_link_in_place_of_an_output_folder_is_replaced(synth_feed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "crf").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    res = _cli_run(synth_feed, out)
    assert res.exit_code in (0, 2), res.output
    assert (out / "crf").is_dir() and not (out / "crf").is_symlink() and any((out / "crf").glob("*.json"))
    assert not (tmp_path / "nowhere").exists()


def test_a_link_in_place_of_the_lock_file_is_replaced(tmp_path: Path) -> None:
    from fhir_adapter.job.outlock import LOCK_NAME, hold_out

    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    victim.write_text("ORIGINAL\n")
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with hold_out(out):
        assert not (out / LOCK_NAME).is_symlink()
    assert victim.read_text() == "ORIGINAL\n"


def test_a_linked_staging_folder_is_left_alone(tmp_path: Path) -> None:
    from fhir_adapter.job.staging import COMPLETE, PREFIX, Staging

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (elsewhere / "crf").mkdir(parents=True)
    (elsewhere / "crf" / "x.json").write_text("{}")
    (elsewhere / COMPLETE).write_text("crf\n")  # looks like a finished run's staging folder
    out.mkdir()
    (out / f"{PREFIX}planted").symlink_to(elsewhere, target_is_directory=True)
    Staging(out).open()
    assert _tree(elsewhere) == {"crf/x.json": b"{}", COMPLETE: b"crf\n"} and not (out / "crf").exists()


def test_report_never_writes_through_a_link(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fhir_adapter.cli.commands import main
    from tests.report import report_fixture

    results = report_fixture.write(tmp_path / "results")
    elsewhere, victim = tmp_path / "elsewhere", tmp_path / "victim.html"
    elsewhere.mkdir()
    victim.write_text("ORIGINAL\n")
    (results / "report").symlink_to(elsewhere, target_is_directory=True)
    res = CliRunner().invoke(main, ["report", "--results", str(results)])
    assert res.exit_code == 1 and f"{results / 'report'} is a symbolic link" in res.output
    assert not list(elsewhere.iterdir())
    (results / "report").unlink()
    (results / "report").mkdir()
    (results / "report" / "index.html").symlink_to(victim)  # a link in place of the output file: replaced
    res = CliRunner().invoke(main, ["report", "--results", str(results)])
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "ORIGINAL\n"
    index = results / "report" / "index.html"
    assert not index.is_symlink() and "<html" in index.read_text()


def test_review_decisions_are_never_appended_through_a_link(tmp_path: Path) -> None:
    from fhir_adapter.review.store import DecisionStore, new_decision

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "state").symlink_to(elsewhere, target_is_directory=True)
    shown = {"rule": "closest", "picked": "Observation/a",
             "candidates": [{"id": "Observation/a", "value": "0.9", "unit": "g/L"}]}
    d = new_decision(subject_id="101-001", visit="W24", item="c3", action="accept", reviewer="R. One", shown=shown)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        DecisionStore.under(out).append(d)
    (out / "state").unlink()
    (out / "state").mkdir()
    (out / "state" / "review-decisions.jsonl").symlink_to(elsewhere / "decisions.jsonl")
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        DecisionStore.under(out).append(d)
    assert not list(elsewhere.iterdir())


def test_bulk_downloads_never_go_through_a_link(tmp_path: Path, study: Study) -> None:
    from fhir_adapter.job.connect import connect

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "bulk").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        connect("http://127.0.0.1:9/fhir", study, RunLog(), out, bulk=True)
    assert not list(elsewhere.iterdir())


def test_without_links_and_replaced_output(tmp_path: Path) -> None:
    from fhir_adapter.job.outpaths import real_folder, replaced_output, without_links
    from fhir_adapter.safe_paths import open_new

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "f").write_text("kept")
    assert real_folder(out, out / "a" / "b").is_dir()
    (out / "a" / "link").symlink_to(elsewhere / "f")
    (out / "a" / "dir").symlink_to(out / "a" / "b", target_is_directory=True)  # even one pointing inside OUT
    for bad in (out / "a" / "link", out / "a" / "dir" / "x", out / ".." / "x", out / "a\x00", tmp_path / "x"):
        with pytest.raises(UnsafePath):
            without_links(out, bad)
    assert replaced_output(out, out / "a" / "link") == out / "a" / "link" and not (out / "a" / "link").exists()
    assert (elsewhere / "f").read_text() == "kept"
    (out / "a" / "new").symlink_to(elsewhere / "f")  # open_new: written anew in the link's place, not through it
    with open_new(out / "a" / "new") as fh:
        fh.write(b"new")
    assert not (out / "a" / "new").is_symlink() and (out / "a" / "new").read_bytes() == b"new"
    assert (elsewhere / "f").read_text() == "kept"
