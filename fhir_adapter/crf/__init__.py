"""Case report form structures (CDASH-like domains), the contract between mapping and derivation."""

from fhir_adapter.crf.models import (
    AdverseEvent,
    ConMed,
    Demographics,
    Exposure,
    Finding,
    SourceRef,
    SubjectCRF,
    VisitRecord,
)

__all__ = [
    "AdverseEvent",
    "ConMed",
    "Demographics",
    "Exposure",
    "Finding",
    "SourceRef",
    "SubjectCRF",
    "VisitRecord",
]
