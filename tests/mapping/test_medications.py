"""Medication resources → CM: the four resource types, medication forms, doses, timings, dates, routes, tapers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.crf.models import ConMed
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.medications.mapper import MedicationMapper
from fhir_adapter.study.load import Study

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
SCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
ORAL = {"coding": [{"system": SCT, "code": "26643006", "display": "Oral route"}]}
IV = {"coding": [{"system": SCT, "code": "47625008", "display": "Intravenous route"}]}


def cc(code: str, display: str = "", system: str = RX) -> dict[str, Any]:
    c: dict[str, Any] = {"system": system, "code": code}
    if display:
        c["display"] = display
    return {"coding": [c]}


def mg(value: float, unit: str = "mg") -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def dosage(dose: dict[str, Any] | None = None, *, timing: dict[str, Any] | None = None,
           route: dict[str, Any] | None = ORAL, sequence: int | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if sequence is not None:
        d["sequence"] = sequence
    if timing is not None:
        d["timing"] = timing
    if route is not None:
        d["route"] = route
    if dose is not None:
        d["doseAndRate"] = [dose]
    d.update(extra)
    return d


def daily(**repeat: Any) -> dict[str, Any]:
    return {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", **repeat}}


def statement(id_: str, med: dict[str, Any] | None = None, dosages: list[dict[str, Any]] | None = None, *,
              status: str = "active", start: str | None = "2024-01-10", end: str | None = None,
              **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "MedicationStatement", "id": id_, "status": status,
                         "subject": {"reference": "Patient/p1"}}
    if med is not None:
        r["medicationCodeableConcept"] = med
    if start and end:
        r["effectivePeriod"] = {"start": start, "end": end}
    elif start:
        r["effectiveDateTime"] = start
    if dosages is not None:
        r["dosage"] = dosages
    r.update(extra)
    return r


def run(study: Study, resources: list[dict[str, Any]]) -> tuple[list[ConMed], RunLog]:
    for r in resources:
        assert r4_problem(r) is None, (r.get("id"), r4_problem(r))
    log = RunLog()
    return MedicationMapper(study, log).map(resources, "T-001"), log


PRED = cc("8640", "prednisone")


# -- the four resource types -------------------------------------------------------------------------
def test_statement_with_ingredient_code_and_qd(study: Study) -> None:
    (c,), log = run(study, [statement("s1", PRED, [dosage({"doseQuantity": mg(10)}, timing=daily())],
                                      end="2024-02-20")])
    assert (c.drug, c.rxnorm, c.drug_class, c.dose, c.dose_unit) == ("prednisone", "8640", "glucocorticoid", 10, "mg")
    assert (c.frequency_per_day, c.daily_dose_mg, c.route, c.systemic) == (1.0, 10.0, "oral", True)
    assert (c.start_date, c.end_date, c.source_kind, c.status) == (
        dt.date(2024, 1, 10), dt.date(2024, 2, 20), "statement", "active")
    assert c.source.reference == "MedicationStatement/s1" and not log.quarantine


def test_request_authored_on_and_validity_period(study: Study) -> None:
    r = {"resourceType": "MedicationRequest", "id": "r1", "status": "active", "intent": "order",
         "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": cc("5521", "hydroxychloroquine"),
         "authoredOn": "2024-01-05T10:00:00Z",
         "dosageInstruction": [dosage({"doseQuantity": mg(200)}, timing={"code": cc("BID", system=GTS)})],
         "dispenseRequest": {"validityPeriod": {"end": "2024-04-05"}}}
    (c,), _ = run(study, [r])
    assert (c.drug, c.drug_class, c.source_kind) == ("hydroxychloroquine", "antimalarial", "request")
    assert (c.frequency_per_day, c.daily_dose_mg) == (2.0, 400.0)
    assert (c.start_date, c.end_date) == (dt.date(2024, 1, 5), dt.date(2024, 4, 5))


def test_request_validity_period_start_wins_over_authored_on(study: Study) -> None:
    r = {"resourceType": "MedicationRequest", "id": "r2", "status": "completed", "intent": "order",
         "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": PRED, "authoredOn": "2024-01-05",
         "dosageInstruction": [dosage({"doseQuantity": mg(5)}, timing=daily())],
         "dispenseRequest": {"validityPeriod": {"start": "2024-01-07"},
                             "expectedSupplyDuration": {"value": 30, "unit": "days", "system": UCUM, "code": "d"}}}
    (c,), _ = run(study, [r])
    assert (c.start_date, c.end_date, c.status) == (dt.date(2024, 1, 7), dt.date(2024, 2, 5), "completed")


def test_dispense_when_handed_over_plus_days_supply(study: Study) -> None:
    r = {"resourceType": "MedicationDispense", "id": "d1", "status": "completed",
         "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": cc("200060", "mycophenolate 500"),
         "whenHandedOver": "2024-01-10T15:00:00Z", "daysSupply": {"value": 28, "unit": "d", "system": UCUM,
                                                                 "code": "d"},
         "dosageInstruction": [dosage({"doseQuantity": mg(2, "{tbl}")}, timing={"code": cc("BID", system=GTS)})]}
    (c,), _ = run(study, [r])
    assert (c.drug, c.rxnorm, c.drug_class, c.source_kind) == (
        "mycophenolate mofetil", "68149", "immunosuppressant", "dispense")
    assert (c.dose, c.dose_unit, c.frequency_per_day, c.daily_dose_mg) == (1000.0, "mg", 2.0, 2000.0)
    assert (c.start_date, c.end_date) == (dt.date(2024, 1, 10), dt.date(2024, 2, 6))


def test_administration_is_one_record_with_the_dose_given(study: Study) -> None:
    r = {"resourceType": "MedicationAdministration", "id": "a1", "status": "completed",
         "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": cc("6902", "methylprednisolone"),
         "effectiveDateTime": "2024-01-12T08:00:00Z", "dosage": {"route": IV, "dose": mg(0.5, "g")}}
    (c,), _ = run(study, [r])
    assert (c.drug, c.source_kind, c.route, c.systemic) == ("methylprednisolone", "administration",
                                                           "intravenous", True)
    assert (c.dose, c.dose_unit, c.frequency_per_day, c.daily_dose_mg) == (500.0, "mg", None, 500.0)
    assert c.start_date == c.end_date == dt.date(2024, 1, 12)


@pytest.mark.parametrize("unit", ["mcg", "µg", "μg"])
def test_a_dose_unit_spelt_as_ehrs_do_is_read_as_its_ucum_code(study: Study, unit: str) -> None:
    """The unit synonyms of the Observations (mappings/units/synonyms.yaml) hold for doses: 5000 mcg is 5 mg."""
    dose = {"value": 5000, "unit": unit}
    (c,), log = run(study, [statement("s1", PRED, [dosage({"doseQuantity": dose}, timing=daily())])])
    assert (c.dose, c.dose_unit, c.daily_dose_mg) == (5.0, "mg", 5.0) and not log.quarantine
    assert log.counts[f"units.synonym.{unit}->ug"] == 1
    r = {"resourceType": "MedicationAdministration", "id": "a1", "status": "completed",
         "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": cc("6902", "methylprednisolone"),
         "effectiveDateTime": "2024-01-12T08:00:00Z", "dosage": {"route": IV, "dose": dose}}
    (a,), _ = run(study, [r])
    assert (a.dose, a.dose_unit, a.daily_dose_mg) == (5.0, "mg", 5.0)


def test_administration_by_rate_over_its_period(study: Study) -> None:
    r = {"resourceType": "MedicationAdministration", "id": "a2", "status": "completed",
         "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": cc("612865", "tocilizumab"),
         "effectivePeriod": {"start": "2024-02-03T10:00:00Z", "end": "2024-02-03T11:00:00Z"},
         "dosage": {"route": IV, "rateRatio": {"numerator": mg(480), "denominator": {
             "value": 1, "unit": "h", "system": UCUM, "code": "h"}}}}
    (c,), _ = run(study, [r])
    assert (c.drug, c.drug_class, c.dose, c.dose_unit, c.daily_dose_mg) == (
        "tocilizumab", "crs_treatment", 480.0, "mg/h", 480.0)


# -- the medication ----------------------------------------------------------------------------------
def test_contained_medication_with_ingredient_strength(study: Study) -> None:
    med = {"resourceType": "Medication", "id": "m", "code": {"text": "Decortin 5 mg Tabletten"},
           "ingredient": [{"itemCodeableConcept": cc("8640", "prednisone"),
                           "strength": {"numerator": mg(5), "denominator": {"value": 1, "unit": "tablet",
                                                                            "system": UCUM, "code": "{tbl}"}}}]}
    r = statement("s2", None, [dosage({"doseQuantity": mg(3, "{tbl}")}, timing=daily())],
                  contained=[med], medicationReference={"reference": "#m"})
    (c,), _ = run(study, [r])
    assert (c.drug, c.rxnorm, c.dose, c.daily_dose_mg) == ("prednisone", "8640", 15.0, 15.0)


def test_referenced_medication_with_scd_code(study: Study) -> None:
    med = {"resourceType": "Medication", "id": "med-pred20", "code": cc("312615", "predniSONE 20 MG Oral Tablet")}
    r = statement("s3", None, [dosage({"doseQuantity": mg(1, "TAB")}, timing=daily(), route=None)],
                  medicationReference={"reference": "Medication/med-pred20"})
    (c,), _ = run(study, [r, med])
    # strength and route come from the SCD code of medications.yaml
    assert (c.drug, c.rxnorm, c.dose, c.dose_unit, c.daily_dose_mg) == ("prednisone", "8640", 20.0, "mg", 20.0)
    assert (c.route, c.systemic) == ("oral", True)


@pytest.mark.parametrize(("ref", "where"), [("Medication/nope", "the export"), ("#gone", "the resource contains")])
def test_a_medication_reference_that_does_not_resolve_has_its_own_rule(study: Study, ref: str, where: str) -> None:
    """A dangling medicationReference is not "names no medication": the reason quotes the reference and the fix
    says to send the Medication or correct the reference."""
    r = statement("s9", None, [dosage({"doseQuantity": mg(5)}, timing=daily())], medicationReference={"reference": ref})
    held = {"resourceType": "Medication", "id": "other", "code": cc("8640", "prednisone")}
    cms, log = run(study, [r, held])
    assert cms == []
    (q,) = log.quarantine
    assert (q.resource_type, q.id, q.rule) == ("MedicationStatement", "s9", "unresolved-medication-reference")
    assert f"'{ref}' does not resolve" in q.reason and where in q.reason
    assert "include the Medication in the export" in q.fix and "correct the reference" in q.fix


def test_a_resource_naming_no_medication_at_all_is_still_no_medication(study: Study) -> None:
    empty = {"resourceType": "Medication", "id": "blank", "status": "active"}
    r = statement("s8", None, [dosage({"doseQuantity": mg(5)}, timing=daily())],
                  medicationReference={"reference": "Medication/blank"})
    _, log = run(study, [r, empty])
    assert [(q.id, q.rule) for q in log.quarantine] == [("s8", "no-medication")]


def test_scd_code_tablets_bid(study: Study) -> None:
    r = statement("s4", cc("312617", "predniSONE 5 MG Oral Tablet"),
                  [dosage({"doseQuantity": mg(2, "{tbl}")}, timing={"code": cc("BID", system=GTS)})])
    (c,), _ = run(study, [r])
    assert (c.dose, c.frequency_per_day, c.daily_dose_mg) == (10.0, 2.0, 20.0)


def test_drug_recognised_by_text_only(study: Study) -> None:
    r = statement("s5", {"text": "Methylprednisolone 4mg tablets"}, [dosage({"doseQuantity": mg(8)}, timing=daily())])
    (c,), _ = run(study, [r])
    assert (c.drug, c.rxnorm, c.drug_class, c.daily_dose_mg) == ("methylprednisolone", "6902", "glucocorticoid", 8.0)


def test_unknown_drug_is_kept_as_other(study: Study) -> None:
    r = statement("s6", cc("310965", "Ibuprofen 200 MG Oral Tablet"), [dosage({"doseQuantity": mg(1, "{tbl}")},
                                                                               timing=daily())])
    (c,), log = run(study, [r])
    # the RxNorm clinical drug name gives the ingredient, the tablet strength and the route
    assert (c.drug, c.rxnorm, c.drug_class, c.dose, c.dose_unit, c.daily_dose_mg, c.route) == (
        "ibuprofen", "310965", "other", 200.0, "mg", 200.0, "oral")
    assert not log.quarantine and log.counts["medications.other-drug"] == 1
    r = statement("s6", cc("999999", "Unlisted Oral Product"), [dosage({"doseQuantity": mg(1, "{tbl}")},
                                                                       timing=daily())])
    (c,), log = run(study, [r])
    assert (c.drug, c.drug_class, c.dose, c.dose_unit, c.daily_dose_mg) == (
        "unlisted oral product", "other", 1.0, "{tbl}", None)
    assert not log.quarantine and log.counts["medications.dose-not-mg"] == 1


def test_lymphodepleting_agents_are_not_cm(study: Study) -> None:
    r = statement("s7", cc("24698", "fludarabine"), [dosage({"doseQuantity": mg(50)}, timing=daily(), route=IV)])
    cms, log = run(study, [r])
    assert cms == [] and log.counts["medications.study-treatment"] == 1


def test_site_local_code_with_strength(study: Study) -> None:
    from fhir_adapter.mapping.medications.settings import DrugCode, MedicationSettings

    base = study.rule("medications", MedicationSettings)
    pred = base.drugs["prednisolone"].model_copy(update={
        "codes": (DrugCode(code="local|PRED25", strength_mg=2.5, route="oral"),)})
    settings = base.model_copy(update={
        "code_systems": {**base.code_systems, "local": "https://pharmacy.example.org/formulary"},
        "drugs": {**base.drugs, "prednisolone": pred}})
    r = statement("s8", cc("PRED25", "Prednisolon 2,5 mg", system="https://pharmacy.example.org/formulary"),
                  [dosage({"doseQuantity": mg(2, "{tbl}")}, timing=daily(), route=None)])
    assert r4_problem(r) is None
    log = RunLog()
    (c,) = MedicationMapper(study, log, settings).map([r], "T-001")
    assert (c.drug, c.rxnorm, c.daily_dose_mg, c.route) == ("prednisolone", "8638", 5.0, "oral")


# -- doses -------------------------------------------------------------------------------------------
def test_dose_range_takes_the_high_end(study: Study) -> None:
    r = statement("s9", PRED, [dosage({"doseRange": {"low": mg(10), "high": mg(20)}}, timing=daily())])
    (c,), _ = run(study, [r])
    assert (c.dose, c.daily_dose_mg) == (20.0, 20.0)


def test_continuous_rate_gives_mg_per_day(study: Study) -> None:
    rate = {"value": 2, "unit": "mg/h", "system": UCUM, "code": "mg/h"}
    r = statement("s10", cc("3264", "dexamethasone"), [dosage({"rateQuantity": rate}, route=IV)])
    (c,), _ = run(study, [r])
    assert (c.dose, c.dose_unit, c.frequency_per_day, c.daily_dose_mg) == (2.0, "mg/h", None, 48.0)


def test_rate_with_duration_and_frequency(study: Study) -> None:
    rate = {"value": 250, "unit": "mg/h", "system": UCUM, "code": "mg/h"}
    timing = daily(duration=2, durationUnit="h")
    r = statement("s11", cc("6902", "methylprednisolone"), [dosage({"rateQuantity": rate}, timing=timing, route=IV)])
    (c,), _ = run(study, [r])
    assert (c.frequency_per_day, c.daily_dose_mg) == (1.0, 500.0)


def test_glucocorticoid_dose_not_in_mg_is_quarantined(study: Study) -> None:
    r = statement("s12", PRED, [dosage({"doseQuantity": mg(1, "{tbl}")}, timing=daily())])
    (c,), log = run(study, [r])
    (q,) = log.quarantine
    assert (q.resource_type, q.id, q.rule) == ("MedicationStatement", "s12", "dose-not-mg")
    assert "strength" in q.reason and "strength_mg" in q.fix
    # the record stays, without a dose: the drug was taken, in a dose nobody can read
    assert (c.drug, c.start_date, c.dose, c.daily_dose_mg, c.source.id) == ("prednisone", dt.date(2024, 1, 10),
                                                                            None, None, "s12")


def test_glucocorticoid_without_timing_is_quarantined(study: Study) -> None:
    (c,), log = run(study, [statement("s13", PRED, [dosage({"doseQuantity": mg(10)})])])
    assert log.quarantine[0].rule == "dose-not-mg" and "timing" in log.quarantine[0].reason
    assert c.daily_dose_mg is None


@pytest.mark.parametrize("dose", [mg(10, "MG"), mg(2, "TAB")])
def test_a_quarantined_glucocorticoid_dose_is_not_evaluable_never_0(study: Study, dose: dict[str, Any]) -> None:
    """docs/clinical-rules.md#glucocorticoid-daily-dose: a record whose dose cannot be worked out makes the dose
    on its dates not evaluable — never 0. Quarantined and dropped, it had left an older stopped course as the
    evidence of 0 mg/day, and LLDAS met on prednisone in an unreadable dose ('MG' as some EHRs write it, a
    tablet count without the tablet's strength)."""
    from fhir_adapter.derive.glucocorticoids import GlucocorticoidSettings, pred_eq_on

    old = statement("s20", PRED, [dosage({"doseQuantity": mg(5)}, timing=daily())], status="completed",
                    start="2023-10-01", end="2023-12-31")
    now = statement("s21", PRED, [dosage({"doseQuantity": dose}, timing=daily())], start="2024-01-10")
    cms, log = run(study, [old, now])
    assert [q.id for q in log.quarantine] == ["s21"]
    got = pred_eq_on(cms, dt.date(2024, 2, 1), study.rule("glucocorticoids", GlucocorticoidSettings))
    assert got.mg_per_day is None and "MedicationStatement/s21" in (got.reason or "")


# -- timings -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("timing", "per_day"), [
    ({"repeat": {"frequency": 1, "period": 2, "periodUnit": "d"}}, 0.5),
    ({"code": {"coding": [{"system": GTS, "code": "QOD"}]}}, 0.5),
    ({"code": {"coding": [{"system": GTS, "code": "QD"}]}}, 1.0),
    ({"code": {"coding": [{"system": GTS, "code": "TID"}]}}, 3.0),
    ({"code": {"coding": [{"system": GTS, "code": "QID"}]}}, 4.0),
    ({"code": {"coding": [{"system": GTS, "code": "AM"}]}}, 1.0),
    ({"code": {"coding": [{"system": GTS, "code": "Q4H"}]}}, 6.0),
    ({"code": {"coding": [{"system": GTS, "code": "WK"}]}}, 0.142857142857),
    ({"repeat": {"frequency": 2, "frequencyMax": 3, "period": 1, "periodUnit": "d"}}, 3.0),
    ({"repeat": {"frequency": 1, "period": 8, "periodUnit": "h"}}, 3.0),
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}}, 1 / 7),
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "mo"}}, 1 / 30),
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "a"}}, 1 / 365),
    ({"repeat": {"timeOfDay": ["08:00:00", "20:00:00"]}}, 2.0),
    ({"repeat": {"when": ["MORN", "EVE"]}}, 2.0),
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "dayOfWeek": ["mon", "wed", "fri"]}}, 3 / 7),
    ({"repeat": {"period": 1, "periodUnit": "wk", "dayOfWeek": ["mon", "thu"]}}, 2 / 7),
])
def test_timing_forms(study: Study, timing: dict[str, Any], per_day: float) -> None:
    r = statement("t1", PRED, [dosage({"doseQuantity": mg(20)}, timing=timing)])
    (c,), _ = run(study, [r])
    assert c.frequency_per_day == pytest.approx(per_day)
    assert c.daily_dose_mg == pytest.approx(20 * per_day)


@pytest.mark.parametrize(("timing", "hours"), [
    ({"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}}, 6.0),
    ({"repeat": {"period": 12, "periodUnit": "h"}}, 12.0),
    ({"code": {"coding": [{"system": GTS, "code": "Q4H"}]}}, 4.0),
    ({"code": {"text": "q8h"}}, 8.0),
    ({"repeat": {"frequency": 4, "period": 1, "periodUnit": "d"}}, None),  # QID: a count, not an interval
    ({"repeat": {"frequency": 2, "period": 12, "periodUnit": "h"}}, None),
    ({"repeat": {"frequency": 1, "period": 4, "periodMax": 6, "periodUnit": "h"}}, None),
    ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}, None),  # QD, not Q24H
    ({"repeat": {"frequency": 1, "period": 240, "periodUnit": "min"}}, 4.0),
    ({"code": {"coding": [{"system": GTS, "code": "QID"}]}}, None),
])
def test_a_fixed_interval_is_kept_beside_the_count(study: Study, timing: dict[str, Any], hours: float | None) -> None:
    r = statement("t1", PRED, [dosage({"doseQuantity": mg(20)}, timing=timing)])
    (c,), _ = run(study, [r])
    assert c.interval_hours == hours


def test_prednisone_every_other_day_is_10_mg_per_day(study: Study) -> None:
    timing = {"repeat": {"frequency": 1, "period": 2, "periodUnit": "d"}}
    (c,), _ = run(study, [statement("t2", PRED, [dosage({"doseQuantity": mg(20)}, timing=timing)])])
    assert (c.dose, c.frequency_per_day, c.daily_dose_mg) == (20.0, 0.5, 10.0)


# -- several dosage lines ----------------------------------------------------------------------------
def test_taper_by_sequence_gives_consecutive_steps(study: Study) -> None:
    steps = [dosage({"doseQuantity": mg(dose)}, sequence=i + 1,
                    timing=daily(boundsDuration={"value": 7, "unit": "d", "system": UCUM, "code": "d"}))
             for i, dose in enumerate((20, 15, 10, 7.5))]
    cms, _ = run(study, [statement("p1", PRED, steps, start="2024-03-01")])
    assert [(c.daily_dose_mg, c.start_date, c.end_date) for c in cms] == [
        (20.0, dt.date(2024, 3, 1), dt.date(2024, 3, 7)),
        (15.0, dt.date(2024, 3, 8), dt.date(2024, 3, 14)),
        (10.0, dt.date(2024, 3, 15), dt.date(2024, 3, 21)),
        (7.5, dt.date(2024, 3, 22), dt.date(2024, 3, 28)),
    ]


def test_taper_last_step_runs_to_the_resource_end(study: Study) -> None:
    steps = [dosage({"doseQuantity": mg(10)}, sequence=1,
                    timing=daily(boundsPeriod={"start": "2024-03-01", "end": "2024-03-10"})),
             dosage({"doseQuantity": mg(5)}, sequence=2, timing=daily())]
    cms, _ = run(study, [statement("p2", PRED, steps, start="2024-03-01", end="2024-04-30")])
    assert [(c.daily_dose_mg, c.start_date, c.end_date) for c in cms] == [
        (10.0, dt.date(2024, 3, 1), dt.date(2024, 3, 10)), (5.0, dt.date(2024, 3, 11), dt.date(2024, 4, 30))]


def test_same_sequence_lines_are_concurrent(study: Study) -> None:
    am = dosage({"doseQuantity": mg(20)}, sequence=1, timing={"code": cc("AM", system=GTS)})
    pm = dosage({"doseQuantity": mg(10)}, sequence=1, timing={"code": cc("PM", system=GTS)})
    cms, _ = run(study, [statement("h1", cc("5492", "hydrocortisone"), [am, pm], start="2024-01-01")])
    assert sorted(c.daily_dose_mg or 0 for c in cms) == [10.0, 20.0]
    assert {c.start_date for c in cms} == {dt.date(2024, 1, 1)} and {c.end_date for c in cms} == {None}


def test_topical_glucocorticoid_is_not_systemic_and_never_quarantined(study: Study) -> None:
    topical = {"coding": [{"system": SCT, "code": "6064005", "display": "Topical route"}]}
    r = statement("c1", cc("10759", "triamcinolone"), [dosage({"doseQuantity": {"value": 1, "unit": "application"}},
                                                              timing={"code": cc("BID", system=GTS)}, route=topical)])
    (c,), log = run(study, [r])
    assert (c.drug, c.route, c.systemic, c.daily_dose_mg, c.frequency_per_day) == (
        "triamcinolone", "topical", False, None, 2.0)
    assert not log.quarantine


def test_route_from_text(study: Study) -> None:
    r = statement("c2", cc("5521"), [dosage({"doseQuantity": mg(200)}, timing=daily(), route={"text": "by mouth"})])
    (c,), _ = run(study, [r])
    assert (c.route, c.systemic) == ("oral", True)


# -- statuses, dates, versions -----------------------------------------------------------------------
@pytest.mark.parametrize("status", ["entered-in-error", "intended"])
def test_unused_statement_statuses_are_counted(study: Study, status: str) -> None:
    cms, log = run(study, [statement("x", PRED, [dosage({"doseQuantity": mg(5)}, timing=daily())], status=status)])
    assert cms == [] and log.counts[f"medications.not-used.{status}"] == 1 and not log.quarantine


def test_not_taken_statement_is_kept_as_evidence_without_a_dose(study: Study) -> None:
    cms, log = run(study, [statement("x", PRED, [], status="not-taken")])
    assert [(c.drug, c.status, c.daily_dose_mg) for c in cms] == [("prednisone", "not-taken", None)]
    assert log.counts["medications.evidence.not-taken"] == 1 and not log.quarantine


@pytest.mark.parametrize("status", ["cancelled", "draft"])
def test_unused_request_statuses_are_counted(study: Study, status: str) -> None:
    r = {"resourceType": "MedicationRequest", "id": "x", "status": status, "intent": "order",
         "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": PRED, "authoredOn": "2024-01-05"}
    cms, log = run(study, [r])
    assert cms == [] and log.counts[f"medications.not-used.{status}"] == 1


@pytest.mark.parametrize("status", ["stopped", "completed", "on-hold"])
def test_used_statuses(study: Study, status: str) -> None:
    (c,), _ = run(study, [statement("x", PRED, [dosage({"doseQuantity": mg(5)}, timing=daily())], status=status)])
    assert c.status == status


def test_partial_start_date_is_kept_partial(study: Study) -> None:
    (c,), _ = run(study, [statement("x", PRED, [dosage({"doseQuantity": mg(5)}, timing=daily())],
                                    start="2023-06", end="2024-01-15")])
    assert (c.start_date, c.partial_start, c.end_date, c.partial_end) == (None, "2023-06", dt.date(2024, 1, 15), None)


def test_missing_date_is_quarantined(study: Study) -> None:
    cms, log = run(study, [statement("x", PRED, [dosage({"doseQuantity": mg(5)}, timing=daily())], start=None)])
    assert cms == [] and log.quarantine[0].rule == "missing-date"


def test_latest_version_wins(study: Study) -> None:
    v1 = statement("v", PRED, [dosage({"doseQuantity": mg(5)}, timing=daily())], meta={"versionId": "1"})
    v2 = statement("v", PRED, [dosage({"doseQuantity": mg(7.5)}, timing=daily())], meta={"versionId": "2"})
    (c,), _ = run(study, [v2, v1])
    assert (c.daily_dose_mg, c.source.reference) == (7.5, "MedicationStatement/v/_history/2")


# -- the mapping file ----------------------------------------------------------------------------------
def test_unknown_code_system_alias_is_a_load_error_with_its_line(tmp_path: Path) -> None:
    import shutil
    from pathlib import Path

    from fhir_adapter.study.load import load_study
    from fhir_adapter.study.yamlfile import MappingError

    root = Path(__file__).resolve().parents[2] / "mappings" / "lcar-aio"
    shutil.copytree(root, tmp_path / "s")
    path = tmp_path / "s" / "medications.yaml"
    path.write_text(path.read_text().replace('"rxnorm|312617"', '"pharmacy|312617"'))
    with pytest.raises(MappingError) as exc:
        load_study(tmp_path / "s")
    assert "medications.yaml" in str(exc.value) and "pharmacy|312617" in str(exc.value)


def test_a_record_kept_without_its_dose_keeps_its_dates_and_route(study: Study) -> None:
    """The undosed record spans what the dosed one would: the dosage line's boundsDuration (5 days, not for
    ever after), and an administration's route from its dosage object (intravenous: systemic)."""
    five_days = {"value": 5, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"}
    r = statement("s1", PRED, [dosage({"doseQuantity": mg(2, "{tbl}")}, timing=daily(boundsDuration=five_days))])
    (c,), _ = run(study, [r])
    assert (c.start_date, c.end_date, c.daily_dose_mg) == (dt.date(2024, 1, 10), dt.date(2024, 1, 14), None)
    given = {"resourceType": "MedicationAdministration", "id": "a1", "status": "completed",
             "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": PRED,
             "effectiveDateTime": "2024-01-10T08:00:00Z", "dosage": {"route": IV, "dose": mg(2, "{tbl}")}}
    (c,), log = run(study, [given])
    assert (c.start_date, c.route, c.systemic) == (dt.date(2024, 1, 10), "intravenous", True)
    assert "medications.unknown-route" not in log.counts


def test_a_dose_resting_on_an_assumption_is_said(study: Study) -> None:
    """docs/clinical-rules.md#glucocorticoid-daily-dose: a completed statement with no end date counts as ongoing,
    an as-needed dose as taken every day — counted on the side that does not understate the dose, and said."""
    done = statement("s30", PRED, [dosage({"doseQuantity": mg(10)}, timing=daily())], status="completed")
    prn = statement("s31", PRED, [dosage({"doseQuantity": mg(5)}, timing=daily(), asNeededBoolean=True)])
    dated = statement("s32", PRED, [dosage({"doseQuantity": mg(5)}, timing=daily())], status="completed",
                      end="2024-02-01")
    cms, log = run(study, [done, prn, dated])
    assert len(cms) == 3
    # CMDOSFRQ: an as-needed line is PRN, however often it may be taken (its daily dose still counts in full)
    assert {c.source.id: (c.as_needed, c.daily_dose_mg) for c in cms} == {
        "s30": (False, 10.0), "s31": (True, 5.0), "s32": (False, 5.0)}
    assert sorted((w["rule"], w["resource"]) for w in log.warnings) == [
        ("medication-as-needed", "MedicationStatement/s31"), ("medication-no-end-date", "MedicationStatement/s30")]


def test_an_order_stopped_with_no_end_date_is_told_the_element_an_order_has(study: Study) -> None:
    """The fix of ``medication-no-end-date`` names an element of the record's own type: an order has no
    effectivePeriod (R4 rejects it); following the fix ends the order and the warning."""
    order = {"resourceType": "MedicationRequest", "id": "r40", "status": "stopped", "intent": "order",
             "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": PRED, "authoredOn": "2024-01-05",
             "dosageInstruction": [dosage({"doseQuantity": mg(20)}, timing=daily())]}
    (c,), log = run(study, [order])
    [said] = log.warnings
    assert (said["rule"], c.end_date) == ("medication-no-end-date", None)
    assert said["fix"].startswith("send the date the medication stopped (dispenseRequest.validityPeriod.end")
    fixed = {**order, "dispenseRequest": {"validityPeriod": {"end": "2024-01-20"}}}  # run() checks it is R4
    (c,), log = run(study, [fixed])
    assert (c.end_date, log.warnings) == (dt.date(2024, 1, 20), [])


@pytest.mark.parametrize(("dose", "repeat", "why"), [
    (mg(-7.5), {}, "-7.5 mg is not a dose"), (mg(1e308), {}, "1e+308 mg/d is above the 5000 mg/day"),
    (mg(7500), {}, "above the 5000 mg/day"), (mg(7.5), {"period": 0}, "timing.repeat.period is 0")])
def test_a_dose_that_is_not_a_dose_leaves_the_drug_on_record_without_one(
        study: Study, dose: dict[str, Any], repeat: dict[str, Any], why: str) -> None:
    """docs/clinical-rules.md#dose-plausibility: quarantined, and the prednisone stays on record undosed, so its
    dates have no dose (LLDAS criterion 4 not assessable) instead of -7.5 mg/day lowering the sum."""
    (c,), log = run(study, [statement("s", PRED, [dosage({"doseQuantity": dose}, timing=daily(**repeat))])])
    assert c.daily_dose_mg is None and c.start_date == dt.date(2024, 1, 10)
    (q,) = log.quarantine
    assert (q.rule, q.id) == ("implausible-dose", "s") and why in q.reason, q.reason


def test_a_status_outside_r4_is_quarantined_and_keeps_the_drug_undosed(study: Study) -> None:
    """'taking' is no MedicationStatement status: whether the drug was taken cannot be told, so the record is
    quarantined (unknown-status) and the prednisone's dates have no dose, rather than the other records' sum."""
    (c,), log = run(study, [statement("s", PRED, [dosage({"doseQuantity": mg(5)}, timing=daily())],
                                      status="taking")])
    assert c.daily_dose_mg is None
    assert [(q.rule, q.id) for q in log.quarantine] == [("unknown-status", "s")]


def test_a_lymphodepleting_record_with_no_r4_status_is_quarantined_by_whoever_reads_it(study: Study) -> None:
    """Cyclophosphamide (lymphodepletion) with status 'given': an administration is EX's to quarantine
    (mapping/exposure.py), so CM leaves it; a dispense, which EX does not read, CM quarantines — never neither."""
    cyclo = cc("3002", "cyclophosphamide")
    administration = {"resourceType": "MedicationAdministration", "id": "ma", "status": "given",
                      "medicationCodeableConcept": cyclo, "subject": {"reference": "Patient/p1"},
                      "effectiveDateTime": "2024-01-28"}
    dispense = {"resourceType": "MedicationDispense", "id": "md", "status": "given",
                "medicationCodeableConcept": cyclo, "subject": {"reference": "Patient/p1"},
                "whenHandedOver": "2024-01-27"}
    _, log = run(study, [administration, dispense])
    assert [(q.rule, q.id) for q in log.quarantine] == [("unknown-status", "md")]
