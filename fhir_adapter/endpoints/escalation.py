"""Dose escalation (3+3 or BOIN) and the RP2D, across subjects (:mod:`fhir_adapter.derive.escalation`);
needs the DLT of every subject, so it runs on the driver after all subjects.

Study level: ``dose_levels`` ([{arm, n_treated, n_dlt_evaluable, n_dlt, decision, role, dose_level,
n_dlt_not_evaluable}]),
``rp2d`` ({arm, method, rationale}) and ``escalation_boundaries``.
"""

from __future__ import annotations

from typing import Any, TypedDict

from fhir_adapter.derive.escalation import DltOutcome, EscalationSettings, derive_escalation
from fhir_adapter.endpoints.registry import Contracts, Endpoint, StudyInput


class EscalationStudyKeys(TypedDict):
    dose_levels: list[dict[str, Any]]
    rp2d: dict[str, Any]
    escalation_boundaries: dict[str, float] | None


def study_keys(x: StudyInput) -> EscalationStudyKeys:
    esc = x.settings
    assert isinstance(esc, EscalationSettings)
    # one pass over the rows, keeping only what the decision needs (the rows may be read back from disk)
    result = derive_escalation([DltOutcome(r["arm"], r["day1"] is not None, r["dlt"],
                                           r["dlt"] is None and bool(r.get("dlt_pending")))
                                for r in x.rows if "dlt" in r], esc)
    return {
        "dose_levels": [d.model_dump(mode="json") for d in result.dose_levels],
        "rp2d": result.rp2d.model_dump(mode="json"),
        "escalation_boundaries": result.boundaries,
    }


def arms_outside(settings: EscalationSettings, arms: dict[str, str | None]) -> dict[str, str]:
    """Per subject ID, why its arm (``ResearchSubject.assignedArm``) has no place in dose escalation — neither a
    dose level nor an expansion arm of escalation.yaml, or none at all — so its DLTs would count nowhere."""
    known = (*settings.dose_levels, *settings.expansion_arms)
    where = f"dose levels {', '.join(settings.dose_levels)}" + (
        f"; expansion arms {', '.join(settings.expansion_arms)}" if settings.expansion_arms else "")
    return {sid: (f"subject {sid} has no arm (ResearchSubject.assignedArm)" if not arm else
                  f"subject {sid}'s arm '{arm}' is not an arm of escalation.yaml ({where})")
            + ": its DLTs count in no dose level's decision"
            for sid, arm in sorted(arms.items()) if arm not in known}


ENDPOINT = Endpoint(
    name="escalation", settings=EscalationSettings, level="study", needs=("dlt",),
    summary="dose-level decisions (3+3 or BOIN) and the recommended phase 2 dose",
    study_keys=study_keys, contracts=Contracts(study=EscalationStudyKeys),
)
