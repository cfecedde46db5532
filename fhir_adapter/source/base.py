"""The source interface and the reference helpers every source shares."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

Resource = dict[str, Any]

#: resource types the mapping reads per subject, and the element that names the patient; every source (files,
#: server searches, Bulk ``_type``) reads exactly these
SUBJECT_TYPES: dict[str, tuple[str, ...]] = {
    "Observation": ("subject",),
    "Procedure": ("subject",),
    "MedicationStatement": ("subject",),
    "MedicationRequest": ("subject",),
    "MedicationAdministration": ("subject",),
    "MedicationDispense": ("subject",),
    "AdverseEvent": ("subject",),
}
ROSTER_TYPES = ("ResearchStudy", "ResearchSubject", "Patient")
#: resources outside the patient compartment that subject resources reference (a Bulk export writes them to
#: their own files; a server returns them with ``_include`` or a read by id): the medication of a statement or
#: an order, the site's Organization and Location, a lab's Specimen
SHARED_TYPES = ("Medication", "Organization", "Location", "Specimen")


class SourceError(RuntimeError):
    """The source cannot be read as a whole (a damaged or unknown file, a manifest entry that is missing): the
    message names the file and the fix."""


@dataclass
class RosterInput:
    studies: list[Resource] = field(default_factory=list)
    subjects: list[Resource] = field(default_factory=list)
    patients: dict[str, Resource] = field(default_factory=dict)


class Source(Protocol):
    """A place to read FHIR R4 resources from: a folder of files, a server's REST API, a Bulk Data export."""

    #: shown in the run report ("files:<folder>", "server:<url>", "bulk:<url>")
    description: str
    #: incremental runs: only subjects changed since this time are read again (None: a full read)
    since: dt.datetime | None

    def roster(self, patient_identifiers: Collection[str] = ()) -> RosterInput:
        """ResearchStudy and ResearchSubject resources, the Patients they name, and the Patients holding one of
        ``patient_identifiers`` (``system|value`` or a bare value: the rows of a site roster CSV)."""
        ...

    def label_subjects(self, labels: dict[str, str]) -> None:
        """Patient id -> subject ID, for reports per subject (e.g. requests per subject)."""
        ...

    def subject_resources(self, patient_ids: set[str]) -> Iterator[tuple[str, list[Resource]]]:
        """For each enrolled patient id, the resources of :data:`SUBJECT_TYPES` that reference it, with the
        resources of :data:`SHARED_TYPES` they reference."""
        ...

    def unchanged_subjects(self) -> set[str]:
        """Enrolled patients an incremental read found unchanged since :attr:`since` (after
        :meth:`subject_resources`); their CRF of the last run is used again."""
        ...

    def request_stats(self) -> dict[str, Any] | None:
        """Requests made to a server, for the run report (None when no server was asked)."""
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


def shared_references(resources: list[Resource]) -> set[tuple[str, str]]:
    """(type, id) of every resource of :data:`SHARED_TYPES` the resources reference (``Medication/1``,
    ``https://host/fhir/Specimen/2``), anywhere in their elements; contained references (``#x``) excluded."""
    found: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "reference" and isinstance(value, str) and not value.startswith("#"):
                    parts = value.split("/_history")[0].split("/")
                    if len(parts) >= 2 and parts[-2] in SHARED_TYPES and parts[-1]:
                        found.add((parts[-2], parts[-1]))
                elif key != "contained":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for r in resources:
        walk(r)
    return found


def id_from_full_url(full_url: Any, resource_type: str) -> str | None:
    """The id a Bundle entry's ``fullUrl`` gives its resource: ``urn:uuid:<uuid>`` or a server URL
    ``https://host/fhir/<type>/<id>`` (as Bulk exports and search Bundles write them)."""
    if not isinstance(full_url, str) or not full_url:
        return None
    if full_url.startswith("urn:uuid:"):
        return full_url[len("urn:uuid:"):] or None
    return ref_id(full_url, resource_type)


def identifier_matches(resource: Resource, identifiers: Collection[str]) -> bool:
    """True when one of the resource's identifiers is in ``identifiers`` (``system|value`` or a bare value)."""
    for i in resource.get("identifier") or []:
        if isinstance(i, dict) and isinstance(i.get("value"), str) and (
                i["value"] in identifiers or f"{i.get('system', '')}|{i['value']}" in identifiers):
            return True
    return False
