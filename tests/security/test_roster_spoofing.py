"""No one can pose as a subject: the roster refuses ambiguity (duplicate subject IDs, duplicate Patients, a
study matched on its identifier value under another system) and resolves references only for the source's
own base, ``urn:uuid`` only inside the Bundle that defines it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.job.pipeline import RunSummary, run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.enrollees import RosterError, build_roster
from fhir_adapter.source.base import ref_id
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study, load_study
from tests.feedkit import STUDY_SYSTEM, SUBJECT_SYSTEM, Feed, at

DAY1 = dt.date(2024, 2, 1)
BASE = "https://ehr.hospital.example.org/fhir"


def _rs(rid: str, pid: str, sid: str) -> dict[str, Any]:
    return {"resourceType": "ResearchSubject", "id": rid, "status": "on-study",
            "study": {"reference": "ResearchStudy/study"}, "individual": {"reference": f"Patient/{pid}"},
            "identifier": [{"system": SUBJECT_SYSTEM, "value": sid}], "period": {"start": "2024-01-05"}}


def _run(folder: Path, f: Feed, study: Study) -> tuple[RunSummary, dict[str, Any]]:
    feed = f.write(folder / "feed")
    log = RunLog()
    summary = run(FileSource(feed, log), study, folder / "out", runlog=log)
    return summary, json.loads((folder / "out" / "run-report.json").read_text())


def _crf_ids(out: Path) -> dict[str, set[str]]:
    return {json.loads(p.read_text())["subject_id"]: {x["source"]["id"] for x in json.loads(p.read_text())["findings"]}
            for p in (out / "crf").glob("*.json")}


def test_a_second_research_subject_cannot_take_a_subject_id(tmp_path: Path, study: Study) -> None:
    f = Feed()
    # the spoof comes first in the file and points at a patient who is not enrolled
    f.add({"resourceType": "Patient", "id": "intruder", "gender": "male", "birthDate": "1960-01-01"})
    f.add(_rs("rs-spoof", "intruder", "103-001"))
    f.obs("intruder", "777-3", at(DAY1, 29), value=99, unit="10*9/L", id_="intruder-plt")
    f.subject("real", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    f.subject("other", "103-002", name="Other Subject", mrn="MRN-2", birth="1981-01-01", day1=DAY1)
    summary, report = _run(tmp_path, f, study)
    crfs = _crf_ids(tmp_path / "out")
    assert set(crfs) == {"103-002"}  # 103-001 is ambiguous: stopped, not attributed to the first claimant
    assert not any("intruder-plt" in ids for ids in crfs.values())
    refused = [q for q in report["quarantine"] if q["rule"] == "duplicate-subject-id"]
    assert {q["id"] for q in refused} == {"rs-spoof", "rs-real"}
    assert all("ResearchSubject/rs-spoof" in q["reason"] and "ResearchSubject/rs-real" in q["reason"]
               for q in refused)
    assert summary.exit_code == 2


@pytest.mark.parametrize("look_alike", ["103-001 ", "103-Jos\u0065\u0301"], ids=["blank", "nfd"])
def test_subject_ids_a_reader_cannot_tell_apart_are_one_id_claimed_twice(tmp_path: Path, study: Study,
                                                                          look_alike: str) -> None:
    """A trailing blank (SAS ignores it when it compares USUBJIDs) or another Unicode form of the same letters
    (NFD: e + combining acute) is the same subject ID to a reader: both claimants are refused, naming both IDs,
    never two subjects exported as one. (Letter case only: tests/security/test_output_paths.py.)"""
    first = "103-Jos\u00e9" if look_alike.startswith("103-Jos") else "103-001"
    f = Feed()
    f.subject("real", first, name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    f.subject("twin", look_alike, name="Twin Subject", mrn="MRN-3", birth="1982-01-01", day1=DAY1)
    f.subject("other", "103-002", name="Other Subject", mrn="MRN-2", birth="1981-01-01", day1=DAY1)
    summary, report = _run(tmp_path, f, study)
    assert set(_crf_ids(tmp_path / "out")) == {"103-002"} and summary.exit_code == 2
    refused = [q for q in report["quarantine"] if q["rule"] == "duplicate-subject-id"]
    assert {q["id"] for q in refused} == {"rs-real", "rs-twin"}
    assert all(repr(first) in q["reason"] and repr(look_alike) in q["reason"] for q in refused), refused


def test_a_look_alike_of_a_subject_who_left_is_refused_with_it(tmp_path: Path, study: Study) -> None:
    """103-001 left the study (carried forward) and another Patient is enrolled as '103-001 ': never two
    subjects a data manager reads as one — the newcomer is refused and the leaver not carried forward, both
    named."""
    f = Feed()
    f.subject("real", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    f.subject("twin", "103-001 ", name="Twin Subject", mrn="MRN-3", birth="1982-01-01", day1=DAY1)
    for rs in f.resources["ResearchSubject"]:
        if rs["id"] == "rs-real":
            rs["status"] = "withdrawn"
    log = RunLog()
    roster = build_roster(FileSource(f.write(tmp_path / "feed"), log).roster(), study, log)
    assert roster.enrolled == {} and roster.left == {}
    assert "differs only in Unicode form or surrounding blanks" in roster.left_unsure["103-001"]
    [refused] = [q for q in log.quarantine if q.rule == "duplicate-subject-id"]
    assert refused.id == "rs-twin" and "'103-001 '" in refused.reason and "'103-001'" in refused.reason


def test_one_patient_enrolled_twice_is_refused(tmp_path: Path, study: Study) -> None:
    f = Feed()
    f.subject("p1", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    f.add(_rs("rs-again", "p1", "103-009"))
    log = RunLog()
    roster = build_roster(FileSource(f.write(tmp_path / "feed"), log).roster(), study, log)
    assert roster.enrolled == {}
    assert {q.id for q in log.quarantine if q.rule == "duplicate-subject"} == {"rs-p1", "rs-again"}


def test_differing_patients_with_one_id_are_refused(tmp_path: Path, study: Study) -> None:
    f = Feed()
    f.subject("p1", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    f.subject("p2", "103-002", name="Other Subject", mrn="MRN-2", birth="1981-01-01", day1=DAY1)
    f.add({"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1950-01-01"})
    # an identical second copy (the same Patient exported twice) is not ambiguous
    f.add(dict(f.resources["Patient"][1]))
    log = RunLog()
    roster = build_roster(FileSource(f.write(tmp_path / "feed"), log).roster(), study, log)
    assert {e.subject_id for e in roster.enrolled.values()} == {"103-002"}
    (q,) = [q for q in log.quarantine if q.rule == "duplicate-patient"]
    assert q.id == "rs-p1" and "Patient.ndjson:1" in q.reason and "Patient.ndjson:3" in q.reason


def _two_studies(f: Feed, system: str) -> None:
    f.add({"resourceType": "ResearchStudy", "id": "foreign", "status": "active",
           "identifier": [{"system": system, "value": "LCAR-AIO-SLE"}]})


def _value_only(study: Study) -> Study:
    """A study.yaml without ``identifier_system`` (the shipped studies declare it)."""
    return dataclasses.replace(study, info=study.info.model_copy(update={"identifier_system": None}))


def test_the_shipped_studies_declare_their_identifier_system() -> None:
    root = Path(__file__).resolve().parents[2] / "mappings"
    assert {name: load_study(root / name).info.identifier_system for name in ("lcar-aio", "syn-ln")} == {
        "lcar-aio": STUDY_SYSTEM, "syn-ln": STUDY_SYSTEM}


def test_study_identifier_under_another_system_stops_a_value_only_run(tmp_path: Path, study: Study) -> None:
    f = Feed()
    del f.resources["ResearchStudy"][0]["identifier"][0]["system"]  # its own ResearchStudy: the value alone
    _two_studies(f, "https://other-sponsor.example/studies")
    f.subject("p1", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    log = RunLog()
    with pytest.raises(RosterError, match=r"ResearchStudy/foreign.*ResearchStudy/study"):
        build_roster(FileSource(f.write(tmp_path / "feed"), log).roster(), _value_only(study), log)


def test_a_study_with_the_value_under_another_system_is_not_ours(tmp_path: Path, study: Study) -> None:
    """The audit's probe: the only ResearchStudy with the study's value is under another system; its subjects
    are not enrolled, the run stops (exit 1) naming that study and the overlay line that would take it."""
    f = Feed()
    f.resources["ResearchStudy"][0]["identifier"][0]["system"] = "https://evil.example/sid"
    f.subject("p1", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    feed = f.write(tmp_path / "feed")
    log = RunLog()
    with pytest.raises(RosterError) as err:
        build_roster(FileSource(feed, log).roster(), study, log)
    message = str(err.value)
    assert "ResearchStudy/study (system https://evil.example/sid, value LCAR-AIO-SLE)" in message
    assert "study_identifier_system: https://evil.example/sid" in message and "site overlay" in message
    res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1 and "ResearchStudy/study" in res.stderr, res.output
    # the site overlay that says it is the hospital's system for the study enrols the subject
    (tmp_path / "site.yaml").write_text("site: hospital\nstudy_identifier_system: https://evil.example/sid\n")
    res = CliRunner().invoke(main, ["run", "--source", str(feed), "--out", str(tmp_path / "out"),
                                    "--site", str(tmp_path / "site.yaml")])
    assert res.exit_code in (0, 2) and json.loads((tmp_path / "out" / "run-report.json").read_text())[
        "summary"]["subjects"] == 1, res.output


def test_a_study_identifier_without_a_system_is_not_ours_and_the_error_says_how_to_proceed(
        tmp_path: Path, study: Study) -> None:
    """No system at all: no overlay system can take it; the error says to get the system sent, or to match on
    the value alone knowingly (study.yaml without identifier_system)."""
    f = Feed()
    del f.resources["ResearchStudy"][0]["identifier"][0]["system"]
    f.subject("p1", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    log = RunLog()
    with pytest.raises(RosterError) as err:
        build_roster(FileSource(f.write(tmp_path / "feed"), log).roster(), study, log)
    message = str(err.value)
    assert "(system none, value LCAR-AIO-SLE)" in message and "study_identifier_system: None" not in message
    assert "send the system in ResearchStudy.identifier" in message and "remove study.identifier_system" in message
    roster = build_roster(FileSource(f.write(tmp_path / "feed2"), log).roster(), _value_only(study), log)
    assert {e.subject_id for e in roster.enrolled.values()} == {"103-001"}


def test_study_identifier_system_when_configured(tmp_path: Path, study: Study) -> None:
    f = Feed()
    _two_studies(f, "https://other-sponsor.example/studies")
    f.subject("p1", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    f.add({**_rs("rs-f", "p9", "103-900"), "study": {"reference": "ResearchStudy/foreign"}})
    f.add({"resourceType": "Patient", "id": "p9", "gender": "male"})
    assert study.info.identifier_system == STUDY_SYSTEM
    log = RunLog()
    roster = build_roster(FileSource(f.write(tmp_path / "feed"), log).roster(), study, log)
    assert roster.study_ids == {"study"}
    assert {e.subject_id for e in roster.enrolled.values()} == {"103-001"}
    assert not [w for w in log.warnings if w.get("rule") == "study-identifier-system"]


def test_value_only_match_is_reported(tmp_path: Path, study: Study) -> None:
    f = Feed()
    f.subject("p1", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    log = RunLog()
    build_roster(FileSource(f.write(tmp_path / "feed"), log).roster(), _value_only(study), log)
    assert any(w.get("rule") == "study-identifier-system" for w in log.warnings)


def test_ref_id_resolves_only_the_sources_own_references() -> None:
    assert ref_id("Patient/p1", "Patient") == "p1"
    assert ref_id("Patient/p1/_history/3", "Patient") == "p1"
    assert ref_id(f"{BASE}/Patient/p1", "Patient", BASE) == "p1"
    assert ref_id(f"{BASE}/Patient/p1", "Patient") is None
    assert ref_id("https://other-ehr.example/fhir/Patient/p1", "Patient", BASE) is None
    assert ref_id(f"{BASE}.evil.example/Patient/p1", "Patient", BASE) is None
    assert ref_id("urn:uuid:p1", "Patient", BASE) is None
    assert ref_id("Group/g/Patient/p1", "Patient") is None


def test_foreign_and_urn_references_never_reach_the_enrolled_patient(tmp_path: Path, study: Study) -> None:
    f = Feed()
    f.subject("p1", "103-001", name="Real Subject", mrn="MRN-1", birth="1980-01-01", day1=DAY1)
    f.obs("p1", "777-3", at(DAY1, 29), value=150, unit="10*9/L", id_="own-relative")
    f.obs("p1", "718-7", at(DAY1, 29), value=12.0, unit="g/dL", id_="own-absolute",
          subject={"reference": f"{BASE}/Patient/p1"})
    f.obs("p1", "4485-9", at(DAY1, 29), value=90, unit="mg/dL", id_="foreign-ehr",
          subject={"reference": "https://other-ehr.example/fhir/Patient/p1"})
    f.obs("p1", "4498-2", at(DAY1, 29), value=20, unit="mg/dL", id_="loose-urn",
          subject={"reference": "urn:uuid:p1"})
    feed = f.write(tmp_path / "feed")
    (feed / "manifest.json").write_text(json.dumps({"request": f"{BASE}/Group/trial/$export", "output": []}))
    # a Bundle file whose urn:uuid references are its own: resolved inside it
    (feed / "bundle.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:0b7e6c1e-0000-4000-8000-000000000001",
         "resource": f.resources["Patient"][0]},  # the same Patient as in Patient.ndjson
        {"fullUrl": "urn:uuid:0b7e6c1e-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Observation", "id": "bundle-urn", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                      "subject": {"reference": "urn:uuid:0b7e6c1e-0000-4000-8000-000000000001"},
                      "effectiveDateTime": at(DAY1, 29),
                      "valueQuantity": {"value": 37.0, "unit": "Cel", "system": "http://unitsofmeasure.org",
                                        "code": "Cel"}}}]}))
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", runlog=log)
    report = json.loads((tmp_path / "out" / "run-report.json").read_text())
    ids = _crf_ids(tmp_path / "out")["103-001"]
    assert {"own-relative", "own-absolute", "bundle-urn"} <= ids
    assert not {"foreign-ehr", "loose-urn"} & ids
    assert {q["id"] for q in report["quarantine"] if q["rule"] == "no-patient"} >= {"foreign-ehr", "loose-urn"}
