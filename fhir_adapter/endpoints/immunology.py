"""Complement, autoantibodies, immunoglobulins, B cells and anti-drug antibodies
(:mod:`fhir_adapter.derive.immunology`).

Per visit: ``c3``, ``c4``, ``anti_dsdna``, ``anti_sm``, ``igg``, ``iga``, ``igm`` and ``cd19``, each with
``<item>_change`` (docs/clinical-rules.md#immunology). Per subject: ``seroconversion`` ({anti_dsdna,
anti_sm}), ``b_cell_aplasia``, ``ada_status``.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

from fhir_adapter.derive.baseline import VisitValue
from fhir_adapter.derive.immunology import ImmunologyResults, ImmunologySettings, derive_immunology
from fhir_adapter.endpoints.registry import CheckInput, Contracts, Endpoint, SubjectInput, check_items

#: immunology items reported per visit with their change from baseline
WITH_CHANGE = ("c3", "c4", "anti_dsdna", "anti_sm", "igg", "iga", "igm", "cd19")



class ImmunologyVisitKeys(TypedDict):
    """Each value in its item's CRF unit (items.yaml)."""

    c3: float | None
    c3_change: float | None
    c4: float | None
    c4_change: float | None
    anti_dsdna: float | None
    anti_dsdna_change: float | None
    anti_sm: float | None
    anti_sm_change: float | None
    igg: float | None
    igg_change: float | None
    iga: float | None
    iga_change: float | None
    igm: float | None
    igm_change: float | None
    cd19: float | None
    cd19_change: float | None


class ImmunologySubjectKeys(TypedDict):
    seroconversion: dict[str, Any]
    b_cell_aplasia: dict[str, Any]
    ada_status: dict[str, Any]


def derive(x: SubjectInput) -> ImmunologyResults:
    return derive_immunology(x.crf, x.rules(ImmunologySettings))


def visit_keys(r: ImmunologyResults, visit: str) -> ImmunologyVisitKeys:
    row: dict[str, Any] = {}
    for item in WITH_CHANGE:
        vv: VisitValue | None = next((x for x in r.values.get(item, []) if x.visit == visit), None)
        row[item] = vv.value if vv else None
        row[f"{item}_change"] = vv.change if vv else None
    return cast(ImmunologyVisitKeys, row)


def subject_keys(r: ImmunologyResults) -> ImmunologySubjectKeys:
    return {
        "seroconversion": {k: v.model_dump(mode="json") for k, v in r.seroconversion.items()},
        "b_cell_aplasia": r.b_cell_aplasia.model_dump(mode="json"),
        "ada_status": r.ada.model_dump(mode="json"),
    }


def check(c: CheckInput) -> ImmunologySettings:
    s = c.settings
    assert isinstance(s, ImmunologySettings)
    refs: list[tuple[tuple[str | int, ...], str]] = [(("items", i), it) for i, it in enumerate(s.items)]
    refs += [(("seroconversion", ab, i), it) for ab, its in s.seroconversion.items() for i, it in enumerate(its)]
    refs += [(("default_upper_limits", it), it) for it in s.default_upper_limits]
    refs += [(("cd19_item",), s.cd19_item), (("ada_item",), s.ada_item)]
    check_items(c, refs)
    return s


ENDPOINT = Endpoint(
    name="immunology", settings=ImmunologySettings, result=ImmunologyResults,
    summary="complement, anti-dsDNA/anti-Sm, immunoglobulins, CD19 B cells, anti-drug antibodies",
    derive=derive, visit_keys=visit_keys, subject_keys=subject_keys, check=check,
    contracts=Contracts(visit=ImmunologyVisitKeys, subject=ImmunologySubjectKeys),
)
