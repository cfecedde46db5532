"""CAR-T cellular kinetics (:mod:`fhir_adapter.derive.kinetics`).

Per subject: ``kinetics`` ({cmax, cmax_unit, tmax_day, clast, tlast_day, auc0_28, persistence_day} of the
transgene series, and ``car_cells`` with the same keys for the CAR+ cell series) and ``kinetics_notes``.
Write-back: ``cart-cmax``, ``cart-tmax``, ``cart-auc0-28d`` of the transgene series where known.
"""

from __future__ import annotations

from typing import Any, TypedDict

from fhir_adapter.derive.kinetics import Kinetics, KineticsSeries, KineticsSettings, derive_kinetics
from fhir_adapter.endpoints.registry import (
    CheckInput,
    Contracts,
    Endpoint,
    OutputInput,
    SubjectInput,
    check_items,
)
from fhir_adapter.writeback.safety import kinetics_observations

KEYS = ("cmax", "cmax_unit", "tmax_day", "clast", "tlast_day", "auc0_28", "persistence_day")


class KineticsSubjectKeys(TypedDict):
    """``kinetics``: the keys of :data:`KEYS` for the transgene series (cmax in its item's unit,
    ``cmax_unit``; days after the infusion) and ``car_cells`` with the same keys for the CAR+ cell series."""

    kinetics: dict[str, Any]
    kinetics_notes: list[str]


def derive(x: SubjectInput) -> Kinetics:
    items = {k: (v.lloq, v.unit) for k, v in x.study.items.items()}
    return derive_kinetics(x.crf, x.rules(KineticsSettings), items, x.study.info.timezone)


def series_keys(k: KineticsSeries | None) -> dict[str, Any]:
    if k is None:
        return dict.fromkeys(KEYS)
    return {"cmax": k.cmax, "cmax_unit": k.unit, "tmax_day": k.tmax_day, "clast": k.clast,
            "tlast_day": k.tlast_day, "auc0_28": k.auc0_28, "persistence_day": k.persistence_day}


def notes(k: Kinetics) -> list[str]:
    out = []
    for s in (k.primary, k.secondary):
        if s is None:
            continue
        out += [f"{s.item}: AUC0-28d {s.auc_reason}"] if s.auc_reason else []
        out += [f"{s.item}: {n}" for n in s.notes]
    return out


def subject_keys(r: Kinetics) -> KineticsSubjectKeys:
    return {"kinetics": {**series_keys(r.primary), "car_cells": series_keys(r.secondary)},
            "kinetics_notes": notes(r)}


def observations(o: OutputInput) -> list[dict[str, Any]]:
    s = o.settings
    assert isinstance(s, KineticsSettings)
    return kinetics_observations(o.result, o.enrollee, o.study.info.id, s, o.day1)


def check(c: CheckInput) -> KineticsSettings:
    s = c.settings
    assert isinstance(s, KineticsSettings)
    check_items(c, [((name, "item"), series.item) for name, series in (("primary", s.primary),
                                                                       ("secondary", s.secondary)) if series])
    return s


ENDPOINT = Endpoint(
    name="kinetics", settings=KineticsSettings, result=Kinetics,
    summary="CAR-T Cmax, Tmax, AUC0-28d, persistence of the transgene and CAR+ cell series",
    derive=derive, subject_keys=subject_keys, observations=observations,
    codes=("cart-cmax", "cart-tmax", "cart-auc0-28d"), check=check, contracts=Contracts(subject=KineticsSubjectKeys),
)
