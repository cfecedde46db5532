"""The medication of a MedicationStatement/Request/Administration/Dispense: its codings and name, from
``medicationCodeableConcept`` or a contained/referenced Medication."""

from __future__ import annotations

from typing import Any

from fhir_adapter.source.base import id_from_full_url


def medication_resource(r: dict[str, Any], siblings: list[dict[str, Any]]) -> dict[str, Any] | None:
    ref = (r.get("medicationReference") or {}).get("reference")
    if not isinstance(ref, str):
        return None
    if ref.startswith("#"):
        return next((c for c in r.get("contained") or [] if c.get("id") == ref[1:]), None)
    mid = id_from_full_url(ref, "Medication")  # among the Medications the source resolved for this subject
    return next((m for m in siblings if m.get("resourceType") == "Medication" and m.get("id") == mid), None)


def medication_concept(r: dict[str, Any], siblings: list[dict[str, Any]]) -> dict[str, Any]:
    if isinstance(r.get("medicationCodeableConcept"), dict):
        cc: dict[str, Any] = r["medicationCodeableConcept"]
        return cc
    med = medication_resource(r, siblings)
    return (med or {}).get("code") or {}


def medication_codings(r: dict[str, Any], siblings: list[dict[str, Any]]) -> list[tuple[str, str]]:
    cc = medication_concept(r, siblings)
    return [(str(c.get("system", "")), str(c.get("code", ""))) for c in cc.get("coding") or [] if isinstance(c, dict)]


def medication_name(r: dict[str, Any], siblings: list[dict[str, Any]]) -> str | None:
    cc = medication_concept(r, siblings)
    text = cc.get("text") or next((c.get("display") for c in cc.get("coding") or [] if c.get("display")), None)
    return str(text).lower() if text else None
