"""Lupus Low Disease Activity State per visit and its response rate (:mod:`fhir_adapter.derive.lldas`);
needs SLEDAI-2K, PGA and the glucocorticoid dose.

Per visit: ``lldas`` (true/false/null), ``lldas_failed`` (criterion ids), ``lldas_reason`` (why null).
Study level: ``lldas_rate`` ({visit, n, responders, rate} per scheduled visit). Write-back: ``lldas`` where
evaluable, one component per criterion.
"""

from __future__ import annotations

from typing import Any, TypedDict

from pydantic import BaseModel

from fhir_adapter.derive.lldas import LldasSettings, LldasVisit, derive_lldas, lldas_rate
from fhir_adapter.derive.sledai2k import Sledai2kSettings, off_visit_assessments
from fhir_adapter.endpoints.glucocorticoids import GlucocorticoidResult
from fhir_adapter.endpoints.pga import PgaResult
from fhir_adapter.endpoints.registry import (
    CheckInput,
    Contracts,
    Endpoint,
    OutputInput,
    StudyInput,
    SubjectInput,
)
from fhir_adapter.endpoints.sledai2k import Sledai2kResult
from fhir_adapter.writeback.lldas import lldas_observation


class LldasVisitKeys(TypedDict):
    lldas: bool | None
    lldas_failed: list[str]
    lldas_reason: str | None


class LldasStudyKeys(TypedDict):
    lldas_rate: list[dict[str, Any]]


class LldasResult(BaseModel):
    visits: list[LldasVisit]

    def visit(self, visit: str) -> LldasVisit | None:
        return next((v for v in self.visits if v.visit == visit), None)


def derive(x: SubjectInput) -> LldasResult:
    sledai = x.need("sledai2k", Sledai2kResult)
    sledai_settings = x.study.rule("sledai2k", Sledai2kSettings)
    groups = {d.code: d.group for d in sledai_settings.descriptors}
    visits = derive_lldas(sledai.visits, x.need("pga", PgaResult).visits,
                          x.need("glucocorticoids", GlucocorticoidResult).visits, x.crf.day1, groups,
                          x.rules(LldasSettings), x.crf.cm, off_visit_assessments(x.crf, sledai_settings))
    return LldasResult(visits=visits)


def visit_keys(r: LldasResult, visit: str) -> LldasVisitKeys:
    ld = r.visit(visit)
    return {"lldas": ld.lldas if ld else None, "lldas_failed": list(ld.failed) if ld else [],
            "lldas_reason": ld.reason if ld else None}


def study_keys(x: StudyInput) -> LldasStudyKeys:
    """``lldas_rate`` from the subjects' visit rows."""
    pairs = [(v["visit"], v.get("lldas")) for s in x.rows for v in s.get("visits", [])]
    return {"lldas_rate": [r.model_dump() for r in lldas_rate(pairs, [v.id for v in x.study.schedule.visits])]}


def observations(o: OutputInput) -> list[dict[str, Any]]:
    r: LldasResult = o.result
    s = o.settings
    assert isinstance(s, LldasSettings)
    return [lldas_observation(o.enrollee, o.study.info.id, v, s) for v in r.visits if v.lldas is not None]


def check(c: CheckInput) -> LldasSettings:
    """The major organ groups are groups of sledai2k.yaml."""
    s, sledai = c.settings, c.rules.get("sledai2k")
    assert isinstance(s, LldasSettings) and isinstance(sledai, Sledai2kSettings)
    groups = {d.group for d in sledai.descriptors}
    for i, g in enumerate(s.major_organ_groups):
        if g not in groups:
            raise c.doc.error(("major_organ_groups", i), f"no SLEDAI-2K descriptor has group '{g}'",
                              f"use a `group` of sledai2k.yaml: {sorted(groups)}")
    return s


ENDPOINT = Endpoint(
    name="lldas", settings=LldasSettings, result=LldasResult, needs=("sledai2k", "pga", "glucocorticoids"),
    summary="LLDAS per visit and the LLDAS response rate",
    derive=derive, visit_keys=visit_keys, study_keys=study_keys, observations=observations,
    codes=("lldas",), check=check, contracts=Contracts(visit=LldasVisitKeys, study=LldasStudyKeys),
)
