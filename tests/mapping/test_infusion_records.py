"""Which infusion records date Day 1 (docs/clinical-rules.md#day-1): a completed Procedure with an infusion
code, else a completed MedicationAdministration of the product; a record in another status is said, never a Day 1;
a dose of the product on another date than the infusion Procedure is said; a Day 1 that moves between two runs
into one OUT is said."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fhir_adapter.cli.commands import main
from fhir_adapter.crf.models import SourceRef
from fhir_adapter.fhir.server_config import last_run, last_run_started
from fhir_adapter.job.pipeline import run
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.roster.day1 import with_day1
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.source.files import FileSource
from fhir_adapter.study.load import Study
from fhir_adapter.synth import write_feed

PRODUCT = {"coding": [{"system": "https://hospital.example.org/pharmacy/product-code", "code": "LCAR-AIO"}]}


def _study(study: Study) -> Study:
    codes = frozenset({("https://hospital.example.org/pharmacy/product-code", "LCAR-AIO")})
    return dataclasses.replace(study, infusion_medication_codes=codes)


def _procedure(rid: str, day: str, status: str, study: Study) -> dict[str, Any]:
    system, code = sorted(study.infusion_codes)[0]
    return {"resourceType": "Procedure", "id": rid, "status": status, "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": system, "code": code}]}, "performedDateTime": f"{day}T10:00:00+00:00"}


def _administration(rid: str, day: str, status: str = "completed") -> dict[str, Any]:
    return {"resourceType": "MedicationAdministration", "id": rid, "status": status,
            "medicationCodeableConcept": PRODUCT, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": f"{day}T10:00:00+00:00"}


def _enrollee() -> Enrollee:
    return Enrollee(subject_id="101-001", patient_id="p1", research_subject=SourceRef(resource_type="ResearchSubject",
                    id="rs1"), status="on-study", arm="DL1", consent_date=dt.date(2024, 12, 1), site="101",
                    sex="female", birth_date=dt.date(1990, 1, 1))


def _day1_warnings(log: RunLog) -> list[str]:
    return [w["message"] for w in log.warnings if w.get("rule") == "day1"]


@pytest.mark.parametrize("status", ["in-progress", "preparation", "on-hold", "stopped", "unknown", "done"])
def test_an_infusion_procedure_not_completed_dates_nothing_and_is_said(study: Study, status: str) -> None:
    s, log = _study(study), RunLog()
    e = with_day1(_enrollee(), [_procedure("planned", "2025-01-13", status, s),
                                _procedure("given", "2025-01-16", "completed", s)], s, log)
    assert e.day1 == dt.date(2025, 1, 16) and e.infusion is not None and e.infusion.id == "given"
    [said] = _day1_warnings(log)
    assert f"status '{status}': not taken as the infusion" in said
    # alone, it gives no Day 1 (said twice: the record, and no Day 1)
    log = RunLog()
    assert with_day1(_enrollee(), [_procedure("planned", "2025-01-13", status, s)], s, log).day1 is None
    assert len(_day1_warnings(log)) == 2


def test_an_administration_in_progress_dates_nothing(study: Study) -> None:
    s, log = _study(study), RunLog()
    e = with_day1(_enrollee(), [_administration("running", "2025-01-13", "in-progress")], s, log)
    assert e.day1 is None and any("status 'in-progress'" in m for m in _day1_warnings(log))
    # an entry in error is no infusion, and not worth a word
    log = RunLog()
    e = with_day1(_enrollee(), [_procedure("oops", "2025-01-10", "entered-in-error", s),
                                _procedure("given", "2025-01-16", "completed", s)], s, log)
    assert e.day1 == dt.date(2025, 1, 16) and _day1_warnings(log) == []


def test_a_dose_of_the_product_on_another_date_than_the_infusion_is_said(study: Study) -> None:
    s, log = _study(study), RunLog()
    e = with_day1(_enrollee(), [_procedure("proc", "2025-01-16", "completed", s),
                                _administration("admin", "2025-01-13")], s, log)
    assert e.day1 == dt.date(2025, 1, 16)
    [said] = _day1_warnings(log)
    assert "MedicationAdministration/admin records the" in said and "2025-01-13" in said
    log = RunLog()  # the same date: one infusion recorded twice, nothing to say
    with_day1(_enrollee(), [_procedure("proc", "2025-01-16", "completed", s),
                            _administration("admin", "2025-01-16")], s, log)
    assert _day1_warnings(log) == []


def _run(feed: Path, out: Path, *args: str) -> None:
    """As `fhir-adapter run` (which records the run in state/last-run.json, with each subject's Day 1)."""
    res = CliRunner().invoke(main, ["-q", "run", "--source", str(feed), "--out", str(out), *args])
    assert res.exit_code in (0, 2), res.output


def test_a_day1_that_moves_between_runs_is_said(tmp_path: Path, study: Study) -> None:
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=3, seed=7)
    _run(feed, out)
    before = {d["subject_id"]: d["day1"] for d in json.loads((out / "run-report.json").read_text())["day1_sources"]}
    lines = (feed / "Procedure.ndjson").read_text().splitlines()
    moved: list[str] = []
    for n, line in enumerate(lines):
        r = json.loads(line)
        if r.get("performedDateTime") and any(c.get("code") == sorted(study.infusion_codes)[0][1]
                                              for c in r["code"]["coding"]) and not moved:
            day = dt.date.fromisoformat(r["performedDateTime"][:10]) + dt.timedelta(days=3)
            r["performedDateTime"] = day.isoformat() + r["performedDateTime"][10:]
            r["meta"] = {"versionId": "2"}
            moved.append(r["subject"]["reference"])
            lines[n] = json.dumps(r)
    (feed / "Procedure.ndjson").write_text("\n".join(lines) + "\n")
    # a run that is no base of the next one (a dry run, a stopped run: not in state/last-run.json) says it, and
    # does not take the word away from the next recorded run
    run(FileSource(feed, RunLog()), study, out, RunLog())
    _run(feed, out)
    report = json.loads((out / "run-report.json").read_text())
    after = {d["subject_id"]: d["day1"] for d in report["day1_sources"]}
    [sid] = [s for s in after if after[s] != before[s]]
    [said] = [w for w in report["warnings"] if w.get("rule") == "day1-changed"]
    assert said["subject_id"] == sid and f"moved from {before[sid]} to {after[sid]}" in said["message"]
    _run(feed, out)  # once said, not again
    assert not [w for w in json.loads((out / "run-report.json").read_text())["warnings"]
                if w.get("rule") == "day1-changed"]


def test_an_unreadable_record_of_the_last_run_is_no_record(tmp_path: Path) -> None:
    """A state/last-run.json left torn or edited: the run goes on as after no recorded run (nothing compared)."""
    feed, out = tmp_path / "feed", tmp_path / "out"
    write_feed(feed, subjects=2, seed=7)
    (out / "state").mkdir(parents=True)
    for garbage in (b"{torn", b"[1, 2]", b'{"day1": "not a map", "subjects_to_recheck": 3}'):
        (out / "state" / "last-run.json").write_bytes(garbage)
        assert last_run(out) is None or last_run_started(out) is None  # --since last: "run once without --since"
        _run(feed, out)
        assert json.loads((out / "state" / "last-run.json").read_text())["day1"]  # recorded anew
