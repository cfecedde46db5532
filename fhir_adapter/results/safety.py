"""The safety endpoints of one subject (TEAE, CRS/ICANS, DLT, cellular kinetics) and the study-level
safety results (TEAE summary, dose levels, RP2D), with their keys in ``results/study.json``.

Per subject: ``teae_count``, ``serious_teae_count``, ``related_teae_count``, ``max_teae_grade``,
``teae_grade_unknown``, ``crs_max_grade``, ``icans_max_grade``, ``crs`` and ``icans`` ({present, episodes,
max_grade, onset_day, duration_days}), ``teaes`` (listing), ``pre_infusion_aes``, ``onset_unknown_aes``,
``dlt`` (true/false/null), ``dlt_events`` ({source, term, rule, reason}), ``dlt_not_evaluable`` (reasons),
``kinetics`` ({cmax, cmax_unit, tmax_day, clast, tlast_day, auc0_28, persistence_day} of the transgene
series, and ``car_cells`` with the same keys for the CAR+ cell series) and ``kinetics_notes``.
Study level: ``teae_summary``, ``dose_levels`` ([{arm, n_treated, n_dlt_evaluable, n_dlt, decision, role,
dose_level, n_dlt_not_evaluable}]) and ``rp2d`` ({arm, method, rationale}); computed from the subject rows,
so they need all subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fhir_adapter.crf.models import SubjectCRF
from fhir_adapter.derive.dlt import DltResult, DltSettings, derive_dlt
from fhir_adapter.derive.escalation import DltOutcome, EscalationSettings, derive_escalation
from fhir_adapter.derive.kinetics import Kinetics, KineticsSeries, KineticsSettings, derive_kinetics
from fhir_adapter.derive.safety import (
    AeListing,
    SafetySettings,
    SafetySubject,
    Syndrome,
    derive_safety,
    flag_teae,
    summarize_teae,
)
from fhir_adapter.study.load import Study

KINETICS_KEYS = ("cmax", "cmax_unit", "tmax_day", "clast", "tlast_day", "auc0_28", "persistence_day")


@dataclass
class SafetyResults:
    safety: SafetySubject
    dlt: DltResult
    kinetics: Kinetics

    def subject_keys(self) -> dict[str, Any]:
        s = self.safety
        return {
            "teae_count": s.teae_count,
            "serious_teae_count": s.serious_teae_count,
            "related_teae_count": s.related_teae_count,
            "max_teae_grade": s.max_teae_grade,
            "teae_grade_unknown": s.teae_grade_unknown,
            "crs_max_grade": s.crs.max_grade,
            "icans_max_grade": s.icans.max_grade,
            "crs": s.crs.model_dump(mode="json"),
            "icans": s.icans.model_dump(mode="json"),
            "teaes": [x.model_dump(mode="json") for x in s.teaes],
            "pre_infusion_aes": [x.model_dump(mode="json") for x in s.pre_infusion_aes],
            "onset_unknown_aes": [x.model_dump(mode="json") for x in s.onset_unknown_aes],
            "dlt": self.dlt.dlt,
            "dlt_events": [e.model_dump(mode="json") for e in self.dlt.dlt_events],
            "dlt_not_evaluable": list(self.dlt.not_evaluable),
            "kinetics": {**_kinetics_keys(self.kinetics.primary),
                         "car_cells": _kinetics_keys(self.kinetics.secondary)},
            "kinetics_notes": _kinetics_notes(self.kinetics),
        }


def _kinetics_keys(k: KineticsSeries | None) -> dict[str, Any]:
    if k is None:
        return dict.fromkeys(KINETICS_KEYS)
    return {"cmax": k.cmax, "cmax_unit": k.unit, "tmax_day": k.tmax_day, "clast": k.clast,
            "tlast_day": k.tlast_day, "auc0_28": k.auc0_28, "persistence_day": k.persistence_day}


def _kinetics_notes(k: Kinetics) -> list[str]:
    out = []
    for s in (k.primary, k.secondary):
        if s is None:
            continue
        out += [f"{s.item}: AUC0-28d {s.auc_reason}"] if s.auc_reason else []
        out += [f"{s.item}: {n}" for n in s.notes]
    return out


def derive_safety_results(crf: SubjectCRF, study: Study) -> SafetyResults:
    """TEAE flags set on ``crf.ae`` (the CRF written afterwards carries them), then safety, DLT, kinetics."""
    safety_settings = study.rule("safety", SafetySettings)
    crf.ae = flag_teae(crf, safety_settings)
    items = {k: (v.lloq, v.unit) for k, v in study.items.items()}
    return SafetyResults(
        safety=derive_safety(crf, safety_settings),
        dlt=derive_dlt(crf, study.rule("dlt", DltSettings)),
        kinetics=derive_kinetics(crf, study.rule("kinetics", KineticsSettings), items),
    )


def _safety_from_row(row: dict[str, Any]) -> SafetySubject:
    return SafetySubject(
        teae_count=row["teae_count"], serious_teae_count=row["serious_teae_count"],
        related_teae_count=row["related_teae_count"], max_teae_grade=row["max_teae_grade"],
        teae_grade_unknown=row["teae_grade_unknown"],
        crs=Syndrome.model_validate(row["crs"]), icans=Syndrome.model_validate(row["icans"]),
        teaes=[AeListing.model_validate(x) for x in row["teaes"]],
        pre_infusion_aes=[AeListing.model_validate(x) for x in row["pre_infusion_aes"]],
        onset_unknown_aes=[AeListing.model_validate(x) for x in row["onset_unknown_aes"]],
    )


def study_safety_keys(study: Study, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``teae_summary``, ``dose_levels`` and ``rp2d`` from all subject rows of ``results/study.json``."""
    esc = study.rule("escalation", EscalationSettings)
    rows = [r for r in rows if "teae_count" in r]
    arm_order = [*esc.dose_levels, *esc.expansion_arms]
    summary = summarize_teae([(r["arm"], r["day1"] is not None, _safety_from_row(r)) for r in rows],
                             arm_order)
    result = derive_escalation([DltOutcome(r["arm"], r["day1"] is not None, r["dlt"]) for r in rows], esc)
    return {
        "teae_summary": summary,
        "dose_levels": [d.model_dump(mode="json") for d in result.dose_levels],
        "rp2d": result.rp2d.model_dump(mode="json"),
        "escalation_boundaries": result.boundaries,
    }
