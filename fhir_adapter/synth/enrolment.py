"""Enrolment records any trial's feed holds: the ResearchStudy and its ResearchSubjects."""

from __future__ import annotations

from datetime import date

from .ids import ref
from .sink import Resource

SID_RESEARCH_STUDY = "https://fhir-adapter.org/fhir/sid/research-study"


def research_subject(rs_id: str, subject_system: str, subject_id: str, study_id: str, patient_id: str, status: str,
                     consent: date, arm: str | None, updated: date, end: date | None = None) -> Resource:
    """A ResearchSubject as the EHR's trial module records it (version 2 once its status changed)."""
    res: Resource = {
        "resourceType": "ResearchSubject", "id": rs_id,
        "meta": {"versionId": "2" if updated > consent else "1", "lastUpdated": f"{updated.isoformat()}T15:00:00Z"},
        "identifier": [{"system": subject_system, "value": subject_id}],
        "status": status,
        "period": {"start": consent.isoformat()},
        "study": ref("ResearchStudy", study_id),
        "individual": ref("Patient", patient_id),
    }
    if end is not None:
        res["period"]["end"] = end.isoformat()
    if arm is not None:
        res["assignedArm"] = arm
        res["actualArm"] = arm
    return res
