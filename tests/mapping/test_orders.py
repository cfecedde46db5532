"""Orders are where real EHRs keep doses: MedicationRequest.dosageInstruction → daily glucocorticoid dose.

Shaped like the orders of Synthea-generated records (``doseQuantity`` a bare count, no unit; timing
frequency/period; no route; the RxNorm clinical drug as the only coding). RxNorm codes and names used:
312617 predniSONE 5 MG Oral Tablet, 198145 predniSONE 10 MG Oral Tablet, 259966 methylPREDNISolone 4 MG Oral
Tablet, 197582 dexAMETHasone 4 MG Oral Tablet (sources listed in mappings/lcar-aio/medications.yaml), 102858
prednisolone 5 MG Oral Tablet [Stintisone] (an RxNorm SBD that the mapping does not list: read from its name).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fhir_adapter.crf.models import ConMed
from fhir_adapter.derive.glucocorticoids import GlucocorticoidSettings, pred_eq_on
from fhir_adapter.fhir.r4 import r4_problem
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.medications.mapper import MedicationMapper
from fhir_adapter.study.load import Study

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"


def order(id_: str, code: str, display: str, count: float | None, *, frequency: int = 1, period: float = 1,
          weeks: int | None = 4, authored: str = "2024-01-10T09:30:00+00:00", status: str = "active",
          intent: str = "order", unit: dict[str, Any] | None = None) -> dict[str, Any]:
    dose: dict[str, Any] = {"value": count, **(unit or {})}
    r: dict[str, Any] = {
        "resourceType": "MedicationRequest", "id": id_, "status": status, "intent": intent,
        "subject": {"reference": "Patient/p1"}, "authoredOn": authored,
        "medicationCodeableConcept": {"coding": [{"system": RX, "code": code, "display": display}]},
        "dosageInstruction": [{"sequence": 1,
                               "timing": {"repeat": {"frequency": frequency, "period": period, "periodUnit": "d"}},
                               **({"doseAndRate": [{"doseQuantity": dose}]} if count is not None else {})}],
    }
    if weeks is not None:
        r["dispenseRequest"] = {"expectedSupplyDuration": {"value": weeks, "unit": "weeks",
                                                           "system": "http://unitsofmeasure.org", "code": "wk"}}
    return r


def mapped(study: Study, resources: list[dict[str, Any]]) -> tuple[list[ConMed], RunLog]:
    for r in resources:
        assert r4_problem(r) is None
    log = RunLog()
    return MedicationMapper(study, log).map(resources, "T-001"), log


@pytest.mark.parametrize(("code", "display", "count", "frequency", "period", "drug", "daily", "pred_eq"), [
    ("312617", "predniSONE 5 MG Oral Tablet", 1, 1, 1, "prednisone", 5.0, 5.0),
    ("312617", "predniSONE 5 MG Oral Tablet", 2, 2, 1, "prednisone", 20.0, 20.0),
    ("198145", "predniSONE 10 MG Oral Tablet", 2, 1, 2, "prednisone", 10.0, 10.0),      # 20 mg every other day
    ("259966", "methylPREDNISolone 4 MG Oral Tablet", 1, 1, 1, "methylprednisolone", 4.0, 5.0),
    ("197582", "dexAMETHasone 4 MG Oral Tablet", 0.5, 1, 1, "dexamethasone", 2.0, 13.34),
    ("102858", "prednisolone 5 MG Oral Tablet [Stintisone]", 1.5, 1, 1, "prednisolone", 7.5, 7.5),
])
def test_order_dose_is_count_times_strength_times_frequency(study: Study, code: str, display: str, count: float,
                                                            frequency: int, period: int, drug: str,
                                                            daily: float, pred_eq: float) -> None:
    (c,), log = mapped(study, [order("o1", code, display, count, frequency=frequency, period=period)])
    assert (c.drug, c.drug_class, c.source_kind, c.daily_dose_mg) == (drug, "glucocorticoid", "request", daily)
    assert (c.route, c.systemic) == ("oral", True)                  # from the dose form "Oral Tablet"
    assert (c.start_date, c.end_date) == (dt.date(2024, 1, 10), dt.date(2024, 2, 6))  # 4 weeks of supply
    assert not log.quarantine
    gc = study.rule("glucocorticoids", GlucocorticoidSettings)
    assert pred_eq_on([c], dt.date(2024, 1, 20), gc).mg_per_day == pred_eq
    assert pred_eq_on([c], dt.date(2024, 2, 7), gc).mg_per_day is None  # order over, no evidence of 0


def test_strength_from_the_medication_resource(study: Study) -> None:
    r = order("o2", "000000", "local steroid", 3)
    del r["medicationCodeableConcept"]
    r["medicationReference"] = {"reference": "#m"}
    r["contained"] = [{"resourceType": "Medication", "id": "m", "code": {"text": "prednisolone tablets"},
                       "ingredient": [{"itemCodeableConcept": {"text": "prednisolone"},
                                       "strength": {"numerator": {"value": 2.5, "unit": "mg",
                                                                  "system": "http://unitsofmeasure.org",
                                                                  "code": "mg"},
                                                    "denominator": {"value": 1, "unit": "tablet"}}}]}]
    (c,), _ = mapped(study, [r])
    assert (c.drug, c.daily_dose_mg) == ("prednisolone", 7.5)


def test_an_order_whose_dose_cannot_be_worked_out_is_quarantined(study: Study) -> None:
    # a concentration is not a tablet strength: "1" of it is no dose in mg
    # quarantined with the reason, and never read as 0: kept without a dose, the order makes the dose on its
    # dates not evaluable
    gc = study.rule("glucocorticoids", GlucocorticoidSettings)
    cms, log = mapped(study, [order("o3", "000001", "prednisolone 3 MG/ML Oral Solution", 1)])
    assert [c.daily_dose_mg for c in cms] == [None] and [q.rule for q in log.quarantine] == ["dose-not-mg"]
    assert cms[0].start_date is not None and pred_eq_on(cms, cms[0].start_date, gc).mg_per_day is None
    cms, log = mapped(study, [order("o4", "312617", "predniSONE 5 MG Oral Tablet", None)])
    assert [c.daily_dose_mg for c in cms] == [None] and [q.rule for q in log.quarantine] == ["dose-not-mg"]


def test_only_orders_count_and_statements_beat_orders(study: Study) -> None:
    cms, log = mapped(study, [order("p1", "312617", "predniSONE 5 MG Oral Tablet", 4, intent="plan")])
    assert cms == [] and log.counts["medications.not-used.intent-plan"] == 1
    statement = {"resourceType": "MedicationStatement", "id": "s1", "status": "active",
                 "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2024-01-15"},
                 "medicationCodeableConcept": {"coding": [{"system": RX, "code": "8640", "display": "prednisone"}]},
                 "dosage": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                             "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg",
                                                               "system": "http://unitsofmeasure.org",
                                                               "code": "mg"}}]}]}
    cms, _ = mapped(study, [order("o5", "312617", "predniSONE 5 MG Oral Tablet", 4), statement])
    gc = study.rule("glucocorticoids", GlucocorticoidSettings)
    assert pred_eq_on(cms, dt.date(2024, 1, 12), gc).mg_per_day == 20     # the order alone
    taken = pred_eq_on(cms, dt.date(2024, 1, 20), gc)
    assert (taken.mg_per_day, taken.sources) == (5, ["MedicationStatement/s1"])  # what was taken wins
