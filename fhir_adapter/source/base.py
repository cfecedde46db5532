"""The source interface and the reference helpers every source shares."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

Resource = dict[str, Any]

#: resource types read per subject, and the element that names the patient
SUBJECT_TYPES: dict[str, tuple[str, ...]] = {
    "Observation": ("subject",),
    "Procedure": ("subject",),
    "MedicationStatement": ("subject",),
    "MedicationRequest": ("subject",),
    "MedicationAdministration": ("subject",),
    "MedicationDispense": ("subject",),
    "AdverseEvent": ("subject",),
    "Condition": ("subject",),
    "DiagnosticReport": ("subject",),
    "Encounter": ("subject",),
}
ROSTER_TYPES = ("ResearchStudy", "ResearchSubject", "Patient")


@dataclass
class RosterInput:
    studies: list[Resource] = field(default_factory=list)
    subjects: list[Resource] = field(default_factory=list)
    patients: dict[str, Resource] = field(default_factory=dict)


class Source(Protocol):
    """A place to read FHIR R4 resources from."""

    description: str

    def roster(self) -> RosterInput:
        """ResearchStudy, ResearchSubject and Patient resources."""
        ...

    def subject_resources(self, patient_ids: set[str]) -> Iterator[tuple[str, list[Resource]]]:
        """For each enrolled patient id, the resources of :data:`SUBJECT_TYPES` that reference it."""
        ...


def ref_id(reference: str | None, resource_type: str) -> str | None:
    """The logical id in a reference to ``resource_type``: ``Patient/1``, ``Patient/1/_history/2``,
    ``https://host/fhir/Patient/1`` all give ``1``; ``urn:uuid:...`` gives the uuid."""
    if not reference:
        return None
    if reference.startswith("urn:uuid:"):
        return reference[len("urn:uuid:"):]
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def patient_id_of(resource: Resource) -> str | None:
    """The Patient a resource is about (None when it names no Patient)."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return resource.get("id")
    for key in SUBJECT_TYPES.get(str(rtype), ("subject",)):
        ref = resource.get(key)
        if isinstance(ref, dict):
            return ref_id(ref.get("reference"), "Patient")
    return None
