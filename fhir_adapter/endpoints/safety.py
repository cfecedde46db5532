"""Treatment-emergent adverse events, CRS and ICANS (:mod:`fhir_adapter.derive.safety`).

The TEAE and pre-infusion flags of each AE live in this result (``flagged_ae``: copies of the CRF's AEs with
``teae`` and ``pre_infusion`` set); the CRF the derivations read is never changed, the CRF file (``OUT/crf``)
and the exports' AE domain (AETRTEM, AEPREINF) show the flags (``annotate``: one rule, one value everywhere)
and the report reads the TEAEs from ``teaes``.

Per subject: ``teae_count``, ``serious_teae_count``, ``related_teae_count``, ``max_teae_grade``,
``teae_grade_unknown``, ``crs_max_grade``, ``icans_max_grade``, ``crs`` and ``icans`` ({present, episodes,
max_grade, onset_day, duration_days}), ``teaes`` (listing), ``pre_infusion_aes``, ``onset_unknown_aes``.
Study level: ``teae_summary`` (per arm in the order of the dose levels when the study names ``escalation``).
"""

from __future__ import annotations

from typing import Any, TypedDict

from pydantic import BaseModel

from fhir_adapter.crf.models import AdverseEvent
from fhir_adapter.derive.safety import (
    AeListing,
    SafetySettings,
    SafetySubject,
    Syndrome,
    derive_safety,
    flag_teae,
    summarize_teae,
)
from fhir_adapter.endpoints.registry import Contracts, Endpoint, StudyInput, SubjectInput


class SafetySubjectKeys(TypedDict):
    teae_count: int
    serious_teae_count: int
    related_teae_count: int
    max_teae_grade: int | None
    teae_grade_unknown: int
    crs_max_grade: int | None
    icans_max_grade: int | None
    crs: dict[str, Any]
    icans: dict[str, Any]
    teaes: list[dict[str, Any]]
    pre_infusion_aes: list[dict[str, Any]]
    onset_unknown_aes: list[dict[str, Any]]


class SafetyStudyKeys(TypedDict):
    teae_summary: dict[str, object]


class SafetyResult(BaseModel):
    safety: SafetySubject
    #: the subject's AEs with ``teae`` and ``pre_infusion`` set (copies; the CRF keeps the mapped records)
    flagged_ae: list[AdverseEvent]


def derive(x: SubjectInput) -> SafetyResult:
    s = x.rules(SafetySettings)
    return SafetyResult(safety=derive_safety(x.crf, s), flagged_ae=flag_teae(x.crf, s))


def subject_keys(r: SafetyResult) -> SafetySubjectKeys:
    s = r.safety
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
    }


def from_row(row: dict[str, Any]) -> SafetySubject:
    """The per-subject safety counts back from a subject row of ``results/study.json``."""
    return SafetySubject(
        teae_count=row["teae_count"], serious_teae_count=row["serious_teae_count"],
        related_teae_count=row["related_teae_count"], max_teae_grade=row["max_teae_grade"],
        teae_grade_unknown=row["teae_grade_unknown"],
        crs=Syndrome.model_validate(row["crs"]), icans=Syndrome.model_validate(row["icans"]),
        teaes=[AeListing.model_validate(x) for x in row["teaes"]],
        pre_infusion_aes=[AeListing.model_validate(x) for x in row["pre_infusion_aes"]],
        onset_unknown_aes=[AeListing.model_validate(x) for x in row["onset_unknown_aes"]],
    )


def study_keys(x: StudyInput) -> SafetyStudyKeys:
    """``teae_summary`` from all subject rows."""
    esc = x.study.rules.get("escalation")  # arms in dose order when the study escalates doses
    arm_order = [*getattr(esc, "dose_levels", ()), *getattr(esc, "expansion_arms", {})]
    # one pass over the rows, keeping only what the summary needs (the rows may be read back from disk)
    return {"teae_summary": summarize_teae([(r["arm"], r["day1"] is not None, from_row(r)) for r in x.rows
                                            if "teae_count" in r], arm_order, x.study.info.product_name)}


def annotate(r: SafetyResult) -> dict[str, Any]:
    """The AE domain of the exports carries the TEAE and pre-infusion flags (AETRTEM, AEPREINF)."""
    return {"ae": r.flagged_ae}


ENDPOINT = Endpoint(
    name="safety", settings=SafetySettings, result=SafetyResult,
    summary="TEAEs (CTCAE), CRS and ICANS (ASTCT) per subject; TEAE summary per arm",
    derive=derive, subject_keys=subject_keys, study_keys=study_keys, annotate=annotate,
    contracts=Contracts(subject=SafetySubjectKeys, study=SafetyStudyKeys),
)
