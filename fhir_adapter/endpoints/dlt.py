"""Dose-limiting toxicities (:mod:`fhir_adapter.derive.dlt`).

Per subject: ``dlt`` (true/false/null), ``dlt_events`` ({source, term, rule, reason}), ``dlt_not_evaluable``
(reasons). Write-back: ``dlt`` where true or false, effective on the last day of the DLT window.
"""

from __future__ import annotations

from typing import Any, TypedDict

from fhir_adapter.derive.dlt import DltResult, DltSettings, derive_dlt
from fhir_adapter.endpoints.registry import Contracts, Endpoint, OutputInput, SubjectInput
from fhir_adapter.writeback.safety import dlt_observations


class DltSubjectKeys(TypedDict):
    dlt: bool | None
    dlt_events: list[dict[str, Any]]
    dlt_not_evaluable: list[str]
    dlt_pending: bool


def derive(x: SubjectInput) -> DltResult:
    return derive_dlt(x.crf, x.rules(DltSettings), x.study.info.timezone)


def subject_keys(r: DltResult) -> DltSubjectKeys:
    return {"dlt": r.dlt, "dlt_events": [e.model_dump(mode="json") for e in r.dlt_events],
            "dlt_not_evaluable": list(r.not_evaluable), "dlt_pending": r.pending}


def observations(o: OutputInput) -> list[dict[str, Any]]:
    s = o.settings
    assert isinstance(s, DltSettings)
    return dlt_observations(o.result, o.enrollee, o.study.info.id, s, o.day1)


ENDPOINT = Endpoint(
    name="dlt", settings=DltSettings, result=DltResult,
    summary="dose-limiting toxicity in the DLT window, with its events or why not evaluable",
    derive=derive, subject_keys=subject_keys, observations=observations, codes=("dlt",),
    contracts=Contracts(subject=DltSubjectKeys),
)
