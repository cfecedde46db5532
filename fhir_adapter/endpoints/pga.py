"""Physician's Global Assessment per visit (:mod:`fhir_adapter.derive.pga`).

Per visit: ``pga``, ``pga_change``. The PGA is a clinician entry already in the EHR: nothing is written back.
"""

from __future__ import annotations

from typing import Annotated, TypedDict

from pydantic import BaseModel, Field

from fhir_adapter.derive.baseline import BaselineSource, item_with_baseline
from fhir_adapter.derive.pga import PgaSettings, PgaVisit, derive_pga
from fhir_adapter.endpoints.registry import CheckInput, Contracts, Endpoint, SubjectInput, Unit, check_items


class PgaVisitKeys(TypedDict):
    pga: Annotated[float | None, Unit("{score}")]
    pga_change: Annotated[float | None, Unit("{score}")]


class PgaResult(BaseModel):
    visits: list[PgaVisit]
    baselines: list[BaselineSource] = Field(default_factory=list, description="a baseline from no visit")

    def visit(self, visit: str) -> PgaVisit | None:
        return next((v for v in self.visits if v.visit == visit), None)


def derive(x: SubjectInput) -> PgaResult:
    s = x.rules(PgaSettings)
    source = item_with_baseline(x.crf, s.item, ndigits=s.decimals, decimals=s.decimals)[1]
    return PgaResult(visits=derive_pga(x.crf, s), baselines=[source] if source else [])


def visit_keys(r: PgaResult, visit: str) -> PgaVisitKeys:
    p = r.visit(visit)
    return {"pga": p.pga if p else None, "pga_change": p.change if p else None}


def check(c: CheckInput) -> PgaSettings:
    s = c.settings
    assert isinstance(s, PgaSettings)
    check_items(c, [(("item",), s.item)])
    return s


ENDPOINT = Endpoint(
    name="pga", settings=PgaSettings, result=PgaResult,
    summary="PGA (0-3) and change from baseline per visit",
    derive=derive, visit_keys=visit_keys, check=check, contracts=Contracts(visit=PgaVisitKeys),
)
