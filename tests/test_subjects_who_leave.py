"""docs/clinical-rules.md#withdrawn-subjects: a subject who took part and left (withdrawn, off-study) is never
read again, and the CRF of the last run that read it is carried forward — in the CRFs, the exports and the
study-level results (a DLT before a withdrawal still counts in dose escalation) — without anything written
back for it."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapter.job.pipeline import RunSummary, run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from fhir_adapter.synth import write_feed
from fhir_adapter.testing.outtree import differences, out_tree
from fhir_adapter.writeback.sink import WriteResult
from fhir_adapter.writeback.state import result_id
from tests.feedkit import Feed, at, recount_manifest

WITHDRAWN = "101-004"  # a DL3 subject with a DLT in the synthetic feed of 34 subjects (seed 7), Day 1 2024-11-06
END = "2025-06-30"  # its withdrawal: after its DLT, before its last results and two of its adverse events


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leave")
    write_feed(root / "feed", subjects=34, seed=7)
    return root / "feed"


def _run(feed: Path, study: Study, out: Path, workers: int = 1) -> RunSummary:
    log = RunLog()
    return run(FileSource(feed, log), study, out, log, workers=workers)


def _json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _write_lines(path: Path, resources: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))


def _subject_of(rs: dict[str, Any]) -> str:
    return str(rs["identifier"][0]["value"])


def _leave(feed: Path, to: Path, subjects: dict[str, str], end: str = END) -> None:
    """A copy of ``feed`` where each subject of ``subjects`` has the status given, its participation ended on
    ``end``, and none of its clinical records (so that reading any would show)."""
    shutil.copytree(feed, to)
    rs_path = to / "ResearchSubject.ndjson"
    rss = _lines(rs_path)
    gone = set()
    for rs in rss:
        if _subject_of(rs) in subjects:
            rs["status"] = subjects[_subject_of(rs)]
            rs["period"] = {**rs.get("period", {}), "end": end}
            rs["meta"] = {**rs["meta"], "versionId": str(int(rs["meta"]["versionId"]) + 1)}  # the EHR's update
            gone.add(f"Patient/{rs['individual']['reference'].split('/')[-1]}")
    _write_lines(rs_path, rss)
    for rtype in ("Observation", "AdverseEvent", "MedicationStatement", "MedicationAdministration", "Procedure"):
        path = to / f"{rtype}.ndjson"
        kept = [r for r in _lines(path) if (r.get("subject") or r.get("patient") or {}).get("reference") not in gone]
        _write_lines(path, kept)
    recount_manifest(to)


def test_a_subject_who_withdraws_after_a_dlt_is_carried_forward_and_still_counts(feed: Path, study: Study,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(feed, study, out)
    before = _json(out / "results" / "study.json")
    crf_before = _json(out / "crf" / f"{WITHDRAWN}.json")
    [row_before] = [s for s in before["subjects"] if s["subject_id"] == WITHDRAWN]
    assert row_before["dlt"] is True and row_before["arm"] == "DL3"
    state_before = {k: v for k, v in _json(out / "state" / "written.json")["results"].items()
                    if v.get("subject_id") == WITHDRAWN}
    assert state_before

    _leave(feed, tmp_path / "feed2", {WITHDRAWN: "withdrawn"})
    shutil.copytree(out, tmp_path / "out-workers")
    summary = _run(tmp_path / "feed2", study, out)
    _run(tmp_path / "feed2", study, tmp_path / "out-workers", workers=2)  # the carried subject merged in order
    assert differences(out_tree(out), out_tree(tmp_path / "out-workers")) == []
    report = _json(out / "run-report.json")
    assert summary.carried_forward == [WITHDRAWN] and report["summary"]["subjects_carried_forward"] == [WITHDRAWN]
    assert report["summary"]["subjects"] == 33 and WITHDRAWN not in report["summary"]["subjects_failed"]
    after = _json(out / "results" / "study.json")
    assert WITHDRAWN in {s["subject_id"] for s in after["subjects"]}
    # the DLT before the withdrawal still counts: the escalation decisions and the RP2D are those of before
    assert after["dose_levels"] == before["dose_levels"] and after["rp2d"] == before["rp2d"]
    crf = _json(out / "crf" / f"{WITHDRAWN}.json")
    # none of it was read again; what is dated after the end of participation is taken out, as when read
    assert crf["findings"] == [f for f in crf_before["findings"] if not f["date"] or f["date"] <= END]
    assert 0 < len(crf["findings"]) < len(crf_before["findings"])
    assert crf["ae"] == [a for a in crf_before["ae"] if a["onset_date"] <= END] and len(crf["ae"]) == 4
    assert {v["visit"] for v in crf["visits"]} < {v["visit"] for v in crf_before["visits"]}
    assert report["counts"]["participation.ae-after-end"] == 2 and report["counts"]["participation.after-end"] > 0
    assert crf["dm"]["status"] == "withdrawn" and crf["dm"]["end_of_participation"] == END
    assert crf["dm"]["source"][0]["version"] == "3"  # the ResearchSubject as it now is
    # its results are planned as any subject's, from the carried CRF: what it derives from its data up to the end
    # of participation is unchanged (not written again), its results of visits after the end are retracted (the
    # participation rule, as for an enrolled subject), its DLT still counts
    bundle = _json(out / "writeback" / f"{WITHDRAWN}.json")
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    retracted = [r for r in observations if r["status"] == "entered-in-error"]
    after_end = {k for k, v in state_before.items() if v["resource"].get("effectiveDateTime", "")[:10] > END}
    assert after_end and {r["identifier"][0]["value"] for r in retracted} == after_end
    assert all("participation ended on " + END in r["note"][0]["text"] for r in retracted)
    dlt = next(r for r in observations if r["identifier"][0]["value"].endswith(".subject.dlt"))
    assert dlt["status"] == "final" and dlt["valueBoolean"] is True
    state_after = {k: v for k, v in _json(out / "state" / "written.json")["results"].items()
                   if v.get("subject_id") == WITHDRAWN}
    assert {k for k, v in state_after.items() if v.get("retracted")} == after_end
    assert {k: v for k, v in state_after.items() if k not in after_end} == \
        {k: v for k, v in state_before.items() if k not in after_end}, "the rest unchanged"
    assert report["writeback_state"]["retracted"] == len(after_end)
    dm = (out / "export" / "DM.csv").read_text(encoding="utf-8")
    assert any(WITHDRAWN in line and END in line for line in dm.splitlines())
    assert any(WITHDRAWN in line for line in (out / "export" / "LB.csv").read_text(encoding="utf-8").splitlines())

    # once more on the same OUT: carried again, unchanged, nothing more to retract
    _run(tmp_path / "feed2", study, out)
    assert _json(out / "crf" / f"{WITHDRAWN}.json") == crf
    assert _json(out / "run-report.json")["writeback_state"]["retracted"] == 0
    assert {k: v for k, v in _json(out / "state" / "written.json")["results"].items()
            if v.get("subject_id") == WITHDRAWN} == state_after
    assert _json(out / "results" / "study.json")["dose_levels"] == before["dose_levels"]

    # a fresh OUT holds no earlier CRF of the subject: there is nothing to carry, and it is not read
    fresh = tmp_path / "fresh"
    summary = _run(tmp_path / "feed2", study, fresh)
    assert summary.carried_forward == [] and not (fresh / "crf" / f"{WITHDRAWN}.json").exists()
    assert _json(fresh / "results" / "study.json")["dose_levels"] != before["dose_levels"]


def _two_subjects() -> Feed:
    f = Feed()
    for n, pid in enumerate(("p1", "p2"), start=1):
        day1 = dt.date(2024, 2, n)
        f.subject(pid, f"101-00{n}", name=f"Subject{n} Testperson", mrn=f"MRN-{n}", birth="1980-01-01", day1=day1)
        f.obs(pid, "777-3", at(day1, 29), value=210, unit="10*9/L", id_=f"plt-{pid}")
    return f


def _set_status(feed: Path, status: dict[str, str]) -> None:
    path = feed / "ResearchSubject.ndjson"
    rss = _lines(path)
    for rs in rss:
        rs["status"] = status.get(rs["id"], rs["status"])
    _write_lines(path, rss)


def test_when_every_subject_has_left_the_run_carries_them_all(study: Study, tmp_path: Path) -> None:
    """The last run of a trial, every subject off-study: the OUT still holds everyone, exit 0."""
    feed, out = _two_subjects().write(tmp_path / "feed"), tmp_path / "out"
    assert _run(feed, study, out).exit_code == 0
    _set_status(feed, {"rs-p1": "off-study", "rs-p2": "withdrawn"})
    summary = _run(feed, study, out)
    assert summary.exit_code == 0 and summary.subjects == 0 and summary.carried_forward == ["101-001", "101-002"]
    assert {s["subject_id"] for s in _json(out / "results" / "study.json")["subjects"]} == {"101-001", "101-002"}
    assert sorted(p.name for p in (out / "crf").iterdir()) == ["101-001.json", "101-002.json"]
    # their results as written before: no end of participation recorded, nothing lies outside it
    assert sorted(p.name for p in (out / "writeback").glob("*.json")) == ["101-001.json", "101-002.json"]
    report = _json(out / "run-report.json")["writeback_state"]
    assert (report["new"], report["updated"], report["retracted"]) == (0, 0, 0)


def test_a_status_that_is_not_leaving_is_not_carried(study: Study, tmp_path: Path) -> None:
    """``ineligible`` (enrolled by mistake) is not a subject who took part and left: its CRF is dropped."""
    feed, out = _two_subjects().write(tmp_path / "feed"), tmp_path / "out"
    _run(feed, study, out)
    _set_status(feed, {"rs-p2": "ineligible"})
    summary = _run(feed, study, out)
    assert summary.carried_forward == [] and not (out / "crf" / "101-002.json").exists()


def test_a_patient_enrolled_again_is_read_under_the_new_research_subject(study: Study, tmp_path: Path) -> None:
    """The old ResearchSubject withdrawn, a new one enrolled with the same subject ID: the subject is read (the
    enrolled one wins), neither refused as claimed twice nor carried forward."""
    f = _two_subjects()
    feed, out = f.write(tmp_path / "feed"), tmp_path / "out"
    _run(feed, study, out)
    _set_status(feed, {"rs-p2": "withdrawn"})
    again = {**_lines(feed / "ResearchSubject.ndjson")[1], "id": "rs-p2-again", "status": "on-study"}
    assert again["individual"] == {"reference": "Patient/p2"}
    with (feed / "ResearchSubject.ndjson").open("ab") as fh:
        fh.write(orjson.dumps(again) + b"\n")
    summary = _run(feed, study, out)
    assert summary.carried_forward == [] and summary.subjects == 2 and summary.exit_code == 0
    assert _json(out / "crf" / "101-002.json")["dm"]["status"] == "on-study"


def test_a_carried_crf_that_cannot_be_read_is_kept_as_it_was(study: Study, tmp_path: Path) -> None:
    feed, out = _two_subjects().write(tmp_path / "feed"), tmp_path / "out"
    _run(feed, study, out)
    _set_status(feed, {"rs-p2": "withdrawn"})
    (out / "crf" / "101-002.json").write_bytes(b'{"subject_id": "101-002"}')  # e.g. written by another version
    summary = _run(feed, study, out)
    assert summary.exit_code == 2 and summary.subjects_failed == ["101-002"] and summary.carried_forward == []
    assert (out / "crf" / "101-002.json").read_bytes() == b'{"subject_id": "101-002"}'
    [warned] = [w for w in _json(out / "run-report.json")["warnings"] if w.get("subject_id") == "101-002"]
    assert "kept in OUT/crf as it was" in warned["message"]


def test_a_leaver_whose_patient_the_export_no_longer_holds_is_carried(study: Study, tmp_path: Path) -> None:
    """A hospital may stop exporting a withdrawn patient's records, its Patient too: the ResearchSubject is enough."""
    feed, out = _two_subjects().write(tmp_path / "feed"), tmp_path / "out"
    _run(feed, study, out)
    _set_status(feed, {"rs-p2": "withdrawn"})
    for rtype in ("Patient", "Observation", "Procedure", "MedicationAdministration"):
        path = feed / f"{rtype}.ndjson"
        _write_lines(path, [r for r in _lines(path) if "p2" not in (r.get("id"), (r.get("subject") or {})
                                                                     .get("reference", "").split("/")[-1])])
    summary = _run(feed, study, out)
    assert summary.exit_code == 0 and summary.carried_forward == ["101-002"]
    assert _json(out / "crf" / "101-002.json")["findings"]


def test_a_leaver_that_cannot_be_carried_keeps_its_crf_and_is_said(study: Study, tmp_path: Path) -> None:
    """Two withdrawn ResearchSubjects give subject 101-002 to different patients: which patient's data the CRF
    holds is not sure, so it is not carried (not in the results) — but kept in OUT/crf, never dropped."""
    feed, out = _two_subjects().write(tmp_path / "feed"), tmp_path / "out"
    _run(feed, study, out)
    crf = (out / "crf" / "101-002.json").read_bytes()
    _set_status(feed, {"rs-p2": "withdrawn"})
    other = {**_lines(feed / "ResearchSubject.ndjson")[1], "id": "rs-p1-b", "individual": {"reference": "Patient/p1"}}
    with (feed / "ResearchSubject.ndjson").open("ab") as fh:
        fh.write(orjson.dumps(other) + b"\n")
    summary = _run(feed, study, out)
    assert summary.exit_code == 2 and summary.carried_forward == [] and summary.subjects_failed == ["101-002"]
    assert (out / "crf" / "101-002.json").read_bytes() == crf
    assert "101-002" not in {s["subject_id"] for s in _json(out / "results" / "study.json")["subjects"]}
    [failure] = _json(out / "run-report.json")["subject_failures"]
    assert failure["stage"] == "carry-forward" and "name different patients" in failure["error"]
    assert "never read again" in failure["what_to_do"]


def test_exit_1_when_every_subject_read_fails_even_with_one_carried(study: Study, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit code 1 says the run's main job failed (every subject read failed): one subject carried forward does
    not turn it into a run that completed with warnings."""
    from fhir_adapter.mapping.subject import SubjectMapper

    feed, out = _two_subjects().write(tmp_path / "feed"), tmp_path / "out"
    _run(feed, study, out)
    _set_status(feed, {"rs-p2": "withdrawn"})

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("a mapping defect")

    monkeypatch.setattr(SubjectMapper, "map", broken)
    summary = _run(feed, study, out)
    assert summary.carried_forward == ["101-002"] and summary.subjects_failed == ["101-001"]
    assert summary.exit_code == 1


def test_a_leaver_whose_file_name_another_subject_now_holds_fails_alone(study: Study, tmp_path: Path) -> None:
    """Subject 101-00a leaves and a new patient is enrolled as 101-00A (the same file name on a case-insensitive
    disk), who comes first: the clash fails the subject who left, and the run goes on (it stopped the run)."""
    f = Feed()
    day1 = dt.date(2024, 2, 1)
    f.subject("p5", "101-00a", name="Subject1 Testperson", mrn="MRN-1", birth="1980-01-01", day1=day1)
    f.obs("p5", "777-3", at(day1, 29), value=210, unit="10*9/L", id_="plt-p5")
    feed, out = f.write(tmp_path / "feed"), tmp_path / "out"
    _run(feed, study, out)
    _set_status(feed, {"rs-p5": "withdrawn"})
    f2 = Feed()
    f2.subject("p2", "101-00A", name="Subject2 Testperson", mrn="MRN-2", birth="1980-01-01", day1=day1)
    f2.subject("p3", "101-003", name="Subject3 Testperson", mrn="MRN-3", birth="1980-01-01", day1=day1)
    for rtype, resources in f2.resources.items():
        if rtype != "ResearchStudy":
            with (feed / f"{rtype}.ndjson").open("ab") as fh:
                fh.write(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    summary = _run(feed, study, out)
    assert summary.exit_code == 2 and summary.subjects == 2 and summary.carried_forward == []
    assert summary.subjects_failed == ["101-00a"]
    [warned] = [w for w in _json(out / "run-report.json")["warnings"] if w.get("subject_id") == "101-00a"]
    assert "could not be kept" in warned["message"] and "would share the file name" in warned["message"]


class _Confirming:
    """A server that confirms every write it is sent."""

    dry_run = False

    def start(self, enrolled_patients: set[str], left_patients: set[str] | None = None,
              subject_ids: Collection[str] = ()) -> None:
        pass

    def write(self, e: Enrollee, resources: list[dict[str, Any]], retractions: Sequence[dict[str, Any]] = (),
              held: Collection[str] = (), former_patients: Collection[str] = ()) -> WriteResult:
        return WriteResult(subject_id=e.subject_id, written=[result_id(r) for r in resources],
                           retracted=[result_id(r) for r in retractions])


def test_an_exit_1_run_keeps_the_record_of_what_the_server_confirmed(feed: Path, study: Study, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every subject read fails (exit 1) while the one who withdrew is carried and its results after its end are
    retracted on the server: the previous outputs stay, but state/written.json records those retractions (else
    the next run would not know the server holds them)."""
    from fhir_adapter.mapping.subject import SubjectMapper

    out = tmp_path / "out"
    log = RunLog()
    run(FileSource(feed, log), study, out, log, sink=_Confirming())
    _leave(feed, tmp_path / "feed2", {WITHDRAWN: "withdrawn"})
    crfs = {p.name: p.read_bytes() for p in (out / "crf").iterdir()}

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("a mapping defect")

    monkeypatch.setattr(SubjectMapper, "map", broken)
    log = RunLog()
    summary = run(FileSource(tmp_path / "feed2", log), study, out, log, sink=_Confirming())
    assert summary.exit_code == 1 and summary.server_writes > 0
    assert {p.name: p.read_bytes() for p in (out / "crf").iterdir()} == crfs  # the previous outputs stay
    retracted = {k for k, v in _json(out / "state" / "written.json")["results"].items()
                 if v.get("subject_id") == WITHDRAWN and v.get("retracted")}
    [written] = summary.writes
    assert written["subject_id"] == WITHDRAWN and len(retracted) == written["retracted"] > 0


class _Recording(_Confirming):
    def __init__(self) -> None:
        self.calls: dict[str, tuple[list[dict[str, Any]], set[str]]] = {}

    def write(self, e: Enrollee, resources: list[dict[str, Any]], retractions: Sequence[dict[str, Any]] = (),
              held: Collection[str] = (), former_patients: Collection[str] = ()) -> WriteResult:
        self.calls[e.subject_id] = (resources, set(former_patients))
        return super().write(e, resources, retractions, held, former_patients)


def test_a_subject_who_left_and_is_linked_to_another_patient_writes_nothing_to_that_patient(
        feed: Path, study: Study, tmp_path: Path) -> None:
    """Withdrawn, and its ResearchSubject pointed at another Patient: the carried CRF was read from the first
    Patient's records, so none of its results goes to the new Patient's chart; the sink is asked to retract them
    on the first one, the offline bundle retracts them there, and the run says so (`subject-moved`)."""
    out = tmp_path / "out"
    log = RunLog()
    run(FileSource(feed, log), study, out, log, sink=_Confirming())
    _leave(feed, tmp_path / "feed2", {WITHDRAWN: "withdrawn"})
    rss = _lines(tmp_path / "feed2" / "ResearchSubject.ndjson")
    [old] = [rs["individual"]["reference"] for rs in rss if _subject_of(rs) == WITHDRAWN]
    for rs in rss:
        if _subject_of(rs) == WITHDRAWN:
            rs["individual"] = {"reference": "Patient/right-1"}
    _write_lines(tmp_path / "feed2" / "ResearchSubject.ndjson", rss)
    patients = _lines(tmp_path / "feed2" / "Patient.ndjson")
    [first] = [p for p in patients if f"Patient/{p['id']}" == old]
    _write_lines(tmp_path / "feed2" / "Patient.ndjson", [*patients, {**first, "id": "right-1"}])
    recount_manifest(tmp_path / "feed2")

    sink, log = _Recording(), RunLog()
    run(FileSource(tmp_path / "feed2", log), study, out, log, sink=sink)
    resources, former = sink.calls[WITHDRAWN]
    assert resources == [] and former == {old.removeprefix("Patient/")}
    assert [w["subject_id"] for w in log.warnings if w.get("rule") == "subject-moved"] == [WITHDRAWN]
    bundle = _json(out / "writeback" / f"{WITHDRAWN}.json")
    results = bundle["entry"][1:-1]
    assert results and {e["resource"]["status"] for e in results} == {"entered-in-error"}
    assert {e["resource"]["subject"]["reference"] for e in results} == {old}
    assert all(f"&patient={old}&" in e["request"]["url"] for e in results)
