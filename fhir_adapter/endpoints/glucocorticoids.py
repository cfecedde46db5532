"""Prednisolone-equivalent daily dose (:mod:`fhir_adapter.derive.glucocorticoids`).

Per visit: ``pred_eq_mg_per_day``. Per subject: ``glucocorticoid_series`` (change points of the daily dose).
Write-back: ``pred-eq-daily-dose`` (``mg/d``) where the dose is evaluable. The CRF file and the exports show
each counted record's own prednisolone-equivalent daily dose (``ConMed.pred_eq_daily_mg``, ``annotate``).
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from pydantic import BaseModel

from fhir_adapter.crf.models import ConMed
from fhir_adapter.derive.glucocorticoids import (
    GlucocorticoidSeries,
    GlucocorticoidSettings,
    PredEqVisit,
    derive_pred_eq,
    glucocorticoid_series,
    record_pred_eq,
)
from fhir_adapter.endpoints.registry import Contracts, Endpoint, OutputInput, SubjectInput, Unit
from fhir_adapter.writeback.glucocorticoids import pred_eq_observation


class GlucocorticoidVisitKeys(TypedDict):
    pred_eq_mg_per_day: Annotated[float | None, Unit("mg/d")]


class GlucocorticoidSubjectKeys(TypedDict):
    glucocorticoid_series: dict[str, Any]


class GlucocorticoidResult(BaseModel):
    visits: list[PredEqVisit]
    series: GlucocorticoidSeries
    #: the subject's CM records with ``pred_eq_daily_mg`` set (copies; the CRF keeps the mapped records)
    flagged_cm: list[ConMed]

    def visit(self, visit: str) -> PredEqVisit | None:
        return next((v for v in self.visits if v.visit == visit), None)


def derive(x: SubjectInput) -> GlucocorticoidResult:
    s = x.rules(GlucocorticoidSettings)
    return GlucocorticoidResult(visits=derive_pred_eq(x.crf, s), series=glucocorticoid_series(x.crf, s),
                                flagged_cm=record_pred_eq(x.crf.cm, s))


def visit_keys(r: GlucocorticoidResult, visit: str) -> GlucocorticoidVisitKeys:
    d = r.visit(visit)
    return {"pred_eq_mg_per_day": d.mg_per_day if d else None}


def subject_keys(r: GlucocorticoidResult) -> GlucocorticoidSubjectKeys:
    return {"glucocorticoid_series": r.series.model_dump(mode="json")}


def observations(o: OutputInput) -> list[dict[str, Any]]:
    r: GlucocorticoidResult = o.result
    s = o.settings
    assert isinstance(s, GlucocorticoidSettings)
    return [pred_eq_observation(o.enrollee, o.study.info.id, v, s) for v in r.visits if v.mg_per_day is not None]


def annotate(r: GlucocorticoidResult) -> dict[str, Any]:
    """Each CM record with its prednisolone-equivalent daily dose (the CRF file and the exports)."""
    return {"cm": r.flagged_cm}


ENDPOINT = Endpoint(
    name="glucocorticoids", settings=GlucocorticoidSettings, result=GlucocorticoidResult,
    summary="prednisolone-equivalent daily dose per visit and over time",
    derive=derive, visit_keys=visit_keys, subject_keys=subject_keys, observations=observations,
    codes=("pred-eq-daily-dose",), annotate=annotate,
    contracts=Contracts(visit=GlucocorticoidVisitKeys, subject=GlucocorticoidSubjectKeys),
)
