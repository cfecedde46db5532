"""SLEDAI-2K per visit (:mod:`fhir_adapter.derive.sledai2k`).

Per visit: ``sledai2k``, ``sledai2k_change``, ``sledai2k_baseline``, ``sledai2k_descriptors``,
``sledai2k_not_assessed``. Write-back: ``sledai-2k`` (valueInteger, one component per descriptor).
"""

from __future__ import annotations

from typing import Any, TypedDict

from pydantic import BaseModel, Field

from fhir_adapter.derive.baseline import BaselineSource
from fhir_adapter.derive.sledai2k import Sledai2kSettings, Sledai2kVisit, baseline_source, derive_sledai2k
from fhir_adapter.endpoints.registry import CheckInput, Contracts, Endpoint, OutputInput, SubjectInput
from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.terminology import units
from fhir_adapter.terminology.codes import CS_SLEDAI2K_DESCRIPTOR, DATA_ABSENT_REASON
from fhir_adapter.version import __version__
from fhir_adapter.writeback.observations import result_observation


class Sledai2kVisitKeys(TypedDict):
    sledai2k: int | None
    sledai2k_change: int | None
    sledai2k_baseline: bool
    sledai2k_descriptors: list[dict[str, Any]]
    sledai2k_not_assessed: list[str]


class Sledai2kResult(BaseModel):
    visits: list[Sledai2kVisit]
    baselines: list[BaselineSource] = Field(default_factory=list, description="an assessment in no visit")

    def visit(self, visit: str) -> Sledai2kVisit | None:
        return next((v for v in self.visits if v.visit == visit), None)


def derive(x: SubjectInput) -> Sledai2kResult:
    s = x.rules(Sledai2kSettings)
    visits = derive_sledai2k(x.crf, s)
    source = baseline_source(visits, x.crf, s)
    return Sledai2kResult(visits=visits, baselines=[source] if source else [])


def visit_keys(r: Sledai2kResult, visit: str) -> Sledai2kVisitKeys:
    s = r.visit(visit)
    scored = s is not None and s.total is not None
    return {
        "sledai2k": s.total if s else None,
        "sledai2k_change": s.change if s else None,
        "sledai2k_baseline": bool(s and s.baseline),
        "sledai2k_descriptors": [d.model_dump() for d in s.descriptors] if s and scored else [],
        "sledai2k_not_assessed": s.not_assessed if s and scored else [],
    }


def sledai2k_observation(e: Enrollee, study_id: str, v: Sledai2kVisit, s: Sledai2kSettings) -> dict[str, Any]:
    """SLEDAI-2K of one visit: total in valueInteger, one component per descriptor (a not-assessed
    descriptor carries dataAbsentReason ``not-performed`` instead of a value)."""
    assert v.total is not None
    components = []
    sources: list[str] = []
    for d in v.descriptors:
        comp: dict[str, Any] = {"code": {"coding": [{"system": CS_SLEDAI2K_DESCRIPTOR, "code": d.code}]}}
        if d.basis == "not-assessed":
            comp["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT_REASON, "code": "not-performed"}],
                                        "text": "not assessed in the look-back window"}
        else:
            comp["valueInteger"] = d.score
        components.append(comp)
        sources.extend(d.sources)
    method = (f"SLEDAI-2K (Gladman 2002), {s.window_days}-day look-back; clinician entries win over lab rules; "
              f"fhir-adapter {__version__}")
    return result_observation(e, study_id, v.visit, "sledai-2k", v.date, {"valueInteger": v.total},
                              derived_from=sources, components=components, method=method)


def observations(o: OutputInput) -> list[dict[str, Any]]:
    r: Sledai2kResult = o.result
    s = o.settings
    assert isinstance(s, Sledai2kSettings)
    return [sledai2k_observation(o.enrollee, o.study.info.id, v, s) for v in r.visits if v.total is not None]


def check(c: CheckInput) -> Sledai2kSettings:
    """Every rule names a known item; thresholds given in another unit are converted to the item's unit."""
    s, doc, items = c.settings, c.doc, c.items
    assert isinstance(s, Sledai2kSettings)
    descriptors = []
    for di, d in enumerate(s.descriptors):
        if d.item not in items:
            raise doc.error(("descriptors", di), f"descriptor '{d.code}' has no CRF item '{d.item}'",
                            "add it to items.yaml")
        new_rules: dict[str, list[Any]] = {"lab": [], "lab_fallback": []}
        for key in ("lab", "lab_fallback"):
            for ri, r in enumerate(getattr(d, key)):
                loc = ("descriptors", di, key, ri)
                item = items.get(r.item)
                if item is None:
                    raise doc.error(loc, f"unknown item '{r.item}'", "use an item id of items.yaml")
                if r.unit and item.unit and r.value is not None and r.unit != item.unit:
                    try:
                        r = r.model_copy(update={"value": units.convert(r.value, r.unit, item.unit), "unit": item.unit})
                    except units.UnitError as exc:
                        raise doc.error(loc, f"threshold unit: {exc}", f"give the threshold in {item.unit}") from None
                new_rules[key].append(r)
        descriptors.append(d.model_copy(update={k: tuple(v) for k, v in new_rules.items()}))
    for name in s.default_ranges:
        if name not in items:
            raise doc.error(("default_ranges", name), f"unknown item '{name}'", "use an item id of items.yaml")
    return s.model_copy(update={"descriptors": tuple(descriptors)})


ENDPOINT = Endpoint(
    name="sledai2k", settings=Sledai2kSettings, result=Sledai2kResult,
    summary="SLEDAI-2K total, change from baseline and descriptors per visit",
    derive=derive, visit_keys=visit_keys, observations=observations, codes=("sledai-2k",), check=check,
    contracts=Contracts(visit=Sledai2kVisitKeys),
)
