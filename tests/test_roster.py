"""Roster: only enrolled subjects of the study are mapped; nobody else's data reaches any output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.enrollees import RosterError, build_roster
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study

SUBJ = "https://fhir-adapter.org/fhir/sid/lcar-aio-subject"


def rs(id_: str, pid: str, status: str, sid: str, study: str = "rs-study") -> dict[str, Any]:
    return {"resourceType": "ResearchSubject", "id": id_, "status": status,
            "identifier": [{"system": SUBJ, "value": sid}], "study": {"reference": f"ResearchStudy/{study}"},
            "individual": {"reference": f"Patient/{pid}"}, "assignedArm": "DL1",
            "period": {"start": "2024-01-10"}}


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1990-05-01",
            "name": [{"family": f"Fam{pid}", "given": ["Giv"]}]}


def lab(id_: str, pid: str, value: float) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id_, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2024-02-10T09:00:00Z",
            "valueQuantity": {"value": value, "unit": "10*9/L", "system": "http://unitsofmeasure.org",
                              "code": "10*9/L"}}


def infusion(pid: str) -> dict[str, Any]:
    return {"resourceType": "Procedure", "id": f"inf-{pid}", "status": "completed",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1156961008"}]},
            "subject": {"reference": f"Patient/{pid}"}, "performedDateTime": "2024-02-01T10:00:00+01:00"}


def write_feed(folder: Path, resources: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[str]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(json.dumps(r))
    for t, lines in by_type.items():
        (folder / f"{t}.ndjson").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    study = {"resourceType": "ResearchStudy", "id": "rs-study", "status": "active",
             "identifier": [{"system": "https://fhir-adapter.org/fhir/sid/research-study", "value": "LCAR-AIO-SLE"}]}
    other = {"resourceType": "ResearchStudy", "id": "rs-other", "status": "active",
             "identifier": [{"value": "OTHER-TRIAL"}]}
    res: list[dict[str, Any]] = [study, other]
    for pid in ("p1", "p2", "p3", "p4", "p5", "p6"):
        res += [patient(pid), lab(f"lab-{pid}", pid, 150 + int(pid[1])), infusion(pid)]
    res += [rs("r1", "p1", "follow-up", "101-001"), rs("r2", "p2", "on-study-intervention", "101-002"),
            rs("r3", "p3", "ineligible", "101-903"), rs("r4", "p4", "withdrawn", "101-004"),
            rs("r5", "p5", "on-study", "X-1", study="rs-other")]
    # p6: a patient of the hospital with no ResearchSubject at all
    return write_feed(tmp_path / "feed", res)


def test_only_enrolled_subjects_of_the_study(feed: Path, study: Study) -> None:
    log = RunLog()
    roster = build_roster(FileSource(feed, log).roster(), study, log)
    assert {e.subject_id for e in roster.enrolled.values()} == {"101-001", "101-002"}
    assert roster.excluded == {"ineligible": 1, "withdrawn": 1}
    # the withdrawn subject took part and left: kept apart, never read (docs/clinical-rules.md#withdrawn-subjects)
    assert {sid: e.patient_id for sid, e in roster.left.items()} == {"101-004": "p4"}
    assert roster.patient_ids == {"p1", "p2"}


def test_who_left_is_known_by_the_research_subject_alone(feed: Path, study: Study) -> None:
    """A leaver is kept apart by its ResearchSubject alone (its Patient need not be in the source); a subject ID
    enrolled under another ResearchSubject is the enrolled subject; several leaver ResearchSubjects of one subject
    and patient give the latest version; ones naming different patients, or a patient enrolled under another
    subject ID, cannot be carried (with why). Nothing of it is refused or quarantined."""
    log = RunLog()
    data = FileSource(feed, log).roster()
    old_p5 = rs("r5b", "p5", "off-study", "101-005") | {"meta": {"versionId": "1"}}
    new_p5 = rs("r5c", "p5", "withdrawn", "101-005") | {"meta": {"versionId": "2"}, "period": {"end": "2024-06-01"}}
    data.subjects += [rs("r1-old", "p1", "withdrawn", "101-001"),          # enrolled again under r1
                      rs("r9", "p9", "withdrawn", "101-009"),              # Patient/p9 is not in the source
                      new_p5, old_p5,                                      # two versions of one leaver
                      rs("r7a", "p7", "off-study", "101-007"), rs("r7b", "p8", "withdrawn", "101-007"),
                      rs("r2-old", "p2", "withdrawn", "101-012"),          # p2 is enrolled as 101-002
                      rs("r3b", "p3", "not-registered", "101-903")]
    roster = build_roster(data, study, log)
    assert {e.subject_id for e in roster.enrolled.values()} == {"101-001", "101-002"} and not log.quarantine
    assert {sid: (e.patient_id, e.status, e.research_subject.id) for sid, e in roster.left.items()} == {
        "101-004": ("p4", "withdrawn", "r4"), "101-005": ("p5", "withdrawn", "r5c"),
        "101-009": ("p9", "withdrawn", "r9")}
    assert str(roster.left["101-005"].end_of_study) == "2024-06-01"
    assert set(roster.left_unsure) == {"101-007", "101-012"}
    assert "name different patients (Patient/p7, Patient/p8)" in roster.left_unsure["101-007"]
    assert "Patient/p2 is enrolled as subject 101-002" in roster.left_unsure["101-012"]


def test_a_status_both_enrolled_and_left_is_refused(study: Study) -> None:
    info = study.info.model_dump()
    with pytest.raises(ValueError, match="off-study is in both enrolled_statuses and left_statuses"):
        type(study.info).model_validate({**info, "enrolled_statuses": [*info["enrolled_statuses"], "off-study"]})


@pytest.mark.parametrize(("birth", "why"), [
    ("1990-05-01", None), ("2004-02-30", "is not a full date"), ("1990", "is not a full date"),
    ("2099-01-01", "is after consent (2024-01-10)"), ("0001-01-01", "older than 120 at consent"),
    ("1903-12-31", None), ("1903-01-09", "older than 120 at consent")])
def test_a_birth_date_that_gives_no_true_age_is_warned_of_and_left_out(feed: Path, study: Study, birth: str,
                                                                     why: str | None) -> None:
    """DM's AGE comes from Patient.birthDate at consent: a birth date that is not a date, falls after consent or
    makes the subject older than 120 would give a wrong age (-75 for 2099-01-01), so AGE stays empty, with a
    warning naming the Patient."""
    log = RunLog()
    data = FileSource(feed, log).roster()
    data.patients["p1"] = {**data.patients["p1"], "birthDate": birth}
    roster = build_roster(data, study, log)
    warned = [w for w in log.warnings if w.get("rule") == "birth-date"]
    if why is None:
        assert roster.enrolled["p1"].birth_date is not None and not warned
    else:
        assert roster.enrolled["p1"].birth_date is None
        assert [(w["resource"], w["subject_id"]) for w in warned] == [("Patient/p1", "101-001")]
        assert why in warned[0]["message"] and birth in warned[0]["message"]


def test_an_arm_dose_escalation_does_not_know_is_warned_of(feed: Path, study: Study, tmp_path: Path) -> None:
    """101-002 enrolled in arm 'DL9' (a typo) and 101-001 in none: dose escalation would leave their DLTs out
    of every decision without a word, so each gets a warning `arm` naming the arms escalation.yaml knows."""
    lines = (feed / "ResearchSubject.ndjson").read_text().splitlines()
    edited = []
    for line in lines:
        r = json.loads(line)
        if r["id"] == "r2":
            r["assignedArm"] = "DL9"
        elif r["id"] == "r1":
            del r["assignedArm"]
        edited.append(json.dumps(r))
    (feed / "ResearchSubject.ndjson").write_text("\n".join(edited) + "\n")
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", log)
    warned = {w["subject_id"]: w["message"] for w in log.warnings if w.get("rule") == "arm"}
    assert set(warned) == {"101-001", "101-002"}
    assert "'DL9' is not an arm of escalation.yaml (dose levels DL1, DL2, DL3; expansion arms EXP)" in warned["101-002"]
    assert "has no arm" in warned["101-001"]


def test_nobody_elses_data_in_any_output(feed: Path, study: Study, tmp_path: Path) -> None:
    out = tmp_path / "out"
    log = RunLog()
    summary = run(FileSource(feed, log), study, out, log)
    assert summary.subjects == 2
    assert sorted(p.name for p in (out / "crf").iterdir()) == ["101-001.json", "101-002.json"]
    text = "".join(p.read_text() for p in out.rglob("*.json") if p.name != "run-report.json")
    for pid in ("p3", "p4", "p5", "p6"):
        assert f"lab-{pid}" not in text and f"Patient/{pid}" not in text and f"inf-{pid}" not in text
    assert "lab-p1" in text
    assert log.counts["skipped.not-enrolled"] == 8  # lab + infusion of p3..p6


def test_missing_study_is_a_clear_error(feed: Path, study: Study) -> None:
    log = RunLog()
    src = FileSource(feed, log).roster()
    src.studies = [s for s in src.studies if s["id"] != "rs-study"]
    with pytest.raises(RosterError, match="LCAR-AIO-SLE") as caught:
        build_roster(src, study, log)
    # the fix names the study.yaml of the run (a second study's own folder), not a pattern of a path
    assert f"Check study.id in {study.root / 'study.yaml'}," in str(caught.value)


def _give_p6_an_mrn(feed: Path) -> None:
    """Patient p6 (no ResearchSubject in the EHR) gets the MRN a roster CSV row can name: MRN-6."""
    lines = (feed / "Patient.ndjson").read_text().splitlines()
    pat = json.loads(lines[5])
    assert pat["id"] == "p6"
    pat["identifier"] = [{"system": "https://hospital.example.org/mrn", "value": "MRN-6"}]
    lines[5] = json.dumps(pat)
    (feed / "Patient.ndjson").write_text("\n".join(lines) + "\n")


def test_site_roster_csv_creates_owned_research_subjects(feed: Path, study: Study, tmp_path: Path) -> None:
    # p6 has no ResearchSubject in the EHR; the site roster enrols it. 101-001 is already held by the EHR.
    _give_p6_an_mrn(feed)
    csv = tmp_path / "roster.csv"
    csv.write_text("subject_id,patient_identifier,consent_date,arm,status\n"
                   "101-001,https://hospital.example.org/mrn|MRN-1,2024-01-10,DL1,follow-up\n"
                   "101-006,https://hospital.example.org/mrn|MRN-6,2024-01-12,DL2,on-study\n")
    out = tmp_path / "out"
    log = RunLog()
    summary = run(FileSource(feed, log), study, out, log, roster_csv=csv)
    assert summary.subjects == 3
    bundle = json.loads((out / "writeback" / "101-006.json").read_text())
    rs = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "ResearchSubject"]
    assert len(rs) == 1
    res = rs[0]["resource"]
    assert rs[0]["request"] == {"method": "PUT", "url": f"ResearchSubject/{res['id']}"}
    assert res["individual"] == {"reference": "Patient/p6"} and res["assignedArm"] == "DL2"
    assert res["actualArm"] == "DL2" and res["status"] == "on-study-intervention"  # infused on Day 1
    assert any(i["system"] == "https://fhir-adapter.org/fhir/sid/result" for i in res["identifier"])
    # results reference the owned ResearchSubject by the same id
    obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert all(o["focus"] == [{"reference": f"ResearchSubject/{res['id']}"}] for o in obs)
    # the EHR's own ResearchSubject is never written
    b1 = json.loads((out / "writeback" / "101-001.json").read_text())
    assert not [e for e in b1["entry"] if e["resource"]["resourceType"] == "ResearchSubject"]
    # idempotent: a second run produces the same bundle
    run(FileSource(feed, RunLog()), study, out, RunLog(), roster_csv=csv)
    assert json.loads((out / "writeback" / "101-006.json").read_text()) == bundle


def test_a_roster_row_that_disagrees_with_the_ehr_is_warned_of_and_the_ehr_wins(feed: Path, study: Study,
                                                                                 tmp_path: Path) -> None:
    csv = tmp_path / "roster.csv"
    csv.write_text("subject_id,patient_identifier,consent_date,arm,status\n"
                   "101-001,https://hospital.example.org/mrn|MRN-1,2024-01-10,DL2,On-Study\n"
                   "101-002,https://hospital.example.org/mrn|MRN-2,2024-01-10T09:30:00+01:00,DL1,"
                   "on-study-intervention\n")
    log = RunLog()
    run(FileSource(feed, log), study, tmp_path / "out", log, roster_csv=csv)
    conflicts = [w for w in log.warnings if w.get("rule") == "roster-csv-conflict"]
    assert [(w["subject_id"], w["resource"]) for w in conflicts] == [("101-001", "ResearchSubject/r1")]
    message = conflicts[0]["message"]
    assert f"{csv}:2" in message and "arm 'DL2' (EHR: 'DL1')" in message
    assert "status 'on-study' (EHR: 'follow-up')" in message and "consent_date" not in message  # the same date
    assert "ResearchSubject/r1 is used" in message
    study_json = json.loads((tmp_path / "out" / "results" / "study.json").read_text())
    arms = {s["subject_id"]: s.get("arm") for s in study_json["subjects"]}
    assert arms["101-001"] == "DL1"  # the EHR's arm


def test_one_patient_given_two_subject_ids_by_the_roster_csv_is_named_by_its_rows(feed: Path, study: Study,
                                                                                  tmp_path: Path) -> None:
    """The roster CSV's own mistake names its rows and says to correct the CSV (not the EHR, which holds none of
    these ResearchSubjects)."""
    _give_p6_an_mrn(feed)
    csv = tmp_path / "roster.csv"
    csv.write_text("subject_id,patient_identifier,consent_date,arm,status\n"
                   "101-006,https://hospital.example.org/mrn|MRN-6,2024-01-12,DL2,on-study\n"
                   "101-007,https://hospital.example.org/mrn|MRN-6,2024-01-12,DL2,on-study\n")
    log = RunLog()
    summary = run(FileSource(feed, log), study, tmp_path / "out", log, roster_csv=csv)
    refused = [q for q in log.quarantine if q.rule == "duplicate-subject"]
    assert sorted(str(q.subject_id) for q in refused) == ["101-006", "101-007"]
    for q in refused:
        assert "the roster CSV row of subject 101-006 (subject 101-006)" in q.reason
        assert "the roster CSV row of subject 101-007" in q.reason and "Patient/p6" in q.reason
        assert q.fix.startswith("correct the roster CSV")
    assert summary.subjects == 2  # 101-001 and 101-002, from the EHR
