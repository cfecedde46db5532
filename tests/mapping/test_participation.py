"""Visits and results lie inside the subject's participation (consent → end of study / last window)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fhir_adapter.crf.models import SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.participation import participation
from fhir_adapter.mapping.subject import SubjectMapper
from fhir_adapter.roster.enrollees import Enrollee

DAY1 = dt.date(2024, 3, 1)


def enrollee(consent: dt.date | None, end: dt.date | None = None) -> Enrollee:
    return Enrollee(subject_id="P-001", patient_id="p1",
                    research_subject=SourceRef(resource_type="ResearchSubject", id="rs1"), status="follow-up",
                    arm="DL1", consent_date=consent, site=None, sex="F", birth_date=None, day1=DAY1,
                    end_of_study=end)


def temp(id_: str, when: str, value: float = 37.0) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id_, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}


def test_span_falls_back_to_the_schedule(study) -> None:  # type: ignore[no-untyped-def]
    s = participation(enrollee(None), study)
    assert (s.start, s.start_basis) == (DAY1 - dt.timedelta(days=56), "screening_window")
    assert (s.end, s.end_basis) == (DAY1 + dt.timedelta(days=749), "last_window")
    s = participation(enrollee(dt.date(2024, 1, 20), dt.date(2024, 9, 1)), study)
    assert (s.start, s.start_basis, s.end, s.end_basis) == (dt.date(2024, 1, 20), "consent",
                                                             dt.date(2024, 9, 1), "end_of_study")


def test_no_visit_before_consent_or_after_end_of_study(study) -> None:  # type: ignore[no-untyped-def]
    log = RunLog()
    resources = [
        temp("old", "1982-07-03"),         # decades before consent: no unscheduled visit
        temp("pre", "2024-01-10"),         # inside the screening window (day -51) but before consent
        temp("scr", "2024-01-25"),         # after consent, screening window
        temp("uns", "2024-04-20"),         # day 51: W8 window [50, 64]
        temp("late", "2024-06-01"),        # day 93: unscheduled, inside participation
        temp("gone", "2024-10-01"),        # after the end of study
    ]
    crf = SubjectMapper(study, log).map(enrollee(dt.date(2024, 1, 20), dt.date(2024, 9, 1)), resources)
    by_source = {v.values["temperature"].source.id: v.visit for v in crf.visits}
    assert by_source == {"scr": "SCR", "uns": "W8", "late": "UNS93"}
    placed = {f.source.id: f.visit for f in crf.findings}
    assert placed["old"] is None and placed["pre"] is None  # kept for look-backs, no visit
    assert "gone" not in placed
    assert log.counts["participation.before-start"] == 2
    assert log.counts["participation.after-end"] == 1
    assert any(w["rule"] == "participation" for w in log.warnings)


def test_without_research_subject_dates_the_schedule_bounds_unscheduled_visits(study) -> None:  # type: ignore[no-untyped-def]
    log = RunLog()
    # day -91 (before the screening window), day 762 (after the W104 window), day 11 (between W1 and W2)
    resources = [temp("a", "2023-12-01"), temp("b", "2026-04-01"), temp("c", "2024-03-11")]
    crf = SubjectMapper(study, log).map(enrollee(None), resources)
    assert [v.visit for v in crf.visits] == ["UNS11"]
    assert [f.source.id for f in crf.findings] == ["a", "c"]
