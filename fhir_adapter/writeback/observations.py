"""Result Observations (profile ``result-observation`` in ``profiles/``).

Every result Observation has: a stable identifier (:mod:`identifiers`), ``meta.profile``, status
``final``, a code of the results CodeSystem, ``subject`` = the Patient, ``focus`` = the ResearchSubject,
``effectiveDateTime`` = the visit date, its sources, and ``method.text`` naming the rule and the adapter
version, so a clinician reading the chart can tell how the number was made.

Sources: ``derivedFrom`` holds those of a type R4 allows there (Observation, QuestionnaireResponse,
DocumentReference, ImagingStudy, Media, MolecularSequence: https://hl7.org/fhir/R4/observation-definitions.html
#Observation.derivedFrom); any other source (MedicationStatement, AdverseEvent, Procedure…) is named by the
extension ``result-source`` (profiles/StructureDefinition-result-source.json). Both are Provenance entities of
the write. A result with no source at all is never written back.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fhir_adapter.roster.enrollees import Enrollee
from fhir_adapter.terminology.codes import (
    CS_RESULTS,
    EXT_RESEARCH_SUBJECT,
    EXT_RESULT_SOURCE,
    OBS_CATEGORY,
    SD_RESULT_OBSERVATION,
    SID_RESULT,
    codesystem_displays,
)
from fhir_adapter.writeback.identifiers import result_identifier
from fhir_adapter.writeback.sources import DERIVED_FROM_TYPES


def result_display(code: str) -> str:
    """Display name of a result code, as defined in ``profiles/CodeSystem-results.json`` (its one owner)."""
    displays = codesystem_displays("results")
    if code not in displays:
        raise KeyError(f"result code '{code}' is not defined in profiles/CodeSystem-results.json; add it there")
    return displays[code]


def _refs(refs: list[str]) -> list[dict[str, str]]:
    """Unversioned, de-duplicated, sorted references (the EHR resolves the current version)."""
    plain = {r.split("/_history/")[0] for r in refs}
    return [{"reference": r} for r in sorted(plain)]


def result_observation(
    e: Enrollee,
    study_id: str,
    scope: str,
    code: str,
    effective: dt.date | None,
    value: dict[str, Any],
    *,
    derived_from: list[str] | None = None,
    components: list[dict[str, Any]] | None = None,
    method: str | None = None,
    category: str = "survey",
) -> dict[str, Any]:
    """One result Observation; ``value`` is the ``value[x]`` element, e.g. ``{"valueInteger": 10}``."""
    ident = result_identifier(study_id, e.subject_id, scope, code)
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"profile": [SD_RESULT_OBSERVATION]},
        "extension": [{"url": EXT_RESEARCH_SUBJECT,
                       "valueReference": {"reference": f"ResearchSubject/{e.research_subject.id}"}}],
        "identifier": [{"system": SID_RESULT, "value": ident}],
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": CS_RESULTS, "code": code, "display": result_display(code)}],
                 "text": result_display(code)},
        "subject": {"reference": f"Patient/{e.patient_id}"},
        "focus": [{"reference": f"ResearchSubject/{e.research_subject.id}"}],
    }
    if effective is not None:
        obs["effectiveDateTime"] = effective.isoformat()
    obs.update(value)
    if method:
        obs["method"] = {"text": method}
    refs = _refs(derived_from or [])
    allowed = [r for r in refs if r["reference"].split("/")[0] in DERIVED_FROM_TYPES]
    obs["extension"] += [{"url": EXT_RESULT_SOURCE, "valueReference": r} for r in refs if r not in allowed]
    if allowed:
        obs["derivedFrom"] = allowed
    if components:
        obs["component"] = components
    return obs
