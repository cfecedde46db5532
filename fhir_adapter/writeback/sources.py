"""Where a result names its sources: ``Observation.derivedFrom`` for the types R4 allows there, the
``result-source`` extension for any other (https://hl7.org/fhir/R4/observation-definitions.html#Observation.derivedFrom)."""

from __future__ import annotations

from typing import Any

from fhir_adapter.terminology.codes import EXT_RESULT_SOURCE

#: the target types R4 allows in Observation.derivedFrom
DERIVED_FROM_TYPES = frozenset({"DocumentReference", "ImagingStudy", "Media", "QuestionnaireResponse", "Observation",
                                "MolecularSequence"})


def derived_from_allowed(reference: str) -> bool:
    return reference.split("/")[0] in DERIVED_FROM_TYPES


def result_sources(res: dict[str, Any]) -> list[str]:
    """The source references a result names (``derivedFrom`` and ``result-source`` extensions); a result
    naming none is never written back."""
    refs = [d.get("reference") for d in res.get("derivedFrom") or []]
    refs += [(x.get("valueReference") or {}).get("reference") for x in res.get("extension") or []
             if x.get("url") == EXT_RESULT_SOURCE]
    return sorted({r for r in refs if isinstance(r, str)})
