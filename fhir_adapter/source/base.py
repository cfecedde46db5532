"""The source interface and the reference helpers every source shares."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
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
    "Condition": ("subject",),
    "AllergyIntolerance": ("patient",),
    "Immunization": ("patient",),
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
    #: the source's own FHIR base: absolute references are resolved only under it (:func:`ref_id`)
    base: str | None = None
    #: Patient id -> where each of its differing copies was read (``file:line``); such a Patient is ambiguous
    duplicate_patients: dict[str, list[str]] = field(default_factory=dict)
    #: subject ID -> why its row of the site roster CSV was skipped, for a row with an enrolled status (or none):
    #: a subject the site enrolled that the run does not process, counted among the subjects not processed (exit
    #: 2); a screen failure's incomplete row is a warning only
    roster_rows_skipped: dict[str, str] = field(default_factory=dict)
    #: Organization id -> the Organization, for the managing organisations of the Patients above (SITEID: the
    #: Organization's identifier, the site number; :func:`managing_organization_ids`)
    organizations: dict[str, Resource] = field(default_factory=dict)


#: the medication records whose ``medication`` reference names a Medication resource
MEDICATION_TYPES = ("MedicationStatement", "MedicationRequest", "MedicationAdministration", "MedicationDispense")


class Source(Protocol):
    """A place to read FHIR R4 resources from: a folder of files, a server's REST API, a Bulk Data export."""

    #: shown in the run report ("files:<folder>", "server:<url>", "bulk:<url>")
    description: str
    #: incremental runs: only subjects changed since this time are read again (None: a full read)
    since: dt.datetime | None
    #: incremental runs: the enrolled patients whose CRF of the last run is at hand (set by the run before
    #: :meth:`subject_resources`); only these may be found unchanged, any other is read in full. None: all
    reusable: set[str] | None
    #: a folder for what the source writes to disk while it reads (subjects' lines spooled, a local folder's
    #: parts): set by the run to its staging folder, so that what a killed run leaves of the chart is removed
    #: with that folder by the next run (job/staging.py); None: the system's temporary folder
    scratch: Path | None

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

    @property
    def failed(self) -> Mapping[str, Exception]:
        """Enrolled patients whose reads failed after every retry, with the error (after
        :meth:`subject_resources`): the run reports each as a subject not processed; the next run reads them."""
        ...

    def unchanged_subjects(self) -> set[str]:
        """Enrolled patients an incremental read found unchanged since :attr:`since` (after
        :meth:`subject_resources`); their CRF of the last run is used again."""
        ...

    def request_stats(self) -> dict[str, Any] | None:
        """Requests made to a server, for the run report (None when no server was asked)."""
        ...


def ref_id(reference: str | None, resource_type: str, base: str | None = None) -> str | None:
    """The logical id in a reference to ``resource_type``, for the source's own references only:
    ``Patient/1`` and ``Patient/1/_history/2`` give ``1``, and so does ``https://host/fhir/Patient/1`` when
    ``base`` (the source's FHIR base) is ``https://host/fhir``. A reference to another server, or a
    ``urn:uuid:`` (meaningful only inside the Bundle that defines it, which the source resolves while reading
    that Bundle: :func:`resolve_bundle_references`) gives None."""
    if not isinstance(reference, str) or not reference:
        return None
    if "://" in reference or reference.startswith(("urn:", "/")):
        prefix = base.rstrip("/") + "/" if base else None
        if prefix is None or not reference.startswith(prefix):
            return None
        reference = reference[len(prefix):]
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) == 2 and parts[0] == resource_type and parts[1]:
        return parts[1]
    return None


def patient_id_of(resource: Resource, base: str | None = None) -> str | None:
    """The Patient a resource is about (None when it names no Patient of this source)."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return resource.get("id")
    for key in SUBJECT_TYPES.get(str(rtype), ("subject",)):
        ref = resource.get(key)
        if isinstance(ref, dict):
            return ref_id(ref.get("reference"), "Patient", base)
    return None


def resolve_bundle_references(entries: list[Any]) -> None:
    """Rewrite, in place, the references between the entries of one Bundle that use an entry's ``fullUrl``
    (``urn:uuid:...`` or absolute) to the relative ``Type/id`` of that entry — the only place such a
    reference means anything (FHIR R4 bundle.html#references)."""
    local: dict[str, str] = {}
    for entry in entries:
        res = entry.get("resource") if isinstance(entry, dict) else None
        full = entry.get("fullUrl") if isinstance(entry, dict) else None
        if isinstance(res, dict) and isinstance(full, str) and isinstance(res.get("id"), str):
            local[full] = f"{res.get('resourceType')}/{res['id']}"
    if not local:
        return

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and ref in local:
                node["reference"] = local[ref]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for entry in entries:
        if isinstance(entry, dict):
            walk(entry.get("resource"))


def export_base(manifest: Any) -> str | None:
    """The FHIR base of a Bulk Data export, from its manifest's ``request`` (``<base>/$export``,
    ``<base>/Patient/$export`` or ``<base>/Group/<id>/$export``)."""
    request = manifest.get("request") if isinstance(manifest, dict) else None
    if not isinstance(request, str) or "/$export" not in request or "://" not in request:
        return None
    base = request.split("/$export")[0]
    parts = base.split("/")
    if parts[-1] == "Patient":
        parts = parts[:-1]
    elif len(parts) >= 2 and parts[-2] == "Group":
        parts = parts[:-2]
    return "/".join(parts)


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


def managing_organization_ids(data: RosterInput, *, every: bool = True) -> set[str]:
    """The ids of the Organizations the Patients of ``data`` name as ``managingOrganization`` (the source's own
    references only, :func:`ref_id`): the roster reads them for SITEID. ``every`` False: only those of Patients
    that no ResearchSubject enrolled in a site-level ResearchStudy names (SITEID is that study's identifier)."""
    patients: Iterable[Resource] = data.patients.values()
    if not every:
        in_site_studies = {str(s.get("id")) for s in data.studies if s.get("partOf")}
        covered = {ref_id((rs.get("individual") or {}).get("reference"), "Patient", data.base)
                   for rs in data.subjects
                   if ref_id((rs.get("study") or {}).get("reference"), "ResearchStudy", data.base) in in_site_studies}
        patients = [p for pid, p in data.patients.items() if pid not in covered]
    found = set()
    for p in patients:
        org = p.get("managingOrganization")
        if isinstance(org, dict) and (oid := ref_id(org.get("reference"), "Organization", data.base)):
            found.add(oid)
    return found


def id_from_full_url(full_url: Any, resource_type: str) -> str | None:
    """The id a Bundle entry's ``fullUrl`` gives its resource: ``urn:uuid:<uuid>`` or a server URL
    ``https://host/fhir/<type>/<id>`` (as Bulk exports and search Bundles write them)."""
    if not isinstance(full_url, str) or not full_url:
        return None
    if full_url.startswith("urn:uuid:"):
        return full_url[len("urn:uuid:"):] or None
    parts = full_url.split("/_history")[0].split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == resource_type and parts[-1] else None


def identifier_matches(resource: Resource, identifiers: Collection[str]) -> bool:
    """True when one of the resource's identifiers is in ``identifiers`` (``system|value`` or a bare value)."""
    for i in resource.get("identifier") or []:
        if isinstance(i, dict) and isinstance(i.get("value"), str) and (
                i["value"] in identifiers or f"{i.get('system', '')}|{i['value']}" in identifiers):
            return True
    return False
