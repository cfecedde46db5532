"""The roster from a FHIR server: ``ResearchStudy?identifier=<study id>`` (and its site sub-studies,
``ResearchStudy?partof=``), then ``ResearchSubject?study=...&_include=ResearchSubject:individual`` (Patients come
with their ResearchSubjects; those the server did not include are read by ``Patient?_id=a,b,...``), the Patients
a site roster CSV names by identifier, and the Patients' managing Organizations (``Organization?_id=``: SITEID).
Requests are counted under the label ``roster``."""

from __future__ import annotations

from typing import Any

from fhir_adapter.fhir import FhirClient, FhirHttpError
from fhir_adapter.job.runlog import RunLog
from fhir_adapter.source.base import RosterInput, managing_organization_ids, ref_id
from fhir_adapter.source.patient_links import say_links
from fhir_adapter.study.load import Study

LABEL = "roster"
PATIENTS_PER_SEARCH = 50


async def read_roster(client: FhirClient, study: Study, log: RunLog, base: str,
                      patient_identifiers: list[str]) -> RosterInput:
    info = study.info
    token = f"{info.identifier_system}|{info.id}" if info.identifier_system else info.id
    studies = await client.search_all("ResearchStudy", {"identifier": token}, label=LABEL)
    others: list[dict[str, Any]] = []
    if not studies and info.identifier_system:  # read only to name them: the roster refuses a study whose
        # identifier has the study's value under another system (roster/enrollees.py), and reads no subject of it
        others = list(await client.search_all("ResearchStudy", {"identifier": info.id}, label=LABEL))
    out = RosterInput(studies=list(studies), base=base)
    ids = [s["id"] for s in studies if "id" in s]
    if ids:
        try:
            parts = await client.search_all(
                "ResearchStudy", {"partof": ",".join(f"ResearchStudy/{i}" for i in ids)}, label=LABEL)
        except FhirHttpError as exc:
            if exc.status != 400:
                raise
            parts = []
            log.warn(f"the server does not search ResearchStudy by partof ({exc.status}): site "
                     "sub-studies are not read; their subjects must reference the main study",
                     rule="roster-partof")
        out.studies.extend(p for p in parts if p.get("id") not in ids)
    await _patients_by_identifier(client, out, patient_identifiers)
    study_refs = ",".join(f"ResearchStudy/{s['id']}" for s in out.studies if "id" in s)
    out.studies.extend(others)
    if not study_refs:
        await _site_organizations(client, out, study, log)
        return out
    async for res in client.search(
        "ResearchSubject", {"study": study_refs, "_include": "ResearchSubject:individual"}, label=LABEL
    ):
        if res.get("resourceType") == "ResearchSubject":
            out.subjects.append(res)
        elif res.get("resourceType") == "Patient" and isinstance(res.get("id"), str):
            out.patients[res["id"]] = res
    await _missing_patients(client, out, base, log)
    # a subject's Patient linked to another (merged or duplicate in the EHR): said, not followed — this read
    # holds only the Patients a ResearchSubject or the roster CSV names
    say_links(log, [out.patients[p] for p in sorted(out.patients)], set(out.patients), base, set())
    await _site_organizations(client, out, study, log)
    return out


async def _site_organizations(client: FhirClient, out: RosterInput, study: Study, log: RunLog) -> None:
    """The Organizations the Patients name as managing organisation (``Organization?_id=a,b,...``: SITEID is the
    Organization's identifier) — only those SITEID may come from: with the site overlay's ``siteid:
    organization`` every Patient's, else those of subjects enrolled in no site-level ResearchStudy. A server
    that refuses the search (4xx) is said once; SITEID is then the Organization's id, as the reference gives
    it."""
    wanted = sorted(managing_organization_ids(out, every=study.siteid_rule == "organization"))
    try:
        for i in range(0, len(wanted), PATIENTS_PER_SEARCH):
            async for res in client.search("Organization", {"_id": ",".join(wanted[i:i + PATIENTS_PER_SEARCH])},
                                           label=LABEL):
                if res.get("resourceType") == "Organization" and res.get("id") in wanted:
                    out.organizations[res["id"]] = res
    except FhirHttpError as exc:
        if not 400 <= exc.status < 500:
            raise
        log.warn(f"the server refused to read the Patients' managing Organizations ({exc.status}): SITEID is "
                 "the Organization's id where no site-level ResearchStudy gives it",
                 rule="roster-organization",
                 fix="allow reading Organization, or enrol the subjects in site-level ResearchStudies "
                     "(docs/cdisc-mapping.md)")


async def _missing_patients(client: FhirClient, out: RosterInput, base: str, log: RunLog) -> None:
    """Patients the server did not ``_include`` (many EHRs ignore ``_include`` on ResearchSubject): read
    them with ``Patient?_id=a,b,...``, so a subject is never rejected as 'unknown patient' for that."""
    wanted = sorted({pid for rs in out.subjects
                     if (pid := ref_id((rs.get("individual") or {}).get("reference"), "Patient", base))
                     and pid not in out.patients})
    if wanted:
        log.count("roster.patients_read_without_include", len(wanted))
    for i in range(0, len(wanted), PATIENTS_PER_SEARCH):
        async for res in client.search("Patient", {"_id": ",".join(wanted[i:i + PATIENTS_PER_SEARCH])}, label=LABEL):
            if res.get("resourceType") == "Patient" and isinstance(res.get("id"), str):
                out.patients[res["id"]] = res


async def _patients_by_identifier(client: FhirClient, out: RosterInput, identifiers: list[str]) -> None:
    """The Patients a site roster CSV names by identifier (``Patient?identifier=a,b,...``)."""
    for i in range(0, len(identifiers), PATIENTS_PER_SEARCH):
        async for res in client.search("Patient", {"identifier": ",".join(identifiers[i:i + PATIENTS_PER_SEARCH])},
                                       label=LABEL):
            if res.get("resourceType") == "Patient" and isinstance(res.get("id"), str):
                out.patients[res["id"]] = res
