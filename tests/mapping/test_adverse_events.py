"""AdverseEvent → AE: plain R4 and the AE Clinical Research R4 backport; grade, seriousness, relatedness, dates,
CRS/ICANS/haematological flags, exclusions."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_adapter.crf.models import AdverseEvent
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.adverse_events import AdverseEventMapper, AdverseEventSettings
from fhir_adapter.study.load import Study
from fhir_adapter.terminology.codes import (
    AE_CAUSALITY_ASSESS,
    AE_SERIOUSNESS,
    AE_SEVERITY,
    EXT_AE_GRADE,
    EXT_AE_RESOLVE_DATE,
    EXT_AE_SERIOUSNESS_CRITERIA,
    EXT_AE_STATUS,
    EXT_AE_SUSPECT_ENTITY,
    ICD10CM,
    MEDDRA,
    NCIT,
    SNOMED,
)

DAY1 = dt.date(2024, 2, 1)
LD_START = dt.date(2024, 1, 27)
INFUSION = "proc-inf-1"


def cc(system: str, code: str, display: str = "") -> dict[str, Any]:
    c: dict[str, Any] = {"system": system, "code": code}
    if display:
        c["display"] = display
    return {"coding": [c]}


def ae(id_: str, term: str = "Cytokine release syndrome", *, code: tuple[str, str] | None = (MEDDRA, "10052015"),
       date: str | None = "2024-02-03", **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "AdverseEvent", "id": id_, "actuality": "actual",
                         "subject": {"reference": "Patient/p1"}}
    event: dict[str, Any] = {"text": term}
    if code:
        event["coding"] = [{"system": code[0], "code": code[1], "display": term}]
    r["event"] = event
    if date:
        r["date"] = date
    r.update(extra)
    return r


def core_entity(assessment: str | None = None, *, ref: str = f"Procedure/{INFUSION}",
                text: str | None = None) -> dict[str, Any]:
    causality: dict[str, Any] = {}
    if assessment:
        causality["assessment"] = cc(AE_CAUSALITY_ASSESS, assessment)
    if text:
        causality["productRelatedness"] = text
    return {"instance": {"reference": ref}, "causality": [causality]}


def backport_entity(code: str, display: str, *, instance: dict[str, Any] | None = None) -> dict[str, Any]:
    subs: list[dict[str, Any]] = []
    if instance is not None:
        subs.append({"url": "instance", **instance})
    subs.append({"url": "causality", "extension": [
        {"url": "entityRelatedness", "valueCodeableConcept": cc(NCIT, code, display)}]})
    return {"url": EXT_AE_SUSPECT_ENTITY, "extension": subs}


def grade_ext(code: str, display: str = "") -> dict[str, Any]:
    return {"url": EXT_AE_GRADE, "valueCodeableConcept": cc(NCIT, code, display)}


def criterion(code: str, present: bool = True) -> dict[str, Any]:
    return {"url": EXT_AE_SERIOUSNESS_CRITERIA, "extension": [
        {"url": "criterionCode", "valueCodeableConcept": cc(NCIT, code)},
        {"url": "criterionPresent", "valueBoolean": present}]}


def severity(word: str) -> dict[str, Any]:
    return cc(AE_SEVERITY, word)


def seriousness(code: str, display: str = "") -> dict[str, Any]:
    return cc(AE_SERIOUSNESS, code, display)


def run(study: Study, resources: list[dict[str, Any]], settings: AdverseEventSettings | None = None,
        infusion_time: dt.datetime | None = None) -> tuple[list[AdverseEvent], RunLog]:
    for r in resources:
        assert r4_problem(r) is None, (r.get("id"), r4_problem(r))
    log = RunLog()
    out = AdverseEventMapper(study, log, settings).map(resources, "T-001", day1=DAY1,
                                                       lymphodepletion_start=LD_START, infusion_id=INFUSION,
                                                       infusion_time=infusion_time)
    return out, log


def test_an_event_without_meddra_coding_is_named_with_what_it_is_coded_in(study: Study) -> None:
    """AEDECOD is Required in SDTM: an event coded only in ICD-10-CM (or not at all) leaves it empty, and the
    event would be missing from every table by preferred term without a word."""
    events, log = run(study, [ae("a1", "Hypogammaglobulinaemia", code=(ICD10CM, "D80.1")), ae("a2"),
                              ae("a3", "Headache", code=None)])
    assert {e.source.id: e.meddra_code for e in events} == {"a1": None, "a2": "10052015", "a3": None}
    named = {w["resource"]: w for w in log.warnings if w.get("rule") == "ae-not-meddra-coded"}
    assert set(named) == {"AdverseEvent/a1", "AdverseEvent/a3"}
    assert f"(coded {ICD10CM}|D80.1)" in named["AdverseEvent/a1"]["message"]
    assert "AEDECOD" in named["AdverseEvent/a3"]["message"] and "MedDRA" in named["AdverseEvent/a3"]["fix"]
    assert log.counts["ae.not-meddra-coded"] == 2


# -- plain R4 ----------------------------------------------------------------------------------------
def test_plain_r4_event(study: Study) -> None:
    r = ae("a1", severity=severity("moderate"), seriousness=seriousness("serious", "Serious"),
           suspectEntity=[core_entity("Probably-Likely")], outcome=cc(
               "http://terminology.hl7.org/CodeSystem/adverse-event-outcome", "resolved"))
    (a,), log = run(study, [r])
    assert (a.term, a.codes) == ("Cytokine release syndrome", (f"{MEDDRA}|10052015",))
    assert (a.grade, a.grade_approximate, a.serious, a.serious_criteria) == (2, True, True, ())
    assert (a.related, a.relatedness, a.outcome) == (True, "Probably-Likely", "resolved")
    assert (a.onset_date, a.study_day, a.pre_infusion, a.teae) == (dt.date(2024, 2, 3), 3, False, None)
    assert (a.crs, a.icans, a.hematologic) == (True, False, False)
    assert a.source.reference == "AdverseEvent/a1" and not log.quarantine


@pytest.mark.parametrize(("word", "grade"), [("mild", 1), ("moderate", 2), ("severe", 3)])
def test_severity_maps_to_an_approximate_grade(study: Study, word: str, grade: int) -> None:
    (a,), _ = run(study, [ae("a", severity=severity(word))])
    assert (a.grade, a.grade_approximate) == (grade, True)


def test_missing_grade_is_none_and_counted(study: Study) -> None:
    (a,), log = run(study, [ae("a")])
    assert (a.grade, a.grade_approximate) == (None, False) and log.counts["ae.no-grade"] == 1


def test_an_event_without_grade_or_onset_is_kept_and_reported_with_its_resource_and_fix(study: Study) -> None:
    """run-report.json names each: the AdverseEvent, the rule and what to do; the events stay in the CRF."""
    (dated, undated), log = run(study, [ae("no-grade"), ae("no-onset", date=None, severity=severity("mild"))])
    assert (dated.source.id, dated.grade, dated.onset_date) == ("no-grade", None, dt.date(2024, 2, 3))
    assert (undated.source.id, undated.grade, undated.onset_date, undated.study_day) == ("no-onset", 1, None, None)
    warned = {w["rule"]: w for w in log.warnings}
    assert set(warned) == {"ae-no-grade", "ae-no-onset"} and not log.quarantine
    assert warned["ae-no-grade"]["resource"] == "AdverseEvent/no-grade"
    assert warned["ae-no-onset"]["resource"] == "AdverseEvent/no-onset"
    assert all(w["subject_id"] == "T-001" and "Cytokine release syndrome" in w["message"] for w in warned.values())
    assert "grade" in warned["ae-no-grade"]["fix"] and "AdverseEvent.date" in warned["ae-no-onset"]["fix"]
    assert (log.counts["ae.no-grade"], log.counts["ae.no-onset"]) == (1, 1)
    _, quiet = run(study, [ae("fine", severity=severity("mild"))])
    assert quiet.warnings == []


@pytest.mark.parametrize(("code", "display", "expected"), [
    ("serious", "Serious", True), ("serious", "serious", True), ("Serious", "", True),
    ("non-serious", "Non-serious", False), ("Non-serious", "", False), ("nonserious", "", False),
])
def test_seriousness_casing(study: Study, code: str, display: str, expected: bool) -> None:
    (a,), _ = run(study, [ae("a", seriousness=seriousness(code, display))])
    assert a.serious is expected


def test_seriousness_from_text_only(study: Study) -> None:
    (a,), _ = run(study, [ae("a", seriousness={"text": "Non serious"})])
    assert a.serious is False


@pytest.mark.parametrize(("assessment", "related"), [
    ("Certain", True), ("Probably-Likely", True), ("Possible", True), ("Unlikely", False),
    ("Conditional-Classified", None), ("Unassessable-Unclassifiable", None),
])
def test_each_core_causality_code(study: Study, assessment: str, related: bool | None) -> None:
    (a,), _ = run(study, [ae("a", suspectEntity=[core_entity(assessment)])])
    assert (a.related, a.relatedness) == (related, assessment)


@pytest.mark.parametrize(("text", "related"), [
    ("Definitely related", True), ("probably related", True), ("possibly related", True), ("Related", True),
    ("not related", False), ("Unrelated", False), ("unlikely", False), ("unknown", None),
])
def test_product_relatedness_text(study: Study, text: str, related: bool | None) -> None:
    (a,), _ = run(study, [ae("a", suspectEntity=[core_entity(text=text)])])
    assert (a.related, a.relatedness) == (related, text)


def test_only_the_lcar_aio_entity_counts(study: Study) -> None:
    fluda = {"resourceType": "Medication", "id": "fluda", "code": cc(
        "http://www.nlm.nih.gov/research/umls/rxnorm", "24698", "fludarabine")}
    r = ae("a", suspectEntity=[core_entity("Certain", ref="Medication/fluda"),
                               core_entity("Unlikely")])
    (a,), _ = run(study, [r, fluda])
    assert (a.related, a.relatedness) == (False, "Unlikely")
    (b,), log = run(study, [ae("b", suspectEntity=[core_entity("Certain", ref="Medication/fluda")]), fluda])
    assert b.related is None and log.counts["ae.no-product-suspect-entity"] == 1


def test_product_identified_by_display_and_by_resolved_procedure(study: Study) -> None:
    proc = {"resourceType": "Procedure", "id": "other-proc", "status": "completed",
            "subject": {"reference": "Patient/p1"}, "code": cc(SNOMED, "1156961008", "CAR-T immunotherapy")}
    by_code = ae("a", suspectEntity=[core_entity("Possible", ref="Procedure/other-proc")])
    by_display = ae("b", suspectEntity=[{"instance": {"display": "LCAR-AIO infusion"},
                                         "causality": [{"assessment": cc(AE_CAUSALITY_ASSESS, "Possible")}]}])
    cms, _ = run(study, [by_code, by_display, proc])
    assert [a.related for a in cms] == [True, True]


def test_unidentified_single_entity_is_read_as_the_product(study: Study) -> None:
    r = ae("a", suspectEntity=[core_entity("Possible", ref="Medication/not-in-source")])
    (a,), log = run(study, [r])
    assert a.related is True
    assert [w["rule"] for w in log.warnings] == ["ae-no-grade", "unidentified-suspect-entity"]
    off = study.rule("adverse_events", AdverseEventSettings).model_copy(
        update={"unidentified_single_entity_is_product": False})
    (b,), _ = run(study, [r], off)
    assert b.related is None


def test_most_related_assessment_wins(study: Study) -> None:
    entity = core_entity("Unlikely")
    entity["causality"].append({"assessment": cc(AE_CAUSALITY_ASSESS, "Possible")})
    (a,), _ = run(study, [ae("a", suspectEntity=[entity])])
    assert (a.related, a.relatedness) == (True, "Possible")


# -- R4 backport ----------------------------------------------------------------------------------------
def test_backport_event(study: Study) -> None:
    r = ae("b1", "Immune effector cell-associated neurotoxicity syndrome", code=(ICD10CM, "G92.03"),
           date="2024-02-06T22:30:00+01:00",
           meta={"profile": ["http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/"
                             "AdverseEvent-clinical-research"]},
           modifierExtension=[{"url": EXT_AE_STATUS, "valueCode": "completed"}],
           extension=[grade_ext("C41340", "Grade 3 Severe Adverse Event"), criterion("C83052"),
                      criterion("C84266", present=False), {"url": EXT_AE_RESOLVE_DATE, "valueDateTime": "2024-02-09"},
                      backport_entity("C53258", "Possibly related",
                                      instance={"valueReference": {"reference": f"Procedure/{INFUSION}"}})],
           seriousness=seriousness("serious", "Serious"), outcome=cc(NCIT, "C49498", "Recovered/Resolved"))
    (a,), log = run(study, [r])
    assert (a.grade, a.grade_approximate) == (3, False)
    assert (a.serious, a.serious_criteria) == (True, (f"{NCIT}|C83052",))
    assert (a.related, a.relatedness) == (True, "Possibly related")
    assert (a.onset_date, a.resolution_date, a.study_day, a.end_study_day) == (
        dt.date(2024, 2, 6), dt.date(2024, 2, 9), 6, 9)
    assert (a.icans, a.crs, a.hematologic, a.outcome) == (True, False, False, "C49498")
    assert not log.quarantine


@pytest.mark.parametrize(("code", "display", "related"), [
    ("C53256", "Not related", False), ("C53257", "Unlikely related", False),
    ("C53258", "Possibly related", True), ("C53260", "Related", True),
])
def test_each_backport_relatedness_code(study: Study, code: str, display: str, related: bool | None) -> None:
    ext = backport_entity(code, display, instance={"valueCodeableConcept": {"text": "LCAR-AIO"}})
    (a,), _ = run(study, [ae("a", extension=[ext])])
    assert (a.related, a.relatedness) == (related, display)


def test_backport_entity_without_instance(study: Study) -> None:
    (a,), log = run(study, [ae("a", extension=[backport_entity("C53260", "Related")])])
    assert a.related is True and [w["rule"] for w in log.warnings] == ["ae-no-grade", "unidentified-suspect-entity"]


@pytest.mark.parametrize(("code", "grade"), [("C41338", 1), ("C41339", 2), ("C41340", 3), ("C41337", 4),
                                             ("C48275", 5)])
def test_ae_grade_codes(study: Study, code: str, grade: int) -> None:
    (a,), _ = run(study, [ae("a", extension=[grade_ext(code)], severity=severity("mild"))])
    assert (a.grade, a.grade_approximate) == (grade, False)


@pytest.mark.parametrize("order", [("C41339", "C41337"), ("C41337", "C41339")])
def test_two_different_recorded_grades_give_the_worst_and_a_warning(study: Study, order: tuple[str, str]) -> None:
    """Grade 2 and grade 4 on one CRS event, in either order: grade 4 (a CRS DLT), never the first one read
    silently (docs/clinical-rules.md#ae-grade)."""
    (a,), log = run(study, [ae("a", extension=[grade_ext(order[0]), grade_ext(order[1])])])
    assert (a.grade, a.grade_approximate) == (4, False)
    (w,) = [w for w in log.warnings if w["rule"] == "ae-grade-conflict"]
    assert w["resource"] == "AdverseEvent/a" and w["subject_id"] == "T-001" and "(2, 4)" in w["message"]


@pytest.mark.parametrize("ae_grade_first", [True, False])
def test_a_configured_grade_extension_that_disagrees_gives_the_worst(study: Study, ae_grade_first: bool) -> None:
    url = "https://hospital.example.org/fhir/StructureDefinition/ctcae-grade"
    settings = study.rule("adverse_events", AdverseEventSettings).model_copy(update={"grade_extension_urls": (url,)})
    exts = [grade_ext("C41339"), {"url": url, "valueInteger": 4}]
    (a,), log = run(study, [ae("a", extension=exts if ae_grade_first else exts[::-1])], settings)
    assert a.grade == 4 and [w["rule"] for w in log.warnings] == ["ae-grade-conflict"]


def test_the_same_grade_recorded_twice_is_no_conflict(study: Study) -> None:
    (a,), log = run(study, [ae("a", extension=[grade_ext("C41339"), grade_ext("C41339")])])
    assert a.grade == 2 and not [w for w in log.warnings if w["rule"] == "ae-grade-conflict"]


def test_ae_grade_as_text(study: Study) -> None:
    ext = {"url": EXT_AE_GRADE, "valueCodeableConcept": {"text": "Grade 4"}}
    (a,), _ = run(study, [ae("a", extension=[ext])])
    assert a.grade == 4


def test_study_configured_grade_extension(study: Study) -> None:
    url = "https://hospital.example.org/fhir/StructureDefinition/ctcae-grade"
    settings = study.rule("adverse_events", AdverseEventSettings).model_copy(update={"grade_extension_urls": (url,)})
    (a,), _ = run(study, [ae("a", extension=[{"url": url, "valueInteger": 2}], severity=severity("severe"))],
                  settings)
    assert (a.grade, a.grade_approximate) == (2, False)


def test_serious_from_criteria_only(study: Study) -> None:
    (a,), _ = run(study, [ae("a", extension=[criterion("C48275")])])
    assert (a.serious, a.serious_criteria) == (True, (f"{NCIT}|C48275",))


# -- exclusions and quarantine -----------------------------------------------------------------------------
def test_entered_in_error_is_excluded(study: Study) -> None:
    r = ae("a", modifierExtension=[{"url": EXT_AE_STATUS, "valueCode": "entered-in-error"}])
    out, log = run(study, [r])
    assert out == [] and log.counts["ae.not-used.entered-in-error"] == 1 and not log.quarantine


def test_potential_event_is_excluded(study: Study) -> None:
    out, log = run(study, [ae("a", actuality="potential")])
    assert out == [] and log.counts["ae.not-used.potential"] == 1


def test_event_without_term_is_quarantined(study: Study) -> None:
    r = ae("a")
    del r["event"]
    out, log = run(study, [r])
    assert out == [] and log.quarantine[0].rule == "no-event"


# -- dates ---------------------------------------------------------------------------------------------
def test_partial_onset_date_stays_partial(study: Study) -> None:
    (a,), _ = run(study, [ae("a", date="2024-02")])
    assert (a.onset_date, a.onset_partial, a.study_day, a.pre_infusion) == (None, "2024-02", None, False)


@pytest.mark.parametrize(("date", "pre", "day"), [
    ("2024-01-26", False, -6), ("2024-01-27", True, -5), ("2024-01-31", True, -1), ("2024-02-01", False, 1),
])
def test_pre_infusion_window(study: Study, date: str, pre: bool, day: int) -> None:
    (a,), _ = run(study, [ae("a", "Nausea", code=None, date=date)])
    assert (a.pre_infusion, a.study_day) == (pre, day)


@pytest.mark.parametrize(("date", "said"), [("2024-01-31", True), ("2024-02-01", False), ("2024-02-03", False)])
def test_crs_before_the_infusion_is_mapped_and_said(study: Study, date: str, said: bool) -> None:
    """A reaction to the CAR-T cells before they were given: the onset or Day 1 (2024-02-01) is wrong."""
    (a,), log = run(study, [ae("a", "Cytokine release syndrome", date=date)])
    assert a.crs and a.study_day is not None
    assert [w["rule"] for w in log.warnings if w.get("rule") == "crs-before-infusion"] == \
        (["crs-before-infusion"] if said else [])


@pytest.mark.parametrize(("onset", "said"), [("2024-02-01T08:00:00Z", True), ("2024-02-01T12:00:00Z", False),
                                             ("2024-02-01", False)])
def test_crs_on_day1_before_the_infusions_time_is_pre_infusion_and_said(study: Study, onset: str,
                                                                        said: bool) -> None:
    """The infusion at 10:00 on Day 1: a CRS at 08:00 is before the cells were given (from lymphodepletion to the
    infusion: pre-infusion, decisions); at 12:00, or with no time, it is not."""
    infused = dt.datetime(2024, 2, 1, 10, tzinfo=dt.UTC)
    (a,), log = run(study, [ae("a", "Cytokine release syndrome", date=onset)], infusion_time=infused)
    assert a.pre_infusion is said and a.study_day == 1
    warned = [w["message"] for w in log.warnings if w.get("rule") == "crs-before-infusion"]
    assert warned == ([f"CRS with onset {a.onset_datetime.isoformat() if a.onset_datetime else ''}, on Day 1 "
                       "before the infusion at 2024-02-01T10:00:00+00:00: check the event's onset and the infusion "
                       "date"] if said else [])


def test_detected_when_no_date(study: Study) -> None:
    (a,), _ = run(study, [ae("a", date=None, detected="2024-02-10")])
    assert (a.onset_date, a.study_day) == (dt.date(2024, 2, 10), 10)


def test_onset_extension_period_gives_resolution_when_resolved(study: Study) -> None:
    url = "http://hl7.org/fhir/5.0/StructureDefinition/extension-AdverseEvent.occurrence"
    r = ae("a", date=None, extension=[{"url": url, "valuePeriod": {"start": "2024-02-04", "end": "2024-02-12"}}],
           outcome=cc("http://terminology.hl7.org/CodeSystem/adverse-event-outcome", "resolved"))
    (a,), _ = run(study, [r])
    assert (a.onset_date, a.resolution_date, a.end_study_day) == (dt.date(2024, 2, 4), dt.date(2024, 2, 12), 12)


def test_times_are_kept_in_the_site_time_zone_and_dates_stay_dates(study: Study) -> None:
    berlin = dataclasses.replace(study, info=study.info.model_copy(update={"timezone": "Europe/Berlin"}))
    r = ae("a", date="2024-02-03T23:30:00Z", extension=[
        {"url": EXT_AE_RESOLVE_DATE, "valueDateTime": "2024-02-06T08:15:00+01:00"}])
    (a,), _ = run(berlin, [r])
    assert a.onset_datetime == dt.datetime(2024, 2, 4, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert a.onset_datetime is not None and a.onset_datetime.utcoffset() == dt.timedelta(hours=1)
    assert (a.onset_date, a.study_day) == (dt.date(2024, 2, 4), 4), "the calendar date in the site time zone"
    assert a.resolution_datetime == dt.datetime(2024, 2, 6, 8, 15, tzinfo=ZoneInfo("Europe/Berlin"))
    (b,), _ = run(berlin, [ae("b", date="2024-02-03", extension=[
        {"url": EXT_AE_RESOLVE_DATE, "valueDate": "2024-02-06"}])])
    assert (b.onset_date, b.onset_datetime, b.resolution_date, b.resolution_datetime) == (
        dt.date(2024, 2, 3), None, dt.date(2024, 2, 6), None)


# -- flags -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("term", "code", "crs", "icans", "haem"), [
    ("Cytokine release syndrome", (ICD10CM, "D89.832"), True, False, False),
    ("CRS grade 2", None, True, False, False),
    ("ICANS", None, False, True, False),
    ("Encephalopathy", (ICD10CM, "G92.01"), False, True, False),
    ("Neutropenia", None, False, False, True),
    ("Neutrophil count decreased", None, False, False, True),
    ("Thrombocytopenia", None, False, False, True),
    ("Anaemia", None, False, False, True),
    ("Anemia", (ICD10CM, "D64.9"), False, False, True),
    ("Leukopenia", None, False, False, True),
    ("Lymphopenia", None, False, False, True),
    ("Febrile neutropenia", None, False, False, False),
    # ICD-10-CM has no code of its own for it (D70.9 neutropenia + R50.81 fever): the term's veto (not_terms)
    # holds against a code or prefix match too, so the grade >= 3 non-haematological DLT rule reviews it
    ("Febrile neutropenia", (ICD10CM, "D70.9"), False, False, False),
    ("Neutropenia", (ICD10CM, "D70.9"), False, False, True),
    ("Pyrexia", None, False, False, False),
])
def test_event_flags(study: Study, term: str, code: tuple[str, str], crs: bool, icans: bool,
                haem: bool) -> None:
    (a,), _ = run(study, [ae("a", term, code=code)])
    assert (a.crs, a.icans, a.hematologic) == (crs, icans, haem)


def test_contradictions_a_data_manager_must_resolve_are_flagged(study: Study) -> None:
    """Kept as recorded, and said: non-serious with a hospitalisation criterion present; outcome fatal with a
    grade below 5 (the grade 5 DLT rule reads the grade)."""
    outcome = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
    hosp = ae("s1", "Pneumonia", code=None, seriousness=seriousness("non-serious", "Non-serious"),
              extension=[criterion("C83052")])
    fatal = ae("f1", "Pneumonia", code=None, extension=[grade_ext("C41339", "Grade 2")],
               outcome=cc(outcome, "fatal"))
    # CDISC OUT FATAL (NCIt C48275), second of two codings
    ncit_fatal = {"coding": [{"system": "https://example.org/local-outcome", "code": "D"},
                             {"system": NCIT, "code": "C48275", "display": "FATAL"}]}
    fatal2 = ae("f2", "Sepsis", code=None, extension=[grade_ext("C41340", "Grade 3")], outcome=ncit_fatal)
    aes, log = run(study, [hosp, fatal, fatal2])
    a, b = next(x for x in aes if x.source.id == "s1"), next(x for x in aes if x.source.id == "f1")
    assert (a.serious, b.grade, b.outcome) == (False, 2, "fatal")
    rules = {(w["rule"], w["resource"]) for w in log.warnings}
    assert ("ae-seriousness-conflict", "AdverseEvent/s1") in rules and ("ae-fatal-grade", "AdverseEvent/f1") in rules
    assert ("ae-fatal-grade", "AdverseEvent/f2") in rules
    assert next(x for x in aes if x.source.id == "f2").outcome == "C48275"  # the export's AEOUT FATAL, DTHDTC


def test_the_outcome_is_read_from_its_standard_coding_before_a_local_one(study: Study) -> None:
    """outcome [hospital LOC-resolved, HL7 resolved]: the CRF keeps 'resolved' (AEOUT RECOVERED/RESOLVED)."""
    local_first = {"coding": [{"system": "https://hospital.example.org/ae-outcome", "code": "LOC-resolved"},
                              {"system": "http://terminology.hl7.org/CodeSystem/adverse-event-outcome",
                               "code": "resolved"}]}
    (a,), _ = run(study, [ae("o1", "Headache", code=None, outcome=local_first)])
    assert a.outcome == "resolved"
