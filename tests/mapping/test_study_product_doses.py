"""A study product given more than once (study.yaml ``repeated_doses: true``): Day 1 is the first dose without
a warning, EX holds every dose, and the product's administrations never become concomitant medications."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from fhir_adapter.crf.models import SourceRef
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.mapping.exposure import map_exposure, without_study_product
from fhir_adapter.roster.day1 import with_day1
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.study.load import Study

PRODUCT = {"coding": [{"system": "https://hospital.example.org/pharmacy/product-code", "code": "DRUG-X"}]}


def _study(study: Study, repeated: bool) -> Study:
    info = study.info.model_copy(update={"product_name": "drug X", "repeated_doses": repeated})
    codes = frozenset({("https://hospital.example.org/pharmacy/product-code", "DRUG-X")})
    return dataclasses.replace(study, info=info, infusion_codes=frozenset(), infusion_medication_codes=codes)


def _dose(rid: str, day: str, status: str = "completed") -> dict[str, Any]:
    return {"resourceType": "MedicationAdministration", "id": rid, "status": status,
            "medicationCodeableConcept": PRODUCT, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": f"{day}T10:00:00+01:00",
            "dosage": {"dose": {"value": 500, "unit": "mg", "code": "mg", "system": "http://unitsofmeasure.org"}}}


RESOURCES = [
    _dose("d3", "2025-03-03"), _dose("d1", "2025-01-06"), _dose("d2", "2025-02-03"),
    _dose("d-err", "2025-02-10", status="entered-in-error"),
    {"resourceType": "MedicationStatement", "id": "pred", "status": "active",
     "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                               "code": "8640"}]},
     "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2024-12-01"}},
]


def _enrollee() -> Enrollee:
    return Enrollee(subject_id="101-001", patient_id="p1", research_subject=SourceRef(resource_type="ResearchSubject",
                    id="rs1"), status="on-study", arm="TRT", consent_date=dt.date(2024, 12, 1), site="101",
                    sex="female", birth_date=dt.date(1990, 1, 1))


def test_day1_is_the_first_dose_and_warns_only_for_a_single_dose_product(study: Study) -> None:
    for repeated, warnings in ((True, 0), (False, 1)):
        log = RunLog()
        e = with_day1(_enrollee(), RESOURCES, _study(study, repeated), log)
        assert e.day1 == dt.date(2025, 1, 6) and e.infusion is not None and e.infusion.id == "d1"
        assert len([w for w in log.warnings if w.get("rule") == "day1"]) == warnings


def test_every_given_dose_is_in_ex_and_none_in_cm(study: Study) -> None:
    s = _study(study, repeated=True)
    log = RunLog()
    e = with_day1(_enrollee(), RESOURCES, s, log)
    ex = map_exposure(e, RESOURCES, s, log)
    assert [(x.source.id, x.study_day, x.dose, x.treatment) for x in ex] == [
        ("d1", 1, 500, "drug X"), ("d2", 29, 500, "drug X"), ("d3", 57, 500, "drug X")]
    assert [r["id"] for r in without_study_product(RESOURCES, s)] == ["pred"]
    single = _study(study, repeated=False)
    assert [x.source.id for x in map_exposure(with_day1(_enrollee(), RESOURCES, single, log), RESOURCES, single,
                                              log)] == ["d1"]


def test_a_dose_whose_status_is_no_r4_code_is_quarantined_once_and_dates_nothing(study: Study) -> None:
    """'given' is no MedicationAdministration status: the first dose with it was Day 1 and the infusion's EX row
    while the run quarantined it too (review finding); now it is quarantined once and the next dose is Day 1."""
    for repeated in (True, False):
        s, log = _study(study, repeated), RunLog()
        resources = [_dose("d0", "2024-12-20", status="given"), *RESOURCES]
        e = with_day1(_enrollee(), resources, s, log)
        ex = map_exposure(e, resources, s, log)
        assert e.day1 == dt.date(2025, 1, 6) and e.infusion is not None and e.infusion.id == "d1"
        assert "d0" not in {x.source.id for x in ex}
        assert [(q.rule, q.id) for q in log.quarantine] == [("unknown-status", "d0")]
