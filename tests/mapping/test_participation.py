"""Visits and results lie inside the subject's participation (consent → end of study / last window)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.crf.models import AdverseEvent, SourceRef
from fhir_adapter.derive.safety import SafetySettings, teae_flag
from fhir_adapter.engine.subject import SubjectEngine, SubjectWork
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.participation import Span, bound_adverse_events, participation
from fhir_adapter.mapping.subject import SubjectMapper
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study
from fhir_adapter.study.models import BaselineRule, Schedule, Visit

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


def test_span_falls_back_to_the_schedule(study: Study) -> None:
    s = participation(enrollee(None), study)
    assert (s.start, s.start_basis) == (DAY1 - dt.timedelta(days=56), "screening_window")
    assert (s.end, s.end_basis) == (DAY1 + dt.timedelta(days=749), "last_window")
    s = participation(enrollee(dt.date(2024, 1, 20), dt.date(2024, 9, 1)), study)
    assert (s.start, s.start_basis, s.end, s.end_basis) == (dt.date(2024, 1, 20), "consent",
                                                             dt.date(2024, 9, 1), "end_of_study")


def test_no_visit_before_consent_or_after_end_of_study(study: Study) -> None:
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


def test_without_research_subject_dates_the_schedule_bounds_unscheduled_visits(study: Study) -> None:
    log = RunLog()
    # day -91 (before the screening window), day 762 (after the W104 window), day 11 (between W1 and W2)
    resources = [temp("a", "2023-12-01"), temp("b", "2026-04-01"), temp("c", "2024-03-11")]
    crf = SubjectMapper(study, log).map(enrollee(None), resources)
    assert [v.visit for v in crf.visits] == ["UNS11"]
    assert [f.source.id for f in crf.findings] == ["a", "c"]


def adverse_event(id_: str, when: str | None, term: str = "Headache") -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "AdverseEvent", "id": id_, "actuality": "actual",
                         "subject": {"reference": "Patient/p1"}, "event": {"text": term}}
    if when:
        r["date"] = when
    return r


def test_adverse_events_before_consent_are_history_and_after_end_of_study_are_out(study: Study) -> None:
    log = RunLog()
    resources = [
        adverse_event("before", "2024-01-05", "Migraine"),   # before consent (2024-01-20): pre-existing
        adverse_event("partial", "2023-11", "Rash"),         # partial onset wholly before consent
        adverse_event("screening", "2024-01-25"),            # after consent, before Day 1: kept
        adverse_event("on-study", "2024-03-10"),             # kept (treatment-emergent)
        adverse_event("undated", None),                      # no onset: kept, the TEAE rule decides
        adverse_event("late", "2024-10-01"),                 # after the end of study: out of scope
    ]
    crf = SubjectMapper(study, log).map(enrollee(dt.date(2024, 1, 20), dt.date(2024, 9, 1)), resources)
    assert sorted(a.source.id for a in crf.ae) == ["on-study", "screening", "undated"]
    history = {m.source.id: (m.term, m.category, m.start_date, m.start_partial) for m in crf.mh}
    assert history == {"before": ("Migraine", "pre-existing adverse event", dt.date(2024, 1, 5), None),
                       "partial": ("Rash", "pre-existing adverse event", None, "2023-11")}
    assert log.counts["participation.ae-before-start"] == 2
    assert log.counts["participation.ae-after-end"] == 1
    said = {w["resource"]: w["message"] for w in log.warnings if w.get("rule") == "participation"}
    assert "medical history" in said["AdverseEvent/before"] and "not used" in said["AdverseEvent/late"]


def _records(when: str, id_: str) -> list[dict[str, Any]]:
    """A concomitant medication, a vaccination and a procedure, each begun on ``when``."""
    patient = {"reference": "Patient/p1"}
    return [
        {"resourceType": "MedicationStatement", "id": f"cm-{id_}", "status": "active", "subject": patient,
         "medicationCodeableConcept": {"text": "Naproxen"}, "effectiveDateTime": when},
        {"resourceType": "Immunization", "id": f"im-{id_}", "status": "completed", "patient": patient,
         "vaccineCode": {"text": "Influenza vaccine"}, "occurrenceDateTime": when},
        {"resourceType": "Procedure", "id": f"pr-{id_}", "status": "completed", "subject": patient,
         "code": {"text": "Depression screening"}, "performedDateTime": when},
    ]


def test_medications_and_procedures_begun_after_the_end_of_study_are_left_out(study: Study) -> None:
    """docs/clinical-rules.md#participation: data after the end of study never become CRF records; what began
    before consent stays (prior medications and procedures) and is counted."""
    log = RunLog()
    resources = _records("1985-05-01", "prior") + _records("2024-04-02", "on") + _records("2024-10-01", "late")
    crf = SubjectMapper(study, log).map(enrollee(dt.date(2024, 1, 20), dt.date(2024, 9, 1)), resources)
    assert sorted(c.source.id for c in crf.cm) == ["cm-on", "cm-prior", "im-on", "im-prior"]
    assert sorted(p.source.id for p in crf.pr) == ["pr-on", "pr-prior"]
    assert (log.counts["participation.cm-after-end"], log.counts["participation.pr-after-end"]) == (2, 1)
    assert (log.counts["participation.cm-before-start"], log.counts["participation.pr-before-start"]) == (2, 1)
    said = sorted(w["message"] for w in log.warnings if w.get("rule") == "participation")
    assert said == ["1 procedure(s) begun after the end of participation (2024-09-01, end_of_study) were not used",
                    "2 concomitant medication(s) begun after the end of participation (2024-09-01, end_of_study) "
                    "were not used"]


def test_a_condition_begun_after_day1_that_no_adverse_event_names_is_listed(study: Study) -> None:
    """A Condition on study is not history; unless an AdverseEvent names it, it is listed one by one for the
    investigator (an infection charted as a diagnosis after CAR-T must not vanish). After the end of study:
    counted only; refuted: not listed."""
    def condition(id_: str, when: str, term: str, **extra: Any) -> dict[str, Any]:
        return {"resourceType": "Condition", "id": id_, "subject": {"reference": "Patient/p1"},
                "code": {"text": term}, "onsetDateTime": when, **extra}
    refuted = {"verificationStatus": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "refuted"}]}}
    resources = [condition("hist", "2020-02-01", "Lupus nephritis"),
                 condition("sinus", "2024-03-14", "Viral sinusitis"),
                 condition("ae-cond", "2024-03-05", "Cytokine release syndrome"),
                 condition("ruled-out", "2024-03-20", "Pneumonia", **refuted),
                 condition("late", "2024-10-01", "Acute bronchitis"),
                 {**adverse_event("ae", "2024-03-05", "Cytokine release syndrome"),
                  "resultingCondition": [{"reference": "Condition/ae-cond"}]}]
    log = RunLog()
    crf = SubjectMapper(study, log).map(enrollee(dt.date(2024, 1, 20), dt.date(2024, 9, 1)), resources)
    assert [m.source.id for m in crf.mh] == ["hist"] and [a.source.id for a in crf.ae] == ["ae"]
    [said] = [w for w in log.warnings if w.get("rule") == "condition-on-study"]
    assert said["resource"] == "Condition/sinus" and "'Viral sinusitis' began on study day 14" in said["message"]
    assert said["fix"].endswith("resultingCondition is Condition/sinus")
    allergy = {"resourceType": "AllergyIntolerance", "id": "new-allergy", "patient": {"reference": "Patient/p1"},
               "code": {"text": "Tocilizumab"}, "onsetDateTime": "2024-03-20"}
    allergy_log = RunLog()
    SubjectMapper(study, allergy_log).map(enrollee(dt.date(2024, 1, 20), dt.date(2024, 9, 1)), [allergy])
    [said] = [w for w in allergy_log.warnings if w.get("rule") == "condition-on-study"]
    assert "resultingCondition" not in said["fix"] and "record it as an AdverseEvent" in said["fix"], said["fix"]
    assert (log.counts["mh.not-used.on-study"], log.counts["mh.not-used.after-end"]) == (2, 1)


def test_a_pre_existing_event_that_worsens_after_day1_stays_an_adverse_event() -> None:
    span = Span(dt.date(2024, 1, 20), dt.date(2024, 9, 1))
    worse = AdverseEvent(term="Arthralgia", grade=3, baseline_grade=1, onset_date=dt.date(2023, 12, 1),
                         source=SourceRef(resource_type="AdverseEvent", id="w"))
    same = worse.model_copy(update={"grade": 1, "source": SourceRef(resource_type="AdverseEvent", id="s")})
    out = bound_adverse_events([worse, same], span, DAY1)
    assert [a.source.id for a in out.kept] == ["w"] and [m.source.id for m in out.history] == ["s"]
    assert teae_flag(out.kept[0], DAY1, None, SafetySettings()).case == "worsened"


def c3(id_: str, when: str, value: float) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id_, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4485-9"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "g/L", "system": "http://unitsofmeasure.org", "code": "g/L"}}


def test_baseline_drawn_before_consent_is_read_and_named_but_never_a_visit(study: Study) -> None:
    infusion = {"resourceType": "Procedure", "id": "inf", "status": "completed",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1156961008"}]},
                "subject": {"reference": "Patient/p1"}, "performedDateTime": "2024-03-01"}
    # consent 2024-02-15 (day -15); screening C3 drawn on 2024-02-10 (day -20, before consent), W4 on day 29
    resources = [infusion, c3("scr-c3", "2024-02-10", 0.5), c3("w4-c3", "2024-03-29", 0.9),
                 c3("routine", "2023-12-01", 0.4)]  # day -91: older than the 56-day look-back
    engine = SubjectEngine(SubjectWork(study=study))
    out = engine.fresh(enrollee(dt.date(2024, 2, 15)), resources)
    assert out.error is None and out.row is not None
    assert out.crf.baseline_from == DAY1 - dt.timedelta(days=56) and out.crf.participation_start == dt.date(2024, 2, 15)
    assert [v.visit for v in out.crf.visits] == ["W4"]
    assert {f.source.id: f.visit for f in out.crf.findings} == {"routine": None, "scr-c3": None, "w4-c3": "W4"}
    w4 = next(v for v in out.row["visits"] if v["visit"] == "W4")
    assert w4["c3"] == 0.9 and w4["c3_change"] == 0.4
    assert [(b["item"], b["value"], b["date"], b["study_day"], b["sources"], b["before_participation"])
            for b in out.row["baselines"]] == [("c3", 0.5, "2024-02-10", -20, ["Observation/scr-c3"], True)]
    assert out.counts["baseline.before-participation"] == 1


def test_baseline_look_back_is_a_setting_defaulting_to_the_screening_window(study: Study) -> None:
    assert study.schedule.baseline_lookback_days() == 56  # lcar-aio schedule.yaml: 56
    visits = (Visit(id="SCR", label="Screening", day=-21, window=(-42, -2)),
              Visit(id="W4", label="Week 4", day=29, window=(22, 36)))
    assert Schedule(visits=visits).baseline_lookback_days() == 42  # left out: the earliest window's start
    assert Schedule(visits=visits, baseline=BaselineRule(lookback_days=None)).baseline_lookback_days() is None
    with pytest.raises(ValueError, match="lookback_days"):
        BaselineRule(lookback_days=-1)


def test_the_docs_name_unscheduled_visits_as_the_mapping_does(study: Study) -> None:
    """``UNS<study day>`` (UNS11, UNS-57): the rulebook, the schedule and the mapping README say what the CRF
    holds, not ``UNS-<study day>``."""
    crf = SubjectMapper(study, RunLog()).map(enrollee(None), [temp("c", "2024-03-11")])
    assert [v.visit for v in crf.visits] == ["UNS11"]
    root = Path(__file__).resolve().parents[2]
    for path in ("docs/clinical-rules.md", "mappings/lcar-aio/schedule.yaml", "mappings/README.md"):
        text = (root / path).read_text()
        assert "UNS-<" not in text and re.search(r"UNS<(study day|d)>", text), path


def test_a_consent_after_day1_is_warned_of(study: Study) -> None:
    """A consent after the infusion is impossible (a typo?): the adverse events between Day 1 and consent would
    be read as before participation, so the run says so for the subject; a consent before Day 1 says nothing."""
    from fhir_adapter.study.models import Participation

    schedule_start = study.schedule.model_copy(update={"participation": Participation(start=("screening_window",))})
    by_schedule = dataclasses.replace(study, schedule=schedule_start)  # a participation that ignores consent
    for s, consent, warned in ((study, DAY1 + dt.timedelta(days=9), True), (study, DAY1 - dt.timedelta(days=30), False),
                               (by_schedule, DAY1 + dt.timedelta(days=9), False)):
        log = RunLog()
        SubjectMapper(s, log).map(enrollee(consent), [temp("t", "2024-03-05")])
        found = [w for w in log.warnings if w.get("rule") == "consent-after-day1"]
        assert bool(found) is warned
        if warned:
            assert found[0]["subject_id"] == "P-001" and found[0]["resource"] == "ResearchSubject/rs1"
            assert f"consent date {consent} is after Day 1 ({DAY1}" in found[0]["message"]
