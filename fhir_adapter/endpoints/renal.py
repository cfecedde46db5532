"""24-h urine protein, UPCR and the renal response (:mod:`fhir_adapter.derive.renal`).

Per visit: ``upcr_mg_mg``, ``upcr_change``, ``protein_24h_g``, ``protein_24h_change``. Per subject:
``renal_response`` (null when the setting is off). Write-back: ``renal-response`` at every graded visit.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from fhir_adapter.derive.renal import RenalResults, RenalSettings, derive_renal
from fhir_adapter.endpoints.registry import (
    CheckInput,
    Contracts,
    Endpoint,
    OutputInput,
    SubjectInput,
    Unit,
    check_items,
)
from fhir_adapter.writeback.renal import renal_response_observation


class RenalVisitKeys(TypedDict):
    upcr_mg_mg: Annotated[float | None, Unit("mg/mg")]
    upcr_change: Annotated[float | None, Unit("mg/mg")]
    protein_24h_g: Annotated[float | None, Unit("g/(24.h)")]
    protein_24h_change: Annotated[float | None, Unit("g/(24.h)")]


class RenalSubjectKeys(TypedDict):
    renal_response: dict[str, Any] | None


def derive(x: SubjectInput) -> RenalResults:
    return derive_renal(x.crf, x.rules(RenalSettings))


def visit_keys(r: RenalResults, visit: str) -> RenalVisitKeys:
    rn = next((x for x in r.visits if x.visit == visit), None)
    return {"upcr_mg_mg": rn.upcr if rn else None, "upcr_change": rn.upcr_change if rn else None,
            "protein_24h_g": rn.protein_24h if rn else None,
            "protein_24h_change": rn.protein_24h_change if rn else None}


def subject_keys(r: RenalResults) -> RenalSubjectKeys:
    return {"renal_response": r.response.model_dump(mode="json") if r.response else None}


def observations(o: OutputInput) -> list[dict[str, Any]]:
    r: RenalResults = o.result
    s = o.settings
    assert isinstance(s, RenalSettings)
    if r.response is None or r.response.measure is None:
        return []
    return [renal_response_observation(o.enrollee, o.study.info.id, r.response, v, s.response)
            for v in r.response.visits if v.response is not None]


def check(c: CheckInput) -> RenalSettings:
    s = c.settings
    assert isinstance(s, RenalSettings)
    check_items(c, [((k,), getattr(s, k)) for k in ("upcr_item", "protein_24h_item", "egfr_item")])
    return s


ENDPOINT = Endpoint(
    name="renal", settings=RenalSettings, result=RenalResults,
    summary="UPCR and 24-h urine protein per visit with change from baseline; renal response",
    derive=derive, visit_keys=visit_keys, subject_keys=subject_keys, observations=observations,
    codes=("renal-response",), check=check, contracts=Contracts(visit=RenalVisitKeys, subject=RenalSubjectKeys),
)
